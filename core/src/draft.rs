//! A manifest drafted from an ONNX graph (`cema-edge manifest init`): what someone bringing
//! their own model would otherwise write by hand — input name and sample shape, layout, the
//! logits output, class names, preprocessing — with every choice the graph cannot tell
//! (layout of a square tensor, symbolic axes, normalisation constants) taken from an option
//! or a stated default. The draft is validated as a manifest and against the model before it
//! is returned.

use crate::manifest::{Layout, Manifest, ManifestError, PixelType, show_dims, static_dims};
use crate::onnx::OnnxModel;

/// How raw 8-bit pixels become model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preprocessing {
    /// torchvision's ImageNet recipe: `/255`, mean (0.485, 0.456, 0.406), std (0.229, 0.224,
    /// 0.225); image files resized to `round(side·256/224)` on the shorter side, centre-cropped.
    Imagenet,
    /// `/255` only: pixels in [0, 1].
    Unit,
    /// Raw pixel values as floats.
    Identity,
}

/// The choices a draft takes from its caller; `None` lets the graph decide.
#[derive(Debug, Clone, Default)]
pub struct DraftOptions {
    /// Sample shape (no batch axis), needed when the graph's input axes are symbolic.
    pub shape: Option<Vec<usize>>,
    /// Layout of the sample, needed when the shape does not tell (e.g. `[3, 3, 3]`).
    pub layout: Option<Layout>,
    /// What raw samples hold (default u8).
    pub pixels: Option<PixelType>,
    /// Default: `imagenet` for 3-channel inputs of 64 pixels or more, else `unit`.
    pub preprocessing: Option<Preprocessing>,
    /// Class names in logit order (default `class_0`, `class_1`, …).
    pub class_names: Option<Vec<String>>,
    /// Recorded under `[provenance]`.
    pub command: Option<String>,
}

