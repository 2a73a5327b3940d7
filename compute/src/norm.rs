//! Normalisation modes of BatchNormalization layers (see `cema-spec.md`).
//!
//! - `Inference`: running statistics, `y = γ·(x − μ_r)/√(σ²_r + ε) + β`.
//! - `Tbr` (CEMA's test-time batch renormalisation): per channel over every other axis,
//!   `μ_b`, unbiased `σ²_b`, `s_b = √(σ²_b + ε)`, `s_r = √(σ²_r + ε)`,
//!   `r = sg(s_b)/s_r`, `d = (sg(μ_b) − μ_r)/s_r`, `x̂ = (x − μ_b)/s_b`, `y = γ·(r·x̂ + d) + β`.
//!   In value this equals `Inference`; gradients flow through the batch statistics. The
//!   running statistics are updated after use, by [`crate::Graph::update_running_stats`].
//! - `TbrFirstBatch`: TBR in a layer that has no running statistics yet (CEMA's
//!   `stats_init = first_batch`): they are taken from this batch, so `r = 1`, `d = 0` and
//!   `y = γ·(x − μ_b)/s_b + β` with the unbiased `σ²_b`. Each layer's input depends on the
//!   earlier layers normalised this way. The caller then makes the measured statistics the
//!   running ones ([`crate::Graph::set_running_stats`]); a momentum update would leave them
//!   unchanged. See `docs/algorithm.md`, "First-batch statistics".
//! - `Batch`: the batch's own statistics with biased variance (Tent, and PyTorch's training
//!   mode). The measured statistics are returned; Tent discards them, pretraining applies them
//!   to the running statistics as PyTorch does (with the unbiased variance).

use burn::Tensor;
use burn::tensor::TensorData;
use cema_core::NormLayer;

use crate::error::ShapeError;
use crate::ops::Value;
use crate::trained::{Variance, normalise_trained};

/// How normalisation layers compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormMode {
    /// Running statistics.
    Inference,
    /// Test-time batch renormalisation (CEMA).
    Tbr,
    /// TBR whose running statistics are this batch's own (`r = 1`, `d = 0`): the first
    /// batch under `stats_init = first_batch`.
    TbrFirstBatch,
    /// Batch statistics, biased variance (Tent; PyTorch's training mode).
    Batch,
}

/// Statistics a training-mode forward pass measured in one layer (detached), shaped like the
/// layer's running statistics.
#[derive(Debug, Clone)]
pub struct BatchStats {
    /// Per-channel batch mean.
    pub mean: Tensor<4>,
    /// Per-channel unbiased batch variance.
    pub var: Tensor<4>,
}

/// Applies one normalisation layer. `params` are γ, β, μ_r, σ²_r as stored (`[1, 1, 1, C]`).
pub(crate) fn normalise(
    x: &Value,
    params: [Tensor<4>; 4],
    layer: &NormLayer,
    mode: NormMode,
) -> Result<(Value, Option<BatchStats>), ShapeError> {
    let channels = layer.channels;
    let (axis, shape) = match x.rank {
        4 => (1, [1, channels, 1, 1]),
        2 => (3, [1, 1, 1, channels]),
        r => return Err(ShapeError::Rank { what: "normalisation input", expected: "2 or 4", actual: r }),
    };
    let dims = x.t.dims();
    if dims[axis] != channels {
        return Err(ShapeError::Channels { expected: channels, actual: dims[axis] });
    }
    let eps = layer.epsilon;
    if x.rank == 4 && mode != NormMode::Inference {
        let [gamma, beta, running_mean, running_var] = &params;
        let running = (mode == NormMode::Tbr).then_some([running_mean, running_var]);
        let variance = if mode == NormMode::Batch { Variance::Biased } else { Variance::Unbiased };
        if let Some(measured) = normalise_trained(&x.t, [gamma, beta], running, eps, variance)? {
            let device = x.t.device();
            let per_channel = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, shape), &device);
            let stats = BatchStats { mean: per_channel(measured.mean), var: per_channel(measured.var) };
            return Ok((Value { t: measured.output, rank: 4 }, Some(stats)));
        }
    }
    composed(x, params, layer, mode, shape)
}

