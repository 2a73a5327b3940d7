//! Errors of loading and running a graph.

use cema_core::ModelError;

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
        reason: String,
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
    #[error("node `{node}`: {detail}")]
    Shape {
        /// Node name.
        node: String,
        /// What is wrong.
        detail: String,
    },
}
