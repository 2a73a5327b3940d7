//! The model manifest: a TOML file beside each `.onnx` that says how to feed the model and
//! what its outputs mean.
//!
//! ```toml
//! [input]
//! name = "input"            # graph input to feed
//! shape = [1, 28, 28]       # one sample, without the batch axis
//! layout = "nchw"           # nchw | nhwc
//! pixels = "u8"             # u8: raw 8-bit pixels, preprocessed below; f32: already model input
//!
//! [output]
//! name = "logits"           # graph output holding one row of class logits per sample
//!
//! [preprocess]              # x = (pixel · scale − mean[c]) / std[c]
//! scale = 0.00392156862745098
//! mean = [0.2860]
//! std = [0.3530]
//! resize_shorter = 256      # optional, images: resize the shorter side, then
//! center_crop = 224         # optional, images: crop the centre square
//!
//! [classes]
//! names = ["T-shirt/top", "Trouser", "..."]
//!
//! [provenance]              # optional, free-form: how the model was made
//! command = "cema-model pretrain --model student --seed 7"
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::onnx::OnnxModel;
use crate::onnx::pb::{TypeProto, ValueInfoProto, tensor_shape_proto::dimension::Value as Dim, type_proto};

/// Tensor layout of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Channels first: `[C, H, W]`.
    Nchw,
    /// Channels last: `[H, W, C]`.
    Nhwc,
}

/// What a raw sample holds before preprocessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelType {
    /// 8-bit pixels; the preprocessing section maps them to model input. Uploads travel as u8.
    U8,
    /// Floats that are already the model input. Uploads travel as f16 or f32.
    F32,
}

/// The `[input]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Graph input name.
    pub name: String,
    /// Shape of one sample, without the batch axis.
    pub shape: Vec<usize>,
    /// Layout of `shape`.
    pub layout: Layout,
    /// What raw samples hold.
    pub pixels: PixelType,
}

/// The `[output]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Graph output holding the class logits.
    pub name: String,
}

/// The `[preprocess]` section: `x = (pixel · scale − mean[c]) / std[c]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Multiplier applied to raw pixels first (1/255 maps u8 to [0, 1]).
    #[serde(default = "one")]
    pub scale: f32,
    /// Per-channel mean (one value applies to every channel).
    #[serde(default = "zeros")]
    pub mean: Vec<f32>,
    /// Per-channel standard deviation (one value applies to every channel).
    #[serde(default = "ones")]
    pub std: Vec<f32>,
    /// For image files: resize so the shorter side has this many pixels.
    #[serde(default)]
    pub resize_shorter: Option<u32>,
    /// For image files: crop the centre square of this size after resizing.
    #[serde(default)]
    pub center_crop: Option<u32>,
}

fn one() -> f32 {
    1.0
}
fn zeros() -> Vec<f32> {
    vec![0.0]
}
fn ones() -> Vec<f32> {
    vec![1.0]
}

impl Default for Preprocess {
    fn default() -> Self {
        Self { scale: one(), mean: zeros(), std: ones(), resize_shorter: None, center_crop: None }
    }
}

/// The `[classes]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Classes {
    /// Class names in logit order.
    pub names: Vec<String>,
}

/// A validated model manifest.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// How to feed the model.
    pub input: InputSpec,
    /// Where the logits come out.
    pub output: OutputSpec,
    /// How raw pixels become model input.
    #[serde(default)]
    pub preprocess: Preprocess,
    /// What the logits mean.
    pub classes: Classes,
    /// How the model was produced (free-form).
    #[serde(default)]
    pub provenance: BTreeMap<String, toml::Value>,
}

