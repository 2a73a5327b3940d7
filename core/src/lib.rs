//! Pure logic shared by the CEMA edge agent and the cloud service.
//!
//! What lives here: ONNX model decoding and encoding ([`onnx`]), discovery of the
//! normalisation layers CEMA adapts ([`norm`]), the versioned normalisation parameters
//! that travel from cloud to edge ([`params`]), the model manifest that describes a
//! model's input and classes ([`manifest`]), numerically stable softmax and entropy
//! ([`math`]), the compact codec for uploaded samples ([`codec`]), manifest drafts
//! ([`draft`]) and a version-stable random generator ([`rng`]: shift data and replay draws
//! stay bit-identical).
//!
//! What does not: networking, storage, inference engines and training. Those belong to
//! `cema-host` and `cema-edge` (ONNX Runtime), `cema-compute` (burn) and `cema-cloud`; all
//! build on the types here so that the two sides agree byte for byte.

pub mod codec;
pub mod draft;
pub mod manifest;
pub mod math;
pub mod norm;
pub mod onnx;
pub mod params;
pub mod rng;

pub use codec::{CodecError, Compression, DecodeLimits, EncodedSample, Encoding, SampleValues};
pub use manifest::{Manifest, ManifestError};
pub use norm::{NormDiscovery, NormLayer, NormRefusal, StatsInit, UnsupportedNorm};
pub use onnx::{ModelError, ModelFingerprint, OnnxModel};
pub use params::{NormParams, NormTensor, ParamsError};
