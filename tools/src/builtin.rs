//! The built-in models: a small edge `student` and a larger, corruption-robust `foundation`,
//! both for 28×28 grey Fashion-MNIST. Their architectures live in `cema_compute::zoo`; this
//! module knows their names, files, manifests and pretraining recipes.

use std::path::{Path, PathBuf};

use cema_compute::zoo::ResNetSpec;
use cema_shift::dataset::FASHION_MNIST_CLASSES;

/// Fashion-MNIST pixel mean and standard deviation (training set, pixels scaled to [0, 1]).
pub const FASHION_MNIST_MEAN: f32 = 0.2860;
/// See [`FASHION_MNIST_MEAN`].
pub const FASHION_MNIST_STD: f32 = 0.3530;

/// Folder of the shipped built-in models, relative to the repository root.
pub const MODELS_DIR: &str = "models";

/// One of the two built-in models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BuiltIn {
    /// The edge model: a BN ResNet of ≈ 0.18 M parameters, trained on clean images.
    Student,
    /// The cloud's foundation model: 5.4× the parameters, trained with corruption augmentation.
    Foundation,
}

/// How a built-in model is pretrained.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// Passes over the 60,000 training images.
    pub epochs: usize,
    /// Images per step.
    pub batch: usize,
    /// Peak learning rate (linear warm-up over the first epoch's first fifth, cosine decay to 0).
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Probability that a training image is corrupted (a random corruption of cema-shift at a
    /// random severity 1–5) before the crop-and-flip augmentation.
    pub corruption_prob: f64,
    /// Seed of the initial weights, the data order and the augmentation.
    pub seed: u64,
}

impl BuiltIn {
    /// Both built-ins.
    pub const ALL: [BuiltIn; 2] = [BuiltIn::Student, BuiltIn::Foundation];

    /// `student` or `foundation`.
    pub fn name(self) -> &'static str {
        match self {
            BuiltIn::Student => "student",
            BuiltIn::Foundation => "foundation",
        }
    }

    /// The architecture.
    pub fn spec(self) -> ResNetSpec {
        match self {
            BuiltIn::Student => ResNetSpec::STUDENT,
            BuiltIn::Foundation => ResNetSpec::FOUNDATION,
        }
    }

    /// The recipe the shipped files were made with.
    pub fn recipe(self) -> Recipe {
        match self {
            BuiltIn::Student => Recipe {
                epochs: 3,
                batch: 128,
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 5e-4,
                corruption_prob: 0.0,
                seed: 1,
            },
            BuiltIn::Foundation => Recipe {
                epochs: 3,
                batch: 128,
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 5e-4,
                corruption_prob: 0.4,
                seed: 2,
            },
        }
    }

    /// `<dir>/<name>.onnx`.
    pub fn model_path(self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.onnx", self.name()))
    }

    /// The manifest: raw u8 pixels, scaled to [0, 1] and standardised with the Fashion-MNIST
    /// statistics, followed by `[provenance]` lines (each `key = value` TOML).
    pub fn manifest_toml(self, provenance: &[(String, toml::Value)]) -> String {
        let spec = self.spec();
        let names: Vec<String> = FASHION_MNIST_CLASSES.iter().map(|n| format!("{n:?}")).collect();
        let mut text = format!(
            "# The built-in {name} model (cema-model pretrain --model {name}).\n\
             [input]\nname = \"input\"\nshape = [{c}, {s}, {s}]\nlayout = \"nchw\"\npixels = \"u8\"\n\n\
             [output]\nname = \"logits\"\n\n\
             [preprocess]\nscale = {scale:?}\nmean = [{FASHION_MNIST_MEAN:?}]\nstd = [{FASHION_MNIST_STD:?}]\n\n\
             [classes]\nnames = [{names}]\n\n[provenance]\n",
            name = self.name(),
            c = spec.in_channels,
            s = spec.side,
            scale = 1.0f32 / 255.0,
            names = names.join(", "),
        );
        for (key, value) in provenance {
            text.push_str(&format!("{key} = {value}\n"));
        }
        text
    }
}

impl std::fmt::Display for BuiltIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Writes a small student and foundation pair with the built-in student's manifest into `dir`
/// (see [`cema_compute::zoo::write_tiny_models`]). Returns their paths.
pub fn write_tiny_models(dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    cema_compute::zoo::write_tiny_models(dir, &BuiltIn::Student.manifest_toml(&[]))
}
