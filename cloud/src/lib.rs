//! The CEMA cloud service.
//!
//! Built so far: the device [`registry`], which issues per-device bearer tokens (shown once,
//! stored only as SHA-256 hashes in sled) and authenticates them in constant time, and
//! [`check`], which tells a user whether their ONNX model can be adapted. The gRPC service,
//! ingest, the adaptation engine and parameter broadcast build on them.

pub mod bench;
pub mod check;
pub mod registry;

pub use registry::{AuthError, Device, DeviceRegistry, RegistryError};
