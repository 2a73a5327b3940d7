//! The CEMA edge agent: forward-only inference on the device.
//!
//! Built so far: the ONNX Runtime [`runtime`], which loads the runtime library once per
//! process, builds sessions from a model and its manifest, predicts batches with entropies,
//! and prepares sessions with new normalisation parameters off the inference path so they can
//! be swapped in between batches. Selection, the durable outbox, the uploader, the parameter
//! watcher and the binary build on it.
//!
//! The edge never trains: every parameter change arrives from the cloud as a complete
//! [`cema_core::NormParams`] version and is applied by rebuilding the session from a patched
//! model (see [`cema_core::params`] for why patching is the only reliable way).

pub mod runtime;

pub use runtime::{OrtLibrary, Prediction, PreparedSession, Runtime, RuntimeError};
