//! The ImageNet-C corruption family (Hendrycks & Dietterich, ICLR 2019) plus speckle noise,
//! Gaussian blur and saturate, at severities 1–5, for grey and RGB images of any size.
//!
//! Parameters come from two tables (see [`table`]): the CIFAR-10-C table for small images
//! (both sides ≤ [`SMALL_IMAGE_MAX_SIDE`] px, e.g. Fashion-MNIST's 28 px) and the ImageNet-C
//! table for larger ones. Every corruption is deterministic given `(seed, image index)`: its
//! random draws come from a stream keyed by seed, index and corruption (not severity, so the
//! five severities of one image share their noise), independent of threads.
//!
//! Work happens on [0, 1] floats; results are clipped and rounded to 8 bits. Differences from
//! the original Python code are named where they occur; the largest is frost, whose texture
//! photographs cannot be downloaded here: it is generated procedurally (see [`weather`]).

mod blur;
mod digital;
pub mod filters;
mod noise;
pub mod table;
mod weather;

use crate::image::Image;
use crate::rng::Rng;
pub use table::Table;

/// Images whose sides are all at most this many pixels use the CIFAR-10-C parameter table.
pub const SMALL_IMAGE_MAX_SIDE: usize = 64;

/// One corruption type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Corruption {
    /// Additive Gaussian noise.
    GaussianNoise,
    /// Poisson (photon) noise.
    ShotNoise,
    /// Salt-and-pepper noise.
    ImpulseNoise,
    /// Out-of-focus blur (disk kernel).
    DefocusBlur,
    /// Frosted-glass blur (blur, local pixel shuffles, blur).
    GlassBlur,
    /// Camera motion blur along a random angle.
    MotionBlur,
    /// Blur from zooming during the exposure.
    ZoomBlur,
    /// Falling snow.
    Snow,
    /// Frost on the lens (procedural texture).
    Frost,
    /// Fog (plasma fractal haze).
    Fog,
    /// Brightness increase (HSV value).
    Brightness,
    /// Contrast reduction.
    Contrast,
    /// Elastic deformation.
    ElasticTransform,
    /// Down- and up-sampling.
    Pixelate,
    /// JPEG re-encoding at low quality.
    JpegCompression,
    /// Multiplicative Gaussian noise (ImageNet-C's held-out extras from here on).
    SpeckleNoise,
    /// Gaussian blur.
    GaussianBlur,
    /// Saturation change (HSV saturation; no effect on grey images).
    Saturate,
}

impl Corruption {
    /// The 15 benchmark corruptions of ImageNet-C, in the paper's order.
    pub const BENCHMARK: [Corruption; 15] = [
        Corruption::GaussianNoise,
        Corruption::ShotNoise,
        Corruption::ImpulseNoise,
        Corruption::DefocusBlur,
        Corruption::GlassBlur,
        Corruption::MotionBlur,
        Corruption::ZoomBlur,
        Corruption::Snow,
        Corruption::Frost,
        Corruption::Fog,
        Corruption::Brightness,
        Corruption::Contrast,
        Corruption::ElasticTransform,
        Corruption::Pixelate,
        Corruption::JpegCompression,
    ];

    /// The held-out extras.
    pub const EXTRA: [Corruption; 3] = [Corruption::SpeckleNoise, Corruption::GaussianBlur, Corruption::Saturate];

    /// All 18, benchmark first.
    pub fn all() -> impl Iterator<Item = Corruption> {
        Self::BENCHMARK.into_iter().chain(Self::EXTRA)
    }

    /// The ImageNet-C name (`gaussian_noise`, `jpeg_compression`, …).
    pub fn name(self) -> &'static str {
        match self {
            Corruption::GaussianNoise => "gaussian_noise",
            Corruption::ShotNoise => "shot_noise",
            Corruption::ImpulseNoise => "impulse_noise",
            Corruption::DefocusBlur => "defocus_blur",
            Corruption::GlassBlur => "glass_blur",
            Corruption::MotionBlur => "motion_blur",
            Corruption::ZoomBlur => "zoom_blur",
            Corruption::Snow => "snow",
            Corruption::Frost => "frost",
            Corruption::Fog => "fog",
            Corruption::Brightness => "brightness",
            Corruption::Contrast => "contrast",
            Corruption::ElasticTransform => "elastic_transform",
            Corruption::Pixelate => "pixelate",
            Corruption::JpegCompression => "jpeg_compression",
            Corruption::SpeckleNoise => "speckle_noise",
            Corruption::GaussianBlur => "gaussian_blur",
            Corruption::Saturate => "saturate",
        }
    }

    /// Parses an ImageNet-C name.
    pub fn from_name(name: &str) -> Option<Corruption> {
        Self::all().find(|c| c.name() == name)
    }

    /// Applies this corruption at `severity` (1–5) to image number `index` of a data set
    /// corrupted with `seed`.
    ///
    /// # Panics
    /// If `severity` is not in 1–5, or the image has a channel count other than 1 or 3.
    pub fn apply(self, image: &Image, severity: u8, seed: u64, index: u64) -> Image {
        assert!((1..=5).contains(&severity), "severity {severity} is not in 1–5");
        assert!(matches!(image.channels, 1 | 3), "{} channels; 1 or 3 expected", image.channels);
        let table = Table::for_size(image.width, image.height);
        let level = usize::from(severity - 1);
        let mut rng = Rng::for_stream(&[seed, index, self as u64]);
        let x = image.to_plane();
        let out = match self {
            Corruption::GaussianNoise => noise::gaussian(&x, table.gaussian_noise()[level], &mut rng),
            Corruption::ShotNoise => noise::shot(&x, table.shot_noise()[level], &mut rng),
            Corruption::ImpulseNoise => noise::impulse(&x, table.impulse_noise()[level], &mut rng),
            Corruption::SpeckleNoise => noise::speckle(&x, table.speckle_noise()[level], &mut rng),
            Corruption::GaussianBlur => blur::gaussian(&x, table.gaussian_blur()[level]),
            Corruption::DefocusBlur => blur::defocus(&x, table.defocus_blur()[level]),
            Corruption::GlassBlur => blur::glass(&x, table.glass_blur()[level], &mut rng),
            Corruption::MotionBlur => blur::motion(&x, table.motion_blur()[level], &mut rng),
            Corruption::ZoomBlur => blur::zoom(&x, &table.zoom_blur(level)),
            Corruption::Snow => weather::snow(&x, table.snow()[level], &mut rng),
            Corruption::Frost => weather::frost(&x, table.frost()[level], &mut rng),
            Corruption::Fog => weather::fog(&x, table.fog()[level], &mut rng),
            Corruption::Brightness => digital::brightness(&x, table.brightness()[level]),
            Corruption::Contrast => digital::contrast(&x, table.contrast()[level]),
            Corruption::Saturate => digital::saturate(&x, table.saturate()[level]),
            Corruption::ElasticTransform => digital::elastic(&x, table.elastic(level, image), &mut rng),
            Corruption::Pixelate => digital::pixelate(&x, table.pixelate()[level]),
            Corruption::JpegCompression => return digital::jpeg(image, table.jpeg()[level]),
        };
        out.to_image()
    }
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Corruption {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Corruption::from_name(s).ok_or_else(|| {
            let names: Vec<&str> = Corruption::all().map(Corruption::name).collect();
            format!("unknown corruption `{s}`; known: {}", names.join(", "))
        })
    }
}
