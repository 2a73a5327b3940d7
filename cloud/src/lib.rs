//! The CEMA cloud service.
//!
//! Built so far: the device [`registry`], which issues per-device bearer tokens (shown once,
//! stored only as SHA-256 hashes in sled) and authenticates them in constant time, and
//! [`check`], which tells a user whether their ONNX model can be adapted. The gRPC service,
//! ingest, the adaptation engine and parameter broadcast build on them.

pub mod adapt;
pub mod bench;
pub mod builtin;
pub mod check;
pub mod engine;
pub mod evaluate;
pub mod metrics;
pub mod pretrain;
pub mod registry;
pub mod server;
pub mod service;
pub mod store;

pub use registry::{AuthError, Device, DeviceRegistry, RegistryError};
