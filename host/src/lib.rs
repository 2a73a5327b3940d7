//! What both CEMA binaries need from their host, below the edge and the cloud: ONNX Runtime
//! loaded once per process with sessions built one way ([`ort`]), the admin HTTP endpoints
//! and the Prometheus text format ([`admin`]), logging ([`init_logging`]) and graceful stops
//! on signals ([`termination`]). It knows nothing of CEMA's algorithm or its wire contract.

pub mod admin;
mod logging;
pub mod ort;
mod signal;

pub use logging::init_logging;
pub use ort::{OrtError, OrtLibrary};
pub use signal::termination;
