//! The load-time plan: every node of the ONNX graph parsed into a typed operation whose
//! attributes are all understood, with values numbered in evaluation order.

use std::collections::HashMap;

use cema_core::onnx::pb::{AttributeProto, NodeProto, TensorProto, tensor_proto::DataType};
use cema_core::onnx::read_f32;
use cema_core::{NormDiscovery, NormLayer, OnnxModel};

use crate::error::GraphError;

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

/// Reads a node's attributes, refusing any it does not list.
struct Attributes<'n> {
    node: &'n NodeProto,
    name: String,
}

impl<'n> Attributes<'n> {
    fn new(node: &'n NodeProto, name: &str, known: &[&str]) -> Result<Self, GraphError> {
        if let Some(unknown) = node.attribute.iter().find(|a| !known.contains(&a.name())) {
            return Err(GraphError::UnsupportedAttribute {
                node: name.to_owned(),
                op: node.op_type().to_owned(),
                detail: format!("attribute `{}` is not supported", unknown.name()),
            });
        }
        Ok(Self { node, name: name.to_owned() })
    }

    fn get(&self, key: &str) -> Option<&'n AttributeProto> {
        self.node.attribute.iter().find(|a| a.name() == key)
    }

    fn int(&self, key: &str, default: i64) -> i64 {
        self.get(key).map_or(default, |a| a.i())
    }

    fn float(&self, key: &str, default: f32) -> f32 {
        self.get(key).map_or(default, |a| a.f())
    }

    fn ints(&self, key: &str) -> Option<Vec<i64>> {
        self.get(key).map(|a| a.ints.clone())
    }

    fn string(&self, key: &str) -> Option<String> {
        self.get(key).map(|a| String::from_utf8_lossy(a.s()).into_owned())
    }

    fn refuse(&self, detail: String) -> GraphError {
        GraphError::UnsupportedAttribute { node: self.name.clone(), op: self.node.op_type().to_owned(), detail }
    }

    fn pair(&self, key: &str, default: usize) -> Result<[usize; 2], GraphError> {
        match self.ints(key) {
            None => Ok([default; 2]),
            Some(v) if v.len() == 2 && v.iter().all(|&x| x > 0) => Ok([v[0] as usize, v[1] as usize]),
            Some(v) => Err(self.refuse(format!("`{key}` = {v:?}; two positive values (2-D) are supported"))),
        }
    }

    /// Kernel, strides, pads and dilations of a 2-D window; `auto_pad` must be NOTSET or VALID.
    fn window(&self, kernel: Option<[usize; 2]>) -> Result<Window, GraphError> {
        match self.string("auto_pad").as_deref() {
            None | Some("NOTSET") | Some("VALID") => {}
            Some(other) => {
                return Err(self.refuse(format!("auto_pad={other} is not supported; export with explicit pads")));
            }
        }
        let kernel = match (self.ints("kernel_shape"), kernel) {
            (Some(_), _) => self.pair("kernel_shape", 1)?,
            (None, Some(k)) => k,
            (None, None) => return Err(self.refuse("`kernel_shape` is required".to_owned())),
        };
        let padding = match self.ints("pads") {
            None => [(0, 0); 2],
            Some(p) if p.len() == 4 && p.iter().all(|&x| x >= 0) => {
                [(p[0] as usize, p[2] as usize), (p[1] as usize, p[3] as usize)]
            }
            Some(p) => return Err(self.refuse(format!("`pads` = {p:?}; four non-negative values (2-D) are supported"))),
        };
        Ok(Window { kernel, stride: self.pair("strides", 1)?, padding, dilation: self.pair("dilations", 1)? })
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

fn parse(
    node: &NodeProto,
    name: &str,
    op_type: &str,
    opset: i64,
    b: &Builder,
    norm_index: &mut usize,
) -> Result<Op, GraphError> {
    let attrs = |known: &[&str]| Attributes::new(node, name, known);
    let op = match op_type {
        "Conv" => {
            let a = attrs(&["kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"])?;
            let weight = node.input.get(1).map(String::as_str).unwrap_or_default();
            let kernel = b.floats.get(weight).and_then(|_| {
                b.stored
                    .iter()
                    .find(|(_, s)| s.name == weight)
                    .and_then(|(_, s)| (s.dims.len() == 4).then(|| [s.dims[2], s.dims[3]]))
            });
            if kernel.is_none() && a.ints("kernel_shape").is_some_and(|k| k.len() != 2) {
                return Err(a.refuse("only 2-D convolution is supported".to_owned()));
            }
            let group = a.int("group", 1);
            if group < 1 {
                return Err(a.refuse(format!("group = {group}")));
            }
            Op::Conv { window: a.window(kernel)?, groups: group as usize }
        }
        "BatchNormalization" => {
            attrs(&["epsilon", "momentum", "spatial", "training_mode"])?;
            let layer = *norm_index;
            *norm_index += 1;
            Op::BatchNorm { layer }
        }
        "Relu" => {
            attrs(&[])?;
            Op::Relu
        }
        "Sigmoid" => {
            attrs(&[])?;
            Op::Sigmoid
        }
        "HardSigmoid" => {
            let a = attrs(&["alpha", "beta"])?;
            Op::HardSigmoid { alpha: a.float("alpha", 0.2), beta: a.float("beta", 0.5) }
        }
        "Clip" => {
            let a = attrs(&["min", "max"])?;
            if opset < 11 {
                Op::Clip { min: a.get("min").map(|x| x.f()), max: a.get("max").map(|x| x.f()) }
            } else {
                let input = |i: usize| node.input.get(i).map(String::as_str).unwrap_or_default();
                Op::Clip { min: b.const_scalar(name, input(1))?, max: b.const_scalar(name, input(2))? }
            }
        }
        "Add" | "Sub" | "Mul" | "Div" | "Sum" => {
            attrs(&[])?;
            if op_type == "Sum" && node.input.len() != 2 {
                return Err(GraphError::UnsupportedAttribute {
                    node: name.to_owned(),
                    op: op_type.to_owned(),
                    detail: format!("Sum of {} inputs; two are supported", node.input.len()),
                });
            }
            match op_type {
                "Sub" => Op::Sub,
                "Mul" => Op::Mul,
                "Div" => Op::Div,
                _ => Op::Add,
            }
        }
        "MaxPool" => {
            let a = attrs(&["kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad", "storage_order"])?;
            if a.int("storage_order", 0) != 0 {
                return Err(a.refuse("storage_order=1 is not supported".to_owned()));
            }
            Op::MaxPool { window: a.window(None)?, ceil: a.int("ceil_mode", 0) != 0 }
        }
        "AveragePool" => {
            let a =
                attrs(&["kernel_shape", "strides", "pads", "ceil_mode", "auto_pad", "count_include_pad", "dilations"])?;
            let window = a.window(None)?;
            if window.dilation != [1, 1] {
                return Err(a.refuse("dilated average pooling is not supported".to_owned()));
            }
            Op::AvgPool {
                window,
                ceil: a.int("ceil_mode", 0) != 0,
                count_include_pad: a.int("count_include_pad", 0) != 0,
            }
        }
        "GlobalAveragePool" => {
            attrs(&[])?;
            Op::GlobalAvgPool
        }
        "Flatten" => Op::Flatten { axis: attrs(&["axis"])?.int("axis", 1) },
        "Reshape" => {
            let a = attrs(&["allowzero"])?;
            if a.int("allowzero", 0) != 0 {
                return Err(a.refuse("allowzero=1 is not supported".to_owned()));
            }
            let shape_input = node.input.get(1).cloned().unwrap_or_default();
            Op::Reshape { shape: b.const_ints(name, &shape_input)? }
        }
        "Gemm" => {
            let a = attrs(&["alpha", "beta", "transA", "transB"])?;
            Op::Gemm {
                alpha: a.float("alpha", 1.0),
                beta: a.float("beta", 1.0),
                trans_a: a.int("transA", 0) != 0,
                trans_b: a.int("transB", 0) != 0,
            }
        }
        "MatMul" => {
            attrs(&[])?;
            Op::MatMul
        }
        "Pad" => {
            let a = attrs(&["mode", "pads", "value"])?;
            if let Some(mode) = a.string("mode")
                && mode != "constant"
            {
                return Err(a.refuse(format!("mode={mode}; only constant padding is supported")));
            }
            let (pads, value) = if opset < 11 {
                (a.ints("pads").unwrap_or_default(), a.float("value", 0.0))
            } else {
                if node.input.get(3).is_some_and(|s| !s.is_empty()) {
                    return Err(a.refuse("the `axes` input is not supported".to_owned()));
                }
                let pads = b.const_ints(name, node.input.get(1).map(String::as_str).unwrap_or_default())?;
                let value = b.const_scalar(name, node.input.get(2).map(String::as_str).unwrap_or_default())?;
                (pads, value.unwrap_or(0.0))
            };
            if pads.iter().any(|&p| p < 0) {
                return Err(a.refuse(format!("negative pads {pads:?} (cropping) are not supported")));
            }
            Op::Pad { pads, value }
        }
        "ReduceMean" | "ReduceSum" => {
            let a = attrs(&["axes", "keepdims", "noop_with_empty_axes"])?;
            // `axes` moved from an attribute to an input at opset 18 (ReduceMean) and 13 (ReduceSum).
            let axes_input = node.input.get(1).map(String::as_str).unwrap_or_default();
            let axes = match a.ints("axes") {
                Some(axes) => axes,
                None if !axes_input.is_empty() => b.const_ints(name, axes_input)?,
                None => Vec::new(),
            };
            if axes.is_empty() && a.int("noop_with_empty_axes", 0) != 0 {
                Op::Identity
            } else {
                Op::Reduce { mean: op_type == "ReduceMean", axes, keepdims: a.int("keepdims", 1) != 0 }
            }
        }
        "Concat" => Op::Concat { axis: attrs(&["axis"])?.int("axis", 0) },
        "Identity" => {
            attrs(&[])?;
            Op::Identity
        }
        "Dropout" => {
            let a = attrs(&["ratio", "seed"])?;
            if node.input.get(2).is_some_and(|s| !s.is_empty()) {
                return Err(a.refuse("a `training_mode` input is not supported".to_owned()));
            }
            Op::Identity
        }
        "Softmax" => {
            let a = attrs(&["axis"])?;
            let default = if opset < 13 { 1 } else { -1 };
            Op::Softmax { axis: a.int("axis", default), legacy: opset < 13 }
        }
        other => return Err(GraphError::UnsupportedOp { node: name.to_owned(), op: other.to_owned() }),
    };
    Ok(op)
}