/// [`normalise`] as a composition of burn's operations, which differentiate on their own:
/// rank-2 inputs, inference mode, and tensors of other backends.
fn composed(
    x: &Value,
    params: [Tensor<4>; 4],
    layer: &NormLayer,
    mode: NormMode,
    shape: [usize; 4],
) -> Result<(Value, Option<BatchStats>), ShapeError> {
    let channels = layer.channels;
    let dims = x.t.dims();
    let eps = layer.epsilon;
    let [gamma, beta, running_mean, running_var] = params.map(|p| p.reshape(shape));
    let running_std = running_var.add_scalar(eps).sqrt();
    // Every mode is `y = x̂·a + b` with per-channel `a`, `b`: two passes over the activations
    // instead of one per term of the formula, and the same function (and gradients) as written
    // in the module docs.
    let x_t = x.t.clone();
    let (y, stats) = match mode {
        NormMode::Inference => {
            let a = gamma.div(running_std);
            let b = beta.sub(running_mean.mul(a.clone()));
            (x_t.mul(a).add(b), None)
        }
        NormMode::Tbr | NormMode::TbrFirstBatch | NormMode::Batch => {
            let per_channel = dims.iter().product::<usize>() / channels;
            if per_channel < 2 {
                return Err(ShapeError::TooFewForStatistics);
            }
            let mean = channel_mean(x_t.clone(), x.rank);
            let centred = x_t.sub(mean.clone());
            let biased = channel_mean(centred.clone().square(), x.rank);
            let unbiased = biased.clone().mul_scalar(per_channel as f64 / (per_channel - 1) as f64);
            let stats = Some(BatchStats { mean: mean.clone().detach(), var: unbiased.clone().detach() });
            let y = match mode {
                NormMode::Batch => centred.mul(gamma.div(biased.add_scalar(eps).sqrt())).add(beta),
                NormMode::TbrFirstBatch => centred.mul(gamma.div(unbiased.add_scalar(eps).sqrt())).add(beta),
                _ => {
                    // γ·(r·(x − μ_b)/s_b + d) + β with r = sg(s_b)/s_r, d = (sg(μ_b) − μ_r)/s_r.
                    let batch_std = unbiased.add_scalar(eps).sqrt();
                    let r = batch_std.clone().detach().div(running_std.clone());
                    let d = mean.detach().sub(running_mean).div(running_std);
                    let a = gamma.clone().mul(r).div(batch_std);
                    centred.mul(a).add(gamma.mul(d).add(beta))
                }
            };
            (y, stats)
        }
    };
    Ok((Value { t: y, rank: x.rank }, stats))
}

/// Per-channel mean over every other axis: `[1, C, 1, 1]` of an `[N, C, H, W]` value, `[1, 1, 1, C]`
/// of an `[N, C]` one (stored `[1, 1, N, C]`).
fn channel_mean(t: Tensor<4>, rank: usize) -> Tensor<4> {
    if rank == 4 { t.mean_dim(0).mean_dim(2).mean_dim(3) } else { t.mean_dim(2) }
}

#[cfg(test)]
mod tests {
    use cema_core::onnx::generate::SplitMix64;

    use super::*;
    use crate::{batch, cpu_autodiff, values};

    /// In every batch-statistics mode the layer's own operation gives burn's composition:
    /// output, measured statistics, and the gradients of the input, γ and β.
    #[test]
    fn own_backward_matches_burns_composition() {
        let device = cpu_autodiff();
        let (n, c, h, w) = (3, 4, 5, 6);
        let mut rng = SplitMix64::new(7);
        let input = rng.vec(n * c * h * w, -2.0, 3.0);
        let params = [rng.vec(c, 0.5, 1.5), rng.vec(c, -0.5, 0.5), rng.vec(c, -0.5, 0.5), rng.vec(c, 0.5, 2.0)];
        let mix = rng.vec(n * c * h * w, -1.0, 1.0);
        let layer = NormLayer {
            node: "bn".into(),
            input: "x".into(),
            channels: c,
            epsilon: 1e-5,
            momentum: 0.9,
            scale: "s".into(),
            bias: "b".into(),
            mean: "m".into(),
            var: "v".into(),
        };
        for mode in [NormMode::Tbr, NormMode::TbrFirstBatch, NormMode::Batch] {
            let run = |own: bool| {
                let x = batch(&input, [n, c, h, w], &device).require_grad();
                let stored = |v: &Vec<f32>, grad: bool| {
                    let t = batch(v, [1, 1, 1, c], &device);
                    if grad { t.require_grad() } else { t }
                };
                let p = [
                    stored(&params[0], true),
                    stored(&params[1], true),
                    stored(&params[2], false),
                    stored(&params[3], false),
                ];
                let value = Value { t: x.clone(), rank: 4 };
                if own {
                    let running = (mode == NormMode::Tbr).then_some([&p[2], &p[3]]);
                    let variance = if mode == NormMode::Batch { Variance::Biased } else { Variance::Unbiased };
                    let applies = normalise_trained(&x, [&p[0], &p[1]], running, layer.epsilon, variance);
                    assert!(applies.expect("normalise").is_some(), "{mode:?}: the layer's own operation applies");
                }
                let (y, stats) = if own {
                    normalise(&value, p.clone(), &layer, mode)
                } else {
                    composed(&value, p.clone(), &layer, mode, [1, c, 1, 1])
                }
                .expect("normalise");
                let stats = stats.expect("statistics");
                let grads = y.t.clone().mul(batch(&mix, [n, c, h, w], &device)).sum().backward();
                let grad = |t: &Tensor<4>| values(t.grad(&grads).expect("gradient"));
                [values(y.t), values(stats.mean), values(stats.var), grad(&x), grad(&p[0]), grad(&p[1])]
            };
            let (own, theirs) = (run(true), run(false));
            let names = ["output", "mean", "variance", "input gradient", "γ gradient", "β gradient"];
            for ((a, b), name) in own.iter().zip(&theirs).zip(names) {
                assert_eq!(a.len(), b.len(), "{mode:?}: {name}");
                for (a, b) in a.iter().zip(b) {
                    assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{mode:?}: {name}: {a} vs {b}");
                }
            }
        }
    }
}
