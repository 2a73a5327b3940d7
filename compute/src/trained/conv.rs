//! Stride-1 convolutions with frozen weights in training forwards (CEMA learns only
//! normalisation γ/β).
//!
//! With the weights frozen a convolution's backward needs only the gradient of its input, and
//! at stride 1 that is itself a stride-1 convolution: of the output's gradient, with the
//! weights' input and output channels swapped and both kernel axes reversed, and the padding
//! that makes the result the input's size (`dilation·(k − 1) − padding` per side). Both the
//! forward and that backward run as `shifted.rs`'s shifted-view products, registered with burn's
//! autodiff as one operation (burn's own convolution runs columns and a transposed convolution).
//! The operation keeps only the reversed weights for its backward, not the input.

use std::sync::Arc;

use burn::Tensor;
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};

use super::{Trained, Values, flex_tensor, trained_values};
use crate::error::ShapeError;
use crate::shifted::{Epilogue, Geometry, conv_stride1};

/// What the backward keeps: the input gradient's convolution.
#[derive(Debug, Clone)]
struct InputGradient {
    /// Weights `[C, Cout, kh, kw]`: the forward's with channels swapped and kernels reversed.
    weight: Arc<Vec<f32>>,
    /// Geometry of the convolution from the output's gradient to the input's.
    geometry: Geometry,
}

#[derive(Debug)]
struct FrozenWeightConv;

impl Backward<Flex, 1> for FrozenWeightConv {
    type State = InputGradient;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [input] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let Some(input) = input else { return };
        let g = ops.state.geometry;
        let values = Values::of(&grad).expect("the forward produced f32 values");
        let zeros = vec![0.0; g.out_channels];
        let epilogue = Epilogue { shift: &zeros, residual: None, relu: false };
        // The geometry was derived and checked from the forward's own, so it cannot fail here.
        let (dx, [h, w]) = conv_stride1(values.as_slice(), Arc::unwrap_or_clone(ops.state.weight), epilogue, &g)
            .expect("the input gradient's geometry");
        let dims = [g.batch, g.out_channels, h, w];
        grads.register::<Flex>(input.id, flex_tensor(dx, dims));
    }
}

