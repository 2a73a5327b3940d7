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
    let x_t = x.t.clone();
    let (y, stats) = match mode {
        NormMode::Inference => (x_t.sub(running_mean).div(running_std).mul(gamma).add(beta), None),
        NormMode::Tbr | NormMode::TbrFirstBatch | NormMode::Batch => {
            let per_channel = dims.iter().product::<usize>() / channels;
            if per_channel < 2 {
                return Err(ShapeError::TooFewForStatistics);
            }
            let flat: Tensor<2> = x_t.clone().swap_dims(0, axis).reshape([channels, per_channel]);
            let mean = flat.clone().mean_dim(1).reshape(shape);
            if mode == NormMode::Batch {
                let unbiased = flat.var(1).reshape(shape);
                // One reduction serves both: biased = unbiased · (M − 1)/M.
                let var = unbiased.clone().mul_scalar((per_channel - 1) as f64 / per_channel as f64);
                let y = x_t.sub(mean.clone()).div(var.add_scalar(eps).sqrt()).mul(gamma).add(beta);
                (y, Some(BatchStats { mean: mean.detach(), var: unbiased.detach() }))
            } else if mode == NormMode::TbrFirstBatch {
                let var = flat.var(1).reshape(shape);
                let y = x_t.sub(mean.clone()).div(var.clone().add_scalar(eps).sqrt()).mul(gamma).add(beta);
                (y, Some(BatchStats { mean: mean.detach(), var: var.detach() }))
            } else {
                let var = flat.var(1).reshape(shape);
                let batch_std = var.clone().add_scalar(eps).sqrt();
                let r = batch_std.clone().detach().div(running_std.clone());
                let d = mean.clone().detach().sub(running_mean).div(running_std);
                let normalised = x_t.sub(mean.clone()).div(batch_std);
                let y = normalised.mul(r).add(d).mul(gamma).add(beta);
                (y, Some(BatchStats { mean: mean.detach(), var: var.detach() }))
            }
        }
    };
    Ok((Value { t: y, rank: x.rank }, stats))
}
