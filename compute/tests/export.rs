//! Pretraining updates every weight, and the exported model runs in ONNX Runtime with exactly
//! the trained values.

use cema_compute::loss::cross_entropy;
use cema_compute::zoo::ResNetSpec;
use cema_compute::{Graph, NormMode, Sgd, Trainable, batch, cpu, cpu_autodiff, values};
use cema_core::OnnxModel;
use cema_core::onnx::generate::SplitMix64;
use cema_edge::OrtLibrary;

#[test]
fn trained_weights_export_to_a_model_ort_runs_identically() {
    let spec = ResNetSpec { widths: [4, 8, 16], blocks: [1, 1, 1], in_channels: 1, side: 12, classes: 10 };
    let model = spec.build(5).expect("model");
    let mut graph = Graph::load(&model, &cpu_autodiff(), Trainable::All).expect("load");
    let mut sgd = Sgd::new(0.05, 0.9);
    let dims = [8, 1, 12, 12];
    let labels: Vec<usize> = (0..8).map(|i| i % 10).collect();
    for step in 0..3 {
        let x = SplitMix64::new(step).vec(8 * 144, -1.0, 1.0);
        let forward = graph.forward(batch(&x, dims, graph.device()), NormMode::Batch).expect("forward");
        let grads = cross_entropy(forward.logits, &labels).backward();
        assert!(sgd.step(&mut graph, &grads) > 20, "every weight tensor gets a gradient");
        graph.update_running_stats(&forward.batch_stats);
    }
    let exported = graph.export(&model).expect("export");
    // Every stored tensor changed: weights by SGD, running statistics by the batch updates.
    let original = |name: &str| cema_core::onnx::read_f32(model.initializer(name).expect(name)).expect("f32");
    for name in graph.initializer_names() {
        assert_ne!(graph.stored_values(name).expect(name), original(name), "{name} did not change");
    }
    let reloaded = OnnxModel::decode(&exported.encode()).expect("valid ONNX");
    let exported_values = |name: &str| cema_core::onnx::read_f32(reloaded.initializer(name).expect(name)).expect("f32");
    for name in graph.initializer_names() {
        assert_eq!(
            exported_values(name),
            graph.stored_values(name).expect(name),
            "the exported {name} is the trained one"
        );
    }

    let x = SplitMix64::new(99).vec(2 * 144, -1.0, 1.0);
    let inference = Graph::load(&reloaded, &cpu(), Trainable::None).expect("load exported");
    let burn = values(
        inference.forward(batch(&x, [2, 1, 12, 12], inference.device()), NormMode::Inference).expect("forward").logits,
    );
    let trained =
        values(graph.forward(batch(&x, [2, 1, 12, 12], graph.device()), NormMode::Inference).expect("forward").logits);
    let ort = OrtLibrary::get(None)
        .expect("ORT")
        .run_once(&reloaded.encode(), "input", &[2, 1, 12, 12], &x)
        .expect("ORT run");
    let scale = ort.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    for ((o, b), t) in ort.iter().zip(&burn).zip(&trained) {
        assert!((o - b).abs() / scale <= 1e-4, "ORT {o} vs burn {b}");
        // The frozen graph builds its convolutions' columns itself, the trained one through
        // burn: the same products summed in another order.
        assert!((b - t).abs() / scale <= 1e-5, "frozen graph {b} vs trained graph {t}");
    }
}

#[test]
fn export_refuses_a_model_it_was_not_loaded_from() {
    let graph = Graph::load(&ResNetSpec::STUDENT.build(1).expect("model"), &cpu(), Trainable::None).expect("load");
    let other = cema_core::onnx::generate::ConvBnClassifier::seeded(1, 10, 28, 1).model().expect("model");
    assert!(graph.export(&other).is_err());
}
