//! Images as the shift crate handles them: 8-bit, grey or RGB, rows of interleaved channels
//! (HWC), plus an f32 working copy in [0, 1] for the corruptions.

use std::path::Path;

/// An 8-bit image, `height × width × channels` (1 = grey, 3 = RGB), channels interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// `height × width × channels` bytes.
    pub pixels: Vec<u8>,
}

/// An f32 working image with values nominally in [0, 1], same layout as [`Image`].
#[derive(Debug, Clone, PartialEq)]
pub struct Plane {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// 1 or 3.
    pub channels: usize,
    /// `height × width × channels` values.
    pub data: Vec<f32>,
}

impl Image {
    /// An image from raw bytes.
    ///
    /// # Panics
    /// If the byte count disagrees with the dimensions.
    pub fn new(width: usize, height: usize, channels: usize, pixels: Vec<u8>) -> Self {
        assert_eq!(pixels.len(), width * height * channels, "{width}×{height}×{channels} image");
        Self { width, height, channels, pixels }
    }

    /// The [0, 1] working copy.
    pub fn to_plane(&self) -> Plane {
        Plane {
            width: self.width,
            height: self.height,
            channels: self.channels,
            data: self.pixels.iter().map(|&p| p as f32 / 255.0).collect(),
        }
    }

    /// Pixels in channel-first order (`C × H × W`), as NCHW models take them.
    pub fn to_chw(&self) -> Vec<u8> {
        let plane = self.width * self.height;
        let mut out = vec![0u8; self.pixels.len()];
        for (i, &p) in self.pixels.iter().enumerate() {
            out[(i % self.channels) * plane + i / self.channels] = p;
        }
        out
    }

    /// The same picture with three channels (grey is replicated).
    pub fn to_rgb(&self) -> Image {
        if self.channels == 3 {
            return self.clone();
        }
        Image::new(self.width, self.height, 3, self.pixels.iter().flat_map(|&p| [p, p, p]).collect())
    }

    /// Writes a PNG.
    pub fn save_png(&self, path: &Path) -> Result<(), image::ImageError> {
        let color = if self.channels == 1 { image::ExtendedColorType::L8 } else { image::ExtendedColorType::Rgb8 };
        image::save_buffer(path, &self.pixels, self.width as u32, self.height as u32, color)
    }
}

impl Plane {
    /// A zero plane of the given shape.
    pub fn zeros(width: usize, height: usize, channels: usize) -> Self {
        Self { width, height, channels, data: vec![0.0; width * height * channels] }
    }

    /// Index of `(y, x, c)`.
    #[inline]
    pub fn index(&self, y: usize, x: usize, c: usize) -> usize {
        (y * self.width + x) * self.channels + c
    }

    /// Value at `(y, x, c)`.
    #[inline]
    pub fn at(&self, y: usize, x: usize, c: usize) -> f32 {
        self.data[self.index(y, x, c)]
    }

    /// Clips to [0, 1] and quantises to 8 bits (rounding to nearest).
    pub fn to_image(&self) -> Image {
        Image::new(
            self.width,
            self.height,
            self.channels,
            self.data.iter().map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect(),
        )
    }

    /// Clips every value to [0, 1] in place.
    pub fn clip(&mut self) {
        for v in &mut self.data {
            *v = v.clamp(0.0, 1.0);
        }
    }

    /// One channel as a single-channel plane.
    pub fn channel(&self, c: usize) -> Plane {
        Plane {
            width: self.width,
            height: self.height,
            channels: 1,
            data: self.data.iter().skip(c).step_by(self.channels).copied().collect(),
        }
    }

    /// Replaces channel `c` with a single-channel plane's values.
    pub fn set_channel(&mut self, c: usize, values: &Plane) {
        for (i, &v) in values.data.iter().enumerate() {
            self.data[i * self.channels + c] = v;
        }
    }

    /// Applies a single-channel operation to every channel.
    pub fn map_channels(&self, op: impl Fn(&Plane) -> Plane) -> Plane {
        if self.channels == 1 {
            return op(self);
        }
        let mut out = Plane::zeros(self.width, self.height, self.channels);
        for c in 0..self.channels {
            out.set_channel(c, &op(&self.channel(c)));
        }
        out
    }

    /// Luma (ITU-R BT.601, as PIL and skimage use) of an RGB plane; a grey plane is returned as is.
    pub fn grey(&self) -> Plane {
        if self.channels == 1 {
            return self.clone();
        }
        Plane {
            width: self.width,
            height: self.height,
            channels: 1,
            data: self.data.chunks_exact(3).map(|p| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]).collect(),
        }
    }
}
