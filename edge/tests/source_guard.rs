//! The source guard on a real ONNX Runtime session: an agent serving adapted parameters that
//! have collapsed (every sample predicted as one class) serves the model's own predictions
//! instead when the guard is on, counts it, and uploads by what it served; without the guard
//! it serves the collapsed predictions. And drift reset: an abrupt rise of the batches'
//! entropy returns the agent to the model's own parameters and flags the batch end.
#![allow(clippy::unwrap_used)] // a failing test should panic where it fails

use std::sync::atomic::Ordering;

use cema_core::onnx::generate::{ConvBnClassifier, SplitMix64};
use cema_core::{Manifest, NormParams, SampleValues};
use cema_edge::agent::{Agent, AgentConfig, Pacing, PredictionRecord};
use cema_edge::outbox::OutboxLimits;
use cema_edge::{EdgeStore, OrtLibrary, Preset, Runtime};

/// Images whose channels each have their own level, so the model's predictions spread.
fn inputs(n: usize) -> Vec<SampleValues> {
    (0..n as u64)
        .map(|i| {
            let mut rng = SplitMix64::new(300 + i);
            let levels = rng.vec(3, -3.0, 3.0);
            let noise = rng.vec(3 * 25, -0.2, 0.2);
            SampleValues::F32(noise.iter().enumerate().map(|(k, x)| x + levels[k / 25]).collect())
        })
        .collect()
}

/// An upload-all agent, guard and drift reset as given.
fn config(guard: bool, drift_reset: bool) -> AgentConfig {
    AgentConfig {
        device_id: "cam".into(),
        selector: Preset::UploadAll.config(),
        compress: false,
        float_encoding: cema_core::Encoding::F32,
        stats_init: cema_core::StatsInit::Source,
        uplink_statistics: false,
        local_every: None,
        outbox: OutboxLimits::default(),
        pacing: Pacing::Free,
        guard,
        drift_reset,
    }
}

