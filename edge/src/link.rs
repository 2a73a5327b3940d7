//! The agent's connection to the cloud: the uploader (outbox → Upload stream, delete on
//! acknowledgement) and the parameter watcher (WatchParams → validate → prepare a session off
//! the inference path → hand it to the agent). Both reconnect with exponential backoff and
//! full jitter, and stop for good on UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND or
//! FAILED_PRECONDITION, which no retry can fix.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cema_core::rng::Rng;
use cema_proto::transport::ClientTransport;
use cema_proto::v1::cema_client::CemaClient;
use cema_proto::v1::{self, RegisterRequest, UploadRequest, WatchParamsRequest};
use cema_proto::{AUTHORIZATION, MAX_MESSAGE_BYTES, UPLOAD_BATCH_TARGET_BYTES, bearer};
use prost::Message;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::metrics::EdgeMetrics;
use crate::outbox::{Outbox, OutboxEntry};
use crate::runtime::{PreparedSession, Preparer};

/// A prepared update waiting for the agent: the session, its wire parameters (persisted when
/// applied), and when it arrived.
pub type Pending = Arc<Mutex<Option<PendingUpdate>>>;

/// A validated update waiting for the next batch boundary.
pub struct PendingUpdate {
    /// The session with the new parameters.
    pub session: PreparedSession,
    /// The parameters as received (persisted when applied).
    pub wire: v1::NormParams,
    /// When it arrived.
    pub arrived: Instant,
    /// Highest batch of this device the parameters account for.
    pub through_batch: u64,
    /// The data the cloud fitted the parameters on, when a step on new samples made them.
    pub window: Option<v1::DataWindow>,
}

/// When the cloud acknowledged each batch's uploads (its batch end), until an update that
/// accounts for the batch is applied.
pub type AckedBatches = Arc<Mutex<std::collections::BTreeMap<u64, Instant>>>;

/// Requests in flight on the upload stream before waiting for acknowledgements.
const MAX_IN_FLIGHT: usize = 8;

/// Where and how to reach the cloud.
#[derive(Debug, Clone)]
pub struct CloudLink {
    /// `https://host:port` (or `http://` with a plaintext transport).
    pub endpoint: String,
    /// TLS setting (default: TLS, the cloud verified against the system's roots) or plaintext.
    pub transport: ClientTransport,
    /// The device token.
    pub token: String,
    /// Upload rate limit in samples per second (`None`: unlimited).
    pub max_samples_per_s: Option<f64>,
    /// First reconnect delay; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
}

impl CloudLink {
    /// A TLS link with default backoff (0.2 s doubling to 10 s) and no rate limit.
    pub fn new(endpoint: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            transport: ClientTransport::default(),
            token: token.into(),
            max_samples_per_s: None,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }

    /// The same link over `transport`.
    pub fn with_transport(self, transport: ClientTransport) -> Self {
        Self { transport, ..self }
    }
}

/// What the link tells the agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkState {
    /// Highest batch of this device the cloud has processed (from ParamUpdate).
    pub through_batch: u64,
    /// Latest version the cloud reported.
    pub cloud_version: u64,
    /// Set when the cloud refused the agent for good.
    pub fatal: Option<String>,
    /// Whether the uploader is connected.
    pub connected: bool,
}

/// What the tasks share with the agent.
pub(crate) struct Shared {
    pub(crate) device_id: String,
    pub(crate) fingerprint: String,
    pub(crate) manifest: v1::ManifestSummary,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) outbox_changed: Arc<Notify>,
    pub(crate) preparer: Preparer,
    pub(crate) pending: Pending,
    pub(crate) acked_batches: AckedBatches,
    pub(crate) applied: Arc<AtomicU64>,
    pub(crate) metrics: Arc<EdgeMetrics>,
}

/// The running link tasks.
#[derive(Debug)]
pub struct LinkTasks {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl LinkTasks {
    /// Stops both tasks and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

#[derive(Clone)]
struct Auth(MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert(AUTHORIZATION, self.0.clone());
        Ok(request)
    }
}

type Client = CemaClient<tonic::service::interceptor::InterceptedService<Channel, Auth>>;

enum Failure {
    Fatal(String),
    Retry(String),
}

fn classify(status: Status) -> Failure {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied | Code::NotFound | Code::FailedPrecondition => {
            Failure::Fatal(format!("{:?}: {}", status.code(), status.message()))
        }
        code => Failure::Retry(format!("{code:?}: {}", status.message())),
    }
}

