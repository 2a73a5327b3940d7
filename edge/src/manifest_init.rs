//! `cema-edge manifest init`: writes the manifest a model needs beside it, drafted from the
//! graph (`cema_core::draft`), so bringing your own model needs no hand-written TOML.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use cema_core::draft::{DraftOptions, Preprocessing, draft};
use cema_core::manifest::{Layout, PixelType};
use cema_core::{Manifest, OnnxModel};
use clap::{Args, ValueEnum};

/// Flags of `cema-edge manifest init`.
#[derive(Args)]
pub(crate) struct InitArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Class names, one per line in logit order (blank lines skipped). Default: `class_0`, …
    #[arg(long)]
    classes: Option<PathBuf>,
    /// Preprocessing of 8-bit pixels. Default: imagenet for 3-channel inputs of 64 px or more,
    /// else unit.
    #[arg(long, value_enum)]
    preprocess: Option<PreprocessArg>,
    /// Sample shape without the batch axis, e.g. `3,224,224`, when the graph's is symbolic.
    #[arg(long, value_delimiter = ',')]
    shape: Option<Vec<usize>>,
    /// Sample layout, when the shape does not tell.
    #[arg(long, value_enum)]
    layout: Option<LayoutArg>,
    /// What raw samples hold: u8 pixels (preprocessed as above) or f32 model input.
    #[arg(long, value_enum, default_value = "u8")]
    pixels: PixelsArg,
    /// Where to write (default: the model's path with `.toml`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace an existing manifest.
    #[arg(long)]
    force: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum PreprocessArg {
    /// `/255`, ImageNet mean and std, resize to 256/224 of the side and centre-crop.
    Imagenet,
    /// `/255` only.
    Unit,
    /// Raw pixel values.
    Identity,
}

#[derive(Clone, Copy, ValueEnum)]
enum LayoutArg {
    Nchw,
    Nhwc,
}

#[derive(Clone, Copy, ValueEnum)]
enum PixelsArg {
    U8,
    F32,
}

/// Drafts, validates and writes the manifest; prints its path and what was chosen.
pub(crate) fn init(args: InitArgs) -> Result<()> {
    let out = args.out.clone().unwrap_or_else(|| Manifest::path_for(&args.model));
    if out.exists() && !args.force {
        bail!("{} exists; pass --force to replace it", out.display());
    }
    let model = OnnxModel::load(&args.model).with_context(|| format!("loading {}", args.model.display()))?;
    let class_names = match &args.classes {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Some(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect())
        }
        None => None,
    };
    let options = DraftOptions {
        shape: args.shape.clone(),
        layout: args.layout.map(|l| match l {
            LayoutArg::Nchw => Layout::Nchw,
            LayoutArg::Nhwc => Layout::Nhwc,
        }),
        pixels: Some(match args.pixels {
            PixelsArg::U8 => PixelType::U8,
            PixelsArg::F32 => PixelType::F32,
        }),
        preprocessing: args.preprocess.map(|p| match p {
            PreprocessArg::Imagenet => Preprocessing::Imagenet,
            PreprocessArg::Unit => Preprocessing::Unit,
            PreprocessArg::Identity => Preprocessing::Identity,
        }),
        class_names,
        command: Some(std::env::args().collect::<Vec<_>>().join(" ")),
    };
    let text = draft(&model, &options).with_context(|| format!("drafting a manifest for {}", args.model.display()))?;
    std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
    let manifest = Manifest::parse(&text)?;
    println!(
        "wrote {}: input `{}` {:?} {:?}, output `{}`, {} classes{}",
        out.display(),
        manifest.input.name,
        manifest.input.shape,
        manifest.input.layout,
        manifest.output.name,
        manifest.num_classes(),
        if args.classes.is_none() { " (named class_0…; give --classes <file> for real names)" } else { "" }
    );
    Ok(())
}
