//! The statistics the edge measures forward-only: every served batch's per-layer input
//! statistics (the statistics uplink) equal a hand computation and leave the served logits
//! unchanged, also after a parameter swap; edge-local adaptation moves the running statistics
//! by TBR's momentum and applies them every N batches.

use cema_core::onnx::generate::{ConvBnClassifier, SplitMix64};
use cema_core::{Manifest, NormDiscovery, NormParams};
use cema_edge::local::LocalAdaptation;
use cema_edge::{OrtLibrary, Runtime};

const TOLERANCE: f64 = 1e-4;

fn runtime(spec: &ConvBnClassifier) -> Runtime {
    let manifest = Manifest::parse(&spec.manifest_toml()).expect("manifest");
    let library = OrtLibrary::get(None).expect("ONNX Runtime (run scripts/setup.sh)");
    Runtime::new(library, spec.model().expect("model"), manifest, 1).expect("runtime")
}

/// Per channel of the 1×1 convolution's output (the BN input): mean and unbiased variance.
fn conv_output_statistics(spec: &ConvBnClassifier, input: &[f32], batch: usize) -> (Vec<f64>, Vec<f64>) {
    let (c, pixels) = (spec.in_channels, spec.side * spec.side);
    let mut means = Vec::new();
    let mut vars = Vec::new();
    for k in 0..spec.classes {
        let values: Vec<f64> = (0..batch)
            .flat_map(|n| {
                (0..pixels).map(move |p| {
                    (0..c)
                        .map(|ch| spec.conv_weight[k * c + ch] as f64 * input[(n * c + ch) * pixels + p] as f64)
                        .sum::<f64>()
                        + spec.conv_bias[k] as f64
                })
            })
            .collect();
        let m = values.len() as f64;
        let mean = values.iter().sum::<f64>() / m;
        means.push(mean);
        vars.push(values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (m - 1.0));
    }
    (means, vars)
}

fn assert_close(what: &str, actual: &[f32], expected: &[f64]) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((*a as f64 - e).abs() <= TOLERANCE * e.abs().max(1.0), "{what}[{i}]: {a} vs {e}");
    }
}

#[test]
fn every_batch_yields_its_statistics_and_the_same_predictions() {
    let spec = ConvBnClassifier::seeded(3, 4, 5, 31);
    let mut plain = runtime(&spec);
    let mut observing = runtime(&spec);
    observing.observe_statistics().expect("observe");
    let batch = 6;
    let input = SplitMix64::new(32).vec(batch * 3 * 25, -1.0, 1.0);

    let served = observing.predict(&input, batch).expect("predict");
    let statistics = served.statistics.as_ref().expect("statistics measured");
    let (means, vars) = conv_output_statistics(&spec, &input, batch);
    assert_close("mean", &statistics.tensors["bn.running_mean"].values, &means);
    assert_close("variance", &statistics.tensors["bn.running_var"].values, &vars);
    assert_eq!(statistics.tensors.len(), 2, "only running means and variances");
    assert!(plain.predict(&input, batch).expect("predict").statistics.is_none());
    let expected = spec.reference_logits(&input, batch, &spec.bn);
    assert_close("served logits", &served.logits, &expected);

    // After a swap the session still measures, and serves the new parameters.
    let mut params = NormParams::source(&spec.model().expect("model")).expect("source");
    params.version = 3;
    params.tensors.get_mut("bn.running_var").expect("var").values.iter_mut().for_each(|v| *v *= 2.0);
    let prepared = observing.prepare(&params).expect("prepare");
    observing.swap(prepared);
    let after = observing.predict(&input, batch).expect("predict");
    assert_eq!(after.params_version, 3);
    assert_close(
        "statistics after a swap",
        &after.statistics.expect("statistics").tensors["bn.running_mean"].values,
        &means,
    );
    let bn = [
        params.tensors["bn.weight"].values.clone(),
        params.tensors["bn.bias"].values.clone(),
        params.tensors["bn.running_mean"].values.clone(),
        params.tensors["bn.running_var"].values.clone(),
    ];
    assert_close("logits after a swap", &after.logits, &spec.reference_logits(&input, batch, &bn));
}

#[test]
fn local_adaptation_follows_the_batches_by_momentum_and_applies_every_n() {
    let spec = ConvBnClassifier::seeded(2, 3, 4, 41);
    let model = spec.model().expect("model");
    let discovery = NormDiscovery::of(&model);
    let source = NormParams::source(&model).expect("source");
    let mut local = LocalAdaptation::new(source.clone(), 2);
    let batch_stats = |seed: u64| {
        let mut s = source.statistics(&discovery);
        let mut rng = SplitMix64::new(seed);
        s.tensors.values_mut().for_each(|t| t.values = rng.vec(t.values.len(), 0.1, 2.0));
        s
    };
    let (first, second) = (batch_stats(1), batch_stats(2));
    assert!(local.observe(&first, &discovery).is_none(), "not due after one batch of two");
    let applied = local.observe(&second, &discovery).expect("due after two batches").clone();
    for name in ["bn.running_mean", "bn.running_var"] {
        let expected: Vec<f64> = source.tensors[name]
            .values
            .iter()
            .zip(&first.tensors[name].values)
            .zip(&second.tensors[name].values)
            .map(|((r, a), b)| {
                let after_first = 0.9 * *r as f64 + 0.1 * *a as f64;
                0.9 * after_first + 0.1 * *b as f64
            })
            .collect();
        assert_close(name, &applied.tensors[name].values, &expected);
    }
    assert_eq!(applied.tensors["bn.weight"], source.tensors["bn.weight"], "γ is not local to change");
}
