//! Per-layer batch statistics of BatchNormalization inputs, measured forward-only by any ONNX
//! engine: CEMA's first-batch statistics, and the statistics of every served batch that the
//! statistics uplink sends to the cloud.
//!
//! Under `stats_init = first_batch` a model's running statistics are replaced by those of the
//! first batch it sees, with the semantics of TBR in a layer that has none yet: every
//! BatchNormalization layer normalises with its own batch mean and *unbiased* batch variance
//! (`r = 1`, `d = 0`), so the statistics of layer k depend on layers before it normalised that
//! way. A plain inference session cannot measure this (it normalises with the stored
//! statistics), so [`first_batch_statistics_model`] rewrites every adaptable BatchNormalization
//! node into elementary operators that compute and use the batch statistics, and exposes each
//! layer's mean and variance as extra graph outputs. Running it once on the first batch gives
//! the statistics; the served logits of that batch are its logits output. See
//! `docs/algorithm.md`, "First-batch statistics".
//!
//! [`observed_statistics_model`] keeps every node and only adds the same outputs: the mean and
//! unbiased variance of each layer's input as the served model computes it, which is what a
//! TBR forward in the cloud would measure on the same batch ("Statistics uplink").

use super::builder::{Attr, attribute, value_info};
use super::model::{ModelError, OnnxModel};
use super::pb::{NodeProto, TensorProto, tensor_proto::DataType};
use super::tensor::f32_tensor;
use crate::norm::NormDiscovery;

/// A rewritten model and the names of its statistics outputs.
#[derive(Debug, Clone)]
pub struct StatisticsModel {
    /// The model: same input and logits output, plus two outputs per layer.
    pub model: OnnxModel,
    /// Per adaptable layer (discovery order): the outputs holding its batch mean and unbiased
    /// batch variance, each `[channels]`.
    pub outputs: Vec<(String, String)>,
}

/// Rewrites every layer of `discovery` (found in `model`) to normalise with its batch's mean
/// and unbiased variance and to output both. The input may be `[N, C, …]` of any rank ≥ 2;
/// statistics are per channel over every other axis.
pub fn first_batch_statistics_model(
    model: &OnnxModel,
    discovery: &NormDiscovery,
) -> Result<StatisticsModel, ModelError> {
    rewrite(model, discovery, true)
}

/// Adds to `model` the batch mean and unbiased variance of the input of every layer of
/// `discovery`, as outputs; every node stays as it is, so the logits are the served ones.
pub fn observed_statistics_model(model: &OnnxModel, discovery: &NormDiscovery) -> Result<StatisticsModel, ModelError> {
    rewrite(model, discovery, false)
}

fn rewrite(model: &OnnxModel, discovery: &NormDiscovery, normalise: bool) -> Result<StatisticsModel, ModelError> {
    let opset =
        model.proto().opset_import.iter().find(|o| matches!(o.domain(), "" | "ai.onnx")).map_or(1, |o| o.version());
    let mut proto = model.proto().clone();
    let graph = proto.graph.as_mut().ok_or(ModelError::Incomplete("no graph"))?;
    let mut rewrite = Rewrite { opset, nodes: Vec::new(), initializers: Vec::new() };
    rewrite.constants();
    let mut outputs = Vec::new();
    for (index, node) in std::mem::take(&mut graph.node).into_iter().enumerate() {
        let name = if node.name().is_empty() { format!("#{index}") } else { node.name().to_owned() };
        let layer =
            discovery.layers.iter().enumerate().find(|(_, l)| l.node == name && node.op_type() == "BatchNormalization");
        match layer {
            Some((k, layer)) if normalise => {
                let out = node.output.first().cloned().unwrap_or_default();
                outputs.push(rewrite.batch_norm(k, &layer.input, &layer.scale, &layer.bias, layer.epsilon, &out));
            }
            Some((k, layer)) => {
                rewrite.nodes.push(node);
                let moments = rewrite.moments(k, &layer.input);
                outputs.push(rewrite.flat_outputs(k, &moments));
            }
            None => rewrite.nodes.push(node),
        }
    }
    // Shared constants a mode does not use would only make ONNX Runtime warn.
    let used: std::collections::HashSet<&str> =
        rewrite.nodes.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
    let initializers: Vec<TensorProto> =
        rewrite.initializers.iter().filter(|t| used.contains(t.name())).cloned().collect();
    graph.node = rewrite.nodes;
    graph.initializer.extend(initializers);
    for (mean, var) in &outputs {
        graph.output.push(value_info(mean, &[None]));
        graph.output.push(value_info(var, &[None]));
    }
    Ok(StatisticsModel { model: OnnxModel::from_proto(proto)?, outputs })
}

/// The per-channel moments of one layer's input, as `[1, C, 1]` tensors over `[N, C, L]`.
struct Moments {
    /// The input as `[N, C, L]` minus its mean.
    centred: String,
    mean: String,
    /// Unbiased variance.
    var: String,
}

/// Name prefix of every tensor the rewrite adds (kept apart from the model's own names).
const PREFIX: &str = "cema_first_batch";

