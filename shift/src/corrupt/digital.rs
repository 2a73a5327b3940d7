//! Digital corruptions: brightness, contrast, saturate, elastic transform, pixelate, JPEG.

use super::filters::{self, Border};
use super::table::{Elastic, Saturate};
use crate::image::{Image, Plane};
use crate::rng::Rng;

/// Brightness: `V + Δ` in HSV (for grey images V is the value itself).
pub(super) fn brightness(x: &Plane, delta: f32) -> Plane {
    map_hsv(x, |h, s, v| (h, s, (v + delta).clamp(0.0, 1.0)), |v| v + delta)
}

/// Saturate: `S·factor + offset` in HSV; grey images have no saturation and stay as they are.
pub(super) fn saturate(x: &Plane, (factor, offset): Saturate) -> Plane {
    map_hsv(x, |h, s, v| (h, (s * factor + offset).clamp(0.0, 1.0), v), |v| v)
}

/// Contrast: `(x − mean)·c + mean`, with the mean of each channel over the image.
pub(super) fn contrast(x: &Plane, factor: f32) -> Plane {
    let pixels = (x.width * x.height) as f32;
    let mut means = vec![0.0f32; x.channels];
    for (i, v) in x.data.iter().enumerate() {
        means[i % x.channels] += v / pixels;
    }
    let mut out = x.clone();
    for (i, v) in out.data.iter_mut().enumerate() {
        let m = means[i % x.channels];
        *v = (*v - m) * factor + m;
    }
    out
}

fn map_hsv(x: &Plane, rgb: impl Fn(f32, f32, f32) -> (f32, f32, f32), grey: impl Fn(f32) -> f32) -> Plane {
    let mut out = x.clone();
    if x.channels == 1 {
        out.data.iter_mut().for_each(|v| *v = grey(*v));
        return out;
    }
    for p in out.data.chunks_exact_mut(3) {
        let (h, s, v) = rgb_to_hsv(p[0], p[1], p[2]);
        let (h, s, v) = rgb(h, s, v);
        let (r, g, b) = hsv_to_rgb(h, s, v);
        p.copy_from_slice(&[r, g, b]);
    }
    out
}

/// RGB in [0, 1] to HSV with hue in [0, 1) (skimage's convention).
pub(crate) fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    let s = if max > 0.0 { delta / max } else { 0.0 };
    let h = if delta == 0.0 {
        0.0
    } else if max == r {
        ((g - b) / delta).rem_euclid(6.0) / 6.0
    } else if max == g {
        ((b - r) / delta + 2.0) / 6.0
    } else {
        ((r - g) / delta + 4.0) / 6.0
    };
    (h, s, max)
}

/// HSV (hue in [0, 1)) to RGB.
pub(crate) fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = (h.rem_euclid(1.0)) * 6.0;
    let sector = h6.floor();
    let f = h6 - sector;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match sector as u8 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// Elastic transform: a random affine warp of three points around the centre (jitter up to
/// `affine` px; OpenCV `warpAffine`, bilinear, reflect-101), then a per-pixel displacement of
/// Gaussian-smoothed (σ, truncated at 3σ) uniform noise scaled by α (scipy
/// `map_coordinates`, bilinear, reflect).
pub(super) fn elastic(x: &Plane, (alpha, sigma, affine): Elastic, rng: &mut Rng) -> Plane {
    let (w, h) = (x.width, x.height);
    let (cx, cy) = ((w / 2) as f32, (h / 2) as f32);
    let square = (w.min(h) / 3) as f32;
    let from = [[cx + square, cy + square], [cx + square, cy - square], [cx - square, cy - square]];
    let mut to = from;
    for point in &mut to {
        for v in point.iter_mut() {
            *v += rng.uniform(-affine as f64, affine as f64) as f32;
        }
    }
    let inverse = affine_from_points(&to, &from);
    let mut warped = Plane::zeros(w, h, x.channels);
    for y in 0..h {
        for xx in 0..w {
            let (fx, fy) = (xx as f32, y as f32);
            let sx = inverse[0] * fx + inverse[1] * fy + inverse[2];
            let sy = inverse[3] * fx + inverse[4] * fy + inverse[5];
            for c in 0..x.channels {
                let i = warped.index(y, xx, c);
                warped.data[i] = filters::bilinear(x, sy, sx, c, Border::Reflect101);
            }
        }
    }
    let field = |rng: &mut Rng| {
        let noise = Plane {
            width: w,
            height: h,
            channels: 1,
            data: (0..w * h).map(|_| rng.uniform(-1.0, 1.0) as f32).collect(),
        };
        filters::gaussian_blur(&noise, sigma, 3.0, Border::Reflect)
            .data
            .into_iter()
            .map(|v| v * alpha)
            .collect::<Vec<_>>()
    };
    let dx = field(rng);
    let dy = field(rng);
    let mut out = Plane::zeros(w, h, x.channels);
    for y in 0..h {
        for xx in 0..w {
            let d = y * w + xx;
            for c in 0..x.channels {
                let i = out.index(y, xx, c);
                out.data[i] = filters::bilinear(&warped, y as f32 + dy[d], xx as f32 + dx[d], c, Border::Reflect);
            }
        }
    }
    out
}

