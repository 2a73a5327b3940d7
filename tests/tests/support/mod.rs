//! Shared helpers: small models, a cloud process with registered devices, gRPC clients.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use cema_core::codec::{self, Compression};
use cema_core::{Manifest, OnnxModel};
use cema_proto::v1::cema_client::CemaClient;
use cema_proto::v1::{self, BatchEnd, RegisterRequest, Sample, UploadRequest};
use cema_sim::fleet::{self, Binaries, CloudProcess};
use tonic::transport::Channel;

/// A small student and foundation with manifests (see `cema_tools::builtin::write_tiny_models`).
pub(crate) fn tiny_models(dir: &Path) -> (PathBuf, PathBuf) {
    cema_tools::builtin::write_tiny_models(dir).unwrap()
}

/// The shipped built-in models.
pub(crate) fn shipped_models() -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("models");
    (root.join("student.onnx"), root.join("foundation.onnx"))
}

/// Cloud config for one model id `default`, with the spec's step rule (a step once a cloud
/// batch is queued; `max_wait_seconds = 0`), so what a test counts does not depend on how fast
/// the machine runs it. `extra` follows, opening with more `[models.default.adapt]` keys if
/// it has any.
pub(crate) fn config(student: &Path, foundation: &Path, extra: &str) -> String {
    format!(
        "[models.default]\nedge = {:?}\nfoundation = {:?}\n[models.default.adapt]\nmax_wait_seconds = 0.0\n{extra}",
        student.display().to_string(),
        foundation.display().to_string()
    )
}

/// Binaries built by `cargo test --workspace` (or `cargo build --bins`).
pub(crate) fn binaries() -> Binaries {
    Binaries::locate().expect("cema-cloud and cema-edge binaries")
}

/// Registers devices, then starts the cloud; returns it and the token files.
pub(crate) fn cloud_with_devices(
    bins: &Binaries,
    data: &Path,
    config: &str,
    devices: &[&str],
) -> (CloudProcess, Vec<PathBuf>) {
    std::fs::create_dir_all(data).unwrap();
    let tokens = devices.iter().map(|d| fleet::add_device(bins, data, d, "default").unwrap()).collect();
    (CloudProcess::start(bins, data, config).unwrap(), tokens)
}

/// A gRPC client of a cloud process.
pub(crate) async fn client(cloud: &CloudProcess) -> CemaClient<Channel> {
    connect(&format!("http://{}", cloud.grpc)).await
}

/// A gRPC client of the cloud at `endpoint` (`http://host:port`).
pub(crate) async fn connect(endpoint: &str) -> CemaClient<Channel> {
    CemaClient::connect(endpoint.to_owned()).await.unwrap()
}

/// `device`'s parameter stream from version 0.
pub(crate) async fn watch_params(
    client: &mut CemaClient<Channel>,
    token: &str,
    device: &str,
) -> tonic::Streaming<v1::ParamUpdate> {
    let request = v1::WatchParamsRequest { device_id: device.to_owned(), since_version: 0 };
    client.watch_params(authed(token, request)).await.unwrap().into_inner()
}

/// Adds the bearer token to a request.
pub(crate) fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", cema_proto::bearer(token).parse().unwrap());
    request
}

/// Reads a token file.
pub(crate) fn token(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

/// The registration of `device` running `student`.
pub(crate) fn register(device: &str, student: &Path) -> RegisterRequest {
    RegisterRequest {
        device_id: device.to_owned(),
        model_fingerprint: OnnxModel::load(student).unwrap().fingerprint().to_hex(),
        manifest: Some(cema_proto::manifest_summary(&Manifest::load(Manifest::path_for(student)).unwrap())),
        agent_version: "test".into(),
        applied_version: 0,
    }
}

/// A deterministic 28×28 image whose first 8 bytes encode `id` (so stored samples can be told apart).
pub(crate) fn image(id: u64) -> v1::EncodedTensor {
    let mut pixels = vec![0u8; 784];
    pixels[..8].copy_from_slice(&id.to_le_bytes());
    let mut s = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for p in &mut pixels[8..] {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        *p = s as u8;
    }
    cema_proto::sample_to_wire(&codec::encode_u8(&[1, 28, 28], &pixels, Compression::None).unwrap())
}

/// The id encoded by [`image`].
pub(crate) fn image_id(tensor: &v1::EncodedTensor) -> u64 {
    u64::from_le_bytes(tensor.data[..8].try_into().unwrap())
}

/// Every stored sample id of a scope (replay buffer), opened after the cloud stopped.
pub(crate) fn stored_ids(data: &Path, scope: &str) -> (Vec<u64>, cema_cloud::store::ScopeMeta, u64) {
    let db = sled::open(data.join("state")).unwrap();
    let store = cema_cloud::store::Store::open(&db).unwrap();
    let scope: cema_cloud::ScopeId = scope.parse().unwrap();
    let meta = store.meta(&scope).unwrap();
    let ids: Vec<u64> = (meta.replay_head..meta.replay_next).collect();
    let samples = store.replay_samples(&scope, &ids).unwrap();
    let acked = store.acked_seq(scope.device_id().unwrap()).unwrap();
    (samples.iter().map(image_id).collect(), meta, acked)
}

/// `samples` uploads from `first_seq` on, then (with `batch`) the batch's end marker.
pub(crate) fn upload_request(device: &str, first_seq: u64, samples: u64, batch: Option<u64>) -> UploadRequest {
    let mut r = UploadRequest { device_id: device.into(), samples: Vec::new(), batch_ends: Vec::new() };
    for k in 0..samples {
        let seq = first_seq + k;
        r.samples.push(Sample { seq, input: Some(image(seq)), entropy: 0.3, params_version: 0, predicted_class: 0 });
    }
    if let Some(b) = batch {
        r.batch_ends.push(BatchEnd { seq: first_seq + samples, batch: b, predicted: 64, ..Default::default() });
    }
    r
}

/// A cloud process serving the tiny models to one registered device `d1`.
pub(crate) struct TinyCloud {
    /// Holds every file; dropped last.
    pub dir: tempfile::TempDir,
    pub student: PathBuf,
    pub bins: Binaries,
    /// The cloud's data folder.
    pub data: PathBuf,
    /// Its config (without addresses).
    pub config: String,
    pub cloud: CloudProcess,
    /// `d1`'s token.
    pub token: String,
}

/// Starts a [`TinyCloud`].
pub(crate) fn tiny_cloud() -> TinyCloud {
    tiny_cloud_with("")
}

/// [`tiny_cloud`] with `extra` appended to its model's config.
pub(crate) fn tiny_cloud_with(extra: &str) -> TinyCloud {
    let dir = tempfile::tempdir().unwrap();
    let (student, foundation) = tiny_models(dir.path());
    let bins = binaries();
    let data = dir.path().join("cloud");
    let config = config(&student, &foundation, extra);
    let (cloud, tokens) = cloud_with_devices(&bins, &data, &config, &["d1"]);
    let token = token(&tokens[0]);
    TinyCloud { dir, student, bins, data, config, cloud, token }
}
