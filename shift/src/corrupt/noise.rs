//! Noise corruptions.

use crate::image::Plane;
use crate::rng::Rng;

/// `x + N(0, σ²)`.
pub(super) fn gaussian(x: &Plane, sigma: f32, rng: &mut Rng) -> Plane {
    let mut out = x.clone();
    for v in &mut out.data {
        *v += sigma * rng.normal() as f32;
    }
    out
}

/// `Poisson(x·λ) / λ`: photon noise where a white pixel collects λ photons.
pub(super) fn shot(x: &Plane, lambda: f32, rng: &mut Rng) -> Plane {
    let mut out = x.clone();
    for v in &mut out.data {
        *v = (rng.poisson((v.clamp(0.0, 1.0) * lambda) as f64) / lambda as f64) as f32;
    }
    out
}

/// Each element independently becomes salt (1) or pepper (0) with probability `amount`,
/// half each (skimage's `random_noise(mode='s&p')`).
pub(super) fn impulse(x: &Plane, amount: f32, rng: &mut Rng) -> Plane {
    let mut out = x.clone();
    for v in &mut out.data {
        if rng.unit() < amount as f64 {
            *v = if rng.unit() < 0.5 { 1.0 } else { 0.0 };
        }
    }
    out
}

/// `x + x·N(0, σ²)`.
pub(super) fn speckle(x: &Plane, sigma: f32, rng: &mut Rng) -> Plane {
    let mut out = x.clone();
    for v in &mut out.data {
        *v += *v * sigma * rng.normal() as f32;
    }
    out
}
