//! A small builder for ONNX graphs: how the project writes its own models (generated test
//! models, exported built-ins) without depending on Python tooling.

use super::model::{ModelError, OnnxModel};
use super::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto, attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
};
use super::tensor::f32_tensor;

/// ONNX IR version written by the builder (ONNX 1.13+, understood by every current runtime).
const IR_VERSION: i64 = 8;

/// Builds an ONNX graph node by node. Dims of `None` in inputs and outputs are symbolic
/// (named `N`, the batch axis).
#[derive(Debug)]
pub struct GraphBuilder {
    graph: GraphProto,
    opset: i64,
}

/// A node attribute value.
#[derive(Debug, Clone)]
pub enum Attr {
    /// A single integer.
    Int(i64),
    /// A list of integers.
    Ints(Vec<i64>),
    /// A single float.
    Float(f32),
    /// A string (stored as bytes).
    Str(&'static str),
}

impl GraphBuilder {
    /// Starts a graph with the given name and default-domain opset version.
    pub fn new(name: &str, opset: i64) -> Self {
        Self { graph: GraphProto { name: Some(name.to_owned()), ..GraphProto::default() }, opset }
    }

    /// Declares a float graph input.
    pub fn input(&mut self, name: &str, dims: &[Option<i64>]) -> String {
        self.graph.input.push(value_info(name, dims));
        name.to_owned()
    }

    /// Declares a float graph output.
    pub fn output(&mut self, name: &str, dims: &[Option<i64>]) {
        self.graph.output.push(value_info(name, dims));
    }

    /// Adds an f32 initializer and returns its name.
    pub fn initializer(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        self.graph.initializer.push(f32_tensor(name, dims, values));
        name.to_owned()
    }

    /// Adds an arbitrary initializer (for int64 shapes and the like).
    pub fn raw_initializer(&mut self, tensor: TensorProto) -> String {
        let name = tensor.name().to_owned();
        self.graph.initializer.push(tensor);
        name
    }

    /// Adds an int64 initializer (shapes, pads) and returns its name.
    pub fn int64_initializer(&mut self, name: &str, values: &[i64]) -> String {
        self.raw_initializer(TensorProto {
            name: Some(name.to_owned()),
            dims: vec![values.len() as i64],
            data_type: Some(DataType::Int64 as i32),
            int64_data: values.to_vec(),
            ..TensorProto::default()
        })
    }

    /// Adds a node of the default domain; returns the name of its first output.
    pub fn node(&mut self, op_type: &str, inputs: &[&str], outputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        let name = format!("{op_type}_{}", self.graph.node.len());
        self.graph.node.push(NodeProto {
            name: Some(name),
            op_type: Some(op_type.to_owned()),
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: outputs.iter().map(|s| (*s).to_owned()).collect(),
            attribute: attrs.iter().map(|(n, v)| attribute(n, v)).collect(),
            ..NodeProto::default()
        });
        outputs.first().map(|s| (*s).to_owned()).unwrap_or_default()
    }

    /// Adds a `BatchNormalization` node with initializers `{prefix}.weight|bias|running_mean|running_var`
    /// (the names PyTorch exports) and returns its output name.
    pub fn batch_norm(&mut self, input: &str, prefix: &str, params: [&[f32]; 4], epsilon: f32) -> String {
        let channels = params[0].len();
        let names = ["weight", "bias", "running_mean", "running_var"]
            .iter()
            .zip(params)
            .map(|(suffix, values)| self.initializer(&format!("{prefix}.{suffix}"), &[channels], values))
            .collect::<Vec<_>>();
        let output = format!("{prefix}.out");
        self.node(
            "BatchNormalization",
            &[input, &names[0], &names[1], &names[2], &names[3]],
            &[&output],
            &[("epsilon", Attr::Float(epsilon))],
        )
    }

    /// Finishes the model and validates it like any decoded model.
    pub fn build(self) -> Result<OnnxModel, ModelError> {
        OnnxModel::from_proto(ModelProto {
            ir_version: Some(IR_VERSION),
            producer_name: Some("cema".to_owned()),
            producer_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            graph: Some(self.graph),
            opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(self.opset) }],
            ..ModelProto::default()
        })
    }
}

pub(crate) fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Some(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                None => tensor_shape_proto::dimension::Value::DimParam("N".to_owned()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_owned()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    }
}

pub(crate) fn attribute(name: &str, value: &Attr) -> AttributeProto {
    let mut attr = AttributeProto { name: Some(name.to_owned()), ..AttributeProto::default() };
    match value {
        Attr::Int(v) => {
            attr.r#type = Some(AttributeType::Int as i32);
            attr.i = Some(*v);
        }
        Attr::Ints(v) => {
            attr.r#type = Some(AttributeType::Ints as i32);
            attr.ints = v.clone();
        }
        Attr::Float(v) => {
            attr.r#type = Some(AttributeType::Float as i32);
            attr.f = Some(*v);
        }
        Attr::Str(v) => {
            attr.r#type = Some(AttributeType::String as i32);
            attr.s = Some(v.as_bytes().to_vec());
        }
    }
    attr
}
