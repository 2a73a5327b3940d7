//! The executor: a planned ONNX graph whose stored tensors live on a burn device.
//!
//! Values are `ops.rs`'s rank-4 tensors with a logical rank; the operators are its table.

use burn::Tensor;
use burn::tensor::{Device, TensorData};
use cema_core::{NormLayer, NormParams, NormTensor, OnnxModel};

use crate::error::{GraphError, ShapeError};
use crate::norm::{BatchStats, NormMode, normalise};
use crate::ops::{Folded, Tape, Value, apply, conv_shifted, f32_values};
use crate::plan::{Op, Plan};

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
    /// Per step: for a stride-1 convolution, what a frozen inference forward folds into it.
    folds: Vec<Option<Fold>>,
    /// Per step and input: whether no later read of the slot follows, so the forward may move
    /// the value instead of sharing it (a value held once is read without a copy and updated
    /// in place).
    last_reads: Vec<Vec<bool>>,
    device: Device,
}

/// The steps a frozen inference forward folds into a stride-1 convolution: the normalisation
/// layer that alone reads its output (the next step), then optionally a residual sum that alone
/// reads the layer's output, then optionally a ReLU that alone reads the last of these.
#[derive(Debug, Clone, Copy)]
struct Fold {
    layer: usize,
    residual: Option<Residual>,
    relu: bool,
}

