//! Small generated models with known weights, so tests, benchmarks and `model check` can run
//! real ONNX graphs and compare them with values computed independently.

use super::builder::{Attr, GraphBuilder};
use super::model::{ModelError, OnnxModel};

/// SplitMix64: a tiny deterministic generator, enough for reproducible synthetic weights.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }

    /// `n` values uniform in `[lo, hi)`.
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// A tiny classifier `Conv 1×1 (+bias) → BatchNormalization → Relu → GlobalAveragePool →
/// Flatten` with input `input` `[N, in_channels, side, side]` and output `logits` `[N, classes]`.
///
/// ONNX Runtime folds the BN into the convolution at full optimisation, which makes this the
/// smallest model on which a parameter update can be silently ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvBnClassifier {
    /// Input channels.
    pub in_channels: usize,
    /// Output classes (= conv output channels = BN channels).
    pub classes: usize,
    /// Height and width of the input.
    pub side: usize,
    /// Conv weight, `classes × in_channels`.
    pub conv_weight: Vec<f32>,
    /// Conv bias, `classes`.
    pub conv_bias: Vec<f32>,
    /// BN scale, B, mean, var (each `classes` long).
    pub bn: [Vec<f32>; 4],
    /// BN epsilon.
    pub epsilon: f32,
}

/// Prefix of the BN initializers (PyTorch-style names: `bn.weight`, `bn.bias`, …).
pub const CONV_BN_PREFIX: &str = "bn";

impl ConvBnClassifier {
    /// Random weights from `seed`.
    pub fn seeded(in_channels: usize, classes: usize, side: usize, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        Self {
            in_channels,
            classes,
            side,
            conv_weight: rng.vec(classes * in_channels, -1.0, 1.0),
            conv_bias: rng.vec(classes, -0.5, 0.5),
            bn: [
                rng.vec(classes, 0.5, 1.5),
                rng.vec(classes, -0.5, 0.5),
                rng.vec(classes, -0.5, 0.5),
                rng.vec(classes, 0.5, 2.0),
            ],
            epsilon: 1e-5,
        }
    }

    /// The ONNX model (opset 17).
    pub fn model(&self) -> Result<OnnxModel, ModelError> {
        self.build(false)
    }

    /// The same model pooling with `ReduceMean(axes=[2, 3], keepdims=0)`, as PyTorch exports
    /// `x.mean((2, 3))`, instead of GlobalAveragePool + Flatten.
    pub fn model_with_reduce_mean(&self) -> Result<OnnxModel, ModelError> {
        self.build(true)
    }

    fn build(&self, reduce_mean: bool) -> Result<OnnxModel, ModelError> {
        let (c, k, s) = (self.in_channels as i64, self.classes as i64, self.side as i64);
        let mut g = GraphBuilder::new("conv_bn_classifier", 17);
        let x = g.input("input", &[None, Some(c), Some(s), Some(s)]);
        let w = g.initializer("conv.weight", &[self.classes, self.in_channels, 1, 1], &self.conv_weight);
        let b = g.initializer("conv.bias", &[self.classes], &self.conv_bias);
        let conv = g.node("Conv", &[&x, &w, &b], &["conv.out"], &[("kernel_shape", Attr::Ints(vec![1, 1]))]);
        let [scale, bias, mean, var] = &self.bn;
        let bn = g.batch_norm(&conv, CONV_BN_PREFIX, [scale, bias, mean, var], self.epsilon);
        let relu = g.node("Relu", &[&bn], &["relu.out"], &[]);
        if reduce_mean {
            let axes = [("axes", Attr::Ints(vec![2, 3])), ("keepdims", Attr::Int(0))];
            g.node("ReduceMean", &[&relu], &["logits"], &axes);
        } else {
            let pool = g.node("GlobalAveragePool", &[&relu], &["pool.out"], &[]);
            g.node("Flatten", &[&pool], &["logits"], &[("axis", Attr::Int(1))]);
        }
        g.output("logits", &[None, Some(k)]);
        g.build()
    }

    /// A manifest for [`model`](Self::model): f32 model input, classes `c0`, `c1`, ….
    pub fn manifest_toml(&self) -> String {
        let names: Vec<String> = (0..self.classes).map(|i| format!("\"c{i}\"")).collect();
        format!(
            "[input]\nname = \"input\"\nshape = [{}, {s}, {s}]\nlayout = \"nchw\"\npixels = \"f32\"\n\n\
             [output]\nname = \"logits\"\n\n[classes]\nnames = [{}]\n",
            self.in_channels,
            names.join(", "),
            s = self.side
        )
    }

    /// Logits computed directly from the formulas in f64, with the given BN parameters
    /// (`[scale, B, mean, var]`) in place of the model's own.
    pub fn reference_logits(&self, input: &[f32], batch: usize, bn: &[Vec<f32>; 4]) -> Vec<f64> {
        let pixels = self.side * self.side;
        let mut logits = vec![0.0f64; batch * self.classes];
        for n in 0..batch {
            for k in 0..self.classes {
                let mut sum = 0.0f64;
                for p in 0..pixels {
                    let conv: f64 = (0..self.in_channels)
                        .map(|c| {
                            self.conv_weight[k * self.in_channels + c] as f64
                                * input[(n * self.in_channels + c) * pixels + p] as f64
                        })
                        .sum::<f64>()
                        + self.conv_bias[k] as f64;
                    let normalised = (conv - bn[2][k] as f64) / (bn[3][k] as f64 + self.epsilon as f64).sqrt();
                    sum += (bn[0][k] as f64 * normalised + bn[1][k] as f64).max(0.0);
                }
                logits[n * self.classes + k] = sum / pixels as f64;
            }
        }
        logits
    }
}