/// Pushes one batch through an agent that resumes with `applied`, guard on or off.
fn serve(spec: &ConvBnClassifier, applied: &NormParams, guard: bool) -> (Vec<PredictionRecord>, u64) {
    let (model, manifest) = (spec.model().unwrap(), Manifest::parse(&spec.manifest_toml()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let wire = cema_proto::norm_params_to_wire(applied, "device:cam");
    EdgeStore::open(&db, OutboxLimits::default()).unwrap().save_applied(&wire).unwrap();
    let runtime = Runtime::new(OrtLibrary::get(None).unwrap(), model, manifest, 1).unwrap();
    let mut agent = Agent::open(runtime, &db, config(guard, false)).unwrap();
    let served = agent.push(&inputs(16)).unwrap();
    let reverts = agent.metrics().guard_reverts.load(Ordering::Relaxed);
    (served, reverts)
}

#[test]
fn collapsed_parameters_are_not_served_under_the_guard() {
    let spec = ConvBnClassifier::seeded(3, 6, 5, 44);
    let model = spec.model().unwrap();
    let manifest = Manifest::parse(&spec.manifest_toml()).unwrap();
    let flat: Vec<f32> =
        inputs(16).iter().flat_map(|s| if let SampleValues::F32(v) = s { v.clone() } else { vec![] }).collect();
    let source =
        Runtime::new(OrtLibrary::get(None).unwrap(), model.clone(), manifest, 1).unwrap().predict(&flat, 16).unwrap();
    let classes: std::collections::BTreeSet<usize> = source.class.iter().copied().collect();
    assert!(classes.len() > 1, "the source model spreads this batch over several classes");

    // γ = 0 and one large β: every sample gets the same logits, class 0.
    let mut collapsed = NormParams::source(&model).unwrap();
    collapsed.version = 7;
    let layer = &cema_core::NormDiscovery::of(&model).layers[0];
    collapsed.tensors.get_mut(&layer.scale).unwrap().values.iter_mut().for_each(|g| *g = 0.0);
    let beta = &mut collapsed.tensors.get_mut(&layer.bias).unwrap().values;
    beta.iter_mut().enumerate().for_each(|(c, b)| *b = if c == 0 { 5.0 } else { 0.0 });

    let (unguarded, reverts) = serve(&spec, &collapsed, false);
    assert_eq!(reverts, 0);
    assert!(unguarded.iter().all(|p| p.class == 0 && p.params_version == 7), "without the guard: collapsed");

    let (guarded, reverts) = serve(&spec, &collapsed, true);
    assert_eq!(reverts, 1, "one batch served with the source parameters");
    for (i, p) in guarded.iter().enumerate() {
        assert_eq!((p.class, p.params_version), (source.class[i], 0), "sample {i}: the source's prediction");
        assert_eq!(p.entropy.to_bits(), source.entropy[i].to_bits());
        assert!(p.uploaded, "uploads follow what was served (upload-all here)");
    }
}

/// `inputs` scaled: small inputs give the random model uncertain predictions.
fn scaled(n: usize, scale: f32) -> Vec<SampleValues> {
    inputs(n)
        .into_iter()
        .map(|s| match s {
            SampleValues::F32(v) => SampleValues::F32(v.iter().map(|x| x * scale).collect()),
            other => other,
        })
        .collect()
}

#[test]
fn an_abrupt_rise_of_entropy_resets_to_the_source_parameters_and_flags_the_batch() {
    let spec = ConvBnClassifier::seeded(3, 6, 5, 44);
    let (model, manifest) = (spec.model().unwrap(), Manifest::parse(&spec.manifest_toml()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    // Served as an update: the model's own values under version 5.
    let mut applied = NormParams::source(&model).unwrap();
    applied.version = 5;
    let wire = cema_proto::norm_params_to_wire(&applied, "device:cam");
    EdgeStore::open(&db, OutboxLimits::default()).unwrap().save_applied(&wire).unwrap();
    let runtime = Runtime::new(OrtLibrary::get(None).unwrap(), model, manifest, 1).unwrap();
    let mut agent = Agent::open(runtime, &db, config(false, true)).unwrap();
    let mean_entropy =
        |served: &[PredictionRecord]| served.iter().map(|p| p.entropy).sum::<f32>() / served.len() as f32;
    let mut confident = 0.0;
    for _ in 0..8 {
        let served = agent.push(&scaled(16, 3.0)).unwrap();
        assert!(served.iter().all(|p| p.params_version == 5));
        confident = mean_entropy(&served);
    }
    assert_eq!(agent.metrics().drift_resets.load(Ordering::Relaxed), 0, "a steady stream does not fire");
    let mut fired_at = None;
    for batch in 9..=14u64 {
        let served = agent.push(&scaled(16, 0.05)).unwrap();
        assert!(mean_entropy(&served) > confident, "small inputs are predicted less certainly");
        if agent.metrics().drift_resets.load(Ordering::Relaxed) == 1 {
            fired_at = Some(batch);
            break;
        }
    }
    let fired_at = fired_at.expect("the rise of entropy fired the drift test within six batches");
    assert_eq!(agent.version(), 0, "the model's own parameters serve after a drift reset");
    let after = agent.push(&scaled(16, 0.05)).unwrap();
    assert!(after.iter().all(|p| p.params_version == 0));

    let ends: Vec<_> = agent.outbox().pending(0, usize::MAX).unwrap().into_iter().filter_map(|e| e.batch_end).collect();
    for end in &ends {
        let outcome = end.outcome.expect("every batch end reports what was served");
        assert_eq!(outcome.drift, end.batch == fired_at, "batch {}: the drift flag", end.batch);
        assert_eq!(outcome.served_version, if end.batch <= fired_at { 5 } else { 0 }, "batch {}", end.batch);
        assert_eq!(outcome.guard(), cema_proto::v1::GuardOutcome::Unspecified, "the guard is off");
    }
    assert_eq!(ends.len() as u64, fired_at + 1);
}
