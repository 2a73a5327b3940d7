//! Errors of loading and running a graph.

use cema_core::{ModelError, NormRefusal};

/// Why a model cannot run on the burn executor. Load-time errors name the node and what is
/// missing, so a user knows exactly what to change; the executor never computes a wrong answer
/// for a construct it does not understand.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The model file is unusable.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// An operator the executor does not implement.
    #[error("node `{node}`: operator {op} is not supported (supported: {})", crate::plan::SUPPORTED_OPS.join(", "))]
    UnsupportedOp {
        /// Node name.
        node: String,
        /// Operator type (with its domain if not the default one).
        op: String,
    },
    /// An attribute, or an attribute value, the executor does not implement.
    #[error("node `{node}` ({op}): {detail}")]
    UnsupportedAttribute {
        /// Node name.
        node: String,
        /// Operator type.
        op: String,
        /// What is not supported.
        detail: String,
    },
    /// A normalisation node that cannot be adapted (see `cema_core::NormDiscovery`).
    #[error("node `{node}` ({op}): {reason}")]
    UnsupportedNorm {
        /// Node name.
        node: String,
        /// Operator type.
        op: String,
        /// Why.
        reason: NormRefusal,
    },
    /// An input the node needs is neither produced by an earlier node nor stored in the model.
    #[error("node `{node}`: input `{input}` is not defined before it")]
    UndefinedInput {
        /// Node name.
        node: String,
        /// The missing value.
        input: String,
    },
    /// An input that must be known at load time (a shape, pads, bounds) is computed at run time.
    #[error("node `{node}`: input `{input}` must be a constant (initializer or Constant node)")]
    NotConstant {
        /// Node name.
        node: String,
        /// The input.
        input: String,
    },
    /// The graph's input or output is not what a classifier has.
    #[error("graph: {0}")]
    Graph(String),
    /// A run-time shape problem (wrong input size, rank above 4, incompatible operands).
    #[error("node `{node}`: {source}")]
    Shape {
        /// Node name.
        node: String,
        /// What is wrong.
        source: ShapeError,
    },
}

/// Why an operator cannot run on the values it was given (found at run time, when shapes are
/// known); [`GraphError::Shape`] names the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// An input the operator needs is absent.
    #[error("missing {0}")]
    MissingInput(&'static str),
    /// A value slot was read before any node wrote it.
    #[error("input slot {0} has no value")]
    UnsetSlot(usize),
    /// A normalisation layer's stored tensor is unset.
    #[error("unset normalisation tensor")]
    UnsetNormTensor,
    /// The operator takes a different number of inputs.
    #[error("expects {expected} inputs, got {actual}")]
    InputCount {
        /// Inputs it takes.
        expected: usize,
        /// Inputs it got.
        actual: usize,
    },
    /// An operand has the wrong rank.
    #[error("{what} must have rank {expected}, got rank {actual}")]
    Rank {
        /// Which operand.
        what: &'static str,
        /// The rank(s) it must have.
        expected: &'static str,
        /// Its rank.
        actual: usize,
    },
    /// A value would have a rank above the executor's 4.
    #[error("rank {0} exceeds the supported 4")]
    RankTooHigh(usize),
    /// An axis outside the value's rank.
    #[error("axis {axis} is out of range for rank {rank}")]
    Axis {
        /// The axis as given.
        axis: i64,
        /// The value's rank.
        rank: usize,
    },
    /// A Reshape that cannot hold the input's elements.
    #[error("cannot reshape {dims:?} into {shape:?}")]
    Reshape {
        /// The input's dims.
        dims: Vec<usize>,
        /// The shape asked for.
        shape: Vec<i64>,
    },
    /// Pads that do not match the rank.
    #[error("{pads} pads for rank {rank}")]
    Pads {
        /// Pads given.
        pads: usize,
        /// The value's rank.
        rank: usize,
    },
    /// A normalisation input whose channel count is not the layer's.
    #[error("input has {actual} channels, the layer {expected}")]
    Channels {
        /// The layer's channels.
        expected: usize,
        /// The input's.
        actual: usize,
    },
    /// Batch statistics over fewer than two values per channel.
    #[error("batch statistics need at least two values per channel")]
    TooFewForStatistics,
    /// A case of a supported operator that the executor does not implement.
    #[error("{0} is not supported")]
    Unsupported(&'static str),
}
