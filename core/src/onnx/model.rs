//! Decoding, validating, encoding and fingerprinting whole ONNX models.

use std::fmt;
use std::path::Path;

use prost::Message;
use sha2::{Digest, Sha256};

use super::pb::{GraphProto, ModelProto, NodeProto, TensorProto};
use super::tensor::{TensorError, check_storage};

/// Why bytes could not be used as an ONNX model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be read.
    #[error("cannot read model file {path}: {source}")]
    Io {
        /// The path that was opened.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The bytes are not a valid protobuf `ModelProto` (often a truncated or non-ONNX file).
    #[error("not a valid ONNX model (truncated or corrupt protobuf): {0}")]
    Decode(#[from] prost::DecodeError),
    /// The model has no graph, or a graph without inputs, outputs or nodes.
    #[error("ONNX model is incomplete: {0}")]
    Incomplete(&'static str),
    /// The model declares no operator set.
    #[error("ONNX model declares no opset_import; cannot tell which operator semantics apply")]
    NoOpset,
    /// A stored tensor is unusable.
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// An initializer name occurs twice.
    #[error("initializer `{0}` is defined more than once")]
    DuplicateInitializer(String),
    /// A replacement names an initializer the model does not have.
    #[error("the model has no initializer `{0}`")]
    UnknownInitializer(String),
}

/// SHA-256 of a model's canonical protobuf encoding: the identity a device registers with.
///
/// Canonical means decode → encode with this crate's types, so the fingerprint does not depend on
/// how the exporting tool ordered or packed fields, and it survives any number of round trips.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelFingerprint(pub [u8; 32]);

impl ModelFingerprint {
    /// Lower-case hex, as shown to users and sent over the wire.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }
}

impl fmt::Display for ModelFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ModelFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelFingerprint({})", self.to_hex())
    }
}

/// A decoded, structurally validated ONNX model.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxModel {
    proto: ModelProto,
}

impl OnnxModel {
    /// Reads and decodes a model file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let bytes =
            std::fs::read(path).map_err(|source| ModelError::Io { path: path.display().to_string(), source })?;
        Self::decode(&bytes)
    }

    /// Decodes model bytes and validates the parts this project relies on: a graph with inputs,
    /// outputs and nodes, an opset, and initializers whose stored data matches their dims and
    /// lives inside the file.
    pub fn decode(bytes: &[u8]) -> Result<Self, ModelError> {
        Self::from_proto(ModelProto::decode(bytes)?)
    }

    /// Validates an already decoded `ModelProto`.
    pub fn from_proto(proto: ModelProto) -> Result<Self, ModelError> {
        let graph = proto.graph.as_ref().ok_or(ModelError::Incomplete("no graph"))?;
        if graph.node.is_empty() {
            return Err(ModelError::Incomplete("graph has no nodes"));
        }
        if graph.input.is_empty() {
            return Err(ModelError::Incomplete("graph has no inputs"));
        }
        if graph.output.is_empty() {
            return Err(ModelError::Incomplete("graph has no outputs"));
        }
        if proto.opset_import.is_empty() {
            return Err(ModelError::NoOpset);
        }
        let mut seen = std::collections::HashSet::new();
        for tensor in &graph.initializer {
            if !seen.insert(tensor.name()) {
                return Err(ModelError::DuplicateInitializer(tensor.name().to_owned()));
            }
            check_storage(tensor)?;
        }
        Ok(Self { proto })
    }

    /// The underlying protobuf message.
    pub fn proto(&self) -> &ModelProto {
        &self.proto
    }

    /// Consumes the model, returning the protobuf message.
    pub fn into_proto(self) -> ModelProto {
        self.proto
    }

    /// The main graph (present by construction).
    pub fn graph(&self) -> &GraphProto {
        self.proto.graph.as_ref().unwrap_or_else(|| unreachable!("validated in from_proto"))
    }

    /// The graph's nodes in file order.
    pub fn nodes(&self) -> &[NodeProto] {
        &self.graph().node
    }

    /// The initializer with this name, if any.
    pub fn initializer(&self, name: &str) -> Option<&TensorProto> {
        self.graph().initializer.iter().find(|t| t.name() == name)
    }

    /// Names of the graph inputs that are not initializers: what a caller must feed.
    pub fn input_names(&self) -> Vec<&str> {
        let graph = self.graph();
        graph
            .input
            .iter()
            .map(|i| i.name())
            .filter(|name| !graph.initializer.iter().any(|t| t.name() == *name))
            .collect()
    }

    /// Names of the graph outputs.
    pub fn output_names(&self) -> Vec<&str> {
        self.graph().output.iter().map(|o| o.name()).collect()
    }

    /// The canonical protobuf encoding.
    pub fn encode(&self) -> Vec<u8> {
        self.proto.encode_to_vec()
    }

    /// The model's fingerprint (SHA-256 of [`encode`](Self::encode)).
    pub fn fingerprint(&self) -> ModelFingerprint {
        ModelFingerprint(Sha256::digest(self.encode()).into())
    }

    /// A copy whose named initializers hold new f32 values (stored as little-endian raw data).
    /// Each name must exist and each value count must equal the initializer's element count.
    pub fn with_f32_initializers<'a>(
        &self,
        values: impl IntoIterator<Item = (&'a str, &'a [f32])>,
    ) -> Result<OnnxModel, ModelError> {
        let mut patched = self.clone();
        let graph = patched.proto.graph.as_mut().unwrap_or_else(|| unreachable!("validated in from_proto"));
        for (name, new) in values {
            let tensor = graph
                .initializer
                .iter_mut()
                .find(|t| t.name() == name)
                .ok_or_else(|| ModelError::UnknownInitializer(name.to_owned()))?;
            let expected = super::tensor::element_count(tensor)?;
            if new.len() != expected {
                return Err(ModelError::Tensor(TensorError::LengthMismatch {
                    name: name.to_owned(),
                    dims: tensor.dims.clone(),
                    expected,
                    actual: new.len(),
                    unit: "elements",
                }));
            }
            tensor.data_type = Some(super::pb::tensor_proto::DataType::Float as i32);
            tensor.float_data.clear();
            tensor.raw_data = Some(super::tensor::f32_le_bytes(new));
        }
        Ok(patched)
    }
}
