//! Image filters the corruptions are built from: Gaussian and general convolution, bilinear
//! sampling with the border rules of the original tools, and the plasma fractal.

use crate::image::Plane;
use crate::rng::Rng;

/// How samples outside the image are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Border {
    /// Repeat the edge pixel (`aaa|abcd|ddd`, scipy `nearest`).
    Nearest,
    /// Mirror including the edge (`ba|abcd|dc`, scipy `reflect`).
    Reflect,
    /// Mirror excluding the edge (`cb|abcd|cb`, OpenCV's default `BORDER_REFLECT_101`).
    Reflect101,
}

/// Maps a possibly out-of-range coordinate into `0..n` under a border rule.
#[inline]
pub fn border_index(i: isize, n: usize, border: Border) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let idx = match border {
        Border::Nearest => i.clamp(0, n - 1),
        Border::Reflect => {
            let period = 2 * n;
            let m = i.rem_euclid(period);
            if m < n { m } else { period - 1 - m }
        }
        Border::Reflect101 => {
            let period = 2 * n - 2;
            let m = i.rem_euclid(period);
            if m < n { m } else { period - m }
        }
    };
    idx as usize
}

/// Normalised 1-D Gaussian kernel with radius `⌈truncate·σ⌉` (scipy's convention).
pub fn gaussian_kernel(sigma: f32, truncate: f32) -> Vec<f32> {
    if sigma <= 0.0 {
        return vec![1.0];
    }
    let radius = (truncate * sigma + 0.5) as isize;
    let weights: Vec<f32> = (-radius..=radius).map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let sum: f32 = weights.iter().sum();
    weights.into_iter().map(|w| w / sum).collect()
}

/// Separable Gaussian blur of every channel (σ in pixels, kernel truncated at `truncate·σ`).
pub fn gaussian_blur(plane: &Plane, sigma: f32, truncate: f32, border: Border) -> Plane {
    let kernel = gaussian_kernel(sigma, truncate);
    separable(plane, &kernel, &kernel, border)
}

