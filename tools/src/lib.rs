//! CEMA's model tools, apart from the service: the built-in models' names, manifests and
//! recipes ([`builtin`]), their pretraining with burn ([`pretrain`]), whether any ONNX model
//! can be adapted ([`check`]), accuracy under the corruption benchmark with ONNX Runtime
//! ([`evaluate`]), and what the cloud's compute and ingest cost ([`bench`]). The `cema-model`
//! binary drives them. They need the data sets (`cema-shift`) and the edge's runtime
//! (`cema-edge`); the cloud service (`cema-cloud`) needs neither, which is why they live here.

pub mod bench;
pub mod builtin;
pub mod check;
pub mod evaluate;
pub mod pretrain;
