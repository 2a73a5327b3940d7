//! Reproducible distribution shift on real data, for simulating the world CEMA adapts to.
//!
//! - [`dataset`]: Fashion-MNIST from IDX files and labelled image folders;
//! - [`corrupt`]: the 15 ImageNet-C corruptions plus speckle noise, Gaussian blur and
//!   saturate, severities 1–5, deterministic given `(seed, image index)`;
//! - [`scenario`]: independent, continual, gradual and mixed shift streams, per device;
//! - [`sheet`]: a contact sheet to look at the shifts.
//!
//! Not here: models, inference or anything networked; this crate only produces data.

pub mod corrupt;
pub mod dataset;
pub mod image;
pub use cema_core::rng;
pub mod scenario;
pub mod sheet;

pub use corrupt::Corruption;
pub use dataset::{Dataset, DatasetError, Split};
pub use image::Image;
pub use scenario::{Protocol, Scenario, ScenarioConfig};

/// Peak signal-to-noise ratio in dB between two images of equal shape (∞ when identical).
pub fn psnr(a: &Image, b: &Image) -> f64 {
    assert_eq!(a.pixels.len(), b.pixels.len(), "psnr of different shapes");
    let mse: f64 = a.pixels.iter().zip(&b.pixels).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum::<f64>()
        / a.pixels.len() as f64;
    if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0f64 * 255.0 / mse).log10() }
}
