//! The gRPC service on 127.0.0.1: every kind of bad input is refused with its status code and
//! changes no state; good uploads are acknowledged once durable and are idempotent.
#![allow(clippy::unwrap_used)] // a failing test should panic where it fails

mod support;

use std::collections::BTreeMap;

use cema_cloud::server::{Cloud, CloudConfig, ModelConfig};
use cema_core::codec::{self, Compression};
use cema_core::{Encoding, Manifest, OnnxModel};
use cema_proto::v1::cema_client::CemaClient;
use cema_proto::v1::{self, RegisterRequest, Sample, UploadRequest};
use tonic::Code;
use tonic::transport::Channel;

struct Harness {
    _dir: tempfile::TempDir,
    cloud_addr: String,
    store: cema_cloud::store::Store,
    registry: cema_cloud::DeviceRegistry,
    metrics: std::sync::Arc<cema_cloud::metrics::Metrics>,
    fingerprint: String,
    manifest: v1::ManifestSummary,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

async fn start() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let (student, foundation) = support::tiny_models(dir.path());
    // A second model whose manifest takes f32 input, for finiteness checks.
    let float = dir.path().join("float.onnx");
    std::fs::copy(&student, &float).unwrap();
    let text = support::STUDENT_MANIFEST.replace("pixels = \"u8\"", "pixels = \"f32\"");
    std::fs::write(Manifest::path_for(&float), text).unwrap();
    let model = |edge: &std::path::Path| {
        let mut model = ModelConfig { keep_versions: 5, ..ModelConfig::new(edge, &foundation) };
        // The spec's step rule, so no step depends on how slow the machine is.
        model.adapt.max_wait_seconds = 0.0;
        model
    };
    let config = CloudConfig::loopback(BTreeMap::from([
        ("default".to_owned(), model(&student)),
        ("float".to_owned(), model(&float)),
    ]));
    let cloud = Cloud::start(&config, &dir.path().join("data")).await.unwrap();
    let cloud_addr = format!("http://{}", cloud.grpc_addr());
    let (store, registry, metrics) = (cloud.store(), cloud.registry(), cloud.metrics());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(cloud.run(async move {
        let _ = stopped.await;
    }));
    let summary = |p: &std::path::Path| cema_proto::manifest_summary(&Manifest::load(Manifest::path_for(p)).unwrap());
    Harness {
        cloud_addr,
        store,
        registry,
        metrics,
        fingerprint: OnnxModel::load(&student).unwrap().fingerprint().to_hex(),
        manifest: summary(&student),
        stop: Some(stop),
        _dir: dir,
    }
}

fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", cema_proto::bearer(token).parse().unwrap());
    request
}

async fn client(h: &Harness) -> CemaClient<Channel> {
    CemaClient::connect(h.cloud_addr.clone())
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20)
}

/// Sends one upload request on a fresh stream; returns the first answer.
async fn upload(h: &Harness, token: &str, request: UploadRequest) -> Result<v1::UploadAck, tonic::Status> {
    let mut client = client(h).await;
    let stream = tokio_stream::iter(vec![request]);
    let mut acks = client.upload(authed(token, stream)).await?.into_inner();
    match acks.message().await? {
        Some(ack) => Ok(ack),
        None => Err(tonic::Status::unknown("stream ended without an answer")),
    }
}

fn sample(seq: u64, input: v1::EncodedTensor) -> Sample {
    Sample { seq, input: Some(input), entropy: 0.5, params_version: 0, predicted_class: 1 }
}

