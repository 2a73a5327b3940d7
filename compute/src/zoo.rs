//! Architectures of the built-in models, written as ONNX graphs with seeded He-initialised
//! weights: small BN ResNets for 28×28 grey images (Fashion-MNIST). The same graph is what the
//! edge runs with ONNX Runtime and what the cloud trains with burn.

use std::path::{Path, PathBuf};

use cema_core::onnx::generate::SplitMix64;
use cema_core::onnx::{Attr, GraphBuilder};
use cema_core::{ModelError, OnnxModel};

/// A ResNet of three stages of basic blocks (two 3×3 conv–BN pairs and an identity or 1×1
/// projection shortcut), global average pooling and a linear head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResNetSpec {
    /// Channels of the three stages (the stem has the first stage's).
    pub widths: [usize; 3],
    /// Basic blocks per stage.
    pub blocks: [usize; 3],
    /// Input channels.
    pub in_channels: usize,
    /// Input height and width.
    pub side: usize,
    /// Output classes.
    pub classes: usize,
}

impl ResNetSpec {
    /// The built-in edge model: ≈ 0.18 M parameters.
    pub const STUDENT: ResNetSpec =
        ResNetSpec { widths: [16, 32, 64], blocks: [2, 2, 2], in_channels: 1, side: 28, classes: 10 };
    /// The built-in foundation model: ≈ 1.0 M parameters (≥ 5× the student), most of them in a
    /// wide last stage at 7×7, where parameters are cheap to compute (≈ 2.7× the student's
    /// multiply-adds for 5.4× its parameters), so it pretrains on two CPU cores in an hour.
    pub const FOUNDATION: ResNetSpec =
        ResNetSpec { widths: [16, 32, 176], blocks: [2, 2, 2], in_channels: 1, side: 28, classes: 10 };

    /// Number of trainable weights (convolutions, BN affine, head).
    pub fn parameter_count(&self) -> usize {
        let mut total = 9 * self.in_channels * self.widths[0] + 2 * self.widths[0];
        let mut channels = self.widths[0];
        for (stage, &blocks) in self.blocks.iter().enumerate() {
            let out = self.widths[stage];
            for block in 0..blocks {
                let inp = if block == 0 { channels } else { out };
                total += 9 * inp * out + 9 * out * out + 4 * out;
                if inp != out {
                    total += inp * out + 2 * out;
                }
            }
            channels = out;
        }
        total + channels * self.classes + self.classes
    }

    /// The graph with random weights from `seed` (input `input [N, C, side, side]`, output `logits`).
    pub fn build(&self, seed: u64) -> Result<OnnxModel, ModelError> {
        let mut rng = SplitMix64::new(seed);
        let mut g = GraphBuilder::new("resnet", 17);
        let c = self.in_channels as i64;
        let s = self.side as i64;
        let x = g.input("input", &[None, Some(c), Some(s), Some(s)]);
        let mut h = conv_bn(&mut g, &mut rng, &x, "stem", self.in_channels, self.widths[0], 3, 1, true);
        let mut channels = self.widths[0];
        for (stage, &blocks) in self.blocks.iter().enumerate() {
            let out = self.widths[stage];
            for block in 0..blocks {
                let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                let name = format!("layer{}.{block}", stage + 1);
                let a = conv_bn(&mut g, &mut rng, &h, &format!("{name}.a"), channels, out, 3, stride, true);
                let b = conv_bn(&mut g, &mut rng, &a, &format!("{name}.b"), out, out, 3, 1, false);
                let shortcut = if stride != 1 || channels != out {
                    conv_bn(&mut g, &mut rng, &h, &format!("{name}.down"), channels, out, 1, stride, false)
                } else {
                    h.clone()
                };
                let sum = g.node("Add", &[&b, &shortcut], &[&format!("{name}.sum")], &[]);
                h = g.node("Relu", &[&sum], &[&format!("{name}.out")], &[]);
                channels = out;
            }
        }
        let pooled = g.node("GlobalAveragePool", &[&h], &["pool"], &[]);
        let flat = g.node("Flatten", &[&pooled], &["flat"], &[("axis", Attr::Int(1))]);
        let bound = (1.0 / channels as f32).sqrt();
        let w = g.initializer("fc.weight", &[self.classes, channels], &rng.vec(self.classes * channels, -bound, bound));
        let b = g.initializer("fc.bias", &[self.classes], &vec![0.0; self.classes]);
        g.node("Gemm", &[&flat, &w, &b], &["logits"], &[("transB", Attr::Int(1))]);
        g.output("logits", &[None, Some(self.classes as i64)]);
        g.build()
    }
}

