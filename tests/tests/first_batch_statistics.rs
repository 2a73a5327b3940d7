//! `stats_init = first_batch` end to end, in process, over real gRPC on 127.0.0.1 and real
//! sled: the edge measures its first batch's statistics forward-only before serving it, serves
//! that batch with them, stores them with the batch and sends them with its batch end; the cloud
//! adopts them as the scope's edge-model statistics; a restarted agent resumes with them rather
//! than measuring again. Statistics that do not fit the model are refused and change nothing.
#![allow(clippy::unwrap_used)] // a failing test should panic where it fails

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cema_cloud::server::{Cloud, CloudConfig, ModelConfig};
use cema_core::{Encoding, NormDiscovery, OnnxModel, SampleValues, StatsInit, math};
use cema_edge::agent::{Agent, AgentConfig, Pacing};
use cema_edge::outbox::OutboxLimits;
use cema_edge::{CloudLink, OrtLibrary, Preset, Runtime};
use cema_proto::transport::ClientTransport;
use cema_proto::v1::{BatchEnd, UploadRequest};
use tonic::Code;

const BATCH: usize = 16;

fn images(seed: u64) -> Vec<SampleValues> {
    (0..BATCH as u64).map(|i| SampleValues::U8(support::image(seed * 1000 + i).data.to_vec())).collect()
}

fn entropies(library: &OrtLibrary, model: &[u8], input: &[f32]) -> Vec<f32> {
    let logits = library.run_once(model, "input", &[BATCH, 1, 28, 28], input).unwrap();
    logits.chunks_exact(10).map(math::entropy_of_logits).collect()
}

fn assert_same(what: &str, actual: &[f32], expected: &[f32]) {
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() <= 1e-4 * e.abs().max(1.0), "{what}[{i}]: {a} vs {e}");
    }
}

#[test]
fn the_edge_initialises_from_its_first_batch_and_the_cloud_adopts_it() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (student, foundation) = support::tiny_models(dir.path());
    // The spec's step rule: the 16 samples below are never stepped on, however slow the machine.
    let mut model = ModelConfig::new(&student, foundation);
    model.adapt.max_wait_seconds = 0.0;
    let config = CloudConfig::loopback(BTreeMap::from([("default".to_owned(), model)]));
    let cloud = rt.block_on(Cloud::start(&config, &dir.path().join("cloud"))).unwrap();
    let endpoint = format!("http://{}", cloud.grpc_addr());
    let (store, registry, metrics) = (cloud.store(), cloud.registry(), cloud.metrics());
    let token = registry.add("cam", "default").unwrap();
    let raw_token = registry.add("raw", "default").unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(cloud.run(async move {
        let _ = stopped.await;
    }));

    // What the first batch should be served with, measured independently.
    let library = OrtLibrary::get(None).unwrap();
    let source = OnnxModel::load(&student).unwrap();
    let reference = Runtime::load(library.clone(), &student, 1).unwrap();
    let batch = images(1);
    let mut input = Vec::new();
    for sample in &batch {
        let SampleValues::U8(pixels) = sample else { unreachable!() };
        reference.manifest().preprocess_u8(pixels, &mut input);
    }
    let expected = reference.first_batch_params(&input, BATCH).unwrap();
    let initialised = entropies(&library, &expected.apply(&source).unwrap(), &input);
    let unadapted = entropies(&library, &source.encode(), &input);
    assert!(
        initialised.iter().zip(&unadapted).any(|(a, b)| (a - b).abs() > 1e-3),
        "first-batch statistics change nothing on this batch; the test could not tell them apart"
    );

    let open = |db: &sled::Db| {
        let config = AgentConfig {
            device_id: "cam".into(),
            selector: Preset::UploadAll.config(),
            compress: false,
            float_encoding: Encoding::F16,
            stats_init: StatsInit::FirstBatch,
            uplink_statistics: false,
            local_every: None,
            outbox: OutboxLimits::default(),
            pacing: Pacing::Lockstep(Duration::from_secs(60)),
            guard: false,
            drift_reset: false,
        };
        Agent::open(Runtime::load(library.clone(), &student, 1).unwrap(), db, config).unwrap()
    };
    let edge_dir = dir.path().join("edge");
    {
        let db = sled::open(&edge_dir).unwrap();
        let mut agent = open(&db);
        let link = agent.connect(
            rt.handle(),
            CloudLink::new(endpoint.clone(), token.clone()).with_transport(ClientTransport::plaintext()),
        );
        let served: Vec<f32> = agent.push(&batch).unwrap().iter().map(|p| p.entropy).collect();
        assert_same("batch 1 served", &served, &initialised);
        assert_eq!(agent.metrics().first_batch_inits.load(Ordering::Relaxed), 1);
        assert!(agent.wait_for_cloud(rt.handle()).unwrap(), "the cloud processed batch 1");
        // The scope's edge model now has exactly the statistics the edge serves with.
        let state = store.state(&cema_cloud::ScopeId::device("cam")).unwrap().expect("scope state stored");
        assert!(state.student_stats_set);
        let discovery = NormDiscovery::of(&source);
        for name in discovery.layers.iter().flat_map(|l| [&l.mean, &l.var]) {
            assert_eq!(state.student.tensors[name].values, expected.tensors[name].values, "{name}");
        }
        assert_eq!(
            store.meta(&cema_cloud::ScopeId::device("cam")).unwrap().version,
            0,
            "adopting statistics is no new version"
        );
        assert_eq!(metrics.edge_statistics_adopted.get(), 1);
        // The link's tasks hold the agent's store; they end before the restart opens it.
        rt.block_on(link.stop());
    }
    {
        // A restart resumes with the first-batch statistics: no second measurement.
        let db = sled::open(&edge_dir).unwrap();
        let mut agent = open(&db);
        let served: Vec<f32> = agent.push(&batch).unwrap().iter().map(|p| p.entropy).collect();
        assert_same("after restart", &served, &initialised);
        assert_eq!(agent.metrics().first_batch_inits.load(Ordering::Relaxed), 0);
    }

    // Statistics that do not fit the model are refused whole and store nothing.
    rt.block_on(async {
        let mut client = support::connect(&endpoint).await;
        let register = support::register("raw", &student);
        client.register(support::authed(&raw_token, register)).await.unwrap();
        let mut missing = expected.statistics(&NormDiscovery::of(&source));
        let first = missing.tensors.keys().next().cloned().unwrap();
        missing.tensors.remove(&first);
        let mut negative = expected.statistics(&NormDiscovery::of(&source));
        let var = negative.tensors.keys().find(|k| k.ends_with("running_var")).cloned().unwrap();
        negative.tensors.get_mut(&var).unwrap().values[0] = -1.0;
        for (what, statistics) in [("a missing layer", missing), ("a negative variance", negative)] {
            let end = BatchEnd {
                seq: 1,
                batch: 1,
                predicted: BATCH as u32,
                initial_statistics: Some(cema_proto::statistics_to_wire(&statistics, BATCH as u32, false)),
                batch_statistics: None,
                outcome: None,
            };
            let request = UploadRequest { device_id: "raw".into(), samples: Vec::new(), batch_ends: vec![end] };
            let stream = tokio_stream::iter(vec![request]);
            let status = match client.upload(support::authed(&raw_token, stream)).await {
                Ok(response) => response.into_inner().message().await.unwrap_err(),
                Err(status) => status,
            };
            assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
            assert!(status.message().contains("statistics"), "{what}: {}", status.message());
        }
        assert_eq!(store.acked_seq("raw").unwrap(), 0);
    });
    let _ = stop.send(());
}