/// HTTP/2 ping period on the cloud connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// A ping unanswered for this long ends the connection.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(link: &CloudLink) -> Result<Client, Failure> {
    let endpoint = link
        .transport
        .endpoint(&link.endpoint)
        .map_err(|e| Failure::Fatal(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        // A cut link (cable pulled, network detached) sends no reset: only pings notice it,
        // and the streams then fail and reconnect instead of waiting on TCP for many minutes.
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let channel = endpoint.connect().await.map_err(|e| Failure::Retry(format!("connecting: {e}")))?;
    let token = MetadataValue::try_from(bearer(&link.token))
        .map_err(|_| Failure::Fatal("the token holds characters not allowed in metadata".to_owned()))?;
    Ok(CemaClient::with_interceptor(channel, Auth(token))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Exponential backoff with full jitter: a uniform delay in `[0, min(max, min·2^n)]`.
struct Backoff {
    attempt: u32,
    min: Duration,
    max: Duration,
    jitter: Rng,
}

impl Backoff {
    fn new(min: Duration, max: Duration, seed: u64) -> Self {
        Self { attempt: 0, min, max, jitter: Rng::for_stream(&[seed]) }
    }
    fn reset(&mut self) {
        self.attempt = 0;
    }
    fn next(&mut self) -> Duration {
        let cap = self.min.saturating_mul(1u32 << self.attempt.min(16)).min(self.max);
        self.attempt += 1;
        cap.mul_f64(self.jitter.unit())
    }
}

/// Starts the uploader and the watcher.
pub(crate) fn start(
    handle: &tokio::runtime::Handle,
    link: CloudLink,
    shared: Shared,
) -> (LinkTasks, watch::Receiver<LinkState>) {
    let (state_tx, state_rx) = watch::channel(LinkState::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(shared);
    let state_tx = Arc::new(state_tx);
    let seed = shared.device_id.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| h.rotate_left(5) ^ b as u64);
    let uploader = handle.spawn(supervise(
        "uploader",
        link.clone(),
        Arc::clone(&shared),
        Arc::clone(&state_tx),
        stop_rx.clone(),
        seed,
        |client, link, shared, state, stop| Box::pin(upload_session(client, link, shared, state, stop)),
    ));
    let watcher = handle.spawn(supervise(
        "watcher",
        link,
        shared,
        state_tx,
        stop_rx,
        seed.rotate_left(17),
        |client, link, shared, state, stop| Box::pin(watch_session(client, link, shared, state, stop)),
    ));
    (LinkTasks { stop: stop_tx, tasks: vec![uploader, watcher] }, state_rx)
}

type Session = fn(
    Client,
    CloudLink,
    Arc<Shared>,
    Arc<watch::Sender<LinkState>>,
    watch::Receiver<bool>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Failure>> + Send>>;

async fn supervise(
    name: &'static str,
    link: CloudLink,
    shared: Arc<Shared>,
    state: Arc<watch::Sender<LinkState>>,
    mut stop: watch::Receiver<bool>,
    seed: u64,
    session: Session,
) {
    let mut backoff = Backoff::new(link.min_backoff, link.max_backoff, seed);
    loop {
        if *stop.borrow() {
            return;
        }
        let started = Instant::now();
        let result = match connect(&link).await {
            Ok(client) => session(client, link.clone(), Arc::clone(&shared), Arc::clone(&state), stop.clone()).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => return,
            Err(Failure::Fatal(reason)) => {
                tracing::error!(task = name, %reason, "the cloud refused this agent; not retrying");
                state.send_modify(|s| s.fatal = Some(reason));
                return;
            }
            Err(Failure::Retry(reason)) => {
                if name == "uploader" {
                    state.send_modify(|s| s.connected = false);
                }
                if started.elapsed() > Duration::from_secs(30) {
                    backoff.reset();
                }
                let delay = backoff.next();
                tracing::warn!(task = name, %reason, delay_ms = delay.as_millis() as u64, "cloud unreachable; retrying");
                shared.metrics.reconnects.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(&mut stop) => return,
                }
            }
        }
    }
}

async fn upload_session(
    mut client: Client,
    link: CloudLink,
    shared: Arc<Shared>,
    state: Arc<watch::Sender<LinkState>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Failure> {
    let registered = client
        .register(RegisterRequest {
            device_id: shared.device_id.clone(),
            model_fingerprint: shared.fingerprint.clone(),
            manifest: Some(shared.manifest.clone()),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            applied_version: shared.applied.load(Ordering::Acquire),
        })
        .await
        .map_err(classify)?
        .into_inner();
    shared.outbox.remove_through(registered.acked_seq).map_err(|e| Failure::Retry(e.to_string()))?;
    state.send_modify(|s| s.connected = true);
    let target = UPLOAD_BATCH_TARGET_BYTES.min(registered.max_message_bytes as usize / 4).max(1);
    let (tx, rx) = mpsc::channel::<UploadRequest>(MAX_IN_FLIGHT);
    let mut acks = client.upload(ReceiverStream::new(rx)).await.map_err(classify)?.into_inner();
    let mut sent_through = 0u64;
    let mut in_flight = 0usize;
    // Batch-end seqs sent on this stream, to time their acknowledgement.
    let mut marker_batches: HashMap<u64, u64> = HashMap::new();
    let mut next_send = Instant::now();
    loop {
        // Send what the outbox holds beyond what this stream already carries.
        while in_flight < MAX_IN_FLIGHT {
            let entries = shared.outbox.pending(sent_through, target).map_err(|e| Failure::Retry(e.to_string()))?;
            let Some(last) = entries.last() else { break };
            sent_through = last.seq();
            let request = request_of(&shared.device_id, entries);
            marker_batches.extend(request.batch_ends.iter().map(|end| (end.seq, end.batch)));
            let samples = request.samples.len();
            let bytes = request.encoded_len();
            if let Some(rate) = link.max_samples_per_s.filter(|r| *r > 0.0) {
                tokio::time::sleep_until(next_send.into()).await;
                next_send = Instant::now().max(next_send) + Duration::from_secs_f64(samples as f64 / rate);
            }
            if tx.send(request).await.is_err() {
                return Err(Failure::Retry("upload stream closed".to_owned()));
            }
            shared.metrics.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
            in_flight += 1;
        }
        tokio::select! {
            ack = acks.message() => match ack {
                Ok(Some(ack)) => {
                    in_flight = in_flight.saturating_sub(1);
                    record_ack(&shared, &ack.seqs, &mut marker_batches)?;
                }
                Ok(None) => return Err(Failure::Retry("the cloud ended the upload stream".to_owned())),
                Err(status) => return Err(classify(status)),
            },
            _ = shared.outbox_changed.notified(), if in_flight < MAX_IN_FLIGHT => {}
            _ = stopped(&mut stop) => {
                // Graceful: wait briefly for the acknowledgements of what is in flight.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while in_flight > 0 {
                    let Ok(Ok(Some(ack))) = tokio::time::timeout_at(deadline, acks.message()).await else { break };
                    in_flight -= 1;
                    let _ = shared.outbox.remove(&ack.seqs);
                }
                return Ok(());
            }
        }
    }
}

/// An acknowledgement: the entries leave the outbox; acknowledged batch ends start their
/// update-latency clock.
fn record_ack(shared: &Shared, seqs: &[u64], marker_batches: &mut HashMap<u64, u64>) -> Result<(), Failure> {
    shared.outbox.remove(seqs).map_err(|e| Failure::Retry(e.to_string()))?;
    let now = Instant::now();
    let mut acked = shared.acked_batches.lock().unwrap_or_else(|e| e.into_inner());
    for batch in seqs.iter().filter_map(|seq| marker_batches.remove(seq)) {
        acked.entry(batch).or_insert(now);
    }
    // Bounded even if no update ever arrives to account for these batches.
    while acked.len() > crate::metrics::LATENCY_WINDOW {
        acked.pop_first();
    }
    shared.metrics.acked.fetch_add(seqs.len() as u64, Ordering::Relaxed);
    Ok(())
}

fn request_of(device_id: &str, entries: Vec<OutboxEntry>) -> UploadRequest {
    let mut request = UploadRequest { device_id: device_id.to_owned(), samples: Vec::new(), batch_ends: Vec::new() };
    for entry in entries {
        if let Some(sample) = entry.sample {
            request.samples.push(sample);
        }
        if let Some(end) = entry.batch_end {
            request.batch_ends.push(end);
        }
    }
    request
}

async fn watch_session(
    mut client: Client,
    _link: CloudLink,
    shared: Arc<Shared>,
    state: Arc<watch::Sender<LinkState>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Failure> {
    let pending_version =
        shared.pending.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|p| p.session.version());
    let since = shared.applied.load(Ordering::Acquire).max(pending_version.unwrap_or(0));
    let mut updates = client
        .watch_params(WatchParamsRequest { device_id: shared.device_id.clone(), since_version: since })
        .await
        .map_err(classify)?
        .into_inner();
    loop {
        let update = tokio::select! {
            update = updates.message() => update.map_err(classify)?,
            _ = stopped(&mut stop) => return Ok(()),
        };
        let Some(update) = update else { return Err(Failure::Retry("the cloud ended the watch".to_owned())) };
        if let Some(wire) = update.params {
            let arrived = Instant::now();
            let version = wire.version;
            let prepared = match cema_proto::norm_params_from_wire(wire.clone()) {
                Ok(params) => {
                    let preparer = shared.preparer.clone();
                    tokio::task::spawn_blocking(move || preparer.prepare(&params))
                        .await
                        .map_err(|e| Failure::Retry(e.to_string()))?
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            match prepared {
                Ok(session) => {
                    *shared.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(PendingUpdate {
                        session,
                        wire,
                        arrived,
                        through_batch: update.through_batch,
                        window: update.window.clone(),
                    });
                    shared.metrics.prepare_us.store(arrived.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                Err(reason) => {
                    shared.metrics.rejected_updates.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(version, %reason, "refused a parameter update; keeping the current parameters");
                }
            }
        }
        // After the session is pending, so a lockstep agent that sees the batch done finds it.
        state.send_modify(|s| {
            s.through_batch = s.through_batch.max(update.through_batch);
            s.cloud_version = update.version;
        });
    }
}

/// Resolves once the stop flag turns true (the borrow ends before any await of the caller).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
