//! The `cema.v1.Cema` gRPC service: Register, Upload (ingest), WatchParams (broadcast).
//! Status codes follow the mapping documented at the top of `service.proto`.

use std::pin::Pin;
use std::sync::Arc;

use cema_proto::v1::cema_server::Cema;
use cema_proto::v1::{ParamUpdate, RegisterRequest, RegisterResponse, UploadAck, UploadRequest, WatchParamsRequest};
use cema_proto::{AUTHORIZATION, MAX_MESSAGE_BYTES, manifest_summary, parse_bearer};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::model::ModelEntry;
use crate::registry::{AuthError, Device, DeviceRegistry};
use crate::store::Incoming;

/// The service state shared by every call.
#[derive(Clone)]
pub struct CloudService {
    engine: Arc<Engine>,
    registry: DeviceRegistry,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    /// Changes after a revocation or rotation (`crate::operator`): open streams check their
    /// token again and end with UNAUTHENTICATED if it no longer holds.
    registry_changed: watch::Receiver<u64>,
}

impl CloudService {
    /// A service over the engine and registry; `shutdown` ends open streams when it turns
    /// true, a change of `registry_changed` makes them check their token again.
    pub fn new(
        engine: Arc<Engine>,
        registry: DeviceRegistry,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
        registry_changed: watch::Receiver<u64>,
    ) -> Self {
        Self { engine, registry, metrics, shutdown, registry_changed }
    }