/// The convolution of `x` (a `cpu_autodiff()` tensor, gradients wanted) with frozen `weight`
/// `[Cout, C, kh, kw]` plus `bias`, at stride 1. `None` when it does not apply (another backend,
/// non-f32 values, or a padding beyond `dilation·(k − 1)`, whose input gradient would need
/// cropping): the caller uses burn's convolution.
pub(crate) fn conv_frozen_weight(
    x: &Tensor<4>,
    weight: Vec<f32>,
    bias: &[f32],
    g: &Geometry,
) -> Result<Option<Tensor<4>>, ShapeError> {
    let reach = |axis: usize| g.dilation[axis] * (g.kernel[axis].max(1) - 1);
    let complement = |axis: usize| {
        let (begin, end) = g.padding[axis];
        Some((reach(axis).checked_sub(begin)?, reach(axis).checked_sub(end)?))
    };
    let (Some(rows), Some(columns)) = (complement(0), complement(1)) else { return Ok(None) };
    let Some((x, values)) = trained_values(x) else { return Ok(None) };
    let forward = |weight: Vec<f32>| {
        let epilogue = Epilogue { shift: bias, residual: None, relu: false };
        let (y, [out_h, out_w]) = conv_stride1(values.as_slice(), weight, epilogue, g)?;
        Ok::<_, ShapeError>((flex_tensor(y, [g.batch, g.out_channels, out_h, out_w]), [out_h, out_w]))
    };
    let output = match FrozenWeightConv.prepare::<NoCheckpointing>([x.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            // Reversed before the forward takes the weights; only a tracked input needs them.
            let reversed = Arc::new(reversed_transpose(&weight, g));
            let (output, size) = forward(weight)?;
            let geometry = Geometry {
                batch: g.batch,
                channels: g.out_channels,
                size,
                out_channels: g.channels,
                kernel: g.kernel,
                padding: [rows, columns],
                dilation: g.dilation,
            };
            prep.finish(InputGradient { weight: reversed, geometry }, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(weight)?.0),
    };
    Ok(Some(Tensor::from_primitive::<Trained>(output)))
}

/// `[Cout, C, kh, kw]` weights as `[C, Cout, kh, kw]` with both kernel axes reversed.
fn reversed_transpose(weight: &[f32], g: &Geometry) -> Vec<f32> {
    let (cout, c) = (g.out_channels, g.channels);
    let [kh, kw] = g.kernel;
    let mut out = vec![0.0; weight.len()];
    for o in 0..cout {
        for i in 0..c {
            for y in 0..kh {
                for x in 0..kw {
                    out[((i * cout + o) * kh + kh - 1 - y) * kw + kw - 1 - x] = weight[((o * c + i) * kh + y) * kw + x];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use cema_core::onnx::generate::SplitMix64;

    use burn::tensor::TensorData;

    use super::*;
    use crate::{batch, cpu_autodiff, values};

    /// Output and input gradient equal burn's convolution's for paddings (uneven too, and none),
    /// dilations and kernels from 1×1 to 5×5; an input without gradient gives the same output.
    #[test]
    fn frozen_weight_convolution_and_its_input_gradient_match_burn() {
        let device = cpu_autodiff();
        let cases = [
            ([3, 3], [(1, 1), (1, 1)], [1, 1]),
            ([1, 1], [(0, 0), (0, 0)], [1, 1]),
            ([3, 2], [(0, 1), (1, 0)], [1, 1]),
            ([3, 3], [(2, 2), (0, 1)], [2, 2]),
            ([5, 5], [(0, 0), (0, 0)], [1, 1]),
        ];
        for (case, (kernel, padding, dilation)) in cases.into_iter().enumerate() {
            let mut rng = SplitMix64::new(40 + case as u64);
            let (n, c, h, w, cout) = (2, 3, 10, 9, 4);
            let input = rng.vec(n * c * h * w, -1.0, 1.0);
            let weight = rng.vec(cout * c * kernel[0] * kernel[1], -1.0, 1.0);
            let bias = rng.vec(cout, -1.0, 1.0);
            let g = Geometry { batch: n, channels: c, size: [h, w], out_channels: cout, kernel, padding, dilation };
            let x = batch(&input, [n, c, h, w], &device).require_grad();
            let ours = conv_frozen_weight(&x, weight.clone(), &bias, &g).expect("geometry").expect("applies");

            let x_burn = batch(&input, [n, c, h, w], &device).require_grad();
            let options = ConvOptions::new_with_padding([1, 1], padding, dilation, 1);
            let bias_t = Tensor::<1>::from_data(TensorData::new(bias.clone(), [cout]), &device);
            let weight_t = batch(&weight, [cout, c, kernel[0], kernel[1]], &device);
            let theirs = conv2d(x_burn.clone(), weight_t, Some(bias_t), options);
            assert_eq!(ours.dims(), theirs.dims(), "case {case}");

            let dims = theirs.dims();
            let mix = batch(&rng.vec(dims.iter().product(), -1.0, 1.0), dims, &device);
            let grads = ours.clone().mul(mix.clone()).sum().backward();
            let grads_burn = theirs.clone().mul(mix).sum().backward();
            let close = |a: Vec<f32>, b: Vec<f32>, what: &str| {
                assert_eq!(a.len(), b.len(), "case {case}, {what}");
                for (a, b) in a.iter().zip(&b) {
                    assert!((a - b).abs() <= 1e-4, "case {case}, {what}: {a} vs {b}");
                }
            };
            close(values(ours), values(theirs.clone()), "output");
            let grad = |t: &Tensor<4>, grads| values(t.grad(grads).expect("input gradient"));
            close(grad(&x, &grads), grad(&x_burn, &grads_burn), "input gradient");

            let constant = batch(&input, [n, c, h, w], &device);
            let untracked =
                conv_frozen_weight(&constant, weight.clone(), &bias, &g).expect("geometry").expect("applies");
            close(values(untracked), values(theirs), "output of an input without gradient");
        }
    }

    /// A padding wider than the dilated kernel's reach is left to burn's convolution.
    #[test]
    fn padding_beyond_the_kernel_is_declined() {
        let device = cpu_autodiff();
        let g = Geometry {
            batch: 1,
            channels: 1,
            size: [4, 4],
            out_channels: 1,
            kernel: [3, 3],
            padding: [(3, 1), (1, 1)],
            dilation: [1, 1],
        };
        let x = batch(&[0.5; 16], [1, 1, 4, 4], &device).require_grad();
        assert!(conv_frozen_weight(&x, vec![1.0; 9], &[0.0], &g).expect("geometry").is_none());
    }
}
