//! The normalisation semantics against an independent f64 reference: gradients of γ and β
//! under TBR, first-batch TBR and batch normalisation match central finite differences;
//! first-batch statistics (where layer 2's depend on layer 1's normalisation) match a hand
//! computation in both engines, burn and ONNX Runtime; SGD follows PyTorch's momentum rule and
//! touches nothing frozen.

use burn::Tensor;
use cema_compute::loss::mean_entropy;
use cema_compute::{Graph, NormMode, Sgd, Trainable, batch, cpu_autodiff, values};
use cema_core::OnnxModel;
use cema_core::onnx::generate::SplitMix64;
use cema_core::onnx::{Attr, GraphBuilder};
use cema_core::{NormDiscovery, NormParams};
use cema_edge::OrtLibrary;

const N: usize = 4;
const IN: usize = 2;
const MID: usize = 3;
const OUT: usize = 4;
const PIXELS: usize = 9;
const EPS: f64 = 1e-5;

/// `x [4, 2, 3, 3] → Conv1x1 → BN → Relu → Conv1x1 → BN → GlobalAveragePool → Flatten`.
#[derive(Clone)]
struct Net {
    w1: Vec<f64>,
    b1: Vec<f64>,
    bn1: [Vec<f64>; 4],
    w2: Vec<f64>,
    b2: Vec<f64>,
    bn2: [Vec<f64>; 4],
}

impl Net {
    fn seeded(seed: u64) -> Self {
        let mut r = SplitMix64::new(seed);
        let mut v = |n, lo, hi| r.vec(n, lo, hi).into_iter().map(f64::from).collect::<Vec<_>>();
        Net {
            w1: v(MID * IN, -1.0, 1.0),
            b1: v(MID, -0.3, 0.3),
            bn1: [v(MID, 0.5, 1.5), v(MID, -0.3, 0.3), v(MID, -0.5, 0.5), v(MID, 0.5, 2.0)],
            w2: v(OUT * MID, -1.0, 1.0),
            b2: v(OUT, -0.3, 0.3),
            bn2: [v(OUT, 0.5, 1.5), v(OUT, -0.3, 0.3), v(OUT, -0.5, 0.5), v(OUT, 0.5, 2.0)],
        }
    }

    fn model(&self) -> OnnxModel {
        self.model_pooled_by(Pool::GlobalAveragePool)
    }

    /// The same network with the spatial mean computed by `pool`.
    fn model_pooled_by(&self, pool: Pool) -> OnnxModel {
        let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let mut g = GraphBuilder::new("two_bn", 17);
        let x = g.input("x", &[None, Some(IN as i64), Some(3), Some(3)]);
        let w1 = g.initializer("conv1.w", &[MID, IN, 1, 1], &f(&self.w1));
        let b1 = g.initializer("conv1.b", &[MID], &f(&self.b1));
        let c1 = g.node("Conv", &[&x, &w1, &b1], &["c1"], &[("kernel_shape", Attr::Ints(vec![1, 1]))]);
        let [a, b, c, d] = self.bn1.each_ref().map(|v| f(v));
        let n1 = g.batch_norm(&c1, "bn1", [&a, &b, &c, &d], EPS as f32);
        let r1 = g.node("Relu", &[&n1], &["r1"], &[]);
        let w2 = g.initializer("conv2.w", &[OUT, MID, 1, 1], &f(&self.w2));
        let b2 = g.initializer("conv2.b", &[OUT], &f(&self.b2));
        let c2 = g.node("Conv", &[&r1, &w2, &b2], &["c2"], &[("kernel_shape", Attr::Ints(vec![1, 1]))]);
        let [a, b, c, d] = self.bn2.each_ref().map(|v| f(v));
        let n2 = g.batch_norm(&c2, "bn2", [&a, &b, &c, &d], EPS as f32);
        match pool {
            Pool::GlobalAveragePool => {
                let p = g.node("GlobalAveragePool", &[&n2], &["p"], &[]);
                g.node("Flatten", &[&p], &["logits"], &[]);
            }
            // As PyTorch exports `x.mean((2, 3))`.
            Pool::ReduceMean => {
                g.node(
                    "ReduceMean",
                    &[&n2],
                    &["logits"],
                    &[("axes", Attr::Ints(vec![2, 3])), ("keepdims", Attr::Int(0))],
                );
            }
        }
        g.output("logits", &[None, Some(OUT as i64)]);
        g.build().expect("model")
    }
}

/// How the network averages over pixels before the logits.
#[derive(Clone, Copy, Debug)]
enum Pool {
    GlobalAveragePool,
    ReduceMean,
}

