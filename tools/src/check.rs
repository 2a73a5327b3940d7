//! `cema-model check`: will this model work? Loads a model with the burn executor and
//! with ONNX Runtime, lists its operators and normalisation layers, and compares the two
//! engines' logits on a random batch.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use cema_compute::{Graph, NormMode, Trainable, batch, cpu, values};
use cema_core::onnx::generate::SplitMix64;
use cema_core::onnx::pb::tensor_shape_proto::dimension::Value as Dim;
use cema_core::onnx::pb::type_proto;
use cema_core::{Manifest, NormDiscovery, OnnxModel};
use cema_host::OrtLibrary;

/// Largest relative difference between burn and ONNX Runtime logits that passes.
pub const MAX_RELATIVE_ERROR: f32 = 1e-4;

/// The outcome of a check.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// Human-readable findings, one per line.
    pub text: String,
    /// Whether the burn executor accepts the model.
    pub supported: bool,
    /// Adaptable normalisation layers.
    pub bn_layers: usize,
    /// Max relative error of burn's logits against ONNX Runtime's (`None` if not compared).
    pub max_rel_err: Option<f32>,
}

impl CheckReport {
    /// Whether the model can be adapted: supported and numerically equal to ORT.
    pub fn passed(&self) -> bool {
        self.supported && self.max_rel_err.is_some_and(|e| e <= MAX_RELATIVE_ERROR)
    }

    /// The closing `key=value` line.
    pub fn summary_line(&self) -> String {
        let err = self.max_rel_err.map_or("nan".to_owned(), |e| format!("{e:.3e}"));
        format!("supported={} bn_layers={} max_rel_err={err}", self.supported, self.bn_layers)
    }
}

/// The input dims for a batch: from the manifest beside the model if there is one, else from
/// the model's input (symbolic axes become `batch` for the first, 1 for others).
fn input_dims(model: &OnnxModel, manifest: Option<&Manifest>, batch_size: usize) -> anyhow::Result<[usize; 4]> {
    if let Some(m) = manifest {
        let s = &m.input.shape;
        if s.len() == 3 {
            return Ok([batch_size, s[0], s[1], s[2]]);
        }
    }
    let name =
        model.input_names().first().map(|s| s.to_string()).ok_or_else(|| anyhow::anyhow!("the model has no input"))?;
    let info =
        model.graph().input.iter().find(|i| i.name() == name).ok_or_else(|| anyhow::anyhow!("input not described"))?;
    let Some(type_proto::Value::TensorType(t)) = info.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        anyhow::bail!("input `{name}` is not a tensor");
    };
    let dims: Vec<Option<usize>> = t
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(Dim::DimValue(v)) if v > 0 => Some(v as usize),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match dims.as_slice() {
        [_, Some(c), Some(h), Some(w)] => Ok([batch_size, *c, *h, *w]),
        other => anyhow::bail!("input `{name}` has dims {other:?}; give a manifest with input.shape"),
    }
}

/// Checks a model file (with `model.toml` beside it if present).
pub fn check_model(path: &Path, batch_size: usize) -> anyhow::Result<CheckReport> {
    let model = OnnxModel::load(path)?;
    let manifest_path = Manifest::path_for(path);
    let manifest = if manifest_path.is_file() { Some(Manifest::load(&manifest_path)?) } else { None };
    let mut text = String::new();
    let _ = writeln!(text, "model      {} (fingerprint {})", path.display(), model.fingerprint());
    let _ = writeln!(text, "inputs     {:?} → outputs {:?}", model.input_names(), model.output_names());
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    for node in model.nodes() {
        *ops.entry(node.op_type()).or_default() += 1;
    }
    let listed: Vec<String> = ops.iter().map(|(op, n)| format!("{op}×{n}")).collect();
    let _ = writeln!(text, "operators  {}", listed.join(" "));
    let discovery = NormDiscovery::of(&model);
    let _ = writeln!(
        text,
        "norm       {} adaptable BatchNormalization layers ({} parameters travel per update)",
        discovery.layers.len(),
        discovery.parameter_count()
    );
    const SHOWN: usize = 5;
    for u in discovery.unsupported.iter().take(SHOWN) {
        let _ = writeln!(text, "           not adaptable: {} ({}): {}", u.node, u.op_type, u.reason);
    }
    if discovery.unsupported.len() > SHOWN {
        let _ = writeln!(text, "           … and {} more not adaptable", discovery.unsupported.len() - SHOWN);
    }
    if let Some(m) = &manifest {
        match m.check_model(&model) {
            Ok(()) => {
                let _ = writeln!(text, "manifest   {} agrees with the model", manifest_path.display());
            }
            Err(e) => {
                let _ = writeln!(text, "manifest   {e}");
            }
        }
    }
    let graph = match Graph::load(&model, &cpu(), Trainable::None) {
        Ok(graph) => graph,
        Err(e) => {
            let _ = writeln!(text, "burn       cannot run this model: {e}");
            return Ok(CheckReport { text, supported: false, bn_layers: discovery.layers.len(), max_rel_err: None });
        }
    };
    let dims = input_dims(&model, manifest.as_ref(), batch_size)?;
    let input = SplitMix64::new(0).vec(dims.iter().product(), -1.0, 1.0);
    let burn_logits = values(graph.forward(batch(&input, dims, graph.device()), NormMode::Inference)?.logits);
    let library = OrtLibrary::get(None)?;
    let ort_logits = library.run_once(&model.encode(), model.input_names()[0], &dims, &input)?;
    if ort_logits.len() != burn_logits.len() {
        anyhow::bail!("ORT produced {} logits, burn {}", ort_logits.len(), burn_logits.len());
    }
    let scale = ort_logits.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let err = burn_logits.iter().zip(&ort_logits).map(|(a, b)| (a - b).abs() / scale).fold(0.0f32, f32::max);
    let verdict = if err <= MAX_RELATIVE_ERROR { "equal within tolerance" } else { "DIFFERENT" };
    let _ = writeln!(
        text,
        "engines    burn vs ONNX Runtime on a random batch {dims:?}: max relative error {err:.3e} ({verdict})"
    );
    Ok(CheckReport { text, supported: true, bn_layers: discovery.layers.len(), max_rel_err: Some(err) })
}
