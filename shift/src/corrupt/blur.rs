//! Blur corruptions.

use super::filters::{self, Border};
use super::table::{Defocus, Glass, Motion};
use crate::image::Plane;
use crate::rng::Rng;

/// scipy's default truncation of Gaussian kernels, in σ.
const GAUSSIAN_TRUNCATE: f32 = 4.0;

/// Gaussian blur with σ in pixels (skimage `gaussian`, edge pixels repeated).
pub(super) fn gaussian(x: &Plane, sigma: f32) -> Plane {
    filters::gaussian_blur(x, sigma, GAUSSIAN_TRUNCATE, Border::Nearest)
}

/// The defocus kernel of ImageNet-C: a normalised disk of `radius` on a grid of at least
/// 17×17, anti-aliased by a 3×3 (5×5 for radii above 8) Gaussian of σ `alias`.
pub(crate) fn defocus_kernel((radius, alias): Defocus) -> (Vec<f32>, usize) {
    let (half, alias_size) = if radius <= 8.0 { (8isize, 3usize) } else { (radius as isize, 5usize) };
    let size = (2 * half + 1) as usize;
    let mut disk: Vec<f32> = (0..size * size)
        .map(|i| {
            let (y, x) = ((i / size) as isize - half, (i % size) as isize - half);
            if ((x * x + y * y) as f32) <= radius * radius { 1.0 } else { 0.0 }
        })
        .collect();
    let sum: f32 = disk.iter().sum();
    disk.iter_mut().for_each(|v| *v /= sum);
    // OpenCV's GaussianBlur of the kernel image: fixed size, given σ, border reflect-101.
    let r = (alias_size / 2) as isize;
    let weights: Vec<f32> = (-r..=r).map(|i| (-((i * i) as f32) / (2.0 * alias * alias)).exp()).collect();
    let total: f32 = weights.iter().sum();
    let weights: Vec<f32> = weights.iter().map(|w| w / total).collect();
    let plane = Plane { width: size, height: size, channels: 1, data: disk };
    (filters::separable(&plane, &weights, &weights, Border::Reflect101).data, size)
}

/// Defocus blur: the disk kernel applied to every channel (OpenCV `filter2D`).
pub(super) fn defocus(x: &Plane, params: Defocus) -> Plane {
    let (kernel, size) = defocus_kernel(params);
    filters::filter2d(x, &kernel, size, Border::Reflect101)
}

/// Glass blur: blur, quantise to 8 bits, replace each pixel by a random neighbour up to
/// `delta` up/left (`iterations` sweeps from the bottom-right, as the original loops), blur again.
///
/// The original *means* to swap the two pixels, but on RGB arrays its tuple assignment
/// `x[h, w], x[h', w'] = x[h', w'], x[h, w]` assigns numpy views, so `x[h, w]` receives the
/// neighbour and the neighbour keeps its value. Every published ImageNet-C and CIFAR-10-C image
/// was made that way, so this is what is reproduced, for grey images too.
pub(super) fn glass(x: &Plane, (sigma, delta, iterations): Glass, rng: &mut Rng) -> Plane {
    let blurred = gaussian(x, sigma);
    // The original works on uint8 here (`np.uint8(blur · 255)` truncates).
    let mut q: Vec<f32> = blurred.data.iter().map(|v| ((v.clamp(0.0, 1.0) * 255.0) as u8) as f32 / 255.0).collect();
    let (w, h, ch) = (x.width as i64, x.height as i64, x.channels);
    for _ in 0..iterations {
        let mut y = h - delta;
        while y > delta {
            let mut xx = w - delta;
            while xx > delta {
                // numpy's randint(-δ, δ) excludes δ.
                let dx = rng.int_inclusive(-delta, delta - 1);
                let dy = rng.int_inclusive(-delta, delta - 1);
                let (ny, nx) = (y + dy, xx + dx);
                if (0..h).contains(&ny) && (0..w).contains(&nx) {
                    let to = ((y * w + xx) as usize) * ch;
                    let from = ((ny * w + nx) as usize) * ch;
                    q.copy_within(from..from + ch, to);
                }
                xx -= 1;
            }
            y -= 1;
        }
    }
    gaussian(&Plane { data: q, ..blurred }, sigma)
}

/// Motion blur along a random angle in [−45°, 45°]: the average of `2·radius + 1` copies
/// shifted along the angle (edges repeated), weighted by a one-sided Gaussian of σ — the
/// `imagecorruptions` re-implementation of ImageMagick's motion blur.
pub(super) fn motion(x: &Plane, params: Motion, rng: &mut Rng) -> Plane {
    let angle = rng.uniform(-45.0, 45.0);
    motion_at_angle(x, params, angle as f32)
}

/// Motion blur at a given angle in degrees.
pub(super) fn motion_at_angle(x: &Plane, (radius, sigma): Motion, angle_degrees: f32) -> Plane {
    let width = 2 * radius + 1;
    let weights: Vec<f32> = (0..width).map(|i| (-((i * i) as f32) / (2.0 * sigma * sigma)).exp()).collect();
    let total: f32 = weights.iter().sum();
    let (sin, cos) = angle_degrees.to_radians().sin_cos();
    let mut out = Plane::zeros(x.width, x.height, x.channels);
    for (i, weight) in weights.iter().enumerate() {
        let dy = -((i as f32 * sin) - 0.5).ceil() as isize;
        let dx = -((i as f32 * cos) - 0.5).ceil() as isize;
        if dy.unsigned_abs() >= x.height || dx.unsigned_abs() >= x.width {
            break; // the motion left the image
        }
        let w = weight / total;
        for y in 0..x.height {
            let sy = filters::border_index(y as isize - dy, x.height, Border::Nearest);
            for xx in 0..x.width {
                let sx = filters::border_index(xx as isize - dx, x.width, Border::Nearest);
                for c in 0..x.channels {
                    let o = out.index(y, xx, c);
                    out.data[o] += w * x.at(sy, sx, c);
                }
            }
        }
    }
    out
}

/// Zoom blur: the mean of the image and its centre zooms by each factor.
pub(super) fn zoom(x: &Plane, factors: &[f32]) -> Plane {
    let mut out = x.clone();
    for &factor in factors {
        let zoomed = filters::clipped_zoom(x, factor);
        out.data.iter_mut().zip(&zoomed.data).for_each(|(o, z)| *o += z);
    }
    let n = (factors.len() + 1) as f32;
    out.data.iter_mut().for_each(|v| *v /= n);
    out
}
