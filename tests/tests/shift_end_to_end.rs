//! Distribution shift end to end with the shipped models: a real cloud and two real agents on
//! their own severity-5 Gaussian-noise streams, per-device scopes, lockstep. Adaptation beats
//! the unadapted model, uploads are a strict fraction, and each device receives only its own
//! scope's parameters.
#![allow(clippy::unwrap_used)] // a failing test should panic where it fails

mod support;

use cema_edge::{OrtLibrary, Runtime};
use cema_proto::v1::WatchParamsRequest;
use cema_shift::{Corruption, Protocol, Scenario, ScenarioConfig};
use cema_sim::fleet::{self, EdgeSpec};
use support::*;

const SAMPLES: usize = 1280;

fn unadapted_accuracy(student: &std::path::Path, device: u64) -> f64 {
    let dir = cema_shift::dataset::fashion_mnist_dir().expect("run scripts/setup.sh");
    let data = cema_shift::dataset::load_fashion_mnist(&dir, cema_shift::Split::Test).unwrap();
    let scenario = Scenario::new(
        &data,
        ScenarioConfig {
            protocol: Protocol::Continual,
            corruptions: vec![Corruption::GaussianNoise],
            severities: vec![5],
            samples_per_segment: SAMPLES,
            seed: 0,
            device,
        },
    );
    let mut runtime = Runtime::load(OrtLibrary::get(None).unwrap(), student, 1).unwrap();
    let mut correct = 0;
    for start in (0..SAMPLES as u64).step_by(64) {
        let batch = scenario.batch(start, start + 64);
        let mut input = Vec::new();
        for s in &batch {
            runtime.manifest().preprocess_u8(&s.image.to_chw(), &mut input);
        }
        let p = runtime.predict(&input, batch.len()).unwrap();
        correct += batch.iter().zip(&p.class).filter(|(s, c)| s.label as usize == **c).count();
    }
    correct as f64 / SAMPLES as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_adapt_to_noise_with_their_own_scopes() {
    let (student, foundation) = shipped_models();
    let dir = tempfile::tempdir().unwrap();
    let bins = binaries();
    let data = dir.path().join("cloud");
    let (cloud, tokens) = cloud_with_devices(&bins, &data, &config(&student, &foundation, ""), &["e1", "e2"]);
    let specs: Vec<EdgeSpec> = ["e1", "e2"]
        .iter()
        .zip(&tokens)
        .enumerate()
        .map(|(i, (device, token))| EdgeSpec {
            device: device.to_string(),
            token: token.clone(),
            data_dir: dir.path().join(device),
            output: dir.path().join(format!("{device}.jsonl")),
            args: [
                "--model",
                &student.display().to_string(),
                "--corruptions",
                "gaussian_noise",
                "--severity",
                "5",
                "--samples-per-segment",
                &SAMPLES.to_string(),
                "--scenario-device",
                &i.to_string(),
                "--pacing",
                "lockstep",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        })
        .collect();
    let run = {
        let (bins, specs) = (bins.clone(), specs.clone());
        let cloud_ref = &cloud;
        tokio::task::block_in_place(|| fleet::run_edges(&bins, cloud_ref, &specs, 2))
    };
    run.unwrap();

    for (i, spec) in specs.iter().enumerate() {
        let records = cema_sim::report::read(&spec.output).unwrap();
        assert_eq!(records.len(), SAMPLES);
        let (_, tally) = cema_sim::report::by_corruption(&records);
        let none = unadapted_accuracy(&student, i as u64);
        eprintln!(
            "{}: none {:.4}, cema {:.4}, uploaded {:.4}",
            spec.device,
            none,
            tally.accuracy(),
            tally.uploaded_fraction()
        );
        assert!(tally.accuracy() > none + 0.02, "{}: CEMA {} vs none {none}", spec.device, tally.accuracy());
        assert!(tally.uploaded > 0 && tally.uploaded < tally.n, "uploads are a strict fraction: {tally:?}");
        assert!(records.iter().any(|r| r.params_version > 0), "updates were applied");

        // Update latency (upload acknowledged → parameters applied) is measured on the edge.
        let log = std::fs::read_to_string(spec.data_dir.with_extension("log")).unwrap();
        let summary = fleet::summary_line(&log, "cema-edge: device=").expect("the agent's closing line");
        let ms = |k: &str| summary[k].parse::<f64>().unwrap_or_else(|_| panic!("{k} = {}", summary[k]));
        let (p50, p99) = (ms("update_latency_p50_ms"), ms("update_latency_p99_ms"));
        assert!(p50 > 0.0 && p50 <= p99, "latency p50 {p50} ms, p99 {p99} ms");
        assert_eq!(summary["outbox_left"], "0", "lockstep drains the outbox");
        assert_eq!(summary["batches"], (SAMPLES / 64).to_string());
    }

    // Each device's watch stream carries its own scope only.
    let mut c = client(&cloud).await;
    for (device, token) in ["e1", "e2"].iter().zip(&tokens) {
        let request = WatchParamsRequest { device_id: device.to_string(), since_version: 0 };
        let mut stream = c.watch_params(authed(&support::token(token), request)).await.unwrap().into_inner();
        let update = stream.message().await.unwrap().unwrap();
        let params = update.params.expect("the latest version is sent at once");
        assert_eq!(params.scope, format!("device:{device}"));
    }
    let other = WatchParamsRequest { device_id: "e2".into(), since_version: 0 };
    let denied = c.watch_params(authed(&support::token(&tokens[0]), other)).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "a device cannot watch another's scope");
    cloud.stop().unwrap();
}
