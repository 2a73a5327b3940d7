//! The load-time plan: every node of the ONNX graph parsed into a typed operation whose
//! attributes are all understood, with values numbered in evaluation order.

use std::collections::HashMap;

use cema_core::onnx::pb::{NodeProto, TensorProto, tensor_proto::DataType};
use cema_core::onnx::read_f32;
use cema_core::{NormDiscovery, NormLayer, OnnxModel};

use crate::error::GraphError;

mod parse;

use parse::{Attributes, parse};

/// Operators the executor implements (default ONNX domain).
pub const SUPPORTED_OPS: [&str; 26] = [
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Concat",
    "Constant",
    "Conv",
    "Div",
    "Dropout",
    "Flatten",
    "Gemm",
    "GlobalAveragePool",
    "HardSigmoid",
    "Identity",
    "MatMul",
    "MaxPool",
    "Mul",
    "Pad",
    "ReduceMean",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Sigmoid",
    "Softmax",
    "Sub",
    "Sum",
];

/// 2-D window geometry shared by convolution and pooling.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Window {
    pub(crate) kernel: [usize; 2],
    pub(crate) stride: [usize; 2],
    /// `(begin, end)` per spatial axis.
    pub(crate) padding: [(usize, usize); 2],
    pub(crate) dilation: [usize; 2],
}

/// One operation with its attributes resolved.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    Conv {
        window: Window,
        groups: usize,
    },
    BatchNorm {
        layer: usize,
    },
    Relu,
    Sigmoid,
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    Clip {
        min: Option<f32>,
        max: Option<f32>,
    },
    Add,
    Sub,
    Mul,
    Div,
    MaxPool {
        window: Window,
        ceil: bool,
    },
    AvgPool {
        window: Window,
        ceil: bool,
        count_include_pad: bool,
    },
    GlobalAvgPool,
    Flatten {
        axis: i64,
    },
    Reshape {
        shape: Vec<i64>,
    },
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    MatMul,
    Pad {
        pads: Vec<i64>,
        value: f32,
    },
    Concat {
        axis: i64,
    },
    Identity,
    /// `ReduceMean` (`mean`) or `ReduceSum` over `axes` (every axis when empty).
    Reduce {
        mean: bool,
        axes: Vec<i64>,
        keepdims: bool,
    },
    /// `legacy`: opset < 13, where softmax flattens the axes from `axis` on.
    Softmax {
        axis: i64,
        legacy: bool,
    },
}

/// One step: an operation reading value slots and writing one.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub(crate) node: String,
    pub(crate) op: Op,
    pub(crate) inputs: Vec<usize>,
    pub(crate) output: usize,
}

/// A float tensor known at load time: an initializer or a Constant node's value.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) name: String,
    pub(crate) dims: Vec<usize>,
    pub(crate) values: Vec<f32>,
    /// Whether it came from an initializer (so export can write it back).
    pub(crate) initializer: bool,
}

/// The parsed graph.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) steps: Vec<Step>,
    /// Number of value slots.
    pub(crate) slots: usize,
    /// Slot of the graph input.
    pub(crate) input: usize,
    /// Slot of the graph output (the logits).
    pub(crate) output: usize,
    /// Stored float tensors and the slot each fills.
    pub(crate) stored: Vec<(usize, Stored)>,
    /// The adaptable normalisation layers, in graph order.
    pub(crate) norm_layers: Vec<NormLayer>,
}

#[derive(Default)]
struct Builder {
    slots: HashMap<String, usize>,
    stored: Vec<(usize, Stored)>,
    ints: HashMap<String, Vec<i64>>,
    floats: HashMap<String, Vec<f32>>,
}

impl Builder {
    fn slot(&mut self, name: &str) -> usize {
        let next = self.slots.len();
        *self.slots.entry(name.to_owned()).or_insert(next)
    }

    fn defined(&self, node: &str, name: &str) -> Result<usize, GraphError> {
        self.slots
            .get(name)
            .copied()
            .ok_or_else(|| GraphError::UndefinedInput { node: node.to_owned(), input: name.to_owned() })
    }

    fn store(&mut self, name: &str, dims: Vec<usize>, values: Vec<f32>, initializer: bool) {
        self.floats.insert(name.to_owned(), values.clone());
        let slot = self.slot(name);
        self.stored.push((slot, Stored { name: name.to_owned(), dims, values, initializer }));
    }

