//! The executor: a planned ONNX graph whose stored tensors live on a burn device.
//!
//! Every value is held as a rank-4 burn tensor with its logical rank: a tensor of logical
//! shape `[a, b]` is stored as `[1, 1, a, b]`. Left-padding with ones is exactly numpy's
//! broadcasting rule, so elementwise operators broadcast as ONNX requires, and matrix products
//! of rank-2 values become batched products of one matrix.

use burn::Tensor;
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions, PadMode};
use burn::tensor::{Device, TensorData, activation};
use cema_core::{NormLayer, NormParams, NormTensor, OnnxModel};

use crate::error::GraphError;
use crate::norm::{BatchStats, NormMode, normalise};
use crate::plan::{Op, Plan, Window};

/// Highest rank a value may have.
const MAX_RANK: usize = 4;

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

    fn from_logical(t: Tensor<4>, dims: &[usize]) -> Result<Self, String> {
        if dims.len() > MAX_RANK {
            return Err(format!("rank {} exceeds the supported {MAX_RANK}", dims.len()));
        }
        let mut physical = [1usize; MAX_RANK];
        physical[MAX_RANK - dims.len()..].copy_from_slice(dims);
        Ok(Value { t: t.reshape(physical), rank: dims.len() })
    }

    /// Physical axis of a logical (possibly negative) axis.
    fn axis(&self, axis: i64) -> Result<usize, String> {
        let rank = self.rank as i64;
        let logical = if axis < 0 { axis + rank } else { axis };
        if !(0..rank).contains(&logical) {
            return Err(format!("axis {axis} is out of range for rank {rank}"));
        }
        Ok(MAX_RANK - self.rank + logical as usize)
    }
}

/// Which stored tensors receive gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trainable {
    /// Nothing: inference only.
    None,
    /// γ and β of every normalisation layer (CEMA adaptation).
    NormAffine,
    /// Every stored float tensor except running statistics (pretraining).
    All,
}

/// Slots of one normalisation layer's four stored tensors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NormSlots {
    pub(crate) scale: usize,
    pub(crate) bias: usize,
    pub(crate) mean: usize,
    pub(crate) var: usize,
}

/// An ONNX classifier loaded for burn: forward passes under a chosen normalisation mode,
/// gradients into the trainable set, and export of its normalisation state.
#[derive(Debug, Clone)]
pub struct Graph {
    plan: Plan,
    /// Stored tensors by slot (`None` for computed values).
    stored: Vec<Option<Value>>,
    /// Which slots are trainable leaves.
    trainable: Vec<bool>,
    norm: Vec<NormSlots>,
    device: Device,
}

/// What a forward pass produces.
#[derive(Debug, Clone)]
pub struct Forward {
    /// Logits, `[batch, classes]`.
    pub logits: Tensor<2>,
    /// Per normalisation layer, the batch statistics measured (in `tbr` and `batch` modes).
    pub batch_stats: Vec<Option<BatchStats>>,
}

impl Graph {
    /// Loads a model onto `device`. Use an autodiff device for anything but `Trainable::None`.
    pub fn load(model: &OnnxModel, device: &Device, trainable: Trainable) -> Result<Self, GraphError> {
        let plan = Plan::of(model)?;
        let mut stored = vec![None; plan.slots];
        let mut is_trainable = vec![false; plan.slots];
        let slot_of = |name: &str| plan.stored.iter().find(|(_, s)| s.name == name).map(|(slot, _)| *slot);
        let mut norm = Vec::new();
        for layer in &plan.norm_layers {
            let find = |name: &str| {
                slot_of(name).ok_or_else(|| GraphError::Graph(format!("normalisation tensor `{name}` is not stored")))
            };
            norm.push(NormSlots {
                scale: find(&layer.scale)?,
                bias: find(&layer.bias)?,
                mean: find(&layer.mean)?,
                var: find(&layer.var)?,
            });
        }
        let statistics: Vec<usize> = norm.iter().flat_map(|n| [n.mean, n.var]).collect();
        let affine: Vec<usize> = norm.iter().flat_map(|n| [n.scale, n.bias]).collect();
        for (slot, tensor) in &plan.stored {
            let n = tensor.values.len();
            let value = Value::from_logical(
                Tensor::<4>::from_data(TensorData::new(tensor.values.clone(), [1, 1, 1, n]), device),
                &tensor.dims,
            )
            .map_err(|detail| GraphError::Shape { node: tensor.name.clone(), detail })?;
            let train = match trainable {
                Trainable::None => false,
                Trainable::NormAffine => affine.contains(slot),
                Trainable::All => !statistics.contains(slot),
            };
            is_trainable[*slot] = train;
            stored[*slot] = Some(if train { Value { t: value.t.require_grad(), rank: value.rank } } else { value });
        }
        Ok(Self { plan, stored, trainable: is_trainable, norm, device: device.clone() })
    }

