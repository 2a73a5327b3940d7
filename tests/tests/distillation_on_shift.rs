//! Distillation on real shifted data: a few CEMA distillation steps on severity-5 Gaussian
//! noise (Fashion-MNIST test images through cema-shift) lower the tiny student's KL to the
//! foundation, and move its γ/β.
#![allow(clippy::unwrap_used)] // a failing test should panic where it fails

mod support;

use cema_compute::adapt::{AdaptConfig, Adapter};
use cema_core::{Manifest, OnnxModel, SampleValues};

#[test]
fn distillation_steps_on_shifted_data_lower_the_students_kl_to_the_foundation() {
    let dir = tempfile::tempdir().unwrap();
    let (student, foundation) = support::tiny_models(dir.path());
    let load = |p: &std::path::Path| (OnnxModel::load(p).unwrap(), Manifest::load(Manifest::path_for(p)).unwrap());
    let (s, sm) = load(&student);
    let (f, fm) = load(&foundation);
    let mut adapter = Adapter::new((&s, &sm), (&f, &fm), AdaptConfig::default()).unwrap();
    let data_dir = cema_shift::dataset::fashion_mnist_dir().expect("run scripts/setup.sh");
    let data = cema_shift::dataset::load_fashion_mnist(&data_dir, cema_shift::Split::Test).unwrap();
    let samples: Vec<SampleValues> = (0..64)
        .map(|i| {
            let noisy = cema_shift::Corruption::GaussianNoise.apply(&data.images[i], 5, 1, i as u64);
            SampleValues::U8(noisy.to_chw())
        })
        .collect();
    let refs: Vec<&SampleValues> = samples.iter().collect();
    let kl = |adapter: &mut Adapter, state: &cema_compute::adapt::ScopeState| -> f64 {
        let s = adapter.student_logits(state, &refs).unwrap();
        let t = adapter.foundation_logits(state, &refs).unwrap();
        let mut total = 0.0;
        for (sr, tr) in s.chunks(10).zip(t.chunks(10)) {
            let (mut ps, mut pt) = (vec![0.0f32; 10], vec![0.0f32; 10]);
            cema_core::math::softmax(sr, &mut ps);
            cema_core::math::softmax(tr, &mut pt);
            total += pt.iter().zip(&ps).map(|(a, b)| *a as f64 * ((*a as f64).ln() - (*b as f64).ln())).sum::<f64>();
        }
        total / 64.0
    };
    let mut state = adapter.initial_state();
    let before = kl(&mut adapter, &state);
    for _ in 0..5 {
        adapter.distill_step(&mut state, &refs).unwrap();
    }
    let after = kl(&mut adapter, &state);
    assert!(after < before, "KL(teacher ‖ student) {before} → {after}");
    assert_ne!(cema_core::NormParams::source(&s).unwrap().tensors, state.student.tensors, "γ/β moved");
}