    /// The bearer token of a request.
    fn bearer<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let value = request
            .metadata()
            .get(AUTHORIZATION)
            .ok_or_else(|| self.refuse("unauthenticated", Status::unauthenticated("missing authorization metadata")))?;
        let token = value.to_str().ok().and_then(parse_bearer).ok_or_else(|| {
            self.refuse("unauthenticated", Status::unauthenticated("authorization must be `Bearer <token>`"))
        })?;
        Ok(token.to_owned())
    }

    fn authenticate<T>(&self, request: &Request<T>) -> Result<Device, Status> {
        self.authenticate_token(&self.bearer(request)?)
    }

    fn authenticate_token(&self, token: &str) -> Result<Device, Status> {
        self.registry.authenticate(token).map_err(|e| match e {
            AuthError::Unavailable => Status::unavailable("the device registry is unavailable"),
            AuthError::Revoked => self.refuse("revoked", Status::unauthenticated("the device's token was revoked")),
            e => self.refuse("unauthenticated", Status::unauthenticated(e.to_string())),
        })
    }

    fn refuse(&self, reason: &'static str, status: Status) -> Status {
        self.metrics.reject(reason);
        status
    }

    fn device_model(&self, device: &Device, claimed: &str) -> Result<Arc<ModelEntry>, Status> {
        if device.id != claimed {
            return Err(self.refuse(
                "wrong_device",
                Status::permission_denied(format!(
                    "the token belongs to device `{}`, the request names `{claimed}`",
                    device.id
                )),
            ));
        }
        self.engine.model(&device.model_id).ok_or_else(|| {
            self.refuse(
                "unknown_model",
                Status::failed_precondition(format!(
                    "device `{}` is registered for model `{}`, which this cloud does not serve",
                    device.id, device.model_id
                )),
            )
        })
    }

    /// Validates one request into store entries; the first problem refuses all of it.
    fn validate(&self, model: &ModelEntry, request: UploadRequest) -> Result<Vec<Incoming>, Status> {
        let mut entries = Vec::with_capacity(request.samples.len() + request.batch_ends.len());
        for sample in request.samples {
            let Some(input) = sample.input else {
                return Err(
                    self.refuse("malformed", Status::invalid_argument(format!("sample {} has no input", sample.seq)))
                );
            };
            if sample.seq == 0 {
                return Err(self.refuse("malformed", Status::invalid_argument("sample seq 0; seqs start at 1")));
            }
            if let Err(e) = model.decode_sample(&input) {
                return Err(
                    self.refuse("invalid_sample", Status::invalid_argument(format!("sample {}: {e}", sample.seq)))
                );
            }
            entries.push(Incoming::Sample { seq: sample.seq, input });
        }
        for end in request.batch_ends {
            if end.seq == 0 || end.batch == 0 {
                return Err(self.refuse("malformed", Status::invalid_argument("batch end with seq or batch 0")));
            }
            if let Some(statistics) = &end.initial_statistics
                && let Err(e) = model.check_statistics(statistics)
            {
                return Err(self.refuse(
                    "invalid_statistics",
                    Status::invalid_argument(format!("batch end {}: first-batch statistics: {e}", end.seq)),
                ));
            }
            if let Some(statistics) = &end.batch_statistics
                && let Err(e) = model.check_statistics(statistics)
            {
                return Err(self.refuse(
                    "invalid_statistics",
                    Status::invalid_argument(format!("batch end {}: batch statistics: {e}", end.seq)),
                ));
            }
            if let Some(outcome) = &end.outcome
                && cema_proto::v1::GuardOutcome::try_from(outcome.guard).is_err()
            {
                return Err(self.refuse(
                    "malformed",
                    Status::invalid_argument(format!("batch end {}: unknown guard outcome {}", end.seq, outcome.guard)),
                ));
            }
            entries.push(Incoming::BatchEnd {
                seq: end.seq,
                batch: end.batch,
                statistics: end.initial_statistics,
                batch_statistics: end.batch_statistics,
                outcome: end.outcome,
            });
        }
        Ok(entries)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Cema for CloudService {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        let device = self.authenticate(&request)?;
        let request = request.into_inner();
        let model = self.device_model(&device, &request.device_id)?;
        if request.model_fingerprint != model.fingerprint.to_hex() {
            return Err(self.refuse(
                "model_mismatch",
                Status::failed_precondition(format!(
                    "the edge runs model {} but model `{}` is {}; deploy the registered model",
                    request.model_fingerprint,
                    model.id,
                    model.fingerprint.to_hex()
                )),
            ));
        }
        let expected = manifest_summary(&model.edge_manifest);
        if request.manifest.as_ref() != Some(&expected) {
            return Err(self.refuse(
                "model_mismatch",
                Status::failed_precondition(format!(
                    "the edge's manifest differs from the cloud's for model `{}` (cloud: {expected:?})",
                    model.id
                )),
            ));
        }
        let scope = model.scope_for(&device.id);
        let latest = self.engine.latest(&scope, &model).map_err(|e| Status::internal(e.to_string()))?;
        let acked_seq = self.engine.store().acked_seq(&device.id).map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(device = %device.id, model = %model.id, %scope, agent = %request.agent_version, "registered");
        Ok(Response::new(RegisterResponse {
            model_id: model.id.clone(),
            scope: scope.to_string(),
            latest_version: latest.version,
            acked_seq,
            max_message_bytes: MAX_MESSAGE_BYTES as u64,
        }))
    }

    type UploadStream = BoxStream<UploadAck>;

    async fn upload(&self, request: Request<Streaming<UploadRequest>>) -> Result<Response<Self::UploadStream>, Status> {
        let token = self.bearer(&request)?;
        let device = self.authenticate_token(&token)?;
        let service = self.clone();
        let mut incoming = request.into_inner();
        // Bounded: a client that does not read its acks stops being read from.
        let (tx, rx) = mpsc::channel(16);
        let mut shutdown = self.shutdown.clone();
        let mut registry_changed = self.registry_changed.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = incoming.next() => next,
                    _ = stopped(&mut shutdown) => {
                        let _ = tx.send(Err(Status::unavailable("the cloud is shutting down"))).await;
                        return;
                    }
                    Ok(()) = registry_changed.changed() => {
                        if let Err(status) = service.still_authenticated(&token) {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                        continue;
                    }
                };
                let request = match next {
                    None => return,
                    Some(Ok(request)) => request,
                    Some(Err(status)) => {
                        if status.code() == tonic::Code::OutOfRange || status.message().contains("message length") {
                            service.metrics.reject("oversized");
                            let _ = tx.send(Err(Status::resource_exhausted(status.message().to_owned()))).await;
                        }
                        return;
                    }
                };
                let answer = service.ingest(&device.id, request).await;
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as Self::UploadStream))
    }

    type WatchParamsStream = BoxStream<ParamUpdate>;

    async fn watch_params(
        &self,
        request: Request<WatchParamsRequest>,
    ) -> Result<Response<Self::WatchParamsStream>, Status> {
        let token = self.bearer(&request)?;
        let device = self.authenticate_token(&token)?;
        let request = request.into_inner();
        let model = self.device_model(&device, &request.device_id)?;
        let scope = model.scope_for(&device.id);
        let mut published = self.engine.subscribe(&scope, &model).map_err(|e| Status::internal(e.to_string()))?;
        let (tx, rx) = mpsc::channel(4);
        let mut shutdown = self.shutdown.clone();
        let mut registry_changed = self.registry_changed.clone();
        let service = self.clone();
        let device_id = device.id.clone();
        tokio::spawn(async move {
            let mut sent_version = request.since_version;
            let mut sent_through = 0;
            loop {
                let update = {
                    let current = published.borrow_and_update();
                    let through = current.through.get(&device_id).copied().unwrap_or(0);
                    let newer = current.version > sent_version && current.params.is_some();
                    (newer || through > sent_through).then(|| ParamUpdate {
                        params: if newer { current.params.as_deref().cloned() } else { None },
                        version: current.version,
                        through_batch: through,
                        window: if newer { current.window.as_deref().cloned() } else { None },
                    })
                };
                if let Some(message) = update {
                    if message.params.is_some() {
                        sent_version = message.version;
                    }
                    sent_through = message.through_batch;
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    changed = published.changed() => if changed.is_err() { return },
                    _ = stopped(&mut shutdown) => return,
                    _ = tx.closed() => return,
                    Ok(()) = registry_changed.changed() => {
                        if let Err(status) = service.still_authenticated(&token) {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as Self::WatchParamsStream))
    }
}

impl CloudService {
    /// Whether a stream's token still holds after a registry change.
    fn still_authenticated(&self, token: &str) -> Result<(), Status> {
        match self.registry.authenticate(token) {
            Ok(_) | Err(AuthError::Unavailable) => Ok(()),
            Err(AuthError::Revoked) => {
                Err(self.refuse("revoked", Status::unauthenticated("the device's token was revoked")))
            }
            Err(_) => Err(self.refuse(
                "unauthenticated",
                Status::unauthenticated("the device's token was replaced; connect with the new token"),
            )),
        }
    }

    /// Stores one request of the stream authenticated as `authenticated`.
    async fn ingest(&self, authenticated: &str, request: UploadRequest) -> Result<UploadAck, Status> {
        // The registry is read again per request, so a revocation takes effect on the next one.
        let device = self.registry.get(authenticated).map_err(|_| {
            self.refuse("unknown_device", Status::not_found(format!("unknown device `{authenticated}`")))
        })?;
        if device.revoked {
            return Err(self.refuse("revoked", Status::unauthenticated("the device's token was revoked")));
        }
        let model = self.device_model(&device, &request.device_id)?;
        let entries = self.validate(&model, request)?;
        let seqs: Vec<u64> = entries.iter().map(Incoming::seq).collect();
        let scope = model.scope_for(&device.id);
        // Creates the scope's broadcast handle so the engine can publish to it.
        self.engine.latest(&scope, &model).map_err(|e| Status::internal(e.to_string()))?;
        let store = self.engine.store().clone();
        let capacity = model.adapt.replay_capacity as u64;
        let (device_id, scope_key) = (device.id.clone(), scope.clone());
        let outcome = tokio::task::spawn_blocking(move || store.ingest(&device_id, &scope_key, &entries, capacity))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| {
                tracing::error!(error = %e, "ingest failed");
                Status::internal(format!("could not persist: {e}"))
            })?;
        self.metrics.samples_accepted.add(outcome.samples);
        self.metrics.duplicates.add(outcome.duplicates);
        self.metrics.batch_ends.add(outcome.batch_ends);
        if outcome.batch_ends > 0 {
            self.engine.schedule(&scope);
        }
        Ok(UploadAck { seqs, duplicates: outcome.duplicates as u32 })
    }
}

/// Resolves once the shutdown flag turns true (or its sender is gone).
pub(crate) async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|stop| *stop).await;
}