    /// The device the graph lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The normalisation layers, in graph order.
    pub fn norm_layers(&self) -> &[NormLayer] {
        &self.plan.norm_layers
    }

    /// Runs the graph on a batch `[N, C, H, W]` and returns logits `[N, classes]`.
    pub fn forward(&self, input: Tensor<4>, mode: NormMode) -> Result<Forward, GraphError> {
        let mut values: Vec<Option<Value>> = self.stored.clone();
        values[self.plan.input] = Some(Value { t: input, rank: 4 });
        let mut batch_stats = vec![None; self.norm.len()];
        for step in &self.plan.steps {
            let shape = |detail: String| GraphError::Shape { node: step.node.clone(), detail };
            let args: Vec<Value> = step
                .inputs
                .iter()
                .map(|&slot| values[slot].clone().ok_or_else(|| shape(format!("input slot {slot} has no value"))))
                .collect::<Result<_, _>>()?;
            let out = match &step.op {
                Op::BatchNorm { layer } => {
                    let slots = self.norm[*layer];
                    let get = |slot: usize| {
                        self.stored[slot].clone().map(|v| v.t).ok_or_else(|| shape("unset norm tensor".into()))
                    };
                    let params = [get(slots.scale)?, get(slots.bias)?, get(slots.mean)?, get(slots.var)?];
                    let (value, stats) =
                        normalise(&args[0], params, &self.plan.norm_layers[*layer], mode).map_err(shape)?;
                    batch_stats[*layer] = stats;
                    value
                }
                op => apply(op, args).map_err(shape)?,
            };
            values[step.output] = Some(out);
        }
        let output =
            values[self.plan.output].take().ok_or_else(|| GraphError::Graph("output never computed".into()))?;
        let dims = output.dims();
        let [batch, classes] = dims.as_slice() else {
            return Err(GraphError::Graph(format!("output has dims {dims:?}; a classifier returns [batch, classes]")));
        };
        Ok(Forward { logits: output.t.reshape([*batch, *classes]), batch_stats })
    }

    /// Applies the running-statistics update of a training-mode forward pass
    /// (`running ← m·running + (1 − m)·batch`, ONNX momentum `m` of each layer).
    pub fn update_running_stats(&mut self, batch_stats: &[Option<BatchStats>]) {
        for ((slots, layer), stats) in self.norm.iter().zip(&self.plan.norm_layers).zip(batch_stats) {
            let Some(stats) = stats else { continue };
            let m = layer.momentum as f64;
            for (slot, batch) in [(slots.mean, &stats.mean), (slots.var, &stats.var)] {
                if let Some(value) = self.stored[slot].as_mut() {
                    let running = value.t.clone().detach();
                    let batch = batch.clone().reshape(running.dims());
                    value.t = running.mul_scalar(m).add(batch.mul_scalar(1.0 - m)).detach();
                }
            }
        }
    }

    /// The trainable leaves, with their slots.
    pub(crate) fn trainable_leaves(&self) -> impl Iterator<Item = (usize, &Tensor<4>)> {
        self.stored
            .iter()
            .enumerate()
            .filter(|(slot, _)| self.trainable[*slot])
            .filter_map(|(slot, v)| v.as_ref().map(|v| (slot, &v.t)))
    }

