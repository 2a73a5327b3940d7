//! Parameter updates through the agent's real watcher: a gRPC server on 127.0.0.1 plays the
//! cloud's WatchParams and sends valid and invalid versions; the agent serves exactly what the
//! patched model serves alone, and refuses invalid versions without changing predictions.
#![allow(clippy::unwrap_used)] // a failing test should panic where it fails

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cema_core::onnx::generate::{ConvBnClassifier, SplitMix64};
use cema_core::{Manifest, NormParams, SampleValues};
use cema_edge::agent::{Agent, AgentConfig, Pacing};
use cema_edge::outbox::OutboxLimits;
use cema_edge::{CloudLink, OrtLibrary, Preset, Runtime};
use cema_proto::transport::ClientTransport;
use cema_proto::v1::cema_server::{Cema, CemaServer};
use cema_proto::v1::{ParamUpdate, RegisterRequest, RegisterResponse, UploadAck, UploadRequest, WatchParamsRequest};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

/// Serves registration and acknowledgements, and streams whatever the test queues as updates.
#[derive(Clone)]
struct ScriptedCloud {
    updates: Arc<Mutex<Option<tokio::sync::mpsc::Receiver<ParamUpdate>>>>,
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Cema for ScriptedCloud {
    async fn register(&self, _: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        Ok(Response::new(RegisterResponse { max_message_bytes: 32 << 20, ..Default::default() }))
    }
    type UploadStream = Boxed<UploadAck>;
    async fn upload(&self, request: Request<Streaming<UploadRequest>>) -> Result<Response<Self::UploadStream>, Status> {
        let acks = request.into_inner().map(|r| {
            r.map(|r| UploadAck {
                seqs: r.samples.iter().map(|s| s.seq).chain(r.batch_ends.iter().map(|b| b.seq)).collect(),
                duplicates: 0,
            })
        });
        Ok(Response::new(Box::pin(acks)))
    }
    type WatchParamsStream = Boxed<ParamUpdate>;
    async fn watch_params(&self, _: Request<WatchParamsRequest>) -> Result<Response<Self::WatchParamsStream>, Status> {
        let rx = self.updates.lock().unwrap().take().ok_or_else(|| Status::unavailable("one watcher only"))?;
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok))))
    }
}

fn inputs(n: usize) -> Vec<SampleValues> {
    (0..n as u64).map(|i| SampleValues::F32(SplitMix64::new(100 + i).vec(3 * 25, -1.0, 1.0))).collect()
}

#[test]
fn updates_apply_exactly_and_invalid_ones_are_refused() {
    let spec = ConvBnClassifier::seeded(3, 6, 5, 21);
    let model = spec.model().unwrap();
    let manifest = Manifest::parse(&spec.manifest_toml()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let cloud = ScriptedCloud { updates: Arc::new(Mutex::new(Some(rx))) };
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(CemaServer::new(cloud))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let runtime = Runtime::new(OrtLibrary::get(None).unwrap(), model.clone(), manifest.clone(), 1).unwrap();
    let config = AgentConfig {
        device_id: "cam".into(),
        selector: Preset::Reference.config(),
        compress: false,
        float_encoding: cema_core::Encoding::F16,
        stats_init: cema_core::StatsInit::Source,
        uplink_statistics: false,
        local_every: None,
        outbox: OutboxLimits::default(),
        pacing: Pacing::Free,
        guard: false,
        drift_reset: false,
    };
    let mut agent = Agent::open(runtime, &db, config).unwrap();
    let _link = agent.connect(
        rt.handle(),
        CloudLink::new(format!("http://{addr}"), "cam.token").with_transport(ClientTransport::plaintext()),
    );
    let batch = inputs(5);
    let before = agent.push(&batch).unwrap();
    assert!(before.iter().all(|p| p.params_version == 0));

    // A valid version: served predictions equal the patched model run on its own.
    let mut params = NormParams::source(&model).unwrap();
    params.version = 1;
    let mut rng = SplitMix64::new(9);
    for tensor in params.tensors.values_mut() {
        for v in &mut tensor.values {
            *v *= rng.uniform(0.6, 1.4);
        }
    }
    let send = |version: u64, p: &NormParams| {
        let wire = cema_proto::norm_params_to_wire(p, "device:cam");
        tx.blocking_send(ParamUpdate { params: Some(wire), version, through_batch: 0, window: None }).unwrap();
    };
    send(1, &params);
    wait(|| agent.apply_pending().unwrap());
    let adapted = agent.push(&batch).unwrap();
    let mut alone =
        Runtime::new(OrtLibrary::get(None).unwrap(), params.patch(&model).unwrap(), manifest.clone(), 1).unwrap();
    let flat: Vec<f32> =
        batch.iter().flat_map(|s| if let SampleValues::F32(v) = s { v.clone() } else { vec![] }).collect();
    let expected = alone.predict(&flat, 5).unwrap();
    for (i, p) in adapted.iter().enumerate() {
        assert_eq!(p.params_version, 1);
        assert_eq!(p.class, expected.class[i]);
        assert_eq!(p.entropy.to_bits(), expected.entropy[i].to_bits(), "sample {i}: bit-identical");
    }
    assert_ne!(
        adapted.iter().map(|p| p.entropy.to_bits()).collect::<Vec<_>>(),
        before.iter().map(|p| p.entropy.to_bits()).collect::<Vec<_>>()
    );

    // Invalid versions: NaN, wrong shape, unknown name. Each is refused; predictions stay.
    let name = params.tensors.keys().next().unwrap().clone();
    let mut nan = params.clone();
    nan.tensors.get_mut(&name).unwrap().values[0] = f32::NAN;
    let mut shape = params.clone();
    shape.tensors.get_mut(&name).unwrap().values.push(1.0);
    shape.tensors.get_mut(&name).unwrap().dims = vec![7];
    let mut unknown = params.clone();
    let t = unknown.tensors.remove(&name).unwrap();
    unknown.tensors.insert("no.such.tensor".into(), t);
    let metrics = agent.metrics();
    for (k, bad) in [nan, shape, unknown].iter().enumerate() {
        let mut bad = bad.clone();
        bad.version = 2 + k as u64;
        send(bad.version, &bad);
        wait(|| metrics.rejected_updates.load(std::sync::atomic::Ordering::Relaxed) == k as u64 + 1);
        assert!(!agent.apply_pending().unwrap(), "nothing pending after a refused update");
        let now = agent.push(&batch).unwrap();
        assert_eq!(now, adapted, "predictions unchanged after invalid update {k}");
    }
    assert_eq!(agent.version(), 1);
    drop(db);
}

fn wait(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(10));
    }
}