/// Convolves every channel with a row kernel then a column kernel (both odd-length).
pub fn separable(plane: &Plane, row_kernel: &[f32], col_kernel: &[f32], border: Border) -> Plane {
    let rows_done = convolve_axis(plane, row_kernel, Axis::Horizontal, border);
    convolve_axis(&rows_done, col_kernel, Axis::Vertical, border)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Axis {
    Horizontal,
    Vertical,
}

/// One pass of a separable convolution along `axis`.
fn convolve_axis(plane: &Plane, kernel: &[f32], axis: Axis, border: Border) -> Plane {
    let (w, h, ch) = (plane.width, plane.height, plane.channels);
    let r = (kernel.len() / 2) as isize;
    let mut out = Plane::zeros(w, h, ch);
    for y in 0..h {
        for x in 0..w {
            for c in 0..ch {
                let mut acc = 0.0;
                for (k, &wk) in kernel.iter().enumerate() {
                    let offset = k as isize - r;
                    acc += wk
                        * match axis {
                            Axis::Horizontal => plane.at(y, border_index(x as isize + offset, w, border), c),
                            Axis::Vertical => plane.at(border_index(y as isize + offset, h, border), x, c),
                        };
                }
                let i = out.index(y, x, c);
                out.data[i] = acc;
            }
        }
    }
    out
}

/// Correlates every channel with a square kernel (`size × size`, row-major), like OpenCV's
/// `filter2D`.
pub fn filter2d(plane: &Plane, kernel: &[f32], size: usize, border: Border) -> Plane {
    let (w, h, ch) = (plane.width, plane.height, plane.channels);
    let r = (size / 2) as isize;
    let taps: Vec<(isize, isize, f32)> = (0..size * size)
        .filter(|&i| kernel[i] != 0.0)
        .map(|i| ((i / size) as isize - r, (i % size) as isize - r, kernel[i]))
        .collect();
    let mut out = Plane::zeros(w, h, ch);
    for y in 0..h {
        for x in 0..w {
            for c in 0..ch {
                let mut acc = 0.0;
                for &(dy, dx, wk) in &taps {
                    let sy = border_index(y as isize + dy, h, border);
                    let sx = border_index(x as isize + dx, w, border);
                    acc += wk * plane.at(sy, sx, c);
                }
                let i = out.index(y, x, c);
                out.data[i] = acc;
            }
        }
    }
    out
}

/// Bilinear sample of channel `c` at fractional `(y, x)` under a border rule.
#[inline]
pub fn bilinear(plane: &Plane, y: f32, x: f32, c: usize, border: Border) -> f32 {
    let (y0, x0) = (y.floor(), x.floor());
    let (fy, fx) = (y - y0, x - x0);
    let (y0, x0) = (y0 as isize, x0 as isize);
    let at = |yy: isize, xx: isize| {
        plane.at(border_index(yy, plane.height, border), border_index(xx, plane.width, border), c)
    };
    let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1) * fx;
    let bottom = at(y0 + 1, x0) * (1.0 - fx) + at(y0 + 1, x0 + 1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// Zooms the centre of the image by `factor` ≥ 1 and crops back to the original size
/// (bilinear; scipy's `zoom` of the centre `⌈n/factor⌉` pixels, as ImageNet-C's `clipped_zoom`).
pub fn clipped_zoom(plane: &Plane, factor: f32) -> Plane {
    let (w, h) = (plane.width, plane.height);
    let crop_h = (h as f32 / factor).ceil() as usize;
    let crop_w = (w as f32 / factor).ceil() as usize;
    let top = (h - crop_h) / 2;
    let left = (w - crop_w) / 2;
    let zoomed_h = (crop_h as f32 * factor).round() as usize;
    let zoomed_w = (crop_w as f32 * factor).round() as usize;
    let trim_top = (zoomed_h.saturating_sub(h)) / 2;
    let trim_left = (zoomed_w.saturating_sub(w)) / 2;
    // scipy.ndimage.zoom maps the corner pixels onto each other.
    let scale_y = if zoomed_h > 1 { (crop_h - 1) as f32 / (zoomed_h - 1) as f32 } else { 0.0 };
    let scale_x = if zoomed_w > 1 { (crop_w - 1) as f32 / (zoomed_w - 1) as f32 } else { 0.0 };
    let mut out = Plane::zeros(w, h, plane.channels);
    for y in 0..h {
        let sy = top as f32 + (y + trim_top) as f32 * scale_y;
        for x in 0..w {
            let sx = left as f32 + (x + trim_left) as f32 * scale_x;
            for c in 0..plane.channels {
                let i = out.index(y, x, c);
                out.data[i] = bilinear(plane, sy, sx, c, Border::Nearest);
            }
        }
    }
    out
}

/// Resizes with bilinear interpolation (pixel-centre aligned).
pub fn resize_bilinear(plane: &Plane, width: usize, height: usize) -> Plane {
    let mut out = Plane::zeros(width, height, plane.channels);
    let sy = plane.height as f32 / height as f32;
    let sx = plane.width as f32 / width as f32;
    for y in 0..height {
        for x in 0..width {
            for c in 0..plane.channels {
                let i = out.index(y, x, c);
                out.data[i] =
                    bilinear(plane, (y as f32 + 0.5) * sy - 0.5, (x as f32 + 0.5) * sx - 0.5, c, Border::Nearest);
            }
        }
    }
    out
}

/// A `size × size` diamond-square plasma fractal normalised to [0, 1] (`size` a power of two),
/// as ImageNet-C's `plasma_fractal`: each level's random offsets shrink by `decay`.
pub fn plasma_fractal(size: usize, decay: f32, rng: &mut Rng) -> Vec<f32> {
    debug_assert!(size.is_power_of_two());
    let mut map = vec![0.0f32; size * size];
    let at = |y: usize, x: usize| (y % size) * size + (x % size);
    let mut step = size;
    let mut wibble = 100.0f32;
    while step >= 2 {
        let half = step / 2;
        wibble /= decay;
        // Squares: centre of each square is the corners' mean plus noise.
        for y in (0..size).step_by(step) {
            for x in (0..size).step_by(step) {
                let mean =
                    (map[at(y, x)] + map[at(y, x + step)] + map[at(y + step, x)] + map[at(y + step, x + step)]) / 4.0;
                map[at(y + half, x + half)] = mean + wibble * rng.uniform(-1.0, 1.0) as f32;
            }
        }
        // Diamonds: edge midpoints from their four neighbours (wrapping around).
        for y in (0..size).step_by(half) {
            let start = if (y / half).is_multiple_of(2) { half } else { 0 };
            for x in (start..size).step_by(step) {
                let up = map[at(y + size - half, x)];
                let down = map[at(y + half, x)];
                let left = map[at(y, x + size - half)];
                let right = map[at(y, x + half)];
                map[at(y, x)] = (up + down + left + right) / 4.0 + wibble * rng.uniform(-1.0, 1.0) as f32;
            }
        }
        step = half;
    }
    let min = map.iter().copied().fold(f32::INFINITY, f32::min);
    let max = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let range = (max - min).max(f32::EPSILON);
    map.iter().map(|v| (v - min) / range).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn border_rules_match_their_definitions() {
        let n = 4;
        let map = |b| (-3..7).map(|i| border_index(i, n, b)).collect::<Vec<_>>();
        assert_eq!(map(Border::Nearest), vec![0, 0, 0, 0, 1, 2, 3, 3, 3, 3]);
        assert_eq!(map(Border::Reflect), vec![2, 1, 0, 0, 1, 2, 3, 3, 2, 1]);
        assert_eq!(map(Border::Reflect101), vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
    }

    #[test]
    fn gaussian_kernel_is_normalised_and_sized_like_scipy() {
        let k = gaussian_kernel(1.0, 4.0);
        assert_eq!(k.len(), 9);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(gaussian_kernel(0.0, 4.0), vec![1.0]);
    }

    #[test]
    fn plasma_spans_the_unit_interval() {
        let map = plasma_fractal(32, 2.0, &mut Rng::for_stream(&[1]));
        let min = map.iter().copied().fold(f32::INFINITY, f32::min);
        let max = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!((min, max), (0.0, 1.0));
    }
}
