//! The CEMA cloud step, exactly as `docs/algorithm.md` states it: a foundation step
//! (EATA-weighted entropy, TBR), a distillation step into the edge model (`α·Ent + β·KL + γ·CE`
//! with reliability weights, TBR), the replay-only variant, and the order a round runs them in
//! ([`Adapter::round`]). Only γ/β are trained; running statistics follow TBR's momentum update;
//! every other weight is never touched.
//!
//! One [`Adapter`] per model id holds the two loaded graphs; each adaptation scope's state
//! ([`ScopeState`]: normalisation parameters and momentum of both models) is swapped in for a
//! step and taken out after it, so a thousand idle scopes cost a thousand small states, not a
//! thousand copies of the networks. Queues, storage and publishing are the cloud service's.

mod adapter;
mod config;
mod round;

use cema_core::ManifestError;

use crate::GraphError;

pub use adapter::{Adapter, DistillReport, ScopeState};
pub use config::{
    AdaptConfig, CloudMethod, DEFAULT_MAX_QUEUE_SECONDS, DEFAULT_MAX_WAIT_SECONDS, DEFAULT_RESET_AFTER_REVERTS,
    MAX_IDLE_REPLAY_STEPS, StatsInit, StudentStatistics,
};
pub use round::{DistillKind, DistilledStep, Replay, RoundInput, RoundOutcome};

/// Why the cloud step cannot be built or run.
#[derive(Debug, thiserror::Error)]
pub enum AdaptError {
    /// The `[models.<id>.adapt]` settings are out of range (every problem listed).
    #[error("adaptation settings: {}", .0.join("; "))]
    Settings(Vec<String>),
    /// The two models cannot distil into each other.
    #[error("the edge and foundation models' manifests list different classes")]
    ClassesDiffer,
    /// A manifest disagrees with its model.
    #[error("{role} model: {source}")]
    Manifest {
        /// `edge` or `foundation`.
        role: &'static str,
        /// What disagrees.
        source: ManifestError,
    },
    /// The burn executor cannot load a model.
    #[error("{role} model: {source}")]
    Load {
        /// `edge` or `foundation`.
        role: &'static str,
        /// Why.
        source: GraphError,
    },
    /// The edge model has nothing CEMA adapts.
    #[error("the edge model has no normalisation layer to adapt")]
    NothingToAdapt,
    /// A sample does not fit the model input.
    #[error("a sample has {actual} values, the model input {expected}")]
    SampleSize {
        /// Values in the sample.
        actual: usize,
        /// Values the input takes.
        expected: usize,
    },
    /// A forward or backward pass, or restoring state into the graph, failed.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// The replay buffer could not give the samples a step draws.
    #[error("replay buffer: {0}")]
    Replay(#[source] Box<dyn std::error::Error + Send + Sync>),
}