struct Rewrite {
    opset: i64,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl Rewrite {
    fn node(&mut self, op: &str, inputs: &[&str], output: &str, attrs: &[(&str, Attr)]) -> String {
        self.nodes.push(NodeProto {
            name: Some(format!("{PREFIX}.{output}")),
            op_type: Some(op.to_owned()),
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![output.to_owned()],
            attribute: attrs.iter().map(|(n, v)| attribute(n, v)).collect(),
            ..NodeProto::default()
        });
        output.to_owned()
    }

    fn ints(&mut self, name: &str, values: &[i64]) {
        self.initializers.push(TensorProto {
            name: Some(format!("{PREFIX}.{name}")),
            dims: vec![values.len() as i64],
            data_type: Some(DataType::Int64 as i32),
            int64_data: values.to_vec(),
            ..TensorProto::default()
        });
    }

    /// Shared constants: reshape targets, reduction axes, 1.
    fn constants(&mut self) {
        self.ints("to_ncl", &[0, 0, -1]);
        self.ints("to_c1", &[-1, 1]);
        self.ints("flat", &[-1]);
        self.ints("axes", &[0, 2]);
        self.initializers.push(f32_tensor(&format!("{PREFIX}.one"), &[], &[1.0]));
    }

    /// A reduction over axes 0 and 2 of `[N, C, L]`, keeping dims: `axes` is an attribute
    /// before opset 18 (ReduceMean) or 13 (ReduceSum), an input from then on.
    fn reduce(&mut self, op: &str, input: &str, output: &str) -> String {
        let axes_as_input = self.opset >= if op == "ReduceMean" { 18 } else { 13 };
        if axes_as_input {
            self.node(op, &[input, &format!("{PREFIX}.axes")], output, &[("keepdims", Attr::Int(1))])
        } else {
            self.node(op, &[input], output, &[("axes", Attr::Ints(vec![0, 2])), ("keepdims", Attr::Int(1))])
        }
    }

    /// Mean and unbiased variance per channel of `x` (`[N, C, …]`) over every other axis.
    fn moments(&mut self, k: usize, x: &str) -> Moments {
        let t = |what: &str| format!("{PREFIX}.{k}.{what}");
        let c = |what: &str| format!("{PREFIX}.{what}");
        let x3 = self.node("Reshape", &[x, &c("to_ncl")], &t("x3"), &[]);
        let mean = self.reduce("ReduceMean", &x3, &t("mean3"));
        let centred = self.node("Sub", &[&x3, &mean], &t("centred"), &[]);
        let square = self.node("Mul", &[&centred, &centred], &t("square"), &[]);
        let sum = self.reduce("ReduceSum", &square, &t("sum3"));
        // Values per channel, N·L, from the shape at run time, so any batch size works.
        let shape = self.node("Shape", &[&x3], &t("shape3"), &[]);
        let n_l = self.node("Gather", &[&shape, &c("axes")], &t("n_l"), &[("axis", Attr::Int(0))]);
        let product = self.node("ReduceProd", &[&n_l], &t("count_int"), &[("keepdims", Attr::Int(0))]);
        let count = self.node("Cast", &[&product], &t("count"), &[("to", Attr::Int(DataType::Float as i64))]);
        let dof = self.node("Sub", &[&count, &c("one")], &t("dof"), &[]);
        let var = self.node("Div", &[&sum, &dof], &t("var3"), &[]);
        Moments { centred, mean, var }
    }

    /// The moments of layer `k` as `[C]` outputs: (mean, variance).
    fn flat_outputs(&mut self, k: usize, moments: &Moments) -> (String, String) {
        let t = |what: &str| format!("{PREFIX}.{k}.{what}");
        let flat = format!("{PREFIX}.flat");
        let mean = self.node("Reshape", &[&moments.mean, &flat], &t("mean"), &[]);
        let var = self.node("Reshape", &[&moments.var, &flat], &t("var"), &[]);
        (mean, var)
    }

    /// Replaces layer `k` (input `x`, writing `y`) by normalisation with its batch's mean and
    /// unbiased variance; returns its (mean, variance) outputs.
    fn batch_norm(&mut self, k: usize, x: &str, scale: &str, bias: &str, epsilon: f32, y: &str) -> (String, String) {
        let t = |what: &str| format!("{PREFIX}.{k}.{what}");
        let c = |what: &str| format!("{PREFIX}.{what}");
        let eps = t("eps");
        self.initializers.push(f32_tensor(&eps, &[], &[epsilon]));
        let moments = self.moments(k, x);
        let shifted = self.node("Add", &[&moments.var, &eps], &t("var_eps"), &[]);
        let std = self.node("Sqrt", &[&shifted], &t("std"), &[]);
        let normalised = self.node("Div", &[&moments.centred, &std], &t("normalised"), &[]);
        let gamma = self.node("Reshape", &[scale, &c("to_c1")], &t("gamma"), &[]);
        let beta = self.node("Reshape", &[bias, &c("to_c1")], &t("beta"), &[]);
        let scaled = self.node("Mul", &[&normalised, &gamma], &t("scaled"), &[]);
        let y3 = self.node("Add", &[&scaled, &beta], &t("y3"), &[]);
        let shape = self.node("Shape", &[x], &t("shape"), &[]);
        self.node("Reshape", &[&y3, &shape], y, &[]);
        self.flat_outputs(k, &moments)
    }
}
