//! Values and the operator table of the executor.
//!
//! Every value is held as a rank-4 burn tensor with its logical rank: a tensor of logical
//! shape `[a, b]` is stored as `[1, 1, a, b]`. Left-padding with ones is exactly numpy's
//! broadcasting rule, so elementwise operators broadcast as ONNX requires, and matrix products
//! of rank-2 values become batched products of one matrix.

use burn::Tensor;
use burn::tensor::TensorData;
use burn::tensor::activation;
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions, PadMode};
use rayon::prelude::*;

use crate::error::ShapeError;
use crate::plan::{Op, Window};
use crate::shifted::{Epilogue, Geometry, conv_stride1};
use crate::trained::{Clamp, clamp_trained, conv_frozen_weight};

/// Highest rank a value may have.
pub(crate) const MAX_RANK: usize = 4;

/// A value: a rank-4 burn tensor and the rank it logically has.
#[derive(Debug, Clone)]
pub(crate) struct Value {
    pub(crate) t: Tensor<4>,
    pub(crate) rank: usize,
}

impl Value {
    /// The logical dims.
    pub(crate) fn dims(&self) -> Vec<usize> {
        self.t.dims()[MAX_RANK - self.rank..].to_vec()
    }

    pub(crate) fn from_logical(t: Tensor<4>, dims: &[usize]) -> Result<Self, ShapeError> {
        if dims.len() > MAX_RANK {
            return Err(ShapeError::RankTooHigh(dims.len()));
        }
        let mut physical = [1usize; MAX_RANK];
        physical[MAX_RANK - dims.len()..].copy_from_slice(dims);
        Ok(Value { t: t.reshape(physical), rank: dims.len() })
    }

    /// Physical axis of a logical (possibly negative) axis.
    fn axis(&self, axis: i64) -> Result<usize, ShapeError> {
        let rank = self.rank as i64;
        let logical = if axis < 0 { axis + rank } else { axis };
        if !(0..rank).contains(&logical) {
            return Err(ShapeError::Axis { axis, rank: self.rank });
        }
        Ok(MAX_RANK - self.rank + logical as usize)
    }
}

/// `ReduceMean`/`ReduceSum` over logical `axes` (all when empty), keeping or dropping them.
fn reduce(v: Value, mean: bool, axes: &[i64], keepdims: bool) -> Result<Value, ShapeError> {
    let mut physical: Vec<usize> = if axes.is_empty() {
        (MAX_RANK - v.rank..MAX_RANK).collect()
    } else {
        axes.iter().map(|&a| v.axis(a)).collect::<Result<_, _>>()?
    };
    physical.sort_unstable();
    physical.dedup();
    let kept: Vec<usize> = v
        .dims()
        .iter()
        .enumerate()
        .filter(|(i, _)| !physical.contains(&(MAX_RANK - v.rank + i)))
        .map(|(_, &d)| d)
        .collect();
    let rank = v.rank;
    let mut t = v.t;
    for &axis in &physical {
        t = if mean { t.mean_dim(axis) } else { t.sum_dim(axis) };
    }
    if keepdims { Ok(Value { t, rank }) } else { Value::from_logical(t, &kept) }
}

fn conv_options(window: &Window, groups: usize) -> ConvOptions<2> {
    ConvOptions::new_with_padding(window.stride, window.padding, window.dilation, groups)
}

/// The first input.
fn first(args: &[Value]) -> Result<Value, ShapeError> {
    args.first().cloned().ok_or(ShapeError::MissingInput("input"))
}

/// The first input as `[N, C, H, W]`.
fn first_rank4(args: &[Value]) -> Result<Tensor<4>, ShapeError> {
    let v = first(args)?;
    if v.rank == 4 {
        Ok(v.t)
    } else {
        Err(ShapeError::Rank { what: "input", expected: "4 [N, C, H, W]", actual: v.rank })
    }
}

/// Exactly two inputs.
fn two(args: Vec<Value>) -> Result<[Value; 2], ShapeError> {
    <[Value; 2]>::try_from(args).map_err(|args| ShapeError::InputCount { expected: 2, actual: args.len() })
}

/// Whether an operator may read its inputs' values (a graph without autodiff), or must stay
/// on burn's recorded operations so gradients flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tape {
    /// Nothing is learnt from this forward pass.
    Off,
    /// Gradients may be asked for.
    On,
}

