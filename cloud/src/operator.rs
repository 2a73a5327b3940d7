//! Operators' access to a running cloud: the operator token and the `cema.v1.Operator` gRPC
//! service (device add / list / revoke / rotate; `operator.proto` states the contract).
//!
//! The operator token is distinct from every device token: it is the content of
//! `<data dir>/operator.token`, written with a fresh 256-bit secret (mode 0600) the first time
//! the cloud starts, and only its SHA-256 is kept in memory. It guards this service and the
//! admin endpoints that reveal state (`/scopes`). Rotating it: delete the file, restart.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use cema_proto::v1::operator_server::Operator;
use cema_proto::v1::{
    AddDeviceRequest, BackupChunk, BackupRequest, DeviceInfo, DeviceList, DeviceRef, DeviceToken, ListDevicesRequest,
};
use cema_proto::{AUTHORIZATION, parse_bearer};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::registry::{Device, DeviceRegistry, RegistryError, new_secret, secret_hash, secret_matches, valid_id};

/// The operator token's file name in the data folder.
pub const OPERATOR_TOKEN_FILE: &str = "operator.token";

/// Why the operator token could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum OperatorTokenError {
    /// Reading or creating the file failed.
    #[error("operator token file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file holds no token.
    #[error("operator token file {0} is empty; delete it to have a new token written at the next start")]
    Empty(PathBuf),
    /// No random secret could be made.
    #[error(transparent)]
    Random(#[from] RegistryError),
}

/// The operator token a cloud accepts (its hash only).
#[derive(Clone)]
pub struct OperatorToken {
    hash: [u8; 32],
}

impl std::fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperatorToken(…)")
    }
}

impl OperatorToken {
    /// The default token file of a data folder.
    pub fn default_path(data_dir: &Path) -> PathBuf {
        data_dir.join(OPERATOR_TOKEN_FILE)
    }

    /// The token in `path`, written first with a new secret (mode 0600) if there is none.
    pub fn load_or_create(path: &Path) -> Result<Self, OperatorTokenError> {
        let path = path.to_owned();
        let io = |source| OperatorTokenError::Io { path: path.clone(), source };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&path) {
            Ok(mut file) => {
                let secret = new_secret()?;
                file.write_all(format!("{secret}\n").as_bytes()).and_then(|()| file.sync_all()).map_err(io)?;
                tracing::info!(path = %path.display(), "wrote a new operator token");
                Ok(Self { hash: secret_hash(&secret) })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(&path),
            Err(e) => Err(io(e)),
        }
    }

    /// The token in a file (what `--operator-token-file` names).
    pub fn load(path: &Path) -> Result<Self, OperatorTokenError> {
        let secret = read_token(path)?;
        Ok(Self { hash: secret_hash(&secret) })
    }

    /// Whether an `authorization` value (`Bearer <token>`) carries this token.
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        authorization.and_then(parse_bearer).is_some_and(|token| secret_matches(token, &self.hash))
    }
}

/// The token in a token file, trimmed.
pub fn read_token(path: &Path) -> Result<String, OperatorTokenError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| OperatorTokenError::Io { path: path.to_owned(), source })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(OperatorTokenError::Empty(path.to_owned()));
    }
    Ok(secret.to_owned())
}

/// Bytes per backup chunk on the wire.
const BACKUP_CHUNK_BYTES: usize = 1 << 20;

/// Where snapshots wait while they are sent (emptied at start-up).
pub const OUTGOING_BACKUPS_DIR: &str = "outgoing-backups";

/// The `cema.v1.Operator` service.
#[derive(Clone)]
pub struct OperatorService {
    db: sled::Db,
    data_dir: PathBuf,
    engine: Arc<Engine>,
    registry: DeviceRegistry,
    token: OperatorToken,
    metrics: Arc<Metrics>,
    /// Bumped after every revocation or rotation: open device streams check their token again.
    registry_changed: Arc<watch::Sender<u64>>,
}

impl OperatorService {
    /// The service over the cloud's database in `data_dir`; `registry_changed` is what device
    /// streams watch. Clears snapshots a previous run left unsent.
    pub fn new(
        (db, data_dir): (sled::Db, &Path),
        engine: Arc<Engine>,
        registry: DeviceRegistry,
        token: OperatorToken,
        metrics: Arc<Metrics>,
        registry_changed: Arc<watch::Sender<u64>>,
    ) -> Self {
        let _ = std::fs::remove_dir_all(data_dir.join(OUTGOING_BACKUPS_DIR));
        Self { db, data_dir: data_dir.to_owned(), engine, registry, token, metrics, registry_changed }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let value = request.metadata().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        if self.token.accepts(value) {
            Ok(())
        } else {
            self.metrics.reject("operator_unauthenticated");
            Err(Status::unauthenticated("operator calls need `authorization: Bearer <operator token>`"))
        }
    }