/// The affine map `[a b c; d e f]` that sends the three `from` points onto `to` (x, y order).
fn affine_from_points(from: &[[f32; 2]; 3], to: &[[f32; 2]; 3]) -> [f32; 6] {
    // Solve [x y 1]·[a b c]ᵀ = x' and likewise for y' by Cramer's rule.
    let det = |m: [[f32; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let m = [[from[0][0], from[0][1], 1.0], [from[1][0], from[1][1], 1.0], [from[2][0], from[2][1], 1.0]];
    let d = det(m);
    let solve = |rhs: [f32; 3]| {
        let mut out = [0.0f32; 3];
        for (col, o) in out.iter_mut().enumerate() {
            let mut mc = m;
            for row in 0..3 {
                mc[row][col] = rhs[row];
            }
            *o = det(mc) / d;
        }
        out
    };
    let [a, b, c] = solve([to[0][0], to[1][0], to[2][0]]);
    let [dd, e, f] = solve([to[0][1], to[1][1], to[2][1]]);
    [a, b, c, dd, e, f]
}

/// Pixelate: box-downsample to `⌊side·fraction⌋` then box-upsample back (PIL's `BOX` filter).
pub(super) fn pixelate(x: &Plane, fraction: f32) -> Plane {
    let small_w = ((x.width as f32 * fraction) as usize).max(1);
    let small_h = ((x.height as f32 * fraction) as usize).max(1);
    let small = box_resize(x, small_w, small_h);
    box_resize(&small, x.width, x.height)
}

/// Area-weighted resampling: each output pixel averages the input over its footprint.
pub(crate) fn box_resize(x: &Plane, width: usize, height: usize) -> Plane {
    let cols = box_weights(x.width, width);
    let rows = box_weights(x.height, height);
    let mut out = Plane::zeros(width, height, x.channels);
    for (y, row) in rows.iter().enumerate() {
        for (xx, col) in cols.iter().enumerate() {
            for c in 0..x.channels {
                let mut acc = 0.0;
                for &(sy, wy) in row {
                    for &(sx, wx) in col {
                        acc += wy * wx * x.at(sy, sx, c);
                    }
                }
                let i = out.index(y, xx, c);
                out.data[i] = acc;
            }
        }
    }
    out
}

/// For each of `dst` output positions, the source indices and weights covering it.
fn box_weights(src: usize, dst: usize) -> Vec<Vec<(usize, f32)>> {
    let scale = src as f32 / dst as f32;
    (0..dst)
        .map(|i| {
            let (start, end) = (i as f32 * scale, (i + 1) as f32 * scale);
            let mut taps: Vec<(usize, f32)> = (start.floor() as usize..(end.ceil() as usize).min(src))
                .map(|j| (j, (end.min(j as f32 + 1.0) - start.max(j as f32)).max(0.0)))
                .filter(|&(_, w)| w > 0.0)
                .collect();
            let total: f32 = taps.iter().map(|t| t.1).sum();
            taps.iter_mut().for_each(|t| t.1 /= total);
            taps
        })
        .collect()
}

/// JPEG: encode at `quality`, decode again.
pub(super) fn jpeg(image: &Image, quality: u8) -> Image {
    use image::ImageEncoder;
    let mut bytes = Vec::new();
    let color = if image.channels == 1 { image::ExtendedColorType::L8 } else { image::ExtendedColorType::Rgb8 };
    let encoded = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality).write_image(
        &image.pixels,
        image.width as u32,
        image.height as u32,
        color,
    );
    // Encoding an in-memory 8-bit image of valid size cannot fail; decoding our own output
    // neither. Both are checked all the same, and a failure leaves the image unchanged.
    let decoded = encoded.ok().and_then(|_| image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg).ok());
    match decoded {
        Some(picture) if image.channels == 1 => {
            Image::new(image.width, image.height, 1, picture.into_luma8().into_raw())
        }
        Some(picture) => Image::new(image.width, image.height, 3, picture.into_rgb8().into_raw()),
        None => image.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsv_round_trips() {
        for (r, g, b) in [(0.2, 0.4, 0.9), (1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.9, 0.8, 0.1)] {
            let (h, s, v) = rgb_to_hsv(r, g, b);
            let (r2, g2, b2) = hsv_to_rgb(h, s, v);
            assert!((r - r2).abs() < 1e-6 && (g - g2).abs() < 1e-6 && (b - b2).abs() < 1e-6, "{r} {g} {b}");
        }
    }

    #[test]
    fn affine_solves_three_points() {
        let from = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]];
        let to = [[2.0, 3.0], [4.0, 3.0], [2.0, 6.0]];
        let m = affine_from_points(&from, &to);
        assert_eq!(m, [2.0, 0.0, 2.0, 0.0, 3.0, 3.0]);
    }

    #[test]
    fn box_resize_averages_blocks() {
        let x = Plane { width: 4, height: 1, channels: 1, data: vec![0.0, 1.0, 0.5, 0.5] };
        assert_eq!(box_resize(&x, 2, 1).data, vec![0.5, 0.5]);
    }
}
