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

/// Per-sample entropy `H_i = −Σ_c p_ic ln p_ic`, `[batch]`.
pub fn entropy(logits: Tensor<2>) -> Tensor<1> {
    let log_p = activation::log_softmax(logits, 1);
    let [n, _] = log_p.dims();
    log_p.clone().exp().mul(log_p).sum_dim(1).neg().reshape([n])
}

/// EATA's reliability weight `exp(E_max − H_i)`, computed without gradient.
pub fn reliability_weights(entropy: &Tensor<1>, e_max: f64) -> Tensor<1> {
    entropy.clone().detach().neg().add_scalar(e_max).exp()
}

/// CEMA's foundation-model loss: `L_f = (1/B) Σ_i exp(E_max − H_i)·H_i`, weights without gradient.
pub fn weighted_entropy(logits: Tensor<2>, e_max: f64) -> Tensor<1> {
    let h = entropy(logits);
    let w = reliability_weights(&h, e_max);
    w.mul(h).mean()
}

/// Weights of CEMA's distillation loss `L_g = α·Ent + β·KL + γ·CE`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistillWeights {
    /// α, on the student's weighted entropy.
    pub alpha: f64,
    /// β, on the weighted KL(teacher ‖ student).
    pub beta: f64,
    /// γ, on the weighted cross-entropy to the teacher's argmax.
    pub gamma: f64,
    /// Temperature T of the KL term.
    pub temperature: f64,
    /// `E_max` of the reliability weights.
    pub e_max: f64,
}

/// The three terms of the distillation loss and their weighted sum (the last is the one to
/// differentiate). The means divide by B, not by the sum of weights (cema-spec).
#[derive(Debug, Clone)]
pub struct DistillLoss {
    /// `(1/B) Σ w_s,i·H(s_i)`.
    pub ent: Tensor<1>,
    /// `(1/B) Σ w_t,i·T²·Σ_c p_t,c(T)(ln p_t,c(T) − ln p_s,c(T))`.
    pub kl: Tensor<1>,
    /// `(1/B) Σ w_t,i·(−ln softmax(s_i)[argmax t_i])`.
    pub ce: Tensor<1>,
    /// `α·Ent + β·KL + γ·CE`.
    pub total: Tensor<1>,
    /// Each sample's unweighted `T²·KL(teacher ‖ student)` (detached): its distillation value,
    /// for auditing which samples teach.
    pub sample_kl: Tensor<1>,
}

/// CEMA's distillation loss of student logits against (constant) teacher logits.
pub fn distillation(student: Tensor<2>, teacher: Tensor<2>, weights: &DistillWeights) -> DistillLoss {
    let teacher = teacher.detach();
    let [n, classes] = student.dims();
    let h_s = entropy(student.clone());
    let w_s = reliability_weights(&h_s, weights.e_max);
    let h_t = entropy(teacher.clone());
    let w_t = reliability_weights(&h_t, weights.e_max);
    let ent = w_s.mul(h_s).mean();

    let t = weights.temperature;
    let log_pt = activation::log_softmax(teacher.clone().div_scalar(t), 1);
    let log_ps_t = activation::log_softmax(student.clone().div_scalar(t), 1);
    let kl_i = log_pt.clone().exp().mul(log_pt.sub(log_ps_t)).sum_dim(1).reshape([n]).mul_scalar(t * t);
    let sample_kl = kl_i.clone().detach();
    let kl = w_t.clone().mul(kl_i).mean();

    let teacher_values = teacher.into_data().try_to_vec::<f32>().unwrap_or_default();
    let mut one_hot = vec![0.0f32; n * classes];
    for (i, row) in teacher_values.chunks_exact(classes).enumerate() {
        if let Some(c) = cema_core::math::argmax(row) {
            one_hot[i * classes + c] = 1.0;
        }
    }
    let target = Tensor::<2>::from_data(TensorData::new(one_hot, [n, classes]), &student.device());
    let ce_i = activation::log_softmax(student, 1).mul(target).sum_dim(1).neg().reshape([n]);
    let ce = w_t.mul(ce_i).mean();

    let total = ent
        .clone()
        .mul_scalar(weights.alpha)
        .add(kl.clone().mul_scalar(weights.beta))
        .add(ce.clone().mul_scalar(weights.gamma));
    DistillLoss { ent, kl, ce, total, sample_kl }
}
