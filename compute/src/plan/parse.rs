//! Each ONNX operator's attributes read into a typed [`Op`], refusing any attribute or value
//! the executor does not implement.

use cema_core::onnx::pb::{AttributeProto, NodeProto};

use super::{Builder, Op, Window};
use crate::error::GraphError;

/// Reads a node's attributes, refusing any it does not list.
pub(super) struct Attributes<'n> {
    node: &'n NodeProto,
    name: String,
}

impl<'n> Attributes<'n> {
    pub(super) fn new(node: &'n NodeProto, name: &str, known: &[&str]) -> Result<Self, GraphError> {
        if let Some(unknown) = node.attribute.iter().find(|a| !known.contains(&a.name())) {
            return Err(GraphError::UnsupportedAttribute {
                node: name.to_owned(),
                op: node.op_type().to_owned(),
                detail: format!("attribute `{}` is not supported", unknown.name()),
            });
        }
        Ok(Self { node, name: name.to_owned() })
    }

    pub(super) fn get(&self, key: &str) -> Option<&'n AttributeProto> {
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

    pub(super) fn refuse(&self, detail: String) -> GraphError {
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

pub(super) fn parse(
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
