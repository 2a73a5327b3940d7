//! ONNX models as protobuf messages: decoding with clear errors, canonical encoding,
//! fingerprints, f32 tensor access, a small graph builder, and the rewrite that measures
//! first-batch normalisation statistics forward-only.
//!
//! The message types in [`pb`] are generated from the full `onnx-ml.proto` (ONNX 1.23), not
//! a subset: prost drops fields it does not know, so a subset would make decode → encode
//! lossy for models that use them.

mod builder;
pub mod generate;
mod model;
mod statistics;
mod tensor;

pub use builder::{Attr, GraphBuilder};
pub use model::{ModelError, ModelFingerprint, OnnxModel};
pub use statistics::{StatisticsModel, first_batch_statistics_model, observed_statistics_model};
pub use tensor::{TensorError, f32_le_bytes, f32_tensor, read_f32};

/// Protobuf types generated from `onnx-ml.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}