/// Two per-channel vectors of one layer: TBR's `(r, d)` or the batch's `(mean, variance)`.
type PerChannel = (Vec<f64>, Vec<f64>);

/// TBR's stop-gradient terms `r`, `d` of each layer, frozen at the point of differentiation.
type Frozen = Vec<PerChannel>;

/// Per layer, the batch mean and unbiased batch variance of its input.
type Measured = Vec<PerChannel>;

/// Per-channel batch normalisation of `h[n][c][p]` in f64; returns TBR's `(r, d)` and the
/// batch's `(mean, unbiased variance)`.
fn bn(
    h: &mut [Vec<Vec<f64>>],
    p: &[Vec<f64>; 4],
    mode: NormMode,
    frozen: Option<&PerChannel>,
) -> (PerChannel, PerChannel) {
    let channels = p[0].len();
    let (mut rs, mut ds) = (vec![0.0; channels], vec![0.0; channels]);
    let (mut means, mut vars) = (vec![0.0; channels], vec![0.0; channels]);
    for c in 0..channels {
        let all: Vec<f64> = h.iter().flat_map(|n| n[c].iter().copied()).collect();
        let m = all.len() as f64;
        let mean = all.iter().sum::<f64>() / m;
        let ss: f64 = all.iter().map(|x| (x - mean).powi(2)).sum();
        let (gamma, beta, rmean, rvar) = (p[0][c], p[1][c], p[2][c], p[3][c]);
        means[c] = mean;
        vars[c] = ss / (m - 1.0);
        let s_r = (rvar + EPS).sqrt();
        for n in h.iter_mut() {
            for x in n[c].iter_mut() {
                *x = match mode {
                    NormMode::Inference => gamma * (*x - rmean) / s_r + beta,
                    NormMode::Batch => gamma * (*x - mean) / (ss / m + EPS).sqrt() + beta,
                    // No running statistics yet: they are the batch's own, so r = 1, d = 0.
                    NormMode::TbrFirstBatch => gamma * (*x - mean) / (ss / (m - 1.0) + EPS).sqrt() + beta,
                    NormMode::Tbr => {
                        let s_b = (ss / (m - 1.0) + EPS).sqrt();
                        let r = frozen.map_or(s_b / s_r, |f| f.0[c]);
                        let d = frozen.map_or((mean - rmean) / s_r, |f| f.1[c]);
                        rs[c] = s_b / s_r;
                        ds[c] = (mean - rmean) / s_r;
                        gamma * (r * (*x - mean) / s_b + d) + beta
                    }
                };
            }
        }
    }
    ((rs, ds), (means, vars))
}

fn conv1x1(h: &[Vec<Vec<f64>>], w: &[f64], b: &[f64], out: usize) -> Vec<Vec<Vec<f64>>> {
    let inputs = h[0].len();
    h.iter()
        .map(|n| {
            (0..out)
                .map(|k| {
                    (0..PIXELS).map(|p| b[k] + (0..inputs).map(|c| w[k * inputs + c] * n[c][p]).sum::<f64>()).collect()
                })
                .collect()
        })
        .collect()
}

/// Logits `[N × OUT]`, the TBR terms and the batch statistics measured on the way.
fn reference(net: &Net, x: &[f32], mode: NormMode, frozen: Option<&Frozen>) -> (Vec<f64>, Frozen, Measured) {
    let h: Vec<Vec<Vec<f64>>> = (0..N)
        .map(|n| (0..IN).map(|c| (0..PIXELS).map(|p| x[(n * IN + c) * PIXELS + p] as f64).collect()).collect())
        .collect();
    let mut h = conv1x1(&h, &net.w1, &net.b1, MID);
    let t1 = bn(&mut h, &net.bn1, mode, frozen.map(|f| &f[0]));
    h.iter_mut().flatten().flatten().for_each(|v| *v = v.max(0.0));
    let mut h = conv1x1(&h, &net.w2, &net.b2, OUT);
    let t2 = bn(&mut h, &net.bn2, mode, frozen.map(|f| &f[1]));
    let logits = h.iter().flat_map(|n| n.iter().map(|c| c.iter().sum::<f64>() / PIXELS as f64)).collect();
    (logits, vec![t1.0, t2.0], vec![t1.1, t2.1])
}

fn loss(logits: &[f64], weights: &[f64]) -> f64 {
    logits.iter().zip(weights).map(|(l, w)| l * w).sum()
}

fn check_gradients(mode: NormMode) {
    check_gradients_of(mode, Pool::GlobalAveragePool);
}

