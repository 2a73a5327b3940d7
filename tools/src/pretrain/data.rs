//! The training data of a step: the epoch's order, augmentation, the learning-rate schedule.

use cema_core::Manifest;
use cema_shift::corrupt::Corruption;
use cema_shift::dataset::Dataset;
use cema_shift::image::Image;
use cema_shift::rng::Rng;
use rayon::prelude::*;

use crate::builtin::Recipe;

/// Pixels of padding for the random-crop augmentation.
const CROP_PAD: i64 = 2;

/// Linear warm-up over `warmup` steps, then cosine decay to zero at `total`.
pub(super) fn learning_rate(peak: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    0.5 * peak * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// The data order of one epoch (Fisher–Yates from the seed and epoch).
pub(super) fn permutation(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = Rng::for_stream(&[seed, epoch as u64, 0x6f_7264_6572]);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.int_inclusive(0, i as i64) as usize;
        order.swap(i, j);
    }
    order
}

/// Augmented, preprocessed inputs and labels of one step.
pub(super) fn training_batch(
    data: &Dataset,
    indices: &[usize],
    manifest: &Manifest,
    recipe: &Recipe,
    epoch: usize,
) -> (Vec<f32>, Vec<usize>) {
    let augmented: Vec<Vec<u8>> =
        indices.par_iter().map(|&i| augment(&data.images[i], recipe, epoch, i as u64).to_chw()).collect();
    let mut inputs = Vec::with_capacity(augmented.len() * manifest.sample_elements());
    for pixels in &augmented {
        manifest.preprocess_u8(pixels, &mut inputs);
    }
    (inputs, indices.iter().map(|&i| data.labels[i] as usize).collect())
}

/// With probability `corruption_prob` a random corruption at a random severity, then a random
/// crop (zero padding of two pixels) and a random horizontal flip.
fn augment(image: &Image, recipe: &Recipe, epoch: usize, index: u64) -> Image {
    let mut rng = Rng::for_stream(&[recipe.seed, epoch as u64, index, 0x6175_676d]);
    let corrupted;
    let source = if recipe.corruption_prob > 0.0 && rng.unit() < recipe.corruption_prob {
        let all: Vec<Corruption> = Corruption::all().collect();
        let corruption = all[rng.int_inclusive(0, all.len() as i64 - 1) as usize];
        let severity = rng.int_inclusive(1, 5) as u8;
        corrupted = corruption.apply(image, severity, recipe.seed ^ (epoch as u64) << 32, index);
        &corrupted
    } else {
        image
    };
    let dx = rng.int_inclusive(-CROP_PAD, CROP_PAD);
    let dy = rng.int_inclusive(-CROP_PAD, CROP_PAD);
    let flip = rng.unit() < 0.5;
    let (w, h, c) = (source.width as i64, source.height as i64, source.channels);
    let mut out = Image::new(source.width, source.height, c, vec![0; source.pixels.len()]);
    for y in 0..h {
        for x in 0..w {
            let sx = if flip { w - 1 - x } else { x } + dx;
            let sy = y + dy;
            if (0..w).contains(&sx) && (0..h).contains(&sy) {
                let (to, from) = (((y * w + x) as usize) * c, ((sy * w + sx) as usize) * c);
                out.pixels[to..to + c].copy_from_slice(&source.pixels[from..from + c]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_warms_up_then_decays_to_zero() {
        assert!((learning_rate(0.1, 0, 100, 10) - 0.01).abs() < 1e-12);
        assert!((learning_rate(0.1, 9, 100, 10) - 0.1).abs() < 1e-12);
        assert!((learning_rate(0.1, 10, 100, 10) - 0.1).abs() < 1e-12);
        assert!(learning_rate(0.1, 99, 100, 10) < 1e-3);
    }

    #[test]
    fn a_permutation_holds_every_index_once_and_depends_on_the_epoch() {
        let a = permutation(1000, 7, 0);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_eq!(a, permutation(1000, 7, 0));
        assert_ne!(a, permutation(1000, 7, 1));
    }
}