/// Why no manifest could be drafted: each names what to give instead.
#[derive(Debug, thiserror::Error)]
pub enum DraftError {
    /// Not exactly one graph input to feed.
    #[error("the model has {} inputs to feed ({names:?}); a manifest feeds exactly one", names.len())]
    Inputs {
        /// The input names.
        names: Vec<String>,
    },
    /// No single output to read logits from.
    #[error("cannot tell which output holds the logits among {names:?}; name one `logits` or export a single output")]
    Outputs {
        /// The output names.
        names: Vec<String>,
    },
    /// The sample shape cannot be read from the graph.
    #[error("input `{input}` has dims {dims}: give the sample shape with --shape (3 axes, no batch axis)")]
    Shape {
        /// The input name.
        input: String,
        /// Its dims as the graph states them.
        dims: String,
    },
    /// The layout cannot be told from the shape.
    #[error("cannot tell the layout of sample shape {0:?}: give --layout nchw or nhwc")]
    Layout(Vec<usize>),
    /// The class count cannot be read from the graph or a class list.
    #[error("output `{0}` has no fixed class axis: give the class names with --classes <file>")]
    Classes(String),
    /// The class list disagrees with the graph.
    #[error("the class file lists {names} names but output `{output}` has {logits} logits")]
    ClassCount {
        /// The output name.
        output: String,
        /// Names given.
        names: usize,
        /// Logits per sample.
        logits: usize,
    },
    /// The draft does not validate (a bug, or options that contradict the model).
    #[error(transparent)]
    Invalid(#[from] ManifestError),
}

/// A manifest (TOML text) for `model`, validated.
pub fn draft(model: &OnnxModel, options: &DraftOptions) -> Result<String, DraftError> {
    let inputs = model.input_names();
    let [input] = inputs.as_slice() else {
        return Err(DraftError::Inputs { names: inputs.iter().map(|s| s.to_string()).collect() });
    };
    let outputs = model.output_names();
    let output = match outputs.as_slice() {
        [only] => *only,
        many => many
            .iter()
            .copied()
            .find(|n| *n == "logits")
            .ok_or_else(|| DraftError::Outputs { names: many.iter().map(|s| s.to_string()).collect() })?,
    };
    let graph = model.graph();
    let input_dims = graph.input.iter().find(|i| i.name() == *input).and_then(static_dims);
    let shape = match (&options.shape, &input_dims) {
        (Some(shape), _) => shape.clone(),
        (None, Some(dims)) if dims.len() == 4 && dims[1..].iter().all(Option::is_some) => {
            dims[1..].iter().map(|d| d.unwrap_or(0) as usize).collect()
        }
        (None, dims) => {
            return Err(DraftError::Shape {
                input: input.to_string(),
                dims: dims.as_deref().map_or_else(|| "unknown".to_owned(), show_dims),
            });
        }
    };
    let layout = match options.layout {
        Some(layout) => layout,
        None => guess_layout(&shape).ok_or_else(|| DraftError::Layout(shape.clone()))?,
    };
    let logits = graph
        .output
        .iter()
        .find(|o| o.name() == output)
        .and_then(static_dims)
        .and_then(|dims| dims.last().copied().flatten())
        .map(|k| k as usize);
    let names = match (&options.class_names, logits) {
        (Some(names), Some(k)) if names.len() != k => {
            return Err(DraftError::ClassCount { output: output.to_owned(), names: names.len(), logits: k });
        }
        (Some(names), _) => names.clone(),
        (None, Some(k)) => (0..k).map(|i| format!("class_{i}")).collect(),
        (None, None) => return Err(DraftError::Classes(output.to_owned())),
    };
    let (channels, side_h, side_w) = match (layout, shape.as_slice()) {
        (Layout::Nchw, [c, h, w]) | (Layout::Nhwc, [h, w, c]) => (*c, *h, *w),
        _ => return Err(DraftError::Shape { input: input.to_string(), dims: format!("{shape:?}") }),
    };
    let preprocessing = options.preprocessing.unwrap_or(if channels == 3 && side_h.min(side_w) >= 64 {
        Preprocessing::Imagenet
    } else {
        Preprocessing::Unit
    });
    let pixels = options.pixels.unwrap_or(PixelType::U8);
    let text = render(Rendered {
        input,
        output,
        shape: &shape,
        layout,
        pixels,
        preprocessing,
        square: (side_h == side_w).then_some(side_h),
        names: &names,
        command: options.command.as_deref(),
    });
    let manifest = Manifest::parse(&text)?;
    manifest.check_model(model)?;
    Ok(text)
}

/// Channels first if the first axis looks like channels and the last does not, and so on;
/// `None` when the shape does not say.
fn guess_layout(shape: &[usize]) -> Option<Layout> {
    let is_channels = |n: usize| matches!(n, 1 | 3 | 4);
    match shape {
        [c, _, w] if is_channels(*c) && !is_channels(*w) => Some(Layout::Nchw),
        [c, _, w] if is_channels(*w) && !is_channels(*c) => Some(Layout::Nhwc),
        _ => None,
    }
}

struct Rendered<'a> {
    input: &'a str,
    output: &'a str,
    shape: &'a [usize],
    layout: Layout,
    pixels: PixelType,
    preprocessing: Preprocessing,
    square: Option<usize>,
    names: &'a [String],
    command: Option<&'a str>,
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn render(r: Rendered<'_>) -> String {
    use std::fmt::Write;
    let shape: Vec<String> = r.shape.iter().map(usize::to_string).collect();
    let layout = match r.layout {
        Layout::Nchw => "nchw",
        Layout::Nhwc => "nhwc",
    };
    let pixels = match r.pixels {
        PixelType::U8 => "u8",
        PixelType::F32 => "f32",
    };
    let mut out =
        String::from("# Drafted by `cema-edge manifest init` from the model's graph; check the class names\n");
    out.push_str("# and the preprocessing against how the model was trained.\n\n");
    let _ = writeln!(out, "[input]\nname = {}\nshape = [{}]", quoted(r.input), shape.join(", "));
    let _ = writeln!(out, "layout = \"{layout}\"\npixels = \"{pixels}\"\n");
    let _ = writeln!(out, "[output]\nname = {}\n", quoted(r.output));
    out.push_str("[preprocess]                 # x = (pixel · scale − mean[c]) / std[c]\n");
    match r.preprocessing {
        Preprocessing::Imagenet => {
            out.push_str("scale = 0.00392156862745098  # 1/255\n");
            out.push_str("mean = [0.485, 0.456, 0.406]  # ImageNet (torchvision)\n");
            out.push_str("std = [0.229, 0.224, 0.225]\n");
            if let Some(side) = r.square {
                let resize = (side as f64 * 256.0 / 224.0).round() as usize;
                let _ = writeln!(out, "resize_shorter = {resize}\ncenter_crop = {side}");
            }
        }
        Preprocessing::Unit => out.push_str("scale = 0.00392156862745098  # 1/255\nmean = [0.0]\nstd = [1.0]\n"),
        Preprocessing::Identity => out.push_str("scale = 1.0\nmean = [0.0]\nstd = [1.0]\n"),
    }
    out.push_str("\n[classes]\nnames = [\n");
    for name in r.names {
        let _ = writeln!(out, "  {},", quoted(name));
    }
    out.push_str("]\n");
    if let Some(command) = r.command {
        let _ = write!(out, "\n[provenance]\nmanifest = {}\n", quoted(command));
    }
    out
}