/// Writes a small student and foundation pair (28×28 grey BN ResNets of one block per stage,
/// random weights) into `dir`, each with `manifest` beside it (`<name>.toml`): fast enough for
/// many adaptation steps, for tests and benchmarks of the service rather than of accuracy.
/// Returns their paths.
pub fn write_tiny_models(dir: &Path, manifest: &str) -> std::io::Result<(PathBuf, PathBuf)> {
    let write = |name: &str, widths: [usize; 3], seed: u64| -> std::io::Result<PathBuf> {
        let spec = ResNetSpec { widths, blocks: [1, 1, 1], in_channels: 1, side: 28, classes: 10 };
        let model = spec.build(seed).map_err(std::io::Error::other)?;
        let path = dir.join(format!("{name}.onnx"));
        std::fs::write(&path, model.encode())?;
        std::fs::write(cema_core::Manifest::path_for(&path), manifest)?;
        Ok(path)
    };
    Ok((write("student", [4, 8, 8], 1)?, write("foundation", [8, 8, 16], 2)?))
}

/// Blocks of [`mobile_224`]: (pointwise output channels, depthwise stride).
const MOBILE_224_BLOCKS: [(usize, i64); 4] = [(16, 2), (32, 2), (64, 2), (64, 1)];

/// Blocks of [`mobilenet_v1_224`]: MobileNet v1 (width 1.0), whose first depthwise block
/// stands in for the usual full 3×3 stem.
const MOBILENET_V1_BLOCKS: [(usize, i64); 14] = [
    (32, 2),
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
];

/// A MobileNet-style 224-px, 3-channel, 10-class CNN with random weights: strided depthwise
/// 3×3 convolutions behind explicit Pad nodes, ReLU6 as Clip, pointwise 1×1 convolutions, BN
/// after every convolution, global pooling and a Gemm head. A small ImageNet-size stand-in for
/// checks and benchmarks of the cloud's step.
pub fn mobile_224(seed: u64) -> Result<OnnxModel, ModelError> {
    mobile(&MOBILE_224_BLOCKS, 10, seed)
}

/// The same construction at MobileNet v1's widths with 1,000 classes (≈ 4.2 M parameters, 28
/// BN layers): an ImageNet-scale model with random weights, for what the edge costs with one
/// (`cema-edge bench`), where no trained ImageNet model can be shipped.
pub fn mobilenet_v1_224(seed: u64) -> Result<OnnxModel, ModelError> {
    mobile(&MOBILENET_V1_BLOCKS, 1000, seed)
}