/// Runs one operator (normalisation is the graph's, `norm.rs`).
pub(crate) fn apply(op: &Op, args: Vec<Value>, tape: Tape) -> Result<Value, ShapeError> {
    match op {
        Op::Relu | Op::Sigmoid | Op::HardSigmoid { .. } | Op::Clip { .. } | Op::Identity => {
            let v = first(&args)?;
            let clamp = match op {
                Op::Relu => Some(Clamp::Relu),
                Op::Clip { min, max } => {
                    Some(Clamp::Clip { min: min.unwrap_or(f32::NEG_INFINITY), max: max.unwrap_or(f32::INFINITY) })
                }
                _ => None,
            };
            if let (Tape::On, Some(clamp)) = (tape, clamp)
                && let Some(t) = clamp_trained(&v.t, clamp)
            {
                return Ok(Value { t, rank: v.rank });
            }
            Ok(Value { t: activation_of(op, v.t), rank: v.rank })
        }
        Op::Add | Op::Sub | Op::Mul | Op::Div => {
            let [a, b] = two(args)?;
            let rank = a.rank.max(b.rank);
            let t = match op {
                Op::Add => a.t.add(b.t),
                Op::Sub => a.t.sub(b.t),
                Op::Mul => a.t.mul(b.t),
                _ => a.t.div(b.t),
            };
            Ok(Value { t, rank })
        }
        Op::Conv { .. } | Op::MaxPool { .. } | Op::AvgPool { .. } | Op::GlobalAvgPool => spatial(op, args, tape),
        Op::Gemm { .. } | Op::MatMul => matrix(op, args),
        Op::Flatten { .. } | Op::Reshape { .. } | Op::Pad { .. } | Op::Concat { .. } => layout(op, args),
        Op::Reduce { mean, axes, keepdims } => reduce(first(&args)?, *mean, axes, *keepdims),
        Op::Softmax { axis, legacy } => {
            let v = first(&args)?;
            let physical = v.axis(*axis)?;
            if *legacy && physical != MAX_RANK - 1 {
                return Err(ShapeError::Unsupported("opset < 13 softmax over several trailing axes"));
            }
            Ok(Value { t: activation::softmax(v.t, physical), rank: v.rank })
        }
        Op::BatchNorm { .. } => unreachable!("handled by the caller"),
    }
}

/// Elementwise activations (and Identity).
fn activation_of(op: &Op, t: Tensor<4>) -> Tensor<4> {
    match op {
        Op::Relu => activation::relu(t),
        Op::Sigmoid => activation::sigmoid(t),
        Op::HardSigmoid { alpha, beta } => t.mul_scalar(*alpha).add_scalar(*beta).clamp(0.0, 1.0),
        Op::Clip { min: Some(lo), max: Some(hi) } => t.clamp(*lo, *hi),
        Op::Clip { min: Some(lo), max: None } => t.clamp_min(*lo),
        Op::Clip { min: None, max: Some(hi) } => t.clamp_max(*hi),
        _ => t,
    }
}

/// Convolution and pooling over `[N, C, H, W]`.
fn spatial(op: &Op, args: Vec<Value>, tape: Tape) -> Result<Value, ShapeError> {
    if let Op::Conv { window, groups: 1 } = op
        && window.stride == [1, 1]
    {
        match tape {
            Tape::Off => return conv_shifted(args, window, None, None),
            Tape::On => {
                if let Some(t) = conv_frozen_weights(&args, window)? {
                    return Ok(Value { t, rank: 4 });
                }
            }
        }
    }
    let x = first_rank4(&args)?;
    let t = match op {
        Op::Conv { window, groups } => {
            let weight = args.get(1).ok_or(ShapeError::MissingInput("weight"))?;
            if weight.rank != 4 {
                return Err(ShapeError::Rank { what: "2-D convolution weight", expected: "4", actual: weight.rank });
            }
            let bias = args.get(2).map(|b| {
                let channels = b.dims().iter().product::<usize>();
                b.t.clone().reshape([channels])
            });
            // burn's im2col writes element by element; rows copied as slices make the frozen
            // forward (teacher logits, evaluation) faster. 1×1 and grouped convolutions have
            // burn's own direct paths.
            let fits = |axis: usize| {
                let (begin, end) = window.padding[axis];
                x.dims()[2 + axis] + begin + end > window.dilation[axis] * (window.kernel[axis] - 1)
            };
            if tape == Tape::Off && *groups == 1 && window.kernel != [1, 1] && fits(0) && fits(1) {
                conv_by_columns(x, weight.t.clone(), bias, window)
            } else {
                conv2d(x, weight.t.clone(), bias, conv_options(window, *groups))
            }
        }
        Op::MaxPool { window, ceil } => {
            let mut options = MaxPoolOptions::new(window.kernel);
            options.stride = window.stride;
            options.padding = window.padding;
            options.dilation = window.dilation;
            options.ceil_mode = *ceil;
            max_pool2d(x, options)
        }
        Op::AvgPool { window, ceil, count_include_pad } => {
            let mut options = AvgPoolOptions::new(window.kernel);
            options.stride = window.stride;
            options.padding = window.padding;
            options.ceil_mode = *ceil;
            options.count_include_pad = *count_include_pad;
            avg_pool2d(x, options)
        }
        _ => x.mean_dim(2).mean_dim(3),
    };
    Ok(Value { t, rank: 4 })
}