    /// The ONNX name of a stored tensor's slot.
    pub(crate) fn slot_name(&self, slot: usize) -> Option<&str> {
        self.plan.stored.iter().find(|(s, _)| *s == slot).map(|(_, stored)| stored.name.as_str())
    }

    /// Replaces a trainable leaf's tensor (after an optimiser step).
    pub(crate) fn set_leaf(&mut self, slot: usize, tensor: Tensor<4>) {
        if let Some(value) = self.stored[slot].as_mut() {
            value.t = tensor;
        }
    }

    /// Values of a stored tensor by its ONNX name.
    pub fn stored_values(&self, name: &str) -> Option<Vec<f32>> {
        let (slot, _) = self.plan.stored.iter().find(|(_, s)| s.name == name)?;
        let value = self.stored[*slot].as_ref()?;
        value.t.clone().detach().into_data().try_to_vec::<f32>().ok()
    }

    /// The gradient of a stored tensor (by ONNX name) from a backward pass, if it is trainable
    /// and received one.
    pub fn gradient(&self, name: &str, grads: &burn::tensor::Gradients) -> Option<Vec<f32>> {
        let (slot, _) = self.plan.stored.iter().find(|(_, s)| s.name == name)?;
        let value = self.stored[*slot].as_ref()?;
        value.t.grad(grads).and_then(|g| g.into_data().try_to_vec::<f32>().ok())
    }

    /// Names of every stored float tensor that came from an initializer.
    pub fn initializer_names(&self) -> Vec<&str> {
        self.plan.stored.iter().filter(|(_, s)| s.initializer).map(|(_, s)| s.name.as_str()).collect()
    }

    /// `model` (the file this graph was loaded from) with every stored initializer replaced by
    /// its current value: the trained weights and running statistics, ready for ONNX Runtime.
    pub fn export(&self, model: &OnnxModel) -> Result<OnnxModel, GraphError> {
        let values: Vec<(&str, Vec<f32>)> = self
            .plan
            .stored
            .iter()
            .filter(|(_, s)| s.initializer)
            .filter_map(|(_, s)| self.stored_values(&s.name).map(|v| (s.name.as_str(), v)))
            .collect();
        Ok(model.with_f32_initializers(values.iter().map(|(n, v)| (*n, v.as_slice())))?)
    }

    /// Replaces the normalisation state (γ, β, running mean and variance) with `params`,
    /// which must name every tensor of every layer with one value per channel. Lets one loaded
    /// graph serve many adaptation scopes: their frozen weights are shared, only this state
    /// differs. On error nothing changes.
    pub fn load_norm_params(&mut self, params: &NormParams) -> Result<(), GraphError> {
        let mut updates = Vec::new();
        for (slots, layer) in self.norm.iter().zip(&self.plan.norm_layers) {
            let names = layer.parameter_names();
            for (slot, name) in [slots.scale, slots.bias, slots.mean, slots.var].into_iter().zip(names) {
                let tensor =
                    params.tensors.get(name).ok_or_else(|| GraphError::Graph(format!("parameters lack `{name}`")))?;
                if tensor.values.len() != layer.channels {
                    return Err(GraphError::Graph(format!(
                        "`{name}` has {} values, the layer {} channels",
                        tensor.values.len(),
                        layer.channels
                    )));
                }
                let current = self.stored[slot].as_ref().ok_or_else(|| GraphError::Graph(format!("`{name}` unset")))?;
                let t = Tensor::<4>::from_data(TensorData::new(tensor.values.clone(), current.t.dims()), &self.device);
                let t = if self.trainable[slot] { t.require_grad() } else { t };
                updates.push((slot, Value { t, rank: current.rank }));
            }
        }
        for (slot, value) in updates {
            self.stored[slot] = Some(value);
        }
        Ok(())
    }

