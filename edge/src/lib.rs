//! The CEMA edge agent: forward-only inference on the device.
//!
//! - [`runtime`]: sessions from a model and manifest (ONNX Runtime itself is loaded once per
//!   process by `cema_host`);
//!   batched predictions with entropies; sessions with new parameters prepared off the
//!   inference path and swapped between batches.
//! - [`selector`]: which predictions are uploaded (cema-spec's bounds and redundancy filter).
//! - [`outbox`]: the durable, bounded queue of selected samples and batch-end markers;
//!   [`store`]: the outbox with the agent's records (selector state, served parameters).
//! - [`link`]: the uploader and the parameter watcher (gRPC, reconnecting).
//! - [`local`]: edge-local adaptation, following the edge's own input statistics.
//! - [`config`]: `cema-edge run`'s layered settings; [`source`]: what it streams.
//! - [`agent`]: what happens to one batch; [`serve`]: the loop over a source that
//!   `cema-edge run` and embedding programs share; [`metrics`] for operations (served by
//!   `cema_host::admin`).
//!
//! The edge never trains: parameter changes arrive from the cloud as complete
//! [`cema_core::NormParams`] versions, or are running statistics measured forward-only (the
//! first batch's, or edge-local adaptation's), and each is applied by rebuilding the session
//! from a patched model (see [`cema_core::params`] for why patching is the only reliable way).

pub mod agent;
mod batch;
pub mod bench;
pub mod config;
pub mod drift;
pub mod guard;
pub mod link;
pub mod local;
pub mod metrics;
pub mod outbox;
pub mod runtime;
pub mod selector;
pub mod serve;
pub mod source;
pub mod store;

pub use agent::{Agent, AgentConfig, AgentError, Pacing, PredictionRecord};
pub use link::CloudLink;
pub use runtime::{OrtLibrary, Prediction, PreparedSession, Preparer, Runtime, RuntimeError};
pub use selector::{Preset, Selector, SelectorConfig};
pub use store::EdgeStore;