    fn add_tensor(&mut self, name: &str, tensor: &TensorProto, initializer: bool) -> Result<(), GraphError> {
        match DataType::try_from(tensor.data_type()) {
            Ok(DataType::Float) => {
                let values = read_f32(tensor).map_err(|e| GraphError::Model(e.into()))?;
                let dims = tensor.dims.iter().map(|&d| d.max(0) as usize).collect();
                self.store(name, dims, values, initializer);
            }
            Ok(DataType::Int64) => {
                let values = match tensor.raw_data.as_deref() {
                    Some(raw) => {
                        raw.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).collect()
                    }
                    None => tensor.int64_data.clone(),
                };
                self.ints.insert(name.to_owned(), values);
            }
            // Other element types only matter if a node reads them; it will then be refused.
            _ => {}
        }
        Ok(())
    }

    fn const_ints(&self, node: &str, name: &str) -> Result<Vec<i64>, GraphError> {
        self.ints
            .get(name)
            .cloned()
            .ok_or_else(|| GraphError::NotConstant { node: node.to_owned(), input: name.to_owned() })
    }

    fn const_scalar(&self, node: &str, name: &str) -> Result<Option<f32>, GraphError> {
        if name.is_empty() {
            return Ok(None);
        }
        match self.floats.get(name) {
            Some(v) if v.len() == 1 => Ok(Some(v[0])),
            _ => Err(GraphError::NotConstant { node: node.to_owned(), input: name.to_owned() }),
        }
    }
}

fn node_name(node: &NodeProto, index: usize) -> String {
    if node.name().is_empty() { format!("#{index}") } else { node.name().to_owned() }
}

impl Plan {
    /// Parses a model. The graph must have one fed input and one output (the logits).
    pub(crate) fn of(model: &OnnxModel) -> Result<Self, GraphError> {
        let discovery = NormDiscovery::of(model);
        if let Some(u) = discovery.unsupported.first() {
            return Err(GraphError::UnsupportedNorm {
                node: u.node.clone(),
                op: u.op_type.clone(),
                reason: u.reason.clone(),
            });
        }
        let inputs = model.input_names();
        let [input_name] = inputs.as_slice() else {
            return Err(GraphError::Graph(format!("expected exactly one fed input, found {inputs:?}")));
        };
        let outputs = model.output_names();
        let [output_name] = outputs.as_slice() else {
            return Err(GraphError::Graph(format!("expected exactly one output (the logits), found {outputs:?}")));
        };
        let mut b = Builder::default();
        let input = b.slot(input_name);
        for tensor in &model.graph().initializer {
            b.add_tensor(tensor.name(), tensor, true)?;
        }
        let opset =
            model.proto().opset_import.iter().find(|o| matches!(o.domain(), "" | "ai.onnx")).map_or(1, |o| o.version());
        let mut steps = Vec::new();
        let mut norm_index = 0;
        for (index, node) in model.nodes().iter().enumerate() {
            let name = node_name(node, index);
            let op_type = node.op_type();
            if !matches!(node.domain(), "" | "ai.onnx") || !SUPPORTED_OPS.contains(&op_type) {
                let op =
                    if node.domain().is_empty() { op_type.to_owned() } else { format!("{}::{op_type}", node.domain()) };
                return Err(GraphError::UnsupportedOp { node: name, op });
            }
            if op_type == "Constant" {
                let attrs = Attributes::new(node, &name, &["value"])?;
                let tensor = attrs
                    .get("value")
                    .and_then(|a| a.t.as_ref())
                    .ok_or_else(|| attrs.refuse("only the `value` form of Constant is supported".to_owned()))?;
                let output = node.output.first().cloned().unwrap_or_default();
                b.add_tensor(&output, tensor, false)?;
                continue;
            }
            let op = parse(node, &name, op_type, opset, &b, &mut norm_index)?;
            // Data inputs: those the operation reads as tensors at run time.
            let data_inputs: Vec<&String> = match op {
                Op::BatchNorm { .. } | Op::Reshape { .. } | Op::Pad { .. } | Op::Clip { .. } | Op::Reduce { .. } => {
                    node.input.iter().take(1).collect()
                }
                _ => node.input.iter().filter(|i| !i.is_empty()).collect(),
            };
            let inputs = data_inputs.into_iter().map(|i| b.defined(&name, i)).collect::<Result<Vec<_>, _>>()?;
            let outputs: Vec<&String> = node.output.iter().filter(|o| !o.is_empty()).collect();
            // Dropout may name its mask output; a node that reads it is refused as undefined input.
            let extra_outputs_allowed = op_type == "Dropout";
            if outputs.is_empty() || (outputs.len() > 1 && !extra_outputs_allowed) {
                return Err(GraphError::UnsupportedAttribute {
                    node: name,
                    op: op_type.to_owned(),
                    detail: format!("{} outputs; only the first output is supported", outputs.len()),
                });
            }
            let output = b.slot(outputs[0]);
            steps.push(Step { node: name, op, inputs, output });
        }
        let output = b.defined("graph output", output_name)?;
        Ok(Plan { steps, slots: b.slots.len(), input, output, stored: b.stored, norm_layers: discovery.layers })
    }
}
