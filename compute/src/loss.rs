//! Losses over logits `[batch, classes]`, built from burn ops so they differentiate.

use burn::Tensor;
use burn::tensor::{TensorData, activation};

/// Mean cross-entropy of the logits against integer labels (pretraining).
///
/// # Panics
/// If `labels.len()` differs from the batch size or a label is not below the class count.
pub fn cross_entropy(logits: Tensor<2>, labels: &[usize]) -> Tensor<1> {
    let [n, classes] = logits.dims();
    assert_eq!(labels.len(), n, "one label per sample");
    let mut one_hot = vec![0.0f32; n * classes];
    labels.iter().enumerate().for_each(|(i, &l)| one_hot[i * classes + l] = 1.0);
    let target = Tensor::<2>::from_data(TensorData::new(one_hot, [n, classes]), &logits.device());
    activation::log_softmax(logits, 1).mul(target).sum_dim(1).neg().mean()
}

/// Mean prediction entropy `(1/B) Σ_i −Σ_c p_ic ln p_ic` (Tent's loss).
pub fn mean_entropy(logits: Tensor<2>) -> Tensor<1> {
    let log_p = activation::log_softmax(logits, 1);
    log_p.clone().exp().mul(log_p).sum_dim(1).neg().mean()
}