fn request(device: &str, samples: Vec<Sample>) -> UploadRequest {
    UploadRequest { device_id: device.to_owned(), samples, batch_ends: Vec::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_precisely_and_changes_no_state() {
    let mut h = start().await;
    let token = h.registry.add("d1", "default").unwrap();
    let float_token = h.registry.add("f1", "float").unwrap();
    let other_token = h.registry.add("d2", "default").unwrap();
    let register = |device: &str, fingerprint: &str, manifest: &v1::ManifestSummary| RegisterRequest {
        device_id: device.to_owned(),
        model_fingerprint: fingerprint.to_owned(),
        manifest: Some(manifest.clone()),
        agent_version: "test".into(),
        applied_version: 0,
    };

    // A good registration and upload, then the same again: acknowledged, stored once.
    let mut c = client(&h).await;
    let reply = c.register(authed(&token, register("d1", &h.fingerprint, &h.manifest))).await.unwrap().into_inner();
    assert_eq!((reply.scope.as_str(), reply.acked_seq), ("device:d1", 0));
    let good = request("d1", vec![sample(1, support::image(1)), sample(2, support::image(2))]);
    let ack = upload(&h, &token, good.clone()).await.unwrap();
    assert_eq!((ack.seqs.clone(), ack.duplicates), (vec![1, 2], 0));
    let ack = upload(&h, &token, good).await.unwrap();
    assert_eq!((ack.seqs, ack.duplicates), (vec![1, 2], 2));
    assert_eq!(h.metrics.samples_accepted.get(), 2);

    let state = |h: &Harness| {
        let meta = h.store.meta(&cema_cloud::ScopeId::device("d1")).unwrap();
        (h.store.acked_seq("d1").unwrap(), meta.replay_len(), meta.queued_samples, h.metrics.samples_accepted.get())
    };
    let before = state(&h);
    let unknown_id = format!("ghost.{}", "ab".repeat(32));
    let wrong_secret = format!("d1.{}", "cd".repeat(32));

    // Registration refusals.
    let refused = |r: Result<tonic::Response<v1::RegisterResponse>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        refused(c.register(tonic::Request::new(register("d1", &h.fingerprint, &h.manifest))).await),
        Code::Unauthenticated
    );
    assert_eq!(
        refused(c.register(authed(&wrong_secret, register("d1", &h.fingerprint, &h.manifest))).await),
        Code::Unauthenticated
    );
    assert_eq!(
        refused(c.register(authed(&unknown_id, register("ghost", &h.fingerprint, &h.manifest))).await),
        Code::Unauthenticated
    );
    assert_eq!(
        refused(c.register(authed("not a token", register("d1", &h.fingerprint, &h.manifest))).await),
        Code::Unauthenticated
    );
    assert_eq!(
        refused(c.register(authed(&token, register("d2", &h.fingerprint, &h.manifest))).await),
        Code::PermissionDenied
    );
    let mismatch = refused(c.register(authed(&token, register("d1", &"0".repeat(64), &h.manifest))).await);
    assert_eq!(mismatch, Code::FailedPrecondition, "model mismatch");
    let mut other_manifest = h.manifest.clone();
    other_manifest.num_classes = 11;
    assert_eq!(
        refused(c.register(authed(&token, register("d1", &h.fingerprint, &other_manifest))).await),
        Code::FailedPrecondition
    );

    // Upload refusals: each is answered with its code and stores nothing.
    let encoded = |dims: &[u64], n: usize| {
        cema_proto::sample_to_wire(&codec::encode_u8(dims, &vec![7u8; n], Compression::None).unwrap())
    };
    let cases: Vec<(&str, &str, UploadRequest, Code)> = vec![
        (
            "wrong token",
            wrong_secret.as_str(),
            request("d1", vec![sample(3, support::image(3))]),
            Code::Unauthenticated,
        ),
        (
            "unknown device",
            unknown_id.as_str(),
            request("ghost", vec![sample(3, support::image(3))]),
            Code::Unauthenticated,
        ),
        (
            "another device's id",
            other_token.as_str(),
            request("d1", vec![sample(3, support::image(3))]),
            Code::PermissionDenied,
        ),
        (
            "wrong dims",
            token.as_str(),
            request("d1", vec![sample(3, encoded(&[1, 27, 28], 756))]),
            Code::InvalidArgument,
        ),
        (
            "data shorter than dims",
            token.as_str(),
            request("d1", vec![sample(3, encoded(&[1, 28, 28], 700))]),
            Code::InvalidArgument,
        ),
        (
            "one bad sample among good ones",
            token.as_str(),
            request("d1", vec![sample(3, support::image(3)), sample(4, encoded(&[1, 28, 27], 756))]),
            Code::InvalidArgument,
        ),
        (
            "unspecified encoding",
            token.as_str(),
            request(
                "d1",
                vec![sample(
                    3,
                    v1::EncodedTensor { encoding: 0, compression: 0, dims: vec![1, 28, 28], data: vec![0; 784] },
                )],
            ),
            Code::InvalidArgument,
        ),
        (
            "corrupt zstd",
            token.as_str(),
            request(
                "d1",
                vec![sample(
                    3,
                    v1::EncodedTensor { encoding: 1, compression: 1, dims: vec![1, 28, 28], data: vec![1, 2, 3, 4, 5] },
                )],
            ),
            Code::InvalidArgument,
        ),
        (
            "no input",
            token.as_str(),
            request("d1", vec![Sample { seq: 3, input: None, ..Default::default() }]),
            Code::InvalidArgument,
        ),
        ("seq 0", token.as_str(), request("d1", vec![sample(0, support::image(3))]), Code::InvalidArgument),
        (
            "float samples for a u8 model",
            token.as_str(),
            request("d1", vec![sample(3, float_sample(&[0.5; 784]))]),
            Code::InvalidArgument,
        ),
        (
            "a guard outcome the contract does not name",
            token.as_str(),
            UploadRequest {
                device_id: "d1".into(),
                samples: vec![sample(3, support::image(3))],
                batch_ends: vec![v1::BatchEnd {
                    seq: 4,
                    batch: 1,
                    predicted: 1,
                    outcome: Some(v1::BatchOutcome { served_version: 0, guard: 7, drift: false }),
                    ..Default::default()
                }],
            },
            Code::InvalidArgument,
        ),
    ];
    for (what, token, req, code) in cases {
        let got = upload(&h, token, req).await.expect_err(what).code();
        assert_eq!(got, code, "{what}");
        assert_eq!(state(&h), before, "{what} changed the state");
    }

    // NaN pixels for a model that takes floats.
    let mut values = vec![0.25f32; 784];
    values[100] = f32::NAN;
    let nan = upload(&h, &float_token, request("f1", vec![sample(1, float_sample(&values))])).await.unwrap_err();
    assert_eq!(nan.code(), Code::InvalidArgument);
    assert!(nan.message().contains("not finite"), "{}", nan.message());
    assert_eq!(h.store.acked_seq("f1").unwrap(), 0);
    let ok = upload(&h, &float_token, request("f1", vec![sample(1, float_sample(&[0.25; 784]))])).await.unwrap();
    assert_eq!(ok.seqs, vec![1]);
    let before = state(&h);

    // A message over the 32 MiB limit.
    let big: Vec<Sample> =
        (0..45).map(|i| sample(10 + i, v1::EncodedTensor { data: vec![0; 784 * 1024], ..support::image(1) })).collect();
    let oversized = upload(&h, &token, request("d1", big)).await.unwrap_err();
    assert_eq!(oversized.code(), Code::ResourceExhausted, "{oversized:?}");
    assert_eq!(state(&h), before, "oversized changed the state");

    // A revoked device is refused from its next call on.
    h.registry.revoke("d1").unwrap();
    let revoked = upload(&h, &token, request("d1", vec![sample(3, support::image(3))])).await.unwrap_err();
    assert_eq!(revoked.code(), Code::Unauthenticated);
    assert_eq!(
        refused(c.register(authed(&token, register("d1", &h.fingerprint, &h.manifest))).await),
        Code::Unauthenticated
    );
    assert_eq!(state(&h), before, "revoked changed the state");
    assert!(h.metrics.rejected("revoked") >= 2);
    let _ = h.stop.take().unwrap().send(());
}

fn float_sample(values: &[f32]) -> v1::EncodedTensor {
    cema_proto::sample_to_wire(&codec::encode_f32(&[1, 28, 28], values, Encoding::F32, Compression::None).unwrap())
}