/// Gemm and MatMul.
fn matrix(op: &Op, args: Vec<Value>) -> Result<Value, ShapeError> {
    let Op::Gemm { alpha, beta, trans_a, trans_b } = op else {
        let [a, b] = two(args)?;
        if a.rank < 2 || b.rank < 2 {
            return Err(ShapeError::Unsupported("MatMul of vectors"));
        }
        let rank = a.rank.max(b.rank);
        return Ok(Value { t: a.t.matmul(b.t), rank });
    };
    let a = args.first().ok_or(ShapeError::MissingInput("A"))?;
    let b = args.get(1).ok_or(ShapeError::MissingInput("B"))?;
    for operand in [a, b] {
        if operand.rank != 2 {
            return Err(ShapeError::Rank { what: "Gemm operand", expected: "2", actual: operand.rank });
        }
    }
    let ta = if *trans_a { a.t.clone().swap_dims(2, 3) } else { a.t.clone() };
    let tb = if *trans_b { b.t.clone().swap_dims(2, 3) } else { b.t.clone() };
    let mut y = ta.matmul(tb);
    if *alpha != 1.0 {
        y = y.mul_scalar(*alpha);
    }
    if let Some(c) = args.get(2) {
        y = y.add(if *beta != 1.0 { c.t.clone().mul_scalar(*beta) } else { c.t.clone() });
    }
    Ok(Value { t: y, rank: 2 })
}

/// Operators that move values between shapes: Flatten, Reshape, Pad, Concat.
fn layout(op: &Op, args: Vec<Value>) -> Result<Value, ShapeError> {
    match op {
        Op::Flatten { axis } => {
            let v = first(&args)?;
            let dims = v.dims();
            let axis = if *axis < 0 { *axis + v.rank as i64 } else { *axis } as usize;
            if axis > dims.len() {
                return Err(ShapeError::Axis { axis: axis as i64, rank: dims.len() });
            }
            let (head, tail) = dims.split_at(axis);
            Value::from_logical(v.t, &[head.iter().product(), tail.iter().product()])
        }
        Op::Reshape { shape } => {
            let v = first(&args)?;
            let target = reshape_target(&v.dims(), shape)?;
            Value::from_logical(v.t, &target)
        }
        Op::Pad { pads, value } => {
            let v = first(&args)?;
            if pads.len() != 2 * v.rank {
                return Err(ShapeError::Pads { pads: pads.len(), rank: v.rank });
            }
            let mut pairs = [(0usize, 0usize); MAX_RANK];
            for axis in 0..v.rank {
                pairs[MAX_RANK - v.rank + axis] = (pads[axis] as usize, pads[axis + v.rank] as usize);
            }
            Ok(Value { t: v.t.pad(pairs, PadMode::Constant(*value)), rank: v.rank })
        }
        Op::Concat { axis } => {
            let first = args.first().ok_or(ShapeError::MissingInput("input"))?;
            let physical = first.axis(*axis)?;
            let rank = first.rank;
            Ok(Value { t: Tensor::cat(args.into_iter().map(|v| v.t).collect(), physical), rank })
        }
        _ => unreachable!("layout is called for layout operators only"),
    }
}

/// ONNX Reshape's target dims: 0 copies the input's dim, one −1 is inferred.
fn reshape_target(dims: &[usize], shape: &[i64]) -> Result<Vec<usize>, ShapeError> {
    let total: usize = dims.iter().product();
    let impossible = || ShapeError::Reshape { dims: dims.to_vec(), shape: shape.to_vec() };
    let mut target: Vec<usize> = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &d) in shape.iter().enumerate() {
        match d {
            0 => target.push(*dims.get(i).ok_or_else(impossible)?),
            -1 if infer.is_none() => {
                infer = Some(i);
                target.push(1);
            }
            d if d > 0 => target.push(d as usize),
            _ => return Err(impossible()),
        }
    }
    if let Some(i) = infer {
        let known: usize = target.iter().product();
        if known == 0 || !total.is_multiple_of(known) {
            return Err(impossible());
        }
        target[i] = total / known;
    }
    if target.iter().product::<usize>() != total {
        return Err(impossible());
    }
    Ok(target)
}