/// Why a manifest cannot be used. Validation reports every problem at once.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown or missing keys.
    #[error("manifest is not valid TOML for this schema: {0}")]
    Parse(#[from] toml::de::Error),
    /// Values are inconsistent, with each problem listed.
    #[error("manifest is invalid:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Manifest {
    /// The conventional manifest path for a model: `model.onnx` → `model.toml`.
    pub fn path_for(model: &Path) -> PathBuf {
        model.with_extension("toml")
    }

    /// Reads and validates a manifest file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ManifestError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ManifestError::Io { path: path.display().to_string(), source })?;
        Self::parse(&text)
    }

    /// Parses and validates manifest text.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest = toml::from_str(text)?;
        let problems = manifest.problems();
        if problems.is_empty() { Ok(manifest) } else { Err(ManifestError::Invalid(problems)) }
    }

    /// Number of channels of one sample.
    pub fn channels(&self) -> usize {
        match (self.input.layout, self.input.shape.as_slice()) {
            (Layout::Nchw, [c, ..]) => *c,
            (Layout::Nhwc, [.., c]) => *c,
            _ => 0,
        }
    }

    /// Number of elements of one sample.
    pub fn sample_elements(&self) -> usize {
        self.input.shape.iter().product()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.names.len()
    }

    /// Maps raw 8-bit pixels of one sample (in the manifest's layout) to model input.
    pub fn preprocess_u8(&self, pixels: &[u8], out: &mut Vec<f32>) {
        let channels = self.channels().max(1);
        let plane = self.sample_elements() / channels;
        let p = &self.preprocess;
        let at = |values: &[f32], c: usize| {
            if values.len() == 1 { values[0] } else { values[c] }
        };
        out.extend(pixels.iter().enumerate().map(|(i, &v)| {
            let c = match self.input.layout {
                Layout::Nchw => i / plane.max(1),
                Layout::Nhwc => i % channels,
            };
            (v as f32 * p.scale - at(&p.mean, c)) / at(&p.std, c)
        }));
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.input.shape.len() != 3 {
            problems
                .push(format!("input.shape must have 3 axes (one image, no batch axis), found {:?}", self.input.shape));
        }
        if self.input.shape.contains(&0) {
            problems.push(format!("input.shape has a zero axis: {:?}", self.input.shape));
        }
        let channels = self.channels();
        let p = &self.preprocess;
        if !(p.scale.is_finite() && p.scale > 0.0) {
            problems.push(format!("preprocess.scale must be a positive number, found {}", p.scale));
        }
        for (key, values) in [("mean", &p.mean), ("std", &p.std)] {
            if values.len() != 1 && values.len() != channels {
                problems.push(format!(
                    "preprocess.{key} has {} values; give 1 or one per channel ({channels})",
                    values.len()
                ));
            }
            if values.iter().any(|v| !v.is_finite()) {
                problems.push(format!("preprocess.{key} holds a non-finite value"));
            }
        }
        if p.std.iter().any(|s| *s <= 0.0) {
            problems.push("preprocess.std values must be positive".to_owned());
        }
        if let (Some(resize), Some(crop)) = (p.resize_shorter, p.center_crop)
            && crop > resize
        {
            problems.push(format!("preprocess.center_crop {crop} exceeds resize_shorter {resize}"));
        }
        if let Some(crop) = p.center_crop {
            let (h, w) = self.spatial();
            if (h, w) != (crop as usize, crop as usize) {
                problems.push(format!("preprocess.center_crop {crop} does not give the input's {h}×{w} pixels"));
            }
        }
        if self.classes.names.len() < 2 {
            problems.push("classes.names must list at least 2 classes".to_owned());
        }
        let mut seen = HashSet::new();
        for name in &self.classes.names {
            if !seen.insert(name) {
                problems.push(format!("classes.names lists `{name}` twice"));
            }
        }
        problems
    }

    /// Height and width of one sample.
    pub fn spatial(&self) -> (usize, usize) {
        match (self.input.layout, self.input.shape.as_slice()) {
            (Layout::Nchw, [_, h, w]) | (Layout::Nhwc, [h, w, _]) => (*h, *w),
            _ => (0, 0),
        }
    }

    /// Checks the manifest against the model it describes: the names exist, and static dims
    /// of the input and output agree with the sample shape and the class count.
    pub fn check_model(&self, model: &OnnxModel) -> Result<(), ManifestError> {
        let mut problems = Vec::new();
        let graph = model.graph();
        match graph.input.iter().find(|i| i.name() == self.input.name) {
            None => problems.push(format!(
                "input.name `{}` is not a graph input; the model's inputs are {:?}",
                self.input.name,
                model.input_names()
            )),
            Some(info) => {
                if let Some(dims) = static_dims(info)
                    && (dims.len() != 4 || !dims_agree(&dims[1..], &self.input.shape))
                {
                    problems.push(format!(
                        "input.shape {:?} (plus a batch axis) disagrees with the model's input dims {}",
                        self.input.shape,
                        show_dims(&dims)
                    ));
                }
            }
        }
        match graph.output.iter().find(|o| o.name() == self.output.name) {
            None => problems.push(format!(
                "output.name `{}` is not a graph output; the model's outputs are {:?}",
                self.output.name,
                model.output_names()
            )),
            Some(info) => {
                if let Some(dims) = static_dims(info)
                    && let Some(Some(classes)) = dims.last()
                    && *classes as usize != self.num_classes()
                {
                    problems.push(format!(
                        "classes.names lists {} classes but the model outputs {classes} logits",
                        self.num_classes()
                    ));
                }
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(ManifestError::Invalid(problems)) }
    }
}

/// Dims of a tensor value info: `Some(v)` for fixed axes, `None` for symbolic ones.
pub(crate) fn static_dims(info: &ValueInfoProto) -> Option<Vec<Option<i64>>> {
    let TypeProto { value: Some(type_proto::Value::TensorType(tensor)), .. } = info.r#type.as_ref()? else {
        return None;
    };
    let shape = tensor.shape.as_ref()?;
    Some(
        shape
            .dim
            .iter()
            .map(|d| match d.value {
                Some(Dim::DimValue(v)) if v > 0 => Some(v),
                _ => None,
            })
            .collect(),
    )
}

fn dims_agree(model: &[Option<i64>], manifest: &[usize]) -> bool {
    model.len() == manifest.len() && model.iter().zip(manifest).all(|(m, s)| m.is_none_or(|m| m as usize == *s))
}

pub(crate) fn show_dims(dims: &[Option<i64>]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.map_or("?".to_owned(), |v| v.to_string())).collect();
    format!("[{}]", parts.join(", "))
}
