//! The CEMA cloud service: the device [`registry`] (per-device bearer tokens, stored as
//! SHA-256 hashes), the `cema.v1.Cema` gRPC [`service`] (register, ingest, parameter
//! broadcast), the durable [`store`] (sled + write-ahead log), the served [`model`]s and
//! adaptation [`scope`]s, the adaptation [`engine`] that schedules each scope's rounds
//! (`cema_compute::adapt` runs CEMA's steps) and draws from its [`replay`] buffer, the
//! operators' access ([`operator`]: operator token, device management on
//! a running cloud), [`certs`] (a private CA for TLS and mutual TLS, `cema-cloud tls init`),
//! and the [`server`] that binds them with the admin HTTP endpoints. The model tools
//! (pretraining, checks, evaluation, benchmarks) are `cema-tools` (`tools/`), so the service
//! depends on neither the edge's runtime nor the data sets.

pub mod backup;
pub mod certs;
pub mod engine;
pub mod metrics;
pub mod model;
pub mod operator;
pub mod registry;
pub mod replay;
pub mod scope;
pub mod server;
pub mod service;
pub mod store;

pub use model::ModelEntry;
pub use registry::{AuthError, Device, DeviceRegistry, RegistryError};
pub use scope::{ScopeId, ScopeKind};