fn mobile(blocks: &[(usize, i64)], classes: usize, seed: u64) -> Result<OnnxModel, ModelError> {
    let mut rng = SplitMix64::new(seed);
    let mut g = GraphBuilder::new("mobile", 17);
    let x = g.input("x", &[None, Some(3), Some(224), Some(224)]);
    let zero = g.initializer("zero", &[], &[0.0]);
    let six = g.initializer("six", &[], &[6.0]);
    let pads = g.int64_initializer("pads", &[0, 0, 1, 1, 0, 0, 1, 1]);
    let mut h = x;
    let mut channels = 3;
    let ints = |v: &[i64]| Attr::Ints(v.to_vec());
    let bn = |g: &mut GraphBuilder, h: &str, c: usize, name: &str, rng: &mut SplitMix64| {
        let params = [rng.vec(c, 0.5, 1.5), rng.vec(c, -0.2, 0.2), rng.vec(c, -0.2, 0.2), rng.vec(c, 0.5, 2.0)];
        g.batch_norm(h, name, [&params[0], &params[1], &params[2], &params[3]], 1e-5)
    };
    for (i, &(out, stride)) in blocks.iter().enumerate() {
        // Depthwise 3x3 after an explicit Pad (stride as given), then pointwise 1x1.
        let padded = g.node("Pad", &[&h, &pads], &[&format!("pad{i}")], &[]);
        let fan = (9 * channels) as f32;
        let dw = g.initializer(
            &format!("dw{i}.w"),
            &[channels, 1, 3, 3],
            &rng.vec(channels * 9, -1.0, 1.0).iter().map(|v| v * 3.0 / fan.sqrt()).collect::<Vec<_>>(),
        );
        let d = g.node(
            "Conv",
            &[&padded, &dw],
            &[&format!("dw{i}")],
            &[
                ("group", Attr::Int(channels as i64)),
                ("strides", ints(&[stride, stride])),
                ("kernel_shape", ints(&[3, 3])),
            ],
        );
        let d = bn(&mut g, &d, channels, &format!("dw{i}.bn"), &mut rng);
        let d = g.node("Clip", &[&d, &zero, &six], &[&format!("dw{i}.relu6")], &[]);
        let pw = g.initializer(
            &format!("pw{i}.w"),
            &[out, channels, 1, 1],
            &rng.vec(out * channels, -1.0, 1.0).iter().map(|v| v / (channels as f32).sqrt()).collect::<Vec<_>>(),
        );
        let p = g.node("Conv", &[&d, &pw], &[&format!("pw{i}")], &[]);
        let p = bn(&mut g, &p, out, &format!("pw{i}.bn"), &mut rng);
        h = g.node("Clip", &[&p, &zero, &six], &[&format!("pw{i}.relu6")], &[]);
        channels = out;
    }
    let pooled = g.node("GlobalAveragePool", &[&h], &["pool"], &[]);
    let flat = g.node("Flatten", &[&pooled], &["flat"], &[]);
    let w = g.initializer("fc.w", &[classes, channels], &rng.vec(classes * channels, -0.3, 0.3));
    let b = g.initializer("fc.b", &[classes], &rng.vec(classes, -0.1, 0.1));
    g.node("Gemm", &[&flat, &w, &b], &["logits"], &[("transB", Attr::Int(1))]);
    g.output("logits", &[None, Some(classes as i64)]);
    g.build()
}

/// He-uniform weights for a convolution with `fan_in` inputs per output.
fn he(rng: &mut SplitMix64, n: usize, fan_in: usize) -> Vec<f32> {
    let bound = (6.0 / fan_in as f32).sqrt();
    rng.vec(n, -bound, bound)
}

fn bn_params(channels: usize) -> [Vec<f32>; 4] {
    [vec![1.0; channels], vec![0.0; channels], vec![0.0; channels], vec![1.0; channels]]
}

/// A `kernel × kernel` convolution (padding keeps the size at stride 1) and BatchNormalization,
/// optionally followed by ReLU.
#[allow(clippy::too_many_arguments)]
fn conv_bn(
    g: &mut GraphBuilder,
    rng: &mut SplitMix64,
    input: &str,
    name: &str,
    inp: usize,
    out: usize,
    kernel: usize,
    stride: i64,
    relu: bool,
) -> String {
    let fan_in = inp * kernel * kernel;
    let w = g.initializer(&format!("{name}.conv.weight"), &[out, inp, kernel, kernel], &he(rng, out * fan_in, fan_in));
    let pad = (kernel / 2) as i64;
    let conv = g.node(
        "Conv",
        &[input, &w],
        &[&format!("{name}.conv.out")],
        &[
            ("kernel_shape", Attr::Ints(vec![kernel as i64; 2])),
            ("pads", Attr::Ints(vec![pad; 4])),
            ("strides", Attr::Ints(vec![stride, stride])),
        ],
    );
    let [a, b, c, d] = bn_params(out);
    let bn = g.batch_norm(&conv, &format!("{name}.bn"), [&a, &b, &c, &d], 1e-5);
    if relu { g.node("Relu", &[&bn], &[&format!("{name}.relu")], &[]) } else { bn }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_meet_the_budget_and_count_what_the_graph_stores() {
        let student = ResNetSpec::STUDENT.parameter_count();
        let foundation = ResNetSpec::FOUNDATION.parameter_count();
        assert!(student <= 300_000, "student has {student} parameters");
        assert!(foundation >= 5 * student, "foundation {foundation} vs student {student}");
        let model = ResNetSpec::STUDENT.build(1).expect("build");
        // Stored floats = trainable weights + the BN running statistics (2 per BN channel).
        let layers = cema_core::NormDiscovery::of(&model).layers;
        let stats: usize = layers.iter().map(|l| 2 * l.channels).sum();
        let stored: usize = model.graph().initializer.iter().map(|t| t.dims.iter().product::<i64>() as usize).sum();
        assert_eq!(stored, student + stats);
    }
}
