//! Discovery of the normalisation layers CEMA adapts.
//!
//! CEMA trains only normalisation parameters. On the edge, ONNX Runtime runs inference-mode
//! `BatchNormalization`, whose four initializers (scale γ, bias β, running mean, running
//! variance) are exactly what the cloud sends back. Other normalisation operators are
//! reported, never silently skipped, so a user learns why their model cannot be adapted.

use std::collections::HashMap;

use crate::onnx::pb::{AttributeProto, NodeProto, attribute_proto::AttributeType};
use crate::onnx::{OnnxModel, read_f32};

/// ONNX's default `epsilon` for `BatchNormalization` when the attribute is absent.
pub const ONNX_BN_DEFAULT_EPSILON: f32 = 1e-5;
/// ONNX's default `momentum` (weight of the old running value) when the attribute is absent.
pub const ONNX_BN_DEFAULT_MOMENTUM: f32 = 0.9;

/// Where a model's running statistics start (`docs/algorithm.md`, "First-batch statistics").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatsInit {
    /// Keep the model's own running statistics.
    #[default]
    Source,
    /// Replace them with the statistics of the first batch the model sees: TBR in a layer that
    /// has none yet (batch mean, unbiased variance, `r = 1`, `d = 0`).
    FirstBatch,
}

impl std::str::FromStr for StatsInit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "source" => Ok(Self::Source),
            "first_batch" | "first-batch" => Ok(Self::FirstBatch),
            other => Err(format!("stats_init `{other}`: use source or first_batch")),
        }
    }
}

/// Normalisation operators that exist in ONNX but that this project cannot adapt.
const UNSUPPORTED_NORM_OPS: &[&str] = &[
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "MeanVarianceNormalization",
    "LpNormalization",
    "LRN",
    "RMSNormalization",
];

/// One inference-mode `BatchNormalization` layer and the initializers that hold its state.
#[derive(Debug, Clone, PartialEq)]
pub struct NormLayer {
    /// The node's name (or `#<index>` when the file leaves it empty).
    pub node: String,
    /// Name of the tensor being normalised.
    pub input: String,
    /// Initializer holding γ (`scale`).
    pub scale: String,
    /// Initializer holding β (`B`).
    pub bias: String,
    /// Initializer holding the running mean.
    pub mean: String,
    /// Initializer holding the running variance.
    pub var: String,
    /// Number of channels (length of each of the four tensors).
    pub channels: usize,
    /// The layer's epsilon (ONNX default applied when absent).
    pub epsilon: f32,
    /// The layer's ONNX momentum (weight of the old running value; default applied when absent).
    pub momentum: f32,
}

impl NormLayer {
    /// The four initializer names in ONNX input order: scale, B, mean, var.
    pub fn parameter_names(&self) -> [&str; 4] {
        [&self.scale, &self.bias, &self.mean, &self.var]
    }
}

/// A normalisation node that cannot be adapted, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct UnsupportedNorm {
    /// The node's name (or `#<index>`).
    pub node: String,
    /// Its operator type.
    pub op_type: String,
    /// What prevents adaptation.
    pub reason: NormRefusal,
}

/// Why a normalisation node cannot be adapted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NormRefusal {
    /// Not the five inputs of an inference-mode BatchNormalization.
    #[error("expected 5 inputs (X, scale, B, mean, var), found {0}")]
    InputCount(usize),
    /// Exported in training mode.
    #[error("runs in training mode; export the model in eval mode")]
    TrainingMode,
    /// `spatial = 0` (opset < 9).
    #[error("uses per-element statistics (spatial=0)")]
    PerElement,
    /// A parameter computed or fed at run time, so there is nothing to patch.
    #[error("parameter `{0}` is not an initializer (computed or fed at run time)")]
    NotInitializer(String),
    /// A parameter whose values cannot be read as f32.
    #[error("parameter `{param}`: {detail}")]
    Unreadable {
        /// The initializer.
        param: String,
        /// Why.
        detail: String,
    },
    /// A parameter that is not a vector.
    #[error("parameter `{param}` has dims {dims:?}, expected one axis")]
    NotOneAxis {
        /// The initializer.
        param: String,
        /// Its dims.
        dims: Vec<i64>,
    },
    /// Parameters of different lengths.
    #[error("parameter `{param}` has {found} values, expected {expected}")]
    Channels {
        /// The initializer.
        param: String,
        /// Its values.
        found: usize,
        /// The first parameter's.
        expected: usize,
    },
    /// An epsilon that is not a positive number.
    #[error("epsilon {0} is not a positive number")]
    Epsilon(f32),
    /// A parameter another layer also uses.
    #[error("initializer `{param}` is shared with node `{owner}`; each layer needs its own parameters")]
    Shared {
        /// The initializer.
        param: String,
        /// The node that uses it first.
        owner: String,
    },
    /// A normalisation operator other than BatchNormalization.
    #[error("only BatchNormalization layers are adapted")]
    NotBatchNorm,
}