/// A tensor's values, for the paths that compute outside burn.
pub(crate) fn f32_values(t: &Tensor<4>) -> Result<Vec<f32>, ShapeError> {
    into_f32_values(t.clone())
}

/// A tensor's values, without a copy when nothing else holds them.
fn into_f32_values(t: Tensor<4>) -> Result<Vec<f32>, ShapeError> {
    t.into_data().try_into_vec::<f32>().map_err(|_| ShapeError::Unsupported("values that are not f32"))
}

/// What a frozen inference forward folds into the stride-1 convolution before it: the
/// normalisation layer that alone reads the convolution (per output channel, `scale`
/// multiplies the weights and `shift` is added) and the ReLU that alone reads that.
#[derive(Debug, Clone)]
pub(crate) struct Folded {
    pub(crate) scale: Vec<f32>,
    pub(crate) shift: Vec<f32>,
    pub(crate) relu: bool,
}

/// A stride-1 convolution's operands as values: the input, the weights, the bias (zeros when
/// absent) and the geometry.
struct Stride1 {
    x: Tensor<4>,
    weights: Vec<f32>,
    shift: Vec<f32>,
    geometry: Geometry,
}

impl Stride1 {
    fn of(args: &[Value], window: &Window) -> Result<Self, ShapeError> {
        let x = first_rank4(args)?;
        let weight = args.get(1).ok_or(ShapeError::MissingInput("weight"))?;
        let [n, c, h, w] = x.dims();
        let [cout, cin, kh, kw] = match weight.dims()[..] {
            [a, b, c, d] if weight.rank == 4 => [a, b, c, d],
            _ => return Err(ShapeError::Rank { what: "2-D convolution weight", expected: "4", actual: weight.rank }),
        };
        if cin != c {
            return Err(ShapeError::Channels { expected: cin, actual: c });
        }
        let weights = f32_values(&weight.t)?;
        let shift = match args.get(2) {
            Some(bias) => f32_values(&bias.t)?,
            None => vec![0.0; cout],
        };
        if shift.len() != cout {
            return Err(ShapeError::Channels { expected: cout, actual: shift.len() });
        }
        let geometry = Geometry {
            batch: n,
            channels: c,
            size: [h, w],
            out_channels: cout,
            kernel: [kh, kw],
            padding: window.padding,
            dilation: window.dilation,
        };
        Ok(Self { x, weights, shift, geometry })
    }
}

/// A stride-1, ungrouped convolution of a graph without autodiff (`shifted.rs`), with what
/// follows it folded in: a normalisation layer and ReLU, and a residual added before the ReLU.
pub(crate) fn conv_shifted(
    mut args: Vec<Value>,
    window: &Window,
    folded: Option<Folded>,
    residual: Option<Value>,
) -> Result<Value, ShapeError> {
    let Stride1 { x, mut weights, mut shift, geometry: g } = Stride1::of(&args, window)?;
    // The input is now held once when no other step reads it, so its values are not copied.
    args.clear();
    let relu = folded.as_ref().is_some_and(|f| f.relu);
    if let Some(folded) = folded {
        if folded.scale.len() != g.out_channels || folded.shift.len() != g.out_channels {
            return Err(ShapeError::Channels { expected: g.out_channels, actual: folded.scale.len() });
        }
        let filter_len = g.channels * g.kernel[0] * g.kernel[1];
        for ((filter, bias), (scale, add)) in
            weights.chunks_exact_mut(filter_len).zip(shift.iter_mut()).zip(folded.scale.iter().zip(&folded.shift))
        {
            filter.iter_mut().for_each(|v| *v *= scale);
            *bias = *bias * scale + add;
        }
    }
    let output = g.output().map(|[h, w]| [g.batch, g.out_channels, h, w]);
    // A residual of another shape (a broadcast sum) is added by burn after the convolution.
    let (residual, late) = match residual {
        Some(r) if r.rank == 4 && Some(r.t.dims()) == output => (Some(into_f32_values(r.t)?), None),
        other => (None, other),
    };
    let epilogue = Epilogue { shift: &shift, residual: residual.as_deref(), relu: relu && late.is_none() };
    let device = x.device();
    let (y, [out_h, out_w]) = conv_stride1(&into_f32_values(x)?, weights, epilogue, &g)?;
    let dims = [g.batch, g.out_channels, out_h, out_w];
    let mut out = Value { t: Tensor::from_data(TensorData::new(y, dims), &device), rank: 4 };
    if let Some(r) = late {
        out = apply(&Op::Add, vec![out, r], Tape::Off)?;
        if relu {
            out = apply(&Op::Relu, vec![out], Tape::Off)?;
        }
    }
    Ok(out)
}

