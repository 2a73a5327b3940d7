//! CEMA's losses and the cloud step against independent f64 computations (cema-spec, "Cloud").
#![allow(clippy::unwrap_used)] // a failing test should panic where it fails

use burn::Tensor;
use burn::tensor::TensorData;
use cema_compute::adapt::{AdaptConfig, Adapter};
use cema_compute::loss::{DistillWeights, distillation, weighted_entropy};
use cema_compute::{Graph, NormMode, Trainable, batch, cpu_autodiff, values};
use cema_core::onnx::generate::ConvBnClassifier;
use cema_core::{Manifest, NormParams, SampleValues};

const E_MAX: f64 = 0.921_034_037_197_618_3; // 0.4·ln 10

fn softmax(z: &[f64], t: f64) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| ((v - m) / t).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn entropy(p: &[f64]) -> f64 {
    -p.iter().filter(|&&x| x > 0.0).map(|x| x * x.ln()).sum::<f64>()
}

/// (L_f, Ent, KL, CE, total) from the formulas, in f64.
fn reference(student: &[Vec<f64>], teacher: &[Vec<f64>], w: &DistillWeights) -> (f64, f64, f64, f64, f64) {
    reference_with(student, teacher, w, None)
}

/// The same, optionally with the student's reliability weights held at given values: they are
/// computed without gradient, so a finite difference must not move them.
fn reference_with(
    student: &[Vec<f64>],
    teacher: &[Vec<f64>],
    w: &DistillWeights,
    student_weights: Option<&[f64]>,
) -> (f64, f64, f64, f64, f64) {
    let b = student.len() as f64;
    let (mut lf, mut ent, mut kl, mut ce) = (0.0, 0.0, 0.0, 0.0);
    for (i, (s, t)) in student.iter().zip(teacher).enumerate() {
        let ps = softmax(s, 1.0);
        let pt = softmax(t, 1.0);
        let hs = entropy(&ps);
        let ht = entropy(&pt);
        let ws = student_weights.map_or((w.e_max - hs).exp(), |fixed| fixed[i]);
        lf += ws * hs;
        ent += ws * hs;
        let pt_t = softmax(t, w.temperature);
        let ps_t = softmax(s, w.temperature);
        let kl_i: f64 = pt_t.iter().zip(&ps_t).map(|(a, b)| a * (a.ln() - b.ln())).sum();
        kl += (w.e_max - ht).exp() * w.temperature * w.temperature * kl_i;
        let target = t.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap();
        ce += (w.e_max - ht).exp() * -ps[target].ln();
    }
    let (lf, ent, kl, ce) = (lf / b, ent / b, kl / b, ce / b);
    (lf, ent, kl, ce, w.alpha * ent + w.beta * kl + w.gamma * ce)
}

fn tensor(rows: &[Vec<f64>]) -> Tensor<2> {
    let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), rows[0].len()]), &cpu_autodiff())
}

fn scalar(t: Tensor<1>) -> f64 {
    values(t.detach())[0] as f64
}

#[test]
fn foundation_loss_and_distillation_terms_equal_the_formulas() {
    let student = vec![
        vec![2.0, 0.5, -1.0, 0.0, 0.3, -0.2, 0.1, 0.0, -0.5, 1.0],
        vec![-0.3, 0.2, 0.1, 3.5, 0.0, 0.0, -1.0, 0.4, 0.2, 0.1],
        vec![0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.2],
    ];
    let teacher = vec![
        vec![1.5, 0.2, -0.5, 0.1, 0.0, 0.0, 0.3, -0.1, 0.0, 0.4],
        vec![0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 2.5, 0.0, 0.0],
        vec![-1.0, 4.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0],
    ];
    for weights in [
        DistillWeights { alpha: 3.0, beta: 3.0, gamma: 1.0, temperature: 1.0, e_max: E_MAX },
        DistillWeights { alpha: 0.5, beta: 2.0, gamma: 0.25, temperature: 2.0, e_max: 1.7 },
    ] {
        let (lf, ent, kl, ce, total) = reference(&student, &teacher, &weights);
        let got_lf = scalar(weighted_entropy(tensor(&student), weights.e_max));
        let loss = distillation(tensor(&student), tensor(&teacher), &weights);
        for (name, got, want) in [
            ("L_f", got_lf, lf),
            ("Ent", scalar(loss.ent), ent),
            ("KL", scalar(loss.kl), kl),
            ("CE", scalar(loss.ce), ce),
            ("total", scalar(loss.total), total),
        ] {
            assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "{name}: {got} vs {want}");
        }
    }
}