/// Every normalisation node of a model, sorted into adaptable layers and unsupported ones.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NormDiscovery {
    /// Adaptable `BatchNormalization` layers, in graph order.
    pub layers: Vec<NormLayer>,
    /// Normalisation nodes that cannot be adapted.
    pub unsupported: Vec<UnsupportedNorm>,
}

impl NormDiscovery {
    /// Finds the normalisation layers of a model.
    pub fn of(model: &OnnxModel) -> Self {
        let mut found = Self::default();
        let mut owners: HashMap<String, String> = HashMap::new();
        for (index, node) in model.nodes().iter().enumerate() {
            let name = if node.name().is_empty() { format!("#{index}") } else { node.name().to_owned() };
            let op = node.op_type();
            if is_default_domain(node) && op == "BatchNormalization" {
                match batch_norm_layer(model, node, &name) {
                    Ok(layer) => {
                        let shared = layer
                            .parameter_names()
                            .iter()
                            .find_map(|p| owners.get(*p).map(|owner| (p.to_string(), owner.clone())));
                        if let Some((param, owner)) = shared {
                            found.unsupported.push(unsupported(&name, op, NormRefusal::Shared { param, owner }));
                            continue;
                        }
                        for p in layer.parameter_names() {
                            owners.insert(p.to_owned(), name.clone());
                        }
                        found.layers.push(layer);
                    }
                    Err(reason) => found.unsupported.push(unsupported(&name, op, reason)),
                }
            } else if UNSUPPORTED_NORM_OPS.contains(&op) {
                found.unsupported.push(unsupported(&name, op, NormRefusal::NotBatchNorm));
            }
        }
        found
    }

    /// The layer owning an initializer, with the index of the initializer among its four.
    pub fn owner_of(&self, initializer: &str) -> Option<(&NormLayer, usize)> {
        self.layers.iter().find_map(|l| l.parameter_names().iter().position(|p| *p == initializer).map(|i| (l, i)))
    }

    /// Total number of normalisation parameters (4 × channels per layer).
    pub fn parameter_count(&self) -> usize {
        self.layers.iter().map(|l| 4 * l.channels).sum()
    }
}

fn unsupported(node: &str, op_type: &str, reason: NormRefusal) -> UnsupportedNorm {
    UnsupportedNorm { node: node.to_owned(), op_type: op_type.to_owned(), reason }
}

fn is_default_domain(node: &NodeProto) -> bool {
    matches!(node.domain(), "" | "ai.onnx")
}

fn attribute<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name() == name)
}

fn float_attribute(node: &NodeProto, name: &str, default: f32) -> f32 {
    match attribute(node, name) {
        Some(a) if a.r#type() == AttributeType::Float || a.f.is_some() => a.f(),
        _ => default,
    }
}

fn batch_norm_layer(model: &OnnxModel, node: &NodeProto, name: &str) -> Result<NormLayer, NormRefusal> {
    if node.input.len() != 5 {
        return Err(NormRefusal::InputCount(node.input.len()));
    }
    if attribute(node, "training_mode").is_some_and(|a| a.i() != 0) || node.output.len() > 1 {
        return Err(NormRefusal::TrainingMode);
    }
    if attribute(node, "spatial").is_some_and(|a| a.i() == 0) {
        return Err(NormRefusal::PerElement);
    }
    let mut channels = None;
    for param in &node.input[1..] {
        let tensor = model.initializer(param).ok_or_else(|| NormRefusal::NotInitializer(param.clone()))?;
        let values =
            read_f32(tensor).map_err(|e| NormRefusal::Unreadable { param: param.clone(), detail: e.to_string() })?;
        if tensor.dims.len() != 1 {
            return Err(NormRefusal::NotOneAxis { param: param.clone(), dims: tensor.dims.clone() });
        }
        match channels {
            None => channels = Some(values.len()),
            Some(c) if c != values.len() => {
                return Err(NormRefusal::Channels { param: param.clone(), found: values.len(), expected: c });
            }
            Some(_) => {}
        }
    }
    let epsilon = float_attribute(node, "epsilon", ONNX_BN_DEFAULT_EPSILON);
    if !(epsilon > 0.0 && epsilon.is_finite()) {
        return Err(NormRefusal::Epsilon(epsilon));
    }
    Ok(NormLayer {
        node: name.to_owned(),
        input: node.input[0].clone(),
        scale: node.input[1].clone(),
        bias: node.input[2].clone(),
        mean: node.input[3].clone(),
        var: node.input[4].clone(),
        channels: channels.unwrap_or(0),
        epsilon,
        momentum: float_attribute(node, "momentum", ONNX_BN_DEFAULT_MOMENTUM),
    })
}