    /// Runs a registry operation off the async threads (it flushes to disk).
    async fn on_registry<R: Send + 'static>(
        &self,
        operation: impl FnOnce(&DeviceRegistry) -> Result<R, RegistryError> + Send + 'static,
    ) -> Result<R, Status> {
        let registry = self.registry.clone();
        tokio::task::spawn_blocking(move || operation(&registry))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(registry_status)
    }

    fn token_reply(&self, id: &str, token: String) -> Result<Response<DeviceToken>, Status> {
        let device = self.registry.get(id).map_err(registry_status)?;
        Ok(Response::new(DeviceToken { device: Some(info(&device)), token }))
    }
}

fn info(device: &Device) -> DeviceInfo {
    DeviceInfo {
        device_id: device.id.clone(),
        model_id: device.model_id.clone(),
        created_unix_s: device.created_unix_s,
        revoked: device.revoked,
    }
}

fn registry_status(error: RegistryError) -> Status {
    match error {
        RegistryError::InvalidId { .. } => Status::invalid_argument(error.to_string()),
        RegistryError::AlreadyExists(_) => Status::already_exists(error.to_string()),
        RegistryError::UnknownDevice(_) => Status::not_found(error.to_string()),
        RegistryError::Revoked(_) => Status::failed_precondition(error.to_string()),
        RegistryError::Corrupt(_) | RegistryError::Random(_) | RegistryError::Storage(_) => {
            Status::internal(error.to_string())
        }
    }
}

/// Sends a snapshot file in chunks, then deletes it.
fn send_file(path: &Path, tx: &mpsc::Sender<Result<BackupChunk, Status>>) {
    let sent = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::open(path)?;
        loop {
            let mut data = vec![0u8; BACKUP_CHUNK_BYTES];
            let n = file.read(&mut data)?;
            if n == 0 {
                return Ok(());
            }
            data.truncate(n);
            if tx.blocking_send(Ok(BackupChunk { data })).is_err() {
                return Ok(());
            }
        }
    })();
    if let Err(e) = sent {
        let _ = tx.blocking_send(Err(Status::internal(format!("reading the snapshot: {e}"))));
    }
    let _ = std::fs::remove_file(path);
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<BackupChunk, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Operator for OperatorService {
    type BackupStream = SnapshotStream;

    async fn backup(&self, request: Request<BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        self.authorize(&request)?;
        let db = self.db.clone();
        let dir = self.data_dir.join(OUTGOING_BACKUPS_DIR);
        let (tx, rx) = mpsc::channel(4);
        let summary = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)
                .map_err(|source| crate::backup::BackupError::Io { path: dir.clone(), source })?;
            let path = dir.join(format!("{}.snapshot", db.generate_id()?));
            let summary = crate::backup::snapshot(&db, &path)?;
            std::thread::spawn(move || send_file(&path, &tx));
            Ok::<_, crate::backup::BackupError>(summary)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(format!("taking the snapshot: {e}")))?;
        tracing::info!(
            trees = summary.trees,
            entries = summary.entries,
            bytes = summary.bytes,
            "backup snapshot taken"
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as Self::BackupStream))
    }

    async fn add_device(&self, request: Request<AddDeviceRequest>) -> Result<Response<DeviceToken>, Status> {
        self.authorize(&request)?;
        let AddDeviceRequest { device_id, model_id } = request.into_inner();
        if valid_id(&model_id) && self.engine.model(&model_id).is_none() {
            return Err(Status::not_found(format!("this cloud serves no model `{model_id}`")));
        }
        let id = device_id.clone();
        let token = self.on_registry(move |r| r.add(&device_id, &model_id)).await?;
        tracing::info!(device = %id, "device added by an operator");
        self.token_reply(&id, token)
    }

    async fn list_devices(&self, request: Request<ListDevicesRequest>) -> Result<Response<DeviceList>, Status> {
        self.authorize(&request)?;
        let devices = self.on_registry(|r| r.list()).await?;
        Ok(Response::new(DeviceList { devices: devices.iter().map(info).collect() }))
    }

    async fn revoke_device(&self, request: Request<DeviceRef>) -> Result<Response<DeviceInfo>, Status> {
        self.authorize(&request)?;
        let id = request.into_inner().device_id;
        let device = self.on_registry(move |r| r.revoke(&id)).await?;
        self.registry_changed.send_modify(|generation| *generation += 1);
        tracing::info!(device = %device.id, "device revoked by an operator");
        Ok(Response::new(info(&device)))
    }

    async fn rotate_device(&self, request: Request<DeviceRef>) -> Result<Response<DeviceToken>, Status> {
        self.authorize(&request)?;
        let id = request.into_inner().device_id;
        let device_id = id.clone();
        let token = self.on_registry(move |r| r.rotate(&device_id)).await?;
        self.registry_changed.send_modify(|generation| *generation += 1);
        tracing::info!(device = %id, "device token rotated by an operator");
        self.token_reply(&id, token)
    }
}
