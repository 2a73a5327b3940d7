//! Weather corruptions: snow, frost and fog.
//!
//! Frost differs from ImageNet-C by necessity: the original blends crops of six frost
//! photographs, which cannot be downloaded here. [`frost_texture`] grows a procedural one
//! instead — branching ice crystals over a faint haze, bluish white on RGB — with the
//! same blend weights, so severities keep their published strength relative to each other.

use super::blur::motion_at_angle;
use super::filters::{self, Border};
use super::table::{Fog, Frost, Snow};
use crate::image::Plane;
use crate::rng::Rng;

/// Snow: a thresholded, zoomed noise layer streaked by motion blur at a random angle in
/// [−135°, −45°], added twice (once rotated by 180°) to a greyed, brightened image.
pub(super) fn snow(x: &Plane, (mean, sigma, zoom, threshold, radius, blur_sigma, blend): Snow, rng: &mut Rng) -> Plane {
    let (w, h) = (x.width, x.height);
    let mut layer = Plane::zeros(w, h, 1);
    for v in &mut layer.data {
        *v = mean + sigma * rng.normal() as f32;
    }
    let mut layer = filters::clipped_zoom(&layer, zoom);
    for v in &mut layer.data {
        // Below the threshold is no snow; the original then stores the layer as 8-bit.
        let kept = if *v < threshold { 0.0 } else { v.clamp(0.0, 1.0) };
        *v = ((kept * 255.0) as u8) as f32 / 255.0;
    }
    let angle = rng.uniform(-135.0, -45.0) as f32;
    let layer = motion_at_angle(&layer, (radius, blur_sigma), angle);
    let grey = x.grey();
    let mut out = x.clone();
    for y in 0..h {
        for xx in 0..w {
            let flake = layer.at(y, xx, 0) + layer.at(h - 1 - y, w - 1 - xx, 0);
            let lifted = grey.at(y, xx, 0) * 1.5 + 0.5;
            for c in 0..x.channels {
                let i = out.index(y, xx, c);
                let v = x.data[i];
                out.data[i] = blend * v + (1.0 - blend) * v.max(lifted) + flake;
            }
        }
    }
    out
}

/// Frost: `a·x + b·texture`.
pub(super) fn frost(x: &Plane, (a, b): Frost, rng: &mut Rng) -> Plane {
    let texture = frost_texture(x.width, x.height, rng);
    // Ice scatters blue light a little more than red.
    const TINT: [f32; 3] = [0.86, 0.93, 1.0];
    let mut out = x.clone();
    for (i, v) in out.data.iter_mut().enumerate() {
        let tint = if x.channels == 3 { TINT[i % 3] } else { 1.0 };
        *v = a * *v + b * tint * texture[i / x.channels];
    }
    out
}

/// A procedural frost texture in [0, 1], `height × width`: dendritic crystals that branch at
/// ±60° from random seeds, drawn with soft edges, over a faint plasma haze.
pub(crate) fn frost_texture(width: usize, height: usize, rng: &mut Rng) -> Vec<f32> {
    let side = width.max(height) as f32;
    let mut ice = vec![0.0f32; width * height];
    let size = (width.max(height)).next_power_of_two().max(2);
    let haze = filters::plasma_fractal(size, 1.6, rng);
    for y in 0..height {
        for x in 0..width {
            ice[y * width + x] = 0.25 * haze[y * size + x];
        }
    }
    // About one crystal per 60 px² at 28 px, fewer per pixel as images grow.
    let crystals = ((width * height) as f32 / (60.0 * (side / 28.0).max(1.0))).ceil() as usize;
    let mut stack: Vec<(f32, f32, f32, f32, u8)> = Vec::new();
    for _ in 0..crystals {
        let (x0, y0) = (rng.uniform(0.0, width as f64) as f32, rng.uniform(0.0, height as f64) as f32);
        let angle = rng.uniform(0.0, std::f64::consts::TAU) as f32;
        stack.push((x0, y0, angle, side * rng.uniform(0.15, 0.35) as f32, 0));
    }
    while let Some((mut px, mut py, angle, length, depth)) = stack.pop() {
        let (dy, dx) = angle.sin_cos();
        let steps = length.max(1.0) as usize;
        for step in 0..steps {
            stamp(&mut ice, width, height, px, py, 0.55 - 0.12 * depth as f32);
            px += dx;
            py += dy;
            if depth < 2 && step > 1 && rng.unit() < 0.18 {
                let turn = if rng.unit() < 0.5 { 1.047 } else { -1.047 };
                stack.push((px, py, angle + turn, length * 0.45, depth + 1));
            }
        }
    }
    let plane = Plane { width, height, channels: 1, data: ice };
    let mut soft = filters::gaussian_blur(&plane, 0.35 * (side / 28.0).max(1.0), 3.0, Border::Nearest);
    soft.clip();
    soft.data
}

/// Adds a soft (bilinear) dot of `value` at a fractional position.
fn stamp(ice: &mut [f32], width: usize, height: usize, x: f32, y: f32, value: f32) {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    for (oy, wy) in [(0, 1.0 - fy), (1, fy)] {
        for (ox, wx) in [(0, 1.0 - fx), (1, fx)] {
            let (xi, yi) = (x0 as isize + ox, y0 as isize + oy);
            if xi >= 0 && yi >= 0 && (xi as usize) < width && (yi as usize) < height {
                let i = yi as usize * width + xi as usize;
                ice[i] = (ice[i] + value * wx * wy).min(1.0);
            }
        }
    }
}

/// Fog: `x + amplitude · plasma`, rescaled by `max / (max + amplitude)` to keep the range.
pub(super) fn fog(x: &Plane, (amplitude, decay): Fog, rng: &mut Rng) -> Plane {
    let size = x.width.max(x.height).next_power_of_two().max(2);
    let plasma = filters::plasma_fractal(size, decay, rng);
    let max = x.data.iter().copied().fold(0.0f32, f32::max);
    let mut out = x.clone();
    for y in 0..x.height {
        for xx in 0..x.width {
            let haze = amplitude * plasma[y * size + xx];
            for c in 0..x.channels {
                let i = out.index(y, xx, c);
                out.data[i] = (out.data[i] + haze) * max / (max + amplitude);
            }
        }
    }
    out
}
