//! Versioned normalisation parameters: what the cloud sends and the edge applies.
//!
//! A [`NormParams`] maps ONNX initializer names (γ, β, running mean, running variance of
//! each `BatchNormalization` layer) to f32 tensors. Applying it rewrites those initializers
//! in the `ModelProto` itself. That is deliberate: ONNX Runtime folds BatchNormalization into
//! the preceding convolution while optimising, from the file's values, so overriding
//! initializers at session level is silently ignored at any optimisation level above
//! `Disable`. A patched model built into a fresh session always uses the new values.

use std::collections::BTreeMap;

use crate::norm::{NormDiscovery, NormLayer};
use crate::onnx::pb::TensorProto;
use crate::onnx::{OnnxModel, read_f32};

/// One named parameter tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct NormTensor {
    /// Dimensions (one axis of `channels` for BatchNormalization).
    pub dims: Vec<usize>,
    /// Values in row-major order.
    pub values: Vec<f32>,
}

/// A versioned set of named normalisation tensors.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NormParams {
    /// Version within its adaptation scope; 0 is the model's own (source) parameters.
    pub version: u64,
    /// Tensors by ONNX initializer name.
    pub tensors: BTreeMap<String, NormTensor>,
}

/// Why a parameter set cannot be applied to a model. Each variant names the tensor at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamsError {
    /// The model has no initializer of this name.
    #[error("unknown tensor `{name}`: the model has no initializer of that name")]
    UnknownTensor {
        /// Tensor name.
        name: String,
    },
    /// The initializer exists but is not a parameter of an adaptable normalisation layer.
    #[error("tensor `{name}` is not a normalisation parameter; only BatchNormalization scale/B/mean/var may change")]
    NotNormParameter {
        /// Tensor name.
        name: String,
    },
    /// Dims differ from the model's initializer.
    #[error("tensor `{name}` has dims {actual:?}, the model's initializer has {expected:?}")]
    ShapeMismatch {
        /// Tensor name.
        name: String,
        /// The model's dims.
        expected: Vec<usize>,
        /// The update's dims.
        actual: Vec<usize>,
    },
    /// Number of values disagrees with the tensor's own dims.
    #[error("tensor `{name}` declares dims {dims:?} but carries {len} values")]
    LengthMismatch {
        /// Tensor name.
        name: String,
        /// Declared dims.
        dims: Vec<usize>,
        /// Number of values.
        len: usize,
    },
    /// A value is NaN or infinite.
    #[error("tensor `{name}` holds a non-finite value {value} at index {index}")]
    NonFinite {
        /// Tensor name.
        name: String,
        /// Position of the first bad value.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A running variance is negative, which would make the layer produce NaN.
    #[error("running variance `{name}` is negative ({value}) at index {index}")]
    NegativeVariance {
        /// Tensor name.
        name: String,
        /// Position of the first bad value.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A set of batch statistics lacks a layer's mean or variance.
    #[error("statistics lack tensor `{name}`; every layer's running mean and variance is required")]
    MissingStatistic {
        /// Tensor name.
        name: String,
    },
    /// A set of batch statistics carries a tensor that is not a running mean or variance.
    #[error("tensor `{name}` is not a running mean or variance; statistics carry only those")]
    NotStatistic {
        /// Tensor name.
        name: String,
    },
    /// The model's own parameter could not be read.
    #[error("cannot read the model's tensor `{name}`: {reason}")]
    Unreadable {
        /// Tensor name.
        name: String,
        /// What went wrong.
        reason: String,
    },
}

/// Index of the running mean among a layer's four parameters.
const MEAN_INDEX: usize = 2;
/// Index of the running variance among a layer's four parameters.
const VAR_INDEX: usize = 3;

impl NormParams {
    /// The model's own normalisation parameters (version 0): all four tensors of every
    /// adaptable layer.
    pub fn source(model: &OnnxModel) -> Result<Self, ParamsError> {
        let discovery = NormDiscovery::of(model);
        let mut tensors = BTreeMap::new();
        for layer in &discovery.layers {
            for name in layer.parameter_names() {
                let tensor =
                    model.initializer(name).ok_or_else(|| ParamsError::UnknownTensor { name: name.to_owned() })?;
                tensors.insert(name.to_owned(), norm_tensor(tensor)?);
            }
        }
        Ok(Self { version: 0, tensors })
    }

    /// Checks that every tensor names a normalisation parameter of `model`, has its dims,
    /// and holds only finite values (and non-negative variances). A subset of the model's
    /// parameters is valid; untouched ones keep their current values.
    pub fn validate(&self, model: &OnnxModel) -> Result<(), ParamsError> {
        self.validate_against(model, &NormDiscovery::of(model))
    }

    /// [`validate`](Self::validate) with a discovery the caller already holds.
    pub fn validate_against(&self, model: &OnnxModel, discovery: &NormDiscovery) -> Result<(), ParamsError> {
        for (name, tensor) in &self.tensors {
            let initializer =
                model.initializer(name).ok_or_else(|| ParamsError::UnknownTensor { name: name.clone() })?;
            let (_, position) =
                discovery.owner_of(name).ok_or_else(|| ParamsError::NotNormParameter { name: name.clone() })?;
            let expected: Vec<usize> = initializer.dims.iter().map(|&d| d.max(0) as usize).collect();
            if tensor.dims != expected {
                return Err(ParamsError::ShapeMismatch { name: name.clone(), expected, actual: tensor.dims.clone() });
            }
            if tensor.values.len() != tensor.dims.iter().product::<usize>() {
                return Err(ParamsError::LengthMismatch {
                    name: name.clone(),
                    dims: tensor.dims.clone(),
                    len: tensor.values.len(),
                });
            }
            if let Some((index, &value)) = tensor.values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(ParamsError::NonFinite { name: name.clone(), index, value });
            }
            if position == VAR_INDEX
                && let Some((index, &value)) = tensor.values.iter().enumerate().find(|(_, v)| **v < 0.0)
            {
                return Err(ParamsError::NegativeVariance { name: name.clone(), index, value });
            }
        }
        Ok(())
    }

    /// Checks a set of batch statistics (uploaded with a batch end): exactly the running mean
    /// and variance of every layer, each valid as [`validate_against`](Self::validate_against)
    /// requires.
    pub fn validate_statistics(&self, model: &OnnxModel, discovery: &NormDiscovery) -> Result<(), ParamsError> {
        self.validate_against(model, discovery)?;
        if let Some(name) =
            self.tensors.keys().find(|name| !matches!(discovery.owner_of(name), Some((_, MEAN_INDEX | VAR_INDEX))))
        {
            return Err(ParamsError::NotStatistic { name: name.clone() });
        }
        let missing = discovery.layers.iter().flat_map(|l| [&l.mean, &l.var]).find(|n| !self.tensors.contains_key(*n));
        match missing {
            Some(name) => Err(ParamsError::MissingStatistic { name: name.clone() }),
            None => Ok(()),
        }
    }

    /// These parameters with the tensors of `other` replacing (or adding to) their own.
    pub fn overlaid(&self, other: &NormParams) -> NormParams {
        let mut out = self.clone();
        out.tensors.extend(other.tensors.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }

    /// Moves the running means and variances towards one batch's `statistics` by TBR's
    /// momentum rule, `running ← m·running + (1 − m)·batch` with each layer's ONNX momentum `m`
    /// (0.9 by default: PyTorch's momentum 0.1), or `1 − weight` when a batch `weight` is
    /// given. Tensors `statistics` lacks stay as they are.
    pub fn follow_statistics(&mut self, statistics: &NormParams, layers: &[NormLayer], weight: Option<f32>) {
        for layer in layers {
            let m = weight.map_or(layer.momentum, |w| 1.0 - w);
            for name in [&layer.mean, &layer.var] {
                if let (Some(running), Some(batch)) = (self.tensors.get_mut(name), statistics.tensors.get(name)) {
                    for (r, b) in running.values.iter_mut().zip(&batch.values) {
                        *r = m * *r + (1.0 - m) * b;
                    }
                }
            }
        }
    }

    /// Only the running means and variances of the layers of `discovery`.
    pub fn statistics(&self, discovery: &NormDiscovery) -> NormParams {
        let names: Vec<&String> = discovery.layers.iter().flat_map(|l| [&l.mean, &l.var]).collect();
        NormParams {
            version: self.version,
            tensors: self
                .tensors
                .iter()
                .filter(|(k, _)| names.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Validates, then returns a copy of `model` whose normalisation initializers hold these values.
    pub fn patch(&self, model: &OnnxModel) -> Result<OnnxModel, ParamsError> {
        self.patch_against(model, &NormDiscovery::of(model))
    }

    /// [`patch`](Self::patch) with a discovery the caller already holds.
    pub fn patch_against(&self, model: &OnnxModel, discovery: &NormDiscovery) -> Result<OnnxModel, ParamsError> {
        self.validate_against(model, discovery)?;
        model
            .with_f32_initializers(self.tensors.iter().map(|(name, t)| (name.as_str(), t.values.as_slice())))
            // Validation established that every name exists with these dims.
            .map_err(|e| ParamsError::Unreadable { name: String::new(), reason: e.to_string() })
    }

    /// Validates, then returns the encoded bytes of `model` with these parameters applied,
    /// ready for `commit_from_memory` in ONNX Runtime.
    pub fn apply(&self, model: &OnnxModel) -> Result<Vec<u8>, ParamsError> {
        Ok(self.patch(model)?.encode())
    }

    /// Total number of f32 values carried.
    pub fn value_count(&self) -> usize {
        self.tensors.values().map(|t| t.values.len()).sum()
    }
}

fn norm_tensor(tensor: &TensorProto) -> Result<NormTensor, ParamsError> {
    let values = read_f32(tensor)
        .map_err(|e| ParamsError::Unreadable { name: tensor.name().to_owned(), reason: e.to_string() })?;
    Ok(NormTensor { dims: tensor.dims.iter().map(|&d| d.max(0) as usize).collect(), values })
}
