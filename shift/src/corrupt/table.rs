//! Severity tables. `Small` is the CIFAR-10-C table (`make_cifar_c.py`), `Large` the
//! ImageNet-C table (`make_imagenet_c.py`), both as published by Hendrycks & Dietterich.

use super::SMALL_IMAGE_MAX_SIDE;
use crate::image::Image;

/// Which parameter table applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// CIFAR-10-C parameters, for images with both sides ≤ 64 px.
    Small,
    /// ImageNet-C parameters, for larger images.
    Large,
}

/// Defocus blur: disk radius and the σ that anti-aliases the disk.
pub type Defocus = (f32, f32);
/// Glass blur: blur σ, largest pixel displacement, iterations.
pub type Glass = (f32, i64, usize);
/// Motion blur: radius and σ of the one-sided Gaussian weights.
pub type Motion = (usize, f32);
/// Snow: layer mean, layer σ, zoom, threshold, blur radius, blur σ, blend of the image.
pub type Snow = (f32, f32, f32, f32, usize, f32, f32);
/// Frost: weight of the image, weight of the frost texture.
pub type Frost = (f32, f32);
/// Fog: amplitude and decay of the plasma fractal.
pub type Fog = (f32, f32);
/// Saturate: saturation factor and offset.
pub type Saturate = (f32, f32);
/// Elastic transform in pixels: displacement α, smoothing σ, affine jitter.
pub type Elastic = (f32, f32, f32);

impl Table {
    /// The table for an image of this size.
    pub fn for_size(width: usize, height: usize) -> Table {
        if width.max(height) <= SMALL_IMAGE_MAX_SIDE { Table::Small } else { Table::Large }
    }

    fn pick<T: Copy>(self, small: [T; 5], large: [T; 5]) -> [T; 5] {
        match self {
            Table::Small => small,
            Table::Large => large,
        }
    }

    /// σ of the added noise.
    pub fn gaussian_noise(self) -> [f32; 5] {
        self.pick([0.04, 0.06, 0.08, 0.09, 0.10], [0.08, 0.12, 0.18, 0.26, 0.38])
    }

    /// Photon count λ of a white pixel.
    pub fn shot_noise(self) -> [f32; 5] {
        self.pick([500.0, 250.0, 100.0, 75.0, 50.0], [60.0, 25.0, 12.0, 5.0, 3.0])
    }

    /// Fraction of elements replaced by salt or pepper.
    pub fn impulse_noise(self) -> [f32; 5] {
        self.pick([0.01, 0.02, 0.03, 0.05, 0.07], [0.03, 0.06, 0.09, 0.17, 0.27])
    }

    /// σ of the multiplicative noise.
    pub fn speckle_noise(self) -> [f32; 5] {
        self.pick([0.06, 0.1, 0.12, 0.16, 0.2], [0.15, 0.2, 0.35, 0.45, 0.6])
    }

    /// σ of the Gaussian blur, in pixels.
    pub fn gaussian_blur(self) -> [f32; 5] {
        self.pick([0.4, 0.6, 0.7, 0.8, 1.0], [1.0, 2.0, 3.0, 4.0, 6.0])
    }