    /// Sets every layer's running statistics to the given batch statistics (CEMA's
    /// `stats_init = first_batch`).
    pub fn set_running_stats(&mut self, batch_stats: &[Option<BatchStats>]) {
        for (slots, stats) in self.norm.iter().zip(batch_stats) {
            let Some(stats) = stats else { continue };
            for (slot, batch) in [(slots.mean, &stats.mean), (slots.var, &stats.var)] {
                if let Some(value) = self.stored[slot].as_mut() {
                    value.t = batch.clone().reshape(value.t.dims()).detach();
                }
            }
        }
    }

    /// The current normalisation state (γ, β, running mean and variance of every layer).
    pub fn norm_params(&self, version: u64) -> NormParams {
        let mut params = NormParams { version, tensors: Default::default() };
        for layer in &self.plan.norm_layers {
            for name in layer.parameter_names() {
                if let Some(values) = self.stored_values(name) {
                    params.tensors.insert(name.to_owned(), NormTensor { dims: vec![values.len()], values });
                }
            }
        }
        params
    }
}

/// `ReduceMean`/`ReduceSum` over logical `axes` (all when empty), keeping or dropping them.
fn reduce(v: Value, mean: bool, axes: &[i64], keepdims: bool) -> Result<Value, String> {
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

fn apply(op: &Op, args: Vec<Value>) -> Result<Value, String> {
    let one = |args: &[Value]| args.first().cloned().ok_or_else(|| "missing input".to_owned());
    let rank4 = |v: &Value| {
        if v.rank == 4 {
            Ok(v.t.clone())
        } else {
            Err(format!("expects a rank-4 [N, C, H, W] input, got rank {}", v.rank))
        }
    };
    Ok(match op {
        Op::Conv { window, groups } => {
            let x = rank4(&one(&args)?)?;
            let weight = args.get(1).ok_or("missing weight")?;
            if weight.rank != 4 {
                return Err(format!("weight has rank {}; 2-D convolution needs 4", weight.rank));
            }
            let bias = args.get(2).map(|b| {
                let channels = b.dims().iter().product::<usize>();
                b.t.clone().reshape([channels])
            });
            Value { t: conv2d(x, weight.t.clone(), bias, conv_options(window, *groups)), rank: 4 }
        }
        Op::Relu => {
            let v = one(&args)?;
            Value { t: activation::relu(v.t), rank: v.rank }
        }
        Op::Sigmoid => {
            let v = one(&args)?;
            Value { t: activation::sigmoid(v.t), rank: v.rank }
        }
        Op::HardSigmoid { alpha, beta } => {
            let v = one(&args)?;
            Value { t: v.t.mul_scalar(*alpha).add_scalar(*beta).clamp(0.0, 1.0), rank: v.rank }
        }
        Op::Clip { min, max } => {
            let v = one(&args)?;
            let t = match (min, max) {
                (Some(lo), Some(hi)) => v.t.clamp(*lo, *hi),
                (Some(lo), None) => v.t.clamp_min(*lo),
                (None, Some(hi)) => v.t.clamp_max(*hi),
                (None, None) => v.t,
            };
            Value { t, rank: v.rank }
        }
        Op::Add | Op::Sub | Op::Mul | Op::Div => {
            let [a, b] = <[Value; 2]>::try_from(args).map_err(|_| "expects two inputs".to_owned())?;
            let rank = a.rank.max(b.rank);
            let t = match op {
                Op::Add => a.t.add(b.t),
                Op::Sub => a.t.sub(b.t),
                Op::Mul => a.t.mul(b.t),
                _ => a.t.div(b.t),
            };
            Value { t, rank }
        }
        Op::MaxPool { window, ceil } => {
            let x = rank4(&one(&args)?)?;
            let mut options = MaxPoolOptions::new(window.kernel);
            options.stride = window.stride;
            options.padding = window.padding;
            options.dilation = window.dilation;
            options.ceil_mode = *ceil;
            Value { t: max_pool2d(x, options), rank: 4 }
        }
        Op::AvgPool { window, ceil, count_include_pad } => {
            let x = rank4(&one(&args)?)?;
            let mut options = AvgPoolOptions::new(window.kernel);
            options.stride = window.stride;
            options.padding = window.padding;
            options.ceil_mode = *ceil;
            options.count_include_pad = *count_include_pad;
            Value { t: avg_pool2d(x, options), rank: 4 }
        }
        Op::GlobalAvgPool => {
            let x = rank4(&one(&args)?)?;
            Value { t: x.mean_dim(2).mean_dim(3), rank: 4 }
        }
        Op::Flatten { axis } => {
            let v = one(&args)?;
            let dims = v.dims();
            let axis = if *axis < 0 { *axis + v.rank as i64 } else { *axis } as usize;
            if axis > dims.len() {
                return Err(format!("flatten axis {axis} beyond rank {}", dims.len()));
            }
            let (head, tail) = dims.split_at(axis);
            Value::from_logical(v.t, &[head.iter().product(), tail.iter().product()])?
        }
        Op::Reshape { shape } => {
            let v = one(&args)?;
            let dims = v.dims();
            let total: usize = dims.iter().product();
            let mut target: Vec<usize> = Vec::with_capacity(shape.len());
            let mut infer = None;
            for (i, &d) in shape.iter().enumerate() {
                match d {
                    0 => target.push(*dims.get(i).ok_or("reshape copies a dim the input lacks")?),
                    -1 if infer.is_none() => {
                        infer = Some(i);
                        target.push(1);
                    }
                    d if d > 0 => target.push(d as usize),
                    d => return Err(format!("reshape dim {d} is not supported")),
                }
            }
            if let Some(i) = infer {
                let known: usize = target.iter().product();
                if known == 0 || !total.is_multiple_of(known) {
                    return Err(format!("cannot reshape {dims:?} into {shape:?}"));
                }
                target[i] = total / known;
            }
            if target.iter().product::<usize>() != total {
                return Err(format!("cannot reshape {dims:?} into {shape:?}"));
            }
            Value::from_logical(v.t, &target)?
        }
        Op::Gemm { alpha, beta, trans_a, trans_b } => {
            let a = args.first().ok_or("missing A")?;
            let b = args.get(1).ok_or("missing B")?;
            if a.rank != 2 || b.rank != 2 {
                return Err(format!("Gemm needs rank-2 operands, got {} and {}", a.rank, b.rank));
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
            Value { t: y, rank: 2 }
        }
        Op::MatMul => {
            let [a, b] = <[Value; 2]>::try_from(args).map_err(|_| "expects two inputs".to_owned())?;
            if a.rank < 2 || b.rank < 2 {
                return Err("MatMul of vectors is not supported".to_owned());
            }
            let rank = a.rank.max(b.rank);
            Value { t: a.t.matmul(b.t), rank }
        }
        Op::Pad { pads, value } => {
            let v = one(&args)?;
            if pads.len() != 2 * v.rank {
                return Err(format!("{} pads for rank {}", pads.len(), v.rank));
            }
            let mut pairs = [(0usize, 0usize); MAX_RANK];
            for axis in 0..v.rank {
                pairs[MAX_RANK - v.rank + axis] = (pads[axis] as usize, pads[axis + v.rank] as usize);
            }
            Value { t: v.t.pad(pairs, PadMode::Constant(*value)), rank: v.rank }
        }
        Op::Concat { axis } => {
            let first = args.first().ok_or("no inputs")?;
            let physical = first.axis(*axis)?;
            let rank = first.rank;
            Value { t: Tensor::cat(args.into_iter().map(|v| v.t).collect(), physical), rank }
        }
        Op::Identity => one(&args)?,
        Op::Reduce { mean, axes, keepdims } => reduce(one(&args)?, *mean, axes, *keepdims)?,
        Op::Softmax { axis, legacy } => {
            let v = one(&args)?;
            let physical = v.axis(*axis)?;
            if *legacy && physical != MAX_RANK - 1 {
                return Err("opset < 13 softmax over several trailing axes is not supported".to_owned());
            }
            Value { t: activation::softmax(v.t, physical), rank: v.rank }
        }
        Op::BatchNorm { .. } => unreachable!("handled by the caller"),
    })
}