/// The other operand of a folded residual sum, computed before the convolution.
#[derive(Debug, Clone, Copy)]
struct Residual {
    slot: usize,
    /// Whether the sum is the operand's last read.
    last: bool,
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
            .map_err(|source| GraphError::Shape { node: tensor.name.clone(), source })?;
            let train = match trainable {
                Trainable::None => false,
                Trainable::NormAffine => affine.contains(slot),
                Trainable::All => !statistics.contains(slot),
            };
            is_trainable[*slot] = train;
            stored[*slot] = Some(if train { Value { t: value.t.require_grad(), rank: value.rank } } else { value });
        }
        let last_reads = last_reads(&plan);
        let folds = folds(&plan, &last_reads);
        Ok(Self { plan, stored, trainable: is_trainable, norm, folds, last_reads, device: device.clone() })
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
        let tape = if self.trainable.contains(&true) { Tape::On } else { Tape::Off };
        let fold = tape == Tape::Off && mode == NormMode::Inference;
        let mut index = 0;
        while let Some(step) = self.plan.steps.get(index) {
            index += 1;
            let shape = |source: ShapeError| GraphError::Shape { node: step.node.clone(), source };
            let args: Vec<Value> = step
                .inputs
                .iter()
                .zip(&self.last_reads[index - 1])
                .map(|(&slot, &last)| read(&mut values, slot, last).ok_or_else(|| shape(ShapeError::UnsetSlot(slot))))
                .collect::<Result<_, _>>()?;
            if let (true, Some(Fold { layer, residual, relu }), Op::Conv { window, .. }) =
                (fold, self.folds[index - 1], &step.op)
            {
                let folded = self.inference_affine(layer, relu).map_err(shape)?;
                let residual = match residual {
                    Some(Residual { slot, last }) => {
                        Some(read(&mut values, slot, last).ok_or_else(|| shape(ShapeError::UnsetSlot(slot)))?)
                    }
                    None => None,
                };
                // The folded steps' outputs are read by nothing but the next folded step.
                index += 1 + usize::from(residual.is_some()) + usize::from(relu);
                let out = conv_shifted(args, window, Some(folded), residual).map_err(shape)?;
                values[self.plan.steps[index - 1].output] = Some(out);
                continue;
            }
            let out = match &step.op {
                Op::BatchNorm { layer } => {
                    let slots = self.norm[*layer];
                    let get = |slot: usize| {
                        self.stored[slot].clone().map(|v| v.t).ok_or_else(|| shape(ShapeError::UnsetNormTensor))
                    };
                    let params = [get(slots.scale)?, get(slots.bias)?, get(slots.mean)?, get(slots.var)?];
                    let (value, stats) =
                        normalise(&args[0], params, &self.plan.norm_layers[*layer], mode).map_err(shape)?;
                    batch_stats[*layer] = stats;
                    value
                }
                op => apply(op, args, tape).map_err(shape)?,
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

    /// A normalisation layer in inference mode as a per-channel affine map
    /// (`a = γ/√(σ²_r + ε)`, `b = β − μ_r·a`), for folding into the convolution before it.
    fn inference_affine(&self, layer: usize, relu: bool) -> Result<Folded, ShapeError> {
        let slots = self.norm[layer];
        let get = |slot: usize| f32_values(&self.stored[slot].as_ref().ok_or(ShapeError::UnsetNormTensor)?.t);
        let (gamma, beta, mean, var) = (get(slots.scale)?, get(slots.bias)?, get(slots.mean)?, get(slots.var)?);
        let eps = self.plan.norm_layers[layer].epsilon;
        let scale: Vec<f32> = gamma.iter().zip(&var).map(|(g, v)| g / (v + eps).sqrt()).collect();
        let shift = beta.iter().zip(&mean).zip(&scale).map(|((b, m), a)| b - m * a).collect();
        Ok(Folded { scale, shift, relu })
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

/// A slot's value for a step: moved out on its last read, shared otherwise.
fn read(values: &mut [Option<Value>], slot: usize, last: bool) -> Option<Value> {
    if last { values[slot].take() } else { values[slot].clone() }
}

/// Per step and input, whether it is the slot's last read: no later input of this step or of a
/// later one reads it, and it is not the graph's output.
fn last_reads(plan: &Plan) -> Vec<Vec<bool>> {
    let mut read_later = vec![false; plan.slots];
    read_later[plan.output] = true;
    let mut last: Vec<Vec<bool>> = plan
        .steps
        .iter()
        .rev()
        .map(|step| {
            let mut step_last: Vec<bool> =
                step.inputs.iter().rev().map(|&slot| !std::mem::replace(&mut read_later[slot], true)).collect();
            step_last.reverse();
            step_last
        })
        .collect();
    last.reverse();
    last
}

/// Which stride-1, ungrouped convolutions a frozen inference forward folds the next steps into:
/// a normalisation layer that is the convolution's only reader; then a sum that is the layer's
/// only reader, when its other operand exists before the convolution; then a ReLU that is the
/// only reader of the last folded step.
fn folds(plan: &Plan, last_reads: &[Vec<bool>]) -> Vec<Option<Fold>> {
    let mut readers = vec![0usize; plan.slots];
    for slot in plan.steps.iter().flat_map(|s| &s.inputs).chain([&plan.output]) {
        readers[*slot] += 1;
    }
    let steps = &plan.steps;
    let only_reader = |step: usize, next: usize| {
        let output = steps[step].output;
        steps.get(next).filter(|n| readers[output] == 1 && n.inputs.first() == Some(&output))
    };
    steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let Op::Conv { window, groups: 1 } = &step.op else { return None };
            if window.stride != [1, 1] {
                return None;
            }
            let Op::BatchNorm { layer } = only_reader(i, i + 1)?.op else { return None };
            let normalised = steps[i + 1].output;
            let residual =
                steps.get(i + 2).filter(|sum| matches!(sum.op, Op::Add) && readers[normalised] == 1).and_then(|sum| {
                    let position = sum.inputs.iter().position(|&slot| slot != normalised)?;
                    let slot = sum.inputs[position];
                    let earlier = steps[i..].iter().all(|later| later.output != slot);
                    (sum.inputs.len() == 2 && sum.inputs.contains(&normalised) && earlier)
                        .then(|| Residual { slot, last: last_reads[i + 2][position] })
                });
            let last = i + 1 + usize::from(residual.is_some());
            let relu = steps.get(last + 1).is_some_and(|r| {
                matches!(r.op, Op::Relu)
                    && readers[steps[last].output] == 1
                    && r.inputs.first() == Some(&steps[last].output)
            });
            Some(Fold { layer, residual, relu })
        })
        .collect()
}