/// A model with one BN layer: under TBR, ∂L/∂γ and ∂L/∂β of the LAST normalisation layer equal
/// those of the inference-mode forward (r and d are constants and x̂ does not depend on γ, β),
/// so central differences of the inference-mode loss check them directly.
#[test]
fn distillation_gradients_wrt_gamma_and_beta_match_finite_differences() {
    let generator = ConvBnClassifier::seeded(2, 10, 4, 11);
    let model = generator.model().unwrap();
    let device = cpu_autodiff();
    let mut graph = Graph::load(&model, &device, Trainable::NormAffine).unwrap();
    let input = cema_core::onnx::generate::SplitMix64::new(5).vec(6 * 2 * 16, -1.0, 1.0);
    let dims = [6, 2, 4, 4];
    let teacher: Vec<Vec<f64>> =
        (0..6).map(|i| (0..10).map(|c| ((i * 7 + c * 3) % 11) as f64 * 0.3 - 1.2).collect()).collect();
    let weights = DistillWeights { alpha: 3.0, beta: 3.0, gamma: 1.0, temperature: 1.0, e_max: E_MAX };
    let forward = graph.forward(batch(&input, dims, &device), NormMode::Tbr).unwrap();
    let loss = distillation(forward.logits, tensor(&teacher), &weights);
    let grads = loss.total.backward();
    let layer = graph.norm_layers()[0].clone();
    let [scale, bias, _, _] = layer.parameter_names();
    let analytic = [graph.gradient(scale, &grads).unwrap(), graph.gradient(bias, &grads).unwrap()];

    let source = graph.norm_params(0);
    let mut logits_at = |params: &NormParams| -> Vec<Vec<f64>> {
        graph.load_norm_params(params).unwrap();
        let f = graph.forward(batch(&input, dims, &device), NormMode::Inference).unwrap();
        values(f.logits.detach()).chunks(10).map(|r| r.iter().map(|&v| v as f64).collect()).collect()
    };
    let fixed: Vec<f64> =
        logits_at(&source).iter().map(|s| (weights.e_max - entropy(&softmax(s, 1.0))).exp()).collect();
    let mut loss_at = |params: &NormParams| reference_with(&logits_at(params), &teacher, &weights, Some(&fixed)).4;
    let h = 1e-3f32;
    for (which, name) in [scale, bias].into_iter().enumerate() {
        for channel in [0usize, 3, 9] {
            let mut plus = source.clone();
            plus.tensors.get_mut(name).unwrap().values[channel] += h;
            let mut minus = source.clone();
            minus.tensors.get_mut(name).unwrap().values[channel] -= h;
            let numeric = (loss_at(&plus) - loss_at(&minus)) / (2.0 * h as f64);
            let got = analytic[which][channel] as f64;
            assert!(
                (got - numeric).abs() <= 2e-3 + 2e-2 * numeric.abs(),
                "{name}[{channel}]: autodiff {got} vs central difference {numeric}"
            );
        }
    }
}

#[test]
fn one_distillation_step_follows_the_pytorch_momentum_rule() {
    let generator = ConvBnClassifier::seeded(1, 10, 4, 3);
    let model = generator.model().unwrap();
    let manifest = Manifest::parse(&generator.manifest_toml()).unwrap();
    let config = AdaptConfig::default();
    let mut adapter = Adapter::new((&model, &manifest), (&model, &manifest), config.clone()).unwrap();
    let samples: Vec<SampleValues> =
        (0..8).map(|i| SampleValues::F32(cema_core::onnx::generate::SplitMix64::new(i).vec(16, -1.0, 1.0))).collect();
    let refs: Vec<&SampleValues> = samples.iter().collect();
    let name = graph_names(&model);

    // The gradient at a state, computed independently of the adapter.
    let gradient_at = |state: &cema_compute::adapt::ScopeState, adapter: &mut Adapter| -> Vec<f32> {
        let teacher = adapter.foundation_logits(state, &refs).unwrap();
        let teacher: Vec<Vec<f64>> = teacher.chunks(10).map(|r| r.iter().map(|&v| v as f64).collect()).collect();
        let device = cpu_autodiff();
        let mut graph = Graph::load(&model, &device, Trainable::NormAffine).unwrap();
        graph.load_norm_params(&state.student).unwrap();
        let input: Vec<f32> = samples
            .iter()
            .flat_map(|s| match s {
                SampleValues::F32(v) => v.clone(),
                SampleValues::U8(_) => unreachable!(),
            })
            .collect();
        let f = graph.forward(batch(&input, [8, 1, 4, 4], &device), NormMode::Tbr).unwrap();
        let w = DistillWeights { alpha: 3.0, beta: 3.0, gamma: 1.0, temperature: 1.0, e_max: adapter.e_max() };
        let grads = distillation(f.logits, tensor(&teacher), &w).total.backward();
        graph.gradient(&name, &grads).unwrap()
    };

    let mut state = adapter.initial_state();
    let gamma0 = state.student.tensors[&name].values.clone();
    let g0 = gradient_at(&state, &mut adapter);
    adapter.distill_step(&mut state, &refs).unwrap();
    let gamma1 = state.student.tensors[&name].values.clone();
    let g1 = gradient_at(&state, &mut adapter);
    adapter.distill_step(&mut state, &refs).unwrap();
    let gamma2 = state.student.tensors[&name].values.clone();
    let lr = config.lr_student as f32;
    for c in 0..gamma0.len() {
        let want1 = gamma0[c] - lr * g0[c];
        let want2 = gamma1[c] - lr * (0.9 * g0[c] + g1[c]);
        assert!((gamma1[c] - want1).abs() <= 1e-6 + 1e-5 * want1.abs(), "step 1, channel {c}");
        assert!((gamma2[c] - want2).abs() <= 1e-6 + 1e-5 * want2.abs(), "step 2, channel {c}");
    }
    assert_ne!(gamma0, gamma1, "the step moved γ");
}

fn graph_names(model: &cema_core::OnnxModel) -> String {
    let graph = Graph::load(model, &cema_compute::cpu(), Trainable::None).unwrap();
    graph.norm_layers()[0].parameter_names()[0].to_owned()
}
