//! The CEMA cloud service: the device [`registry`] (per-device bearer tokens, stored as
//! SHA-256 hashes), the `cema.v1.Cema` gRPC [`service`] (register, ingest, parameter
//! broadcast), the durable [`store`] (sled + write-ahead log), the adaptation [`engine`] and its
//! step ([`adapt`]), the operators' access ([`operator`]: operator token, device management on
//! a running cloud), [`certs`] (a private CA for TLS and mutual TLS, `cema-cloud tls init`),
//! and the [`server`] that binds them with the admin HTTP endpoints. The
//! model tools (`check`, `evaluate`, `pretrain`, `builtin`, `bench`) live here too for now.

pub mod adapt;
pub mod backup;
pub mod bench;
pub mod builtin;
pub mod certs;
pub mod check;
pub mod engine;
pub mod evaluate;
pub mod metrics;
pub mod operator;
pub mod pretrain;
pub mod registry;
pub mod server;
pub mod service;
pub mod store;

pub use registry::{AuthError, Device, DeviceRegistry, RegistryError};
