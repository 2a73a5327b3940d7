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
use cema_core::NormLayer;

use crate::error::ShapeError;
use crate::ops::Value;

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
    let [gamma, beta, running_mean, running_var] = params.map(|p| p.reshape(shape));
    let eps = layer.epsilon;
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
