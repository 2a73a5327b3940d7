//! A normalisation layer over batch statistics in a training forward, with its own backward.
//!
//! Per channel, over the `M = N·H·W` values: `μ_b`, the variance `σ²_b` (unbiased for TBR,
//! biased for batch mode), `s_b = √(σ²_b + ε)`, `x̂ = (x − μ_b)/s_b` and
//! `y = γ·(r·x̂ + d) + β`, with TBR's `r = sg(s_b)/s_r`, `d = (sg(μ_b) − μ_r)/s_r`, or `r = 1`,
//! `d = 0` without running statistics (first-batch TBR, batch mode): `norm.rs`'s formulas.
//! Gradients, with `D` the variance's divisor (`M − 1` or `M`) and `g` the output's gradient:
//! `∂β = Σg`, `∂γ = r·Σg·x̂ + d·Σg`, and
//! `∂x = (γ·r/s_b)·(g − Σg/M − x̂·Σ(g·x̂)/D)` (the batch mean and `s_b` depend on every `x`).
//! Two passes forward (statistics, then `y` and `x̂`) and two backward (the two sums, then
//! `∂x`), where burn's composition of general operations takes about ten each way.

use std::sync::Arc;

use burn::Tensor;
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use rayon::prelude::*;

use super::{Trained, Values, flex_tensor, trained_values};
use crate::error::ShapeError;

/// The divisor of the batch variance that normalises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variance {
    /// `M − 1` (TBR).
    Unbiased,
    /// `M` (batch mode, as PyTorch's training mode).
    Biased,
}

/// What one layer's normalisation measured: per channel, the batch mean and unbiased variance.
#[derive(Debug)]
pub(crate) struct Measured {
    /// The normalised output.
    pub(crate) output: Tensor<4>,
    /// Per-channel batch mean.
    pub(crate) mean: Vec<f32>,
    /// Per-channel unbiased batch variance.
    pub(crate) var: Vec<f32>,
}

/// What the backward keeps.
#[derive(Debug, Clone)]
struct Saved {
    /// `x̂`, laid out as the input.
    normalised: Arc<Vec<f32>>,
    /// Per channel: `r`, `d` and `γ·r/s_b`.
    r: Vec<f32>,
    d: Vec<f32>,
    input_scale: Vec<f32>,
    /// `[N, C, H, W]` of the input; dims of γ and of β.
    dims: [usize; 4],
    gamma_dims: [usize; 4],
    beta_dims: [usize; 4],
    /// The variance's divisor `D`.
    divisor: f64,
}

#[derive(Debug)]
struct BatchNormalisation;

impl Backward<Flex, 3> for BatchNormalisation {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [input, gamma, beta] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let saved = ops.state;
        let g = Values::of(&grad).expect("the forward produced f32 values");
        let g = g.as_slice();
        let [n, c, h, w] = saved.dims;
        let plane = h * w;
        let count = (n * plane) as f64;
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                (0..n).fold((0.0, 0.0), |(sum, dot), image| {
                    let at = (image * c + ch) * plane;
                    let (g, x) = (&g[at..][..plane], &saved.normalised[at..][..plane]);
                    let dot_plane: f32 = g.iter().zip(x).map(|(g, x)| g * x).sum();
                    (sum + g.iter().sum::<f32>() as f64, dot + dot_plane as f64)
                })
            })
            .collect();
        if let Some(gamma) = gamma {
            let dg = sums
                .iter()
                .zip(saved.r.iter().zip(&saved.d))
                .map(|(&(s, p), (&r, &d))| (r as f64 * p + d as f64 * s) as f32);
            grads.register::<Flex>(gamma.id, flex_tensor(dg.collect(), saved.gamma_dims));
        }
        if let Some(beta) = beta {
            grads
                .register::<Flex>(beta.id, flex_tensor(sums.iter().map(|&(s, _)| s as f32).collect(), saved.beta_dims));
        }
        if let Some(input) = input {
            let mut dx = vec![0.0f32; g.len()];
            dx.par_chunks_mut(plane).enumerate().for_each(|(index, out)| {
                let ch = index % c;
                let (sum, dot) = sums[ch];
                let (mean_g, per_x) = ((sum / count) as f32, (dot / saved.divisor) as f32);
                let k = saved.input_scale[ch];
                let at = index * plane;
                let (g, x) = (&g[at..][..plane], &saved.normalised[at..][..plane]);
                for ((out, g), x) in out.iter_mut().zip(g).zip(x) {
                    *out = k * (g - mean_g - x * per_x);
                }
            });
            grads.register::<Flex>(input.id, flex_tensor(dx, saved.dims));
        }
    }
}