    /// Defocus blur parameters.
    pub fn defocus_blur(self) -> [Defocus; 5] {
        self.pick(
            [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)],
            [(3.0, 0.1), (4.0, 0.5), (6.0, 0.5), (8.0, 0.5), (10.0, 0.5)],
        )
    }

    /// Glass blur parameters.
    pub fn glass_blur(self) -> [Glass; 5] {
        self.pick(
            [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
            [(0.7, 1, 2), (0.9, 2, 1), (1.0, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
        )
    }

    /// Motion blur parameters.
    pub fn motion_blur(self) -> [Motion; 5] {
        self.pick(
            [(6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5)],
            [(10, 3.0), (15, 5.0), (15, 8.0), (15, 12.0), (20, 15.0)],
        )
    }

    /// Zoom factors averaged by zoom blur at `level` (0-based): `arange(1, end, step)`.
    pub fn zoom_blur(self, level: usize) -> Vec<f32> {
        let (end, step) = self.pick(
            [(1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01), (1.26, 0.01)],
            [(1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)],
        )[level];
        // numpy's arange: start + i·step while below end (computed in f64 as numpy does).
        let count = ((end - 1.0f64) / step).ceil() as usize;
        (0..count).map(|i| (1.0 + i as f64 * step) as f32).collect()
    }

    /// Snow parameters.
    pub fn snow(self) -> [Snow; 5] {
        self.pick(
            [
                (0.1, 0.2, 1.0, 0.6, 8, 3.0, 0.95),
                (0.1, 0.2, 1.0, 0.5, 10, 4.0, 0.9),
                (0.15, 0.3, 1.75, 0.55, 10, 4.0, 0.9),
                (0.25, 0.3, 2.25, 0.6, 12, 6.0, 0.85),
                (0.3, 0.3, 1.25, 0.65, 14, 12.0, 0.8),
            ],
            [
                (0.1, 0.3, 3.0, 0.5, 10, 4.0, 0.8),
                (0.2, 0.3, 2.0, 0.5, 12, 4.0, 0.7),
                (0.55, 0.3, 4.0, 0.9, 12, 8.0, 0.7),
                (0.55, 0.3, 4.5, 0.85, 12, 8.0, 0.65),
                (0.55, 0.3, 2.5, 0.85, 12, 12.0, 0.55),
            ],
        )
    }

    /// Frost parameters.
    pub fn frost(self) -> [Frost; 5] {
        self.pick(
            [(1.0, 0.2), (1.0, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
            [(1.0, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
        )
    }

    /// Fog parameters.
    pub fn fog(self) -> [Fog; 5] {
        self.pick(
            [(0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)],
            [(1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)],
        )
    }

    /// Added HSV value.
    pub fn brightness(self) -> [f32; 5] {
        self.pick([0.05, 0.1, 0.15, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4, 0.5])
    }

    /// Contrast factor.
    pub fn contrast(self) -> [f32; 5] {
        self.pick([0.75, 0.5, 0.4, 0.3, 0.15], [0.4, 0.3, 0.2, 0.1, 0.05])
    }

    /// Saturate parameters.
    pub fn saturate(self) -> [Saturate; 5] {
        self.pick(
            [(0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2)],
            [(0.3, 0.0), (0.1, 0.0), (2.0, 0.0), (5.0, 0.1), (20.0, 0.2)],
        )
    }

    /// Elastic parameters in pixels for this image. The tables give them as fractions of
    /// the image side: CIFAR-10-C multiplies by 32, ImageNet-C by 244 (for 224-px images; its
    /// authors note the 244 is a typo they kept). Here the side of the image replaces 32, and
    /// `side · 244/224` replaces 244, so 32- and 224-px images get the published values.
    pub fn elastic(self, level: usize, image: &Image) -> Elastic {
        let side = image.width.min(image.height) as f32;
        let (fractions, scale) = match self {
            Table::Small => {
                ([(0.0, 0.0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)], side)
            }
            Table::Large => (
                [(2.0, 0.7, 0.1), (2.0, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02), (0.12, 0.01, 0.02)],
                side * 244.0 / 224.0,
            ),
        };
        let (a, s, f) = fractions[level];
        (a * scale, s * scale, f * scale)
    }

    /// Fraction of the side kept when pixelating.
    pub fn pixelate(self) -> [f32; 5] {
        self.pick([0.95, 0.9, 0.85, 0.75, 0.65], [0.6, 0.5, 0.4, 0.3, 0.25])
    }

    /// JPEG quality.
    pub fn jpeg(self) -> [u8; 5] {
        self.pick([80, 65, 58, 50, 40], [25, 18, 15, 10, 7])
    }
}