fn check_gradients_of(mode: NormMode, pool: Pool) {
    let net = Net::seeded(3);
    let x = SplitMix64::new(4).vec(N * IN * PIXELS, -1.5, 1.5);
    let weights: Vec<f64> = SplitMix64::new(5).vec(N * OUT, -1.0, 1.0).into_iter().map(f64::from).collect();

    let graph = Graph::load(&net.model_pooled_by(pool), &cpu_autodiff(), Trainable::NormAffine).expect("load");
    let forward = graph.forward(batch(&x, [N, IN, 3, 3], graph.device()), mode).expect("forward");
    let (expected_logits, frozen, _) = reference(&net, &x, mode, None);
    let logits = values(forward.logits.clone());
    for (a, e) in logits.iter().zip(&expected_logits) {
        assert!((*a as f64 - e).abs() < 1e-4, "{mode:?} logits: {a} vs {e}");
    }
    let w = Tensor::<2>::from_data(
        burn::tensor::TensorData::new(weights.iter().map(|&v| v as f32).collect::<Vec<_>>(), [N, OUT]),
        graph.device(),
    );
    let grads = forward.logits.mul(w).sum().backward();

    let h = 1e-5;
    for (layer, field, name, channels) in
        [(1, 0, "bn1.weight", MID), (1, 1, "bn1.bias", MID), (2, 0, "bn2.weight", OUT), (2, 1, "bn2.bias", OUT)]
    {
        let autodiff = graph.gradient(name, &grads).unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(autodiff.len(), channels);
        for c in 0..channels {
            let at = |delta: f64| {
                let mut n = net.clone();
                let params = if layer == 1 { &mut n.bn1 } else { &mut n.bn2 };
                params[field][c] += delta;
                loss(&reference(&n, &x, mode, (mode == NormMode::Tbr).then_some(&frozen)).0, &weights)
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            let error = (autodiff[c] as f64 - numeric).abs();
            assert!(
                error <= 1e-3 * numeric.abs().max(1.0),
                "{mode:?} ∂L/∂{name}[{c}]: autodiff {} vs numeric {numeric}",
                autodiff[c]
            );
        }
    }
    // Frozen weights receive no gradient at all.
    assert!(graph.gradient("conv1.w", &grads).is_none());
}

#[test]
fn tbr_gradients_match_finite_differences() {
    check_gradients(NormMode::Tbr);
}

#[test]
fn first_batch_gradients_match_finite_differences() {
    check_gradients(NormMode::TbrFirstBatch);
}

#[test]
fn reduce_mean_pooling_gradients_match_finite_differences() {
    check_gradients_of(NormMode::Tbr, Pool::ReduceMean);
}

#[test]
fn batch_mode_gradients_match_finite_differences() {
    check_gradients(NormMode::Batch);
}

#[test]
fn tbr_forward_equals_inference_forward() {
    let net = Net::seeded(8);
    let x = SplitMix64::new(9).vec(N * IN * PIXELS, -1.5, 1.5);
    let graph = Graph::load(&net.model(), &cpu_autodiff(), Trainable::NormAffine).expect("load");
    let run = |mode| values(graph.forward(batch(&x, [N, IN, 3, 3], graph.device()), mode).expect("forward").logits);
    for (a, b) in run(NormMode::Tbr).iter().zip(run(NormMode::Inference)) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

fn assert_close(what: &str, actual: &[f32], expected: &[f64], tolerance: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((*a as f64 - e).abs() <= tolerance * e.abs().max(1.0), "{what}[{i}]: {a} vs {e}");
    }
}

#[test]
fn first_batch_statistics_match_a_hand_computation_in_both_engines() {
    let net = Net::seeded(21);
    let model = net.model();
    let x = SplitMix64::new(22).vec(N * IN * PIXELS, -1.5, 1.5);
    let (logits, _, measured) = reference(&net, &x, NormMode::TbrFirstBatch, None);
    // Layer 2's statistics depend on how layer 1 normalised: with the biased variance (plain
    // batch normalisation) they differ far beyond the tolerance, so the check can tell them apart.
    let (_, _, biased) = reference(&net, &x, NormMode::Batch, None);
    let gap = measured[1].1.iter().zip(&biased[1].1).map(|(a, b)| (a - b).abs() / a.abs()).fold(0.0, f64::max);
    assert!(gap > 1e-3, "layer 2's variance barely depends on layer 1's normalisation ({gap:e})");

    // burn, as the cloud runs it: a TBR forward whose running statistics are the batch's own.
    let mut graph = Graph::load(&model, &cpu_autodiff(), Trainable::NormAffine).expect("load");
    let forward = graph.forward(batch(&x, [N, IN, 3, 3], graph.device()), NormMode::TbrFirstBatch).expect("forward");
    assert_close("burn logits", &values(forward.logits.clone()), &logits, 1e-4);
    graph.set_running_stats(&forward.batch_stats);
    for (layer, (mean, var)) in ["bn1", "bn2"].iter().zip(&measured) {
        assert_close(
            &format!("burn {layer} mean"),
            &graph.stored_values(&format!("{layer}.running_mean")).expect("mean"),
            mean,
            1e-4,
        );
        assert_close(
            &format!("burn {layer} var"),
            &graph.stored_values(&format!("{layer}.running_var")).expect("var"),
            var,
            1e-4,
        );
    }

    // ONNX Runtime, as the edge runs it: the rewritten graph, then the patched model serving.
    let library = OrtLibrary::get(None).expect("ONNX Runtime (run scripts/setup.sh)");
    let discovery = NormDiscovery::of(&model);
    let params: NormParams = cema_edge::runtime::first_batch_params(&library, &model, &discovery, &[N, IN, 3, 3], &x)
        .expect("first-batch statistics");
    assert_eq!(params.version, 0);
    for (layer, (mean, var)) in ["bn1", "bn2"].iter().zip(&measured) {
        assert_close(
            &format!("ORT {layer} mean"),
            &params.tensors[&format!("{layer}.running_mean")].values,
            mean,
            1e-4,
        );
        assert_close(&format!("ORT {layer} var"), &params.tensors[&format!("{layer}.running_var")].values, var, 1e-4);
    }
    assert_eq!(
        params.tensors["bn2.weight"].values,
        NormParams::source(&model).expect("source").tensors["bn2.weight"].values
    );
    let served = library.run_once(&params.apply(&model).expect("patch"), "x", &[N, IN, 3, 3], &x).expect("ORT run");
    assert_close("ORT served logits", &served, &logits, 1e-4);
}

#[test]
fn sgd_follows_pytorch_momentum_and_freezes_everything_else() {
    let net = Net::seeded(11);
    let model = net.model();
    let mut graph = Graph::load(&model, &cpu_autodiff(), Trainable::NormAffine).expect("load");
    let frozen_names = ["conv1.w", "conv1.b", "conv2.w", "conv2.b"];
    let before: Vec<Vec<f32>> = frozen_names.iter().map(|n| graph.stored_values(n).expect(n)).collect();
    let gamma0 = graph.stored_values("bn2.weight").expect("gamma");
    let mean0 = graph.stored_values("bn1.running_mean").expect("mean");
    let (lr, momentum) = (0.05, 0.9);
    let mut sgd = Sgd::new(lr, momentum);
    let mut previous: Option<(Vec<f32>, Vec<f32>)> = None; // (γ before the step, velocity)
    for step in 0..10 {
        let x = SplitMix64::new(100 + step).vec(N * IN * PIXELS, -1.5, 1.5);
        let forward = graph.forward(batch(&x, [N, IN, 3, 3], graph.device()), NormMode::Tbr).expect("forward");
        let grads = mean_entropy(forward.logits).backward();
        let g = graph.gradient("bn2.weight", &grads).expect("gradient");
        let p = graph.stored_values("bn2.weight").expect("gamma");
        assert_eq!(sgd.step(&mut graph, &grads), 4, "γ and β of two layers");
        graph.update_running_stats(&forward.batch_stats);
        // PyTorch: v = g on the first step, then v = μ·v + g; p ← p − lr·v.
        let v: Vec<f32> = match &previous {
            None => g.clone(),
            Some((_, v)) => v.iter().zip(&g).map(|(v, g)| momentum as f32 * v + g).collect(),
        };
        let after = graph.stored_values("bn2.weight").expect("gamma");
        for c in 0..OUT {
            let expected = p[c] - lr as f32 * v[c];
            assert!(
                (after[c] - expected).abs() <= 1e-6 * expected.abs().max(1.0),
                "step {step} γ[{c}]: {} vs {expected}",
                after[c]
            );
        }
        previous = Some((p, v));
    }
    for (name, values) in frozen_names.iter().zip(&before) {
        let now = graph.stored_values(name).expect(name);
        assert!(now.iter().zip(values).all(|(a, b)| a.to_bits() == b.to_bits()), "{name} changed");
    }
    assert_ne!(graph.stored_values("bn2.weight").expect("gamma"), gamma0, "γ did not move");
    assert_ne!(graph.stored_values("bn1.running_mean").expect("mean"), mean0, "running statistics did not follow");
    // The exported parameters carry the trained state.
    let exported = graph.norm_params(7);
    assert_eq!(exported.version, 7);
    assert_eq!(exported.tensors.len(), 8);
    assert_eq!(exported.tensors["bn2.weight"].values, graph.stored_values("bn2.weight").expect("gamma"));
    exported.validate(&model).expect("valid for the model");
}