/// A stride-1, ungrouped convolution in a training forward whose weights and bias learn
/// nothing (`trained_conv.rs`); `None` where burn's convolution must run instead.
fn conv_frozen_weights(args: &[Value], window: &Window) -> Result<Option<Tensor<4>>, ShapeError> {
    if args.iter().skip(1).any(|operand| operand.t.is_tracked()) {
        return Ok(None);
    }
    let Stride1 { x, weights, shift, geometry } = Stride1::of(args, window)?;
    conv_frozen_weight(&x, weights, &shift, &geometry)
}

/// A convolution as one matrix product over columns built from the input's rows:
/// `[N, C·kh·kw, H'·W']` times the weight `[Cout, C·kh·kw]`. Reads the input's values, so no
/// gradient flows through it: for graphs without autodiff.
fn conv_by_columns(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>, window: &Window) -> Tensor<4> {
    let device = x.device();
    let [n, c, h, w] = x.dims();
    let [cout, _, kh, kw] = weight.dims();
    let [(top, bottom), (left, right)] = window.padding;
    let [sh, sw] = window.stride;
    let [dh, dw] = window.dilation;
    let out_h = (h + top + bottom - dh * (kh - 1) - 1) / sh + 1;
    let out_w = (w + left + right - dw * (kw - 1) - 1) / sw + 1;
    let input = match x.clone().into_data().try_into_vec::<f32>() {
        Ok(input) => input,
        Err(_) => return conv2d(x, weight, bias, conv_options(window, 1)),
    };
    let rows = c * kh * kw;
    let plane = out_h * out_w;
    let mut columns = vec![0.0f32; n * rows * plane];
    columns.par_chunks_mut(rows * plane).enumerate().for_each(|(image, cols)| {
        for ch in 0..c {
            let src = &input[(image * c + ch) * h * w..][..h * w];
            for i in 0..kh {
                for j in 0..kw {
                    let row = &mut cols[((ch * kh + i) * kw + j) * plane..][..plane];
                    let shift_x = (j * dw) as isize - left as isize;
                    // Output columns whose input column lies inside the image.
                    let first = (0..out_w).find(|&ox| (ox * sw) as isize + shift_x >= 0).unwrap_or(out_w);
                    let last =
                        (0..out_w).rev().find(|&ox| ((ox * sw) as isize + shift_x) < w as isize).map_or(0, |v| v + 1);
                    for oy in 0..out_h {
                        let iy = (oy * sh + i * dh) as isize - top as isize;
                        if iy < 0 || iy >= h as isize || first >= last {
                            continue;
                        }
                        let src_row = &src[iy as usize * w..][..w];
                        let dst = &mut row[oy * out_w..][..out_w];
                        let start = ((first * sw) as isize + shift_x) as usize;
                        if sw == 1 {
                            dst[first..last].copy_from_slice(&src_row[start..start + last - first]);
                        } else {
                            for (k, v) in dst[first..last].iter_mut().enumerate() {
                                *v = src_row[start + k * sw];
                            }
                        }
                    }
                }
            }
        }
    });
    let columns: Tensor<3> = Tensor::from_data(TensorData::new(columns, [n, rows, plane]), &device);
    let kernel: Tensor<3> = weight.reshape([1, cout, rows]);
    let mut y = kernel.matmul(columns);
    if let Some(b) = bias {
        y = y.add(b.reshape([1, cout, 1]));
    }
    y.reshape([n, cout, out_h, out_w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{batch, cpu, values};
    use cema_core::onnx::generate::SplitMix64;

    /// The shifted-view convolution gives burn's at stride 1 for paddings (uneven too),
    /// dilations and kernels from 1×1 to 5×5; with a normalisation and ReLU folded in, it gives
    /// the per-channel affine map and ReLU of burn's result.
    #[test]
    fn shifted_convolution_matches_burn() {
        let device = cpu();
        let cases = [
            ([3, 3], [(1, 1), (1, 1)], [1, 1]),
            ([1, 1], [(0, 0), (0, 0)], [1, 1]),
            ([3, 2], [(0, 2), (1, 0)], [1, 1]),
            ([3, 3], [(2, 2), (0, 1)], [2, 2]),
            ([5, 5], [(0, 0), (0, 0)], [1, 1]),
        ];
        for (case, (kernel, padding, dilation)) in cases.into_iter().enumerate() {
            let mut rng = SplitMix64::new(10 + case as u64);
            let (n, c, h, w, cout) = (3, 3, 11, 9, 4);
            let x = batch(&rng.vec(n * c * h * w, -1.0, 1.0), [n, c, h, w], &device);
            let weight =
                batch(&rng.vec(cout * c * kernel[0] * kernel[1], -1.0, 1.0), [cout, c, kernel[0], kernel[1]], &device);
            let bias = rng.vec(cout, -1.0, 1.0);
            let bias_t: Tensor<1> = Tensor::from_data(TensorData::new(bias.clone(), [cout]), &device);
            let window = Window { kernel, stride: [1, 1], padding, dilation };
            let expected = conv2d(x.clone(), weight.clone(), Some(bias_t.clone()), conv_options(&window, 1));
            let dims = expected.dims();
            let expected = values(expected);
            let args = [
                Value { t: x, rank: 4 },
                Value { t: weight, rank: 4 },
                Value::from_logical(bias_t.reshape([1, 1, 1, cout]), &[cout]).expect("bias"),
            ];
            let plain = conv_shifted(args.to_vec(), &window, None, None).expect("convolution");
            assert_eq!(plain.t.dims(), dims, "case {case}");
            for (a, e) in values(plain.t).iter().zip(&expected) {
                assert!((a - e).abs() <= 1e-4, "case {case}: {a} vs {e}");
            }
            let (scale, shift) = (rng.vec(cout, -2.0, 2.0), rng.vec(cout, -1.0, 1.0));
            let folded = Folded { scale: scale.clone(), shift: shift.clone(), relu: true };
            let fused = values(conv_shifted(args.to_vec(), &window, Some(folded), None).expect("folded convolution").t);
            let plane = dims[2] * dims[3];
            for (i, (a, e)) in fused.iter().zip(&expected).enumerate() {
                let channel = (i / plane) % cout;
                let want = (e * scale[channel] + shift[channel]).max(0.0);
                assert!((a - want).abs() <= 1e-4, "case {case}, folded: {a} vs {want}");
            }
        }
    }

    /// The frozen path's columns give burn's convolution for strides, dilations, uneven
    /// padding and kernels that are not square.
    #[test]
    fn convolution_by_columns_matches_burn() {
        let device = cpu();
        let cases = [
            ([3, 3], [1, 1], [(1, 1), (1, 1)], [1, 1]),
            ([3, 3], [2, 2], [(1, 1), (1, 1)], [1, 1]),
            ([3, 2], [2, 1], [(0, 2), (1, 0)], [1, 1]),
            ([3, 3], [1, 2], [(2, 2), (0, 1)], [2, 2]),
            ([5, 5], [3, 3], [(0, 0), (0, 0)], [1, 1]),
        ];
        for (case, (kernel, stride, padding, dilation)) in cases.into_iter().enumerate() {
            let mut rng = SplitMix64::new(case as u64);
            let (n, c, h, w, cout) = (2, 3, 11, 9, 4);
            let x = batch(&rng.vec(n * c * h * w, -1.0, 1.0), [n, c, h, w], &device);
            let weight =
                batch(&rng.vec(cout * c * kernel[0] * kernel[1], -1.0, 1.0), [cout, c, kernel[0], kernel[1]], &device);
            let bias: Tensor<1> = Tensor::from_data(TensorData::new(rng.vec(cout, -1.0, 1.0), [cout]), &device);
            let window = Window { kernel, stride, padding, dilation };
            let expected = conv2d(x.clone(), weight.clone(), Some(bias.clone()), conv_options(&window, 1));
            let actual = conv_by_columns(x, weight, Some(bias), &window);
            assert_eq!(actual.dims(), expected.dims(), "case {case}");
            for (a, e) in values(actual).iter().zip(values(expected)) {
                assert!((a - e).abs() <= 1e-4, "case {case}: {a} vs {e}");
            }
        }
    }
}
