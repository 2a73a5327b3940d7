//! Scenarios: segment plans per protocol, per-device data, and thread-independent batches.

use cema_shift::dataset::Dataset;
use cema_shift::{Corruption, Image, Protocol, Scenario, ScenarioConfig};

fn data() -> Dataset {
    let images = (0..50).map(|i| Image::new(28, 28, 1, vec![(i * 5) as u8; 784])).collect();
    Dataset { images, labels: (0..50).map(|i| i % 10).collect(), classes: (0..10).map(|c| c.to_string()).collect() }
}

fn config(protocol: Protocol) -> ScenarioConfig {
    ScenarioConfig {
        protocol,
        corruptions: vec![Corruption::GaussianNoise, Corruption::Fog, Corruption::Contrast],
        severities: vec![5, 3],
        samples_per_segment: 4,
        seed: 1,
        device: 0,
    }
}

#[test]
fn protocols_plan_their_segments() {
    let data = data();
    let independent = Scenario::new(&data, config(Protocol::Independent));
    assert_eq!(independent.segments().len(), 6);
    assert!(independent.segments().iter().all(|s| s.reset));
    assert_eq!(independent.len(), 24);

    let continual = Scenario::new(&data, config(Protocol::Continual));
    let plan: Vec<_> = continual.segments().iter().map(|s| (s.corruption, s.severity, s.reset)).collect();
    assert_eq!(
        plan,
        vec![
            (Some(Corruption::GaussianNoise), 5, true),
            (Some(Corruption::Fog), 5, false),
            (Some(Corruption::Contrast), 5, false)
        ]
    );

    let gradual = Scenario::new(&data, config(Protocol::Gradual));
    let severities: Vec<u8> = gradual.segments().iter().take(9).map(|s| s.severity).collect();
    assert_eq!(severities, vec![1, 2, 3, 4, 5, 4, 3, 2, 1]);
    assert_eq!(gradual.segments().len(), 27);

    let mixed = Scenario::new(&data, ScenarioConfig { samples_per_segment: 60, ..config(Protocol::Mixed) });
    let drawn: std::collections::HashSet<Corruption> = mixed.batch(0, 60).iter().map(|s| s.corruption).collect();
    assert_eq!(drawn.len(), 3, "mixed streams draw every corruption");
}

#[test]
fn samples_carry_their_shift_and_label() {
    let data = data();
    let scenario = Scenario::new(&data, config(Protocol::Continual));
    for sample in scenario.batch(0, scenario.len() as u64) {
        let segment = scenario.segments()[sample.segment];
        assert_eq!(Some(sample.corruption), segment.corruption);
        assert_eq!(sample.severity, 5);
        assert_eq!(sample.label, data.labels[sample.source_index]);
        assert_eq!(
            sample.image,
            sample.corruption.apply(&data.images[sample.source_index], 5, scenario.noise_seed(), sample.position)
        );
    }
}

#[test]
fn devices_see_different_data_and_noise() {
    let data = data();
    let a = Scenario::new(&data, config(Protocol::Continual));
    let b = Scenario::new(&data, ScenarioConfig { device: 1, ..config(Protocol::Continual) });
    let order = |s: &Scenario<'_>| s.batch(0, 12).iter().map(|x| x.source_index).collect::<Vec<_>>();
    assert_ne!(order(&a), order(&b));
    assert_eq!(order(&a), order(&Scenario::new(&data, config(Protocol::Continual))), "same device, same stream");
    // Even on the same source image at the same position, two devices get different noise.
    assert_ne!(a.noise_seed(), b.noise_seed());
    let noisy = |s: &Scenario<'_>| Corruption::GaussianNoise.apply(&data.images[0], 5, s.noise_seed(), 0);
    assert_ne!(noisy(&a), noisy(&b));
}

#[test]
fn batches_do_not_depend_on_thread_count() {
    let data = data();
    let scenario = Scenario::new(&data, config(Protocol::Independent));
    let run = |threads| {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool").install(|| scenario.batch(0, 24))
    };
    assert_eq!(run(1), run(2));
}
