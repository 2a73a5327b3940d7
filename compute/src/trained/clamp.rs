//! ReLU and Clip in training forwards, with their own backward: one pass each way where
//! burn's clamp compares and masks once per bound, allocating a mask and a tensor each time.
//! The gradients are burn's: ReLU passes it where `x > 0`, Clip where `min ≤ x ≤ max`.

use burn::Tensor;
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use rayon::prelude::*;

use super::{Trained, Values, flex_tensor, trained_values};

/// Values per parallel task.
const CHUNK: usize = 1 << 14;

/// Which values pass the gradient.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Clamp {
    /// `max(x, 0)`; the gradient passes where `x > 0`.
    Relu,
    /// `min(max(x, min), max)`; the gradient passes where `min ≤ x ≤ max`.
    Clip { min: f32, max: f32 },
}

impl Clamp {
    fn value(self, x: f32) -> f32 {
        match self {
            Clamp::Relu => x.max(0.0),
            Clamp::Clip { min, max } => x.max(min).min(max),
        }
    }

    fn passes(self, x: f32) -> bool {
        match self {
            Clamp::Relu => x > 0.0,
            Clamp::Clip { min, max } => min <= x && x <= max,
        }
    }
}

/// What the backward keeps: the input (shared with the forward, not copied).
#[derive(Debug, Clone)]
struct Saved {
    input: Values,
    clamp: Clamp,
    dims: [usize; 4],
}

#[derive(Debug)]
struct Clamped;

impl Backward<Flex, 1> for Clamped {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [input] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let Some(input) = input else { return };
        let Saved { input: x, clamp, dims } = ops.state;
        let g = Values::of(&grad).expect("the forward produced f32 values");
        let (g, x) = (g.as_slice(), x.as_slice());
        let mut dx = vec![0.0f32; g.len()];
        dx.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK).zip(x.par_chunks(CHUNK))).for_each(|(dx, (g, x))| {
            for ((dx, g), x) in dx.iter_mut().zip(g).zip(x) {
                *dx = if clamp.passes(*x) { *g } else { 0.0 };
            }
        });
        grads.register::<Flex>(input.id, flex_tensor(dx, dims));
    }
}

/// `clamp` of `x` (a `cpu_autodiff()` tensor), or `None` when it is not one: the caller uses
/// burn's operations.
pub(crate) fn clamp_trained(x: &Tensor<4>, clamp: Clamp) -> Option<Tensor<4>> {
    let (primitive, values) = trained_values(x)?;
    let dims = x.dims();
    let mut y = vec![0.0f32; values.as_slice().len()];
    y.par_chunks_mut(CHUNK).zip(values.as_slice().par_chunks(CHUNK)).for_each(|(y, x)| {
        for (y, x) in y.iter_mut().zip(x) {
            *y = clamp.value(*x);
        }
    });
    let output = flex_tensor(y, dims);
    let output = match Clamped.prepare::<NoCheckpointing>([primitive.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(Saved { input: values, clamp, dims }, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Some(Tensor::from_primitive::<Trained>(output))
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::relu;

    use super::*;
    use crate::{batch, cpu_autodiff, values};

    /// Output and input gradient equal burn's ReLU and clamps, values on the bounds included.
    #[test]
    fn clamps_and_their_gradients_match_burn() {
        let device = cpu_autodiff();
        let dims = [2, 3, 4, 5];
        let input: Vec<f32> = (0..120).map(|i| (i % 17) as f32 * 0.5 - 2.0).collect();
        let mix: Vec<f32> = (0..120).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let cases = [
            (Clamp::Relu, None),
            (Clamp::Clip { min: 0.0, max: 3.0 }, Some((Some(0.0), Some(3.0)))),
            (Clamp::Clip { min: -1.0, max: f32::INFINITY }, Some((Some(-1.0), None))),
            (Clamp::Clip { min: f32::NEG_INFINITY, max: 1.5 }, Some((None, Some(1.5)))),
        ];
        for (clamp, bounds) in cases {
            let x = batch(&input, dims, &device).require_grad();
            let ours = clamp_trained(&x, clamp).expect("applies");
            let x_burn = batch(&input, dims, &device).require_grad();
            let theirs = match bounds {
                None => relu(x_burn.clone()),
                Some((Some(lo), Some(hi))) => x_burn.clone().clamp(lo, hi),
                Some((Some(lo), None)) => x_burn.clone().clamp_min(lo),
                Some((None, Some(hi))) => x_burn.clone().clamp_max(hi),
                Some((None, None)) => x_burn.clone(),
            };
            assert_eq!(values(ours.clone()), values(theirs.clone()), "{clamp:?}: output");
            let grads = ours.mul(batch(&mix, dims, &device)).sum().backward();
            let grads_burn = theirs.mul(batch(&mix, dims, &device)).sum().backward();
            let grad = |t: &Tensor<4>, grads| values(t.grad(grads).expect("input gradient"));
            assert_eq!(grad(&x, &grads), grad(&x_burn, &grads_burn), "{clamp:?}: input gradient");
        }
    }
}