/// Normalises `x` `[N, C, H, W]` (a `cpu_autodiff()` tensor) over its batch statistics, with
/// TBR's correction towards `running` (mean, variance tensors) when given. `None` when it does not apply
/// (another backend, non-f32 values): the caller uses burn's operations.
pub(crate) fn normalise_trained(
    x: &Tensor<4>,
    [gamma, beta]: [&Tensor<4>; 2],
    running: Option<[&Tensor<4>; 2]>,
    epsilon: f32,
    variance: Variance,
) -> Result<Option<Measured>, ShapeError> {
    let dims = x.dims();
    let [n, c, h, w] = dims;
    let plane = h * w;
    let count = n * plane;
    if count < 2 {
        return Err(ShapeError::TooFewForStatistics);
    }
    let (Some((xp, xv)), Some((gp, gv)), Some((bp, bv))) =
        (trained_values(x), trained_values(gamma), trained_values(beta))
    else {
        return Ok(None);
    };
    let (xv, gv, bv) = (xv.as_slice(), gv.as_slice(), bv.as_slice());
    let running = match running {
        Some([mean, var]) => {
            let (Some((_, mean)), Some((_, var))) = (trained_values(mean), trained_values(var)) else {
                return Ok(None);
            };
            Some((mean, var))
        }
        None => None,
    };
    let running = running.as_ref().map(|(mean, var)| (mean.as_slice(), var.as_slice()));
    let running_len = running.map_or(c, |(m, v)| m.len().min(v.len()));
    if gv.len() != c || bv.len() != c || running_len != c {
        let actual = [gv.len(), bv.len(), running_len].into_iter().find(|&l| l != c).unwrap_or(c);
        return Err(ShapeError::Channels { expected: c, actual });
    }
    // Per channel: mean and sum of squared deviations, two passes for accuracy.
    let moments: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = || (0..n).map(move |image| &xv[(image * c + ch) * plane..][..plane]);
            let mean = planes().map(|p| p.iter().sum::<f32>() as f64).sum::<f64>() / count as f64;
            let m = mean as f32;
            let squares = planes().map(|p| p.iter().map(|v| (v - m) * (v - m)).sum::<f32>() as f64).sum::<f64>();
            (mean, squares)
        })
        .collect();
    let divisor = match variance {
        Variance::Unbiased => (count - 1) as f64,
        Variance::Biased => count as f64,
    };
    let mut mean = Vec::with_capacity(c);
    let mut unbiased = Vec::with_capacity(c);
    let (mut inv_std, mut r, mut d, mut scale, mut shift) = (vec![], vec![], vec![], vec![], vec![]);
    for (ch, &(m, squares)) in moments.iter().enumerate() {
        let batch_std = (squares / divisor + epsilon as f64).sqrt();
        let (rc, dc) = match running {
            Some((running_mean, running_var)) => {
                let running_std = (running_var[ch] as f64 + epsilon as f64).sqrt();
                (batch_std / running_std, (m - running_mean[ch] as f64) / running_std)
            }
            None => (1.0, 0.0),
        };
        let gamma = gv[ch] as f64;
        mean.push(m as f32);
        unbiased.push((squares / (count - 1) as f64) as f32);
        inv_std.push((1.0 / batch_std) as f32);
        r.push(rc as f32);
        d.push(dc as f32);
        scale.push((gamma * rc / batch_std) as f32);
        shift.push((gamma * dc + bv[ch] as f64) as f32);
    }
    let mut y = vec![0.0f32; xv.len()];
    let mut normalised = vec![0.0f32; xv.len()];
    y.par_chunks_mut(plane).zip(normalised.par_chunks_mut(plane)).enumerate().for_each(|(index, (y, xhat))| {
        let ch = index % c;
        let (m, inv, a, b) = (mean[ch], inv_std[ch], scale[ch], shift[ch]);
        for ((y, xhat), x) in y.iter_mut().zip(xhat).zip(&xv[index * plane..][..plane]) {
            let centred = x - m;
            *xhat = centred * inv;
            *y = centred * a + b;
        }
    });
    let output = flex_tensor(y, dims);
    let prepared =
        BatchNormalisation.prepare::<NoCheckpointing>([xp.node(), gp.node(), bp.node()]).compute_bound().stateful();
    let output = match prepared {
        OpsKind::Tracked(prep) => {
            let saved = Saved {
                normalised: Arc::new(normalised),
                r,
                d,
                input_scale: scale,
                dims,
                gamma_dims: gamma.dims(),
                beta_dims: beta.dims(),
                divisor,
            };
            prep.finish(saved, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Ok(Some(Measured { output: Tensor::from_primitive::<Trained>(output), mean, var: unbiased }))
}
