//! The adaptation engine: scopes, their scheduling onto compute threads, and the broadcast of
//! each new parameter version.
//!
//! A scope is scheduled when a batch-end marker is stored for it. A fixed pool of engine
//! threads (default 1: burn's kernels already use every core) takes scheduled scopes one at a
//! time, so a scope is never adapted by two threads at once, and runs its rounds: for each
//! marker, while ≥ `cloud_batch` samples precede it, a foundation step and a distillation step
//! (with replay once the buffer holds `replay_min`); if none ran, a replay-only step. Each
//! step is committed with its consumed entries, then published to the scope's watchers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use cema_core::params::ParamsError;
use cema_core::rng::Rng;
use cema_core::{
    CodecError, DecodeLimits, Manifest, ModelFingerprint, NormDiscovery, NormParams, OnnxModel, SampleValues,
};
use cema_proto::ConvertError;
use cema_proto::v1;
use tokio::sync::watch;

use crate::adapt::{AdaptConfig, AdaptError, Adapter, CloudMethod, DistillReport, ScopeState, StudentStatistics};
use crate::metrics::Metrics;
use crate::store::{Commit, QueueEntry, ScopeMeta, Store, StoreError};

/// Whether devices of a model share one adaptation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScopeKind {
    /// Each device adapts on its own uploads and receives its own parameters.
    #[default]
    Device,
    /// All devices of the model share one adaptation.
    Fleet,
}

/// A model the cloud serves: the edge model, its foundation model and how to adapt.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    /// Model id (devices are registered for one).
    pub id: String,
    /// The edge model as deployed (source parameters).
    pub edge: OnnxModel,
    /// Its manifest.
    pub edge_manifest: Manifest,
    /// Fingerprint the edges must present.
    pub fingerprint: ModelFingerprint,
    /// The foundation model.
    pub foundation: OnnxModel,
    /// Its manifest.
    pub foundation_manifest: Manifest,
    /// Step settings.
    pub adapt: AdaptConfig,
    /// Device or fleet scopes.
    pub scope: ScopeKind,
    /// Parameter versions kept per scope (for rollback).
    pub keep_versions: u64,
}

impl ModelEntry {
    /// The scope a device of this model adapts in.
    pub fn scope_for(&self, device: &str) -> String {
        match self.scope {
            ScopeKind::Device => format!("device:{device}"),
            ScopeKind::Fleet => format!("fleet:{}", self.id),
        }
    }

    /// Decodes a stored or uploaded sample, checking it against the edge manifest: encoding
    /// fits the pixel type, dims equal the input shape, values finite.
    pub fn decode_sample(&self, tensor: &v1::EncodedTensor) -> Result<SampleValues, SampleError> {
        let sample = cema_proto::sample_from_wire(tensor.clone())?;
        let shape = &self.edge_manifest.input.shape;
        if sample.dims.len() != shape.len() || sample.dims.iter().zip(shape).any(|(a, b)| *a != *b as u64) {
            return Err(SampleError::Dims { dims: sample.dims.clone(), shape: shape.clone() });
        }
        let values = sample.decode(DecodeLimits::for_dims(shape))?;
        match (&values, self.edge_manifest.input.pixels) {
            (SampleValues::U8(_), cema_core::manifest::PixelType::U8) => Ok(values),
            (SampleValues::F32(v), cema_core::manifest::PixelType::F32) => {
                if v.iter().all(|x| x.is_finite()) {
                    Ok(values)
                } else {
                    Err(SampleError::NonFinite)
                }
            }
            (SampleValues::U8(_), _) => {
                Err(SampleError::Pixels("u8 samples for a model whose manifest takes f32 input"))
            }
            (SampleValues::F32(_), _) => {
                Err(SampleError::Pixels("float samples for a model whose manifest takes u8 pixels"))
            }
        }
    }

    /// Checks statistics uploaded with a batch end (first-batch or batch statistics): exactly
    /// the running mean and variance of every normalisation layer of the edge model, finite,
    /// variances ≥ 0. Ingest calls it; the engine reads what ingest accepted with
    /// [`stored_statistics`].
    pub fn check_statistics(&self, statistics: &v1::NormStatistics) -> Result<(), StatisticsError> {
        let params = stored_statistics(statistics)?;
        Ok(params.validate_statistics(&self.edge, &NormDiscovery::of(&self.edge))?)
    }
}

/// Decodes statistics that ingest checked ([`ModelEntry::check_statistics`]) before storing.
fn stored_statistics(statistics: &v1::NormStatistics) -> Result<NormParams, ConvertError> {
    cema_proto::statistics_from_wire(statistics.clone())
}

/// Why an uploaded or stored sample does not fit the model it is for.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// The wire message is malformed.
    #[error(transparent)]
    Wire(#[from] ConvertError),
    /// The sample's dims are not the model input's.
    #[error("dims {dims:?} differ from the model input {shape:?}")]
    Dims {
        /// The sample's dims.
        dims: Vec<u64>,
        /// The manifest's input shape.
        shape: Vec<usize>,
    },
    /// The encoded values do not decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Float input with NaN or infinity.
    #[error("non-finite values")]
    NonFinite,
    /// The encoding does not match the manifest's pixel type.
    #[error("{0}")]
    Pixels(&'static str),
}

/// Why statistics sent with a batch end are refused.
#[derive(Debug, thiserror::Error)]
pub enum StatisticsError {
    /// The wire message is malformed.
    #[error(transparent)]
    Wire(#[from] ConvertError),
    /// They are not every layer's finite mean and non-negative variance.
    #[error(transparent)]
    Invalid(#[from] ParamsError),
}

/// Why the engine could not start or run a round.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The step failed.
    #[error(transparent)]
    Adapt(#[from] AdaptError),
    /// A queued or replayed sample no longer fits the model.
    #[error("stored sample: {0}")]
    Sample(#[from] SampleError),
    /// Stored statistics do not decode.
    #[error("stored statistics: {0}")]
    Statistics(#[from] ConvertError),
    /// The queue holds a marker where a sample belongs.
    #[error("a marker among samples in the queue")]
    MarkerAmongSamples,
    /// An engine thread could not be started.
    #[error("starting an engine thread: {0}")]
    Thread(std::io::Error),
}

/// The latest state of a scope, as watchers see it.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Latest version (0 = source parameters).
    pub version: u64,
    /// That version's parameters (absent for version 0).
    pub params: Option<Arc<v1::NormParams>>,
    /// Per device, the highest processed batch index.
    pub through: Arc<HashMap<String, u64>>,
}

/// One scope's figures for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeGauges {
    /// The scope id.
    pub scope: String,
    /// Latest parameter version.
    pub version: u64,
    /// Adaptation steps so far.
    pub steps: u64,
    /// Samples in the replay buffer.
    pub replay: u64,
    /// Samples waiting for a step.
    pub queued_samples: u64,
    /// Connected parameter watchers.
    pub watchers: usize,
}

struct ScopeHandle {
    model: Arc<ModelEntry>,
    published: watch::Sender<Published>,
    scheduled: AtomicBool,
}

/// Scopes, their work, and the engine threads.
pub struct Engine {
    store: Store,
    models: HashMap<String, Arc<ModelEntry>>,
    scopes: Mutex<HashMap<String, Arc<ScopeHandle>>>,
    work: Mutex<Option<mpsc::Sender<String>>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("models", &self.models.keys().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

impl Engine {
    /// Builds the engine over `store`, starts `workers` engine threads, and schedules every
    /// scope that still has work from before a restart.
    pub fn start(
        store: Store,
        models: Vec<ModelEntry>,
        workers: usize,
        metrics: Arc<Metrics>,
    ) -> Result<(Arc<Self>, Vec<std::thread::JoinHandle<()>>), EngineError> {
        let models: HashMap<String, Arc<ModelEntry>> =
            models.into_iter().map(|m| (m.id.clone(), Arc::new(m))).collect();
        let (tx, rx) = mpsc::channel::<String>();
        let engine =
            Arc::new(Self { store, models, scopes: Mutex::new(HashMap::new()), work: Mutex::new(Some(tx)), metrics });
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for i in 0..workers.max(1) {
            let engine = Arc::clone(&engine);
            let rx = Arc::clone(&rx);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("cema-engine-{i}"))
                    .spawn(move || engine.work_loop(&rx))
                    .map_err(EngineError::Thread)?,
            );
        }
        for scope in engine.store.scopes()? {
            if let Some(model) = engine.model_of_scope(&scope) {
                engine.scope(&scope, &model)?;
                engine.schedule(&scope);
            }
        }
        Ok((engine, threads))
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A served model.
    pub fn model(&self, id: &str) -> Option<Arc<ModelEntry>> {
        self.models.get(id).cloned()
    }

    fn model_of_scope(&self, scope: &str) -> Option<Arc<ModelEntry>> {
        if let Some(model) = scope.strip_prefix("fleet:") {
            return self.model(model);
        }
        let device = scope.strip_prefix("device:")?;
        // A device scope's model is the device's registered model; the registry lives in
        // the same database.
        let registry = crate::DeviceRegistry::open(&self.store.db()).ok()?;
        self.model(&registry.get(device).ok()?.model_id)
    }

    /// Subscribes to a scope's versions, creating the scope if new.
    pub fn subscribe(&self, scope: &str, model: &Arc<ModelEntry>) -> Result<watch::Receiver<Published>, StoreError> {
        Ok(self.scope(scope, model)?.published.subscribe())
    }

    /// The latest published state of a scope.
    pub fn latest(&self, scope: &str, model: &Arc<ModelEntry>) -> Result<Published, StoreError> {
        Ok(self.scope(scope, model)?.published.borrow().clone())
    }

    /// Number of scopes in memory, and of connected watchers over all of them.
    pub fn counts(&self) -> (usize, usize) {
        let scopes = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        (scopes.len(), scopes.values().map(|s| s.published.receiver_count()).sum())
    }

    /// Per-scope gauges of the first `limit` scopes in scope order (stable from scrape to
    /// scrape), and how many scopes were left out.
    pub fn scope_gauges(&self, limit: usize) -> Result<(Vec<ScopeGauges>, usize), StoreError> {
        let (metas, total) = self.store.first_metas(limit)?;
        let scopes = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        let gauges = metas
            .into_iter()
            .map(|(scope, meta)| ScopeGauges {
                watchers: scopes.get(&scope).map_or(0, |s| s.published.receiver_count()),
                version: meta.version,
                steps: meta.steps,
                replay: meta.replay_len(),
                queued_samples: meta.queued_samples,
                scope,
            })
            .collect::<Vec<_>>();
        let omitted = total - gauges.len();
        Ok((gauges, omitted))
    }

    fn scope(&self, scope: &str, model: &Arc<ModelEntry>) -> Result<Arc<ScopeHandle>, StoreError> {
        let mut scopes = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = scopes.get(scope) {
            return Ok(Arc::clone(handle));
        }
        let meta = self.store.meta(scope)?;
        let params = match meta.version {
            0 => None,
            v => self.store.version(scope, v)?.map(Arc::new),
        };
        let published = Published { version: meta.version, params, through: Arc::new(meta.through.clone()) };
        let handle = Arc::new(ScopeHandle {
            model: Arc::clone(model),
            published: watch::Sender::new(published),
            scheduled: AtomicBool::new(false),
        });
        scopes.insert(scope.to_owned(), Arc::clone(&handle));
        Ok(handle)
    }

    /// Queues a scope for the engine threads (once, however often it is called meanwhile).
    pub fn schedule(&self, scope: &str) {
        let handle = self.scopes.lock().unwrap_or_else(|e| e.into_inner()).get(scope).cloned();
        if let Some(handle) = handle
            && !handle.scheduled.swap(true, Ordering::AcqRel)
            && let Some(tx) = self.work.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
        {
            let _ = tx.send(scope.to_owned());
        }
    }

    /// Stops accepting work; engine threads finish their current round and exit.
    pub fn stop(&self) {
        self.work.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn work_loop(&self, rx: &Mutex<mpsc::Receiver<String>>) {
        let mut adapters: HashMap<String, Adapter> = HashMap::new();
        loop {
            let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
            let Ok(scope) = next else { return };
            let Some(handle) = self.scopes.lock().unwrap_or_else(|e| e.into_inner()).get(&scope).cloned() else {
                continue;
            };
            // Cleared before the work, so a marker stored meanwhile schedules another pass.
            handle.scheduled.store(false, Ordering::Release);
            let model = &handle.model;
            if !adapters.contains_key(&model.id) {
                match Adapter::new(
                    (&model.edge, &model.edge_manifest),
                    (&model.foundation, &model.foundation_manifest),
                    model.adapt.clone(),
                ) {
                    Ok(adapter) => {
                        adapters.insert(model.id.clone(), adapter);
                    }
                    Err(e) => {
                        tracing::error!(model = %model.id, error = %e, "cannot load the models for adaptation");
                        continue;
                    }
                }
            }
            let Some(adapter) = adapters.get_mut(&model.id) else { continue };
            loop {
                if self.work.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
                    return;
                }
                match self.round(&scope, &handle, adapter) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        self.metrics.engine_errors.inc();
                        tracing::error!(scope, error = %e, "adaptation round failed; the scope waits for new work");
                        break;
                    }
                }
            }
        }
    }

    /// Runs one round of a scope; returns whether there may be more.
    fn round(&self, scope: &str, handle: &ScopeHandle, adapter: &mut Adapter) -> Result<bool, EngineError> {
        let entries = self.store.next_round(scope)?;
        let Some(((marker_key, marker_entry), samples)) = entries.split_last() else { return Ok(false) };
        let marker = (*marker_key, marker_entry.device.clone(), marker_entry.batch);
        let meta = self.store.meta(scope)?;
        let mut state = self.store.state(scope)?.unwrap_or_else(|| adapter.initial_state());
        let config = adapter.config().clone();
        let started = Instant::now();
        let mut commit = Commit::default();
        if let Some(statistics) = &marker_entry.statistics {
            // The edge serves with these, so the cloud adapts from them.
            let statistics = stored_statistics(statistics)?;
            if adapter.adopt_edge_statistics(&mut state, &statistics) {
                self.metrics.edge_statistics_adopted.inc();
                tracing::info!(scope, device = %marker.1, batch = marker.2, "adopted the edge's first-batch statistics");
                commit.state = Some(state.clone());
            }
        }
        if samples.len() >= config.cloud_batch {
            let new = &samples[..config.cloud_batch];
            commit.consumed = new.iter().map(|(k, _)| *k).collect();
            state.student.version = meta.version + 1;
            self.step(scope, handle, adapter, &meta, new, &mut state)?;
            if samples.len() - config.cloud_batch < config.cloud_batch {
                commit.marker = Some(marker);
            }
            commit.stepped = true;
        } else {
            // This marker triggered no step (it would have been removed with the last one).
            if config.method == CloudMethod::Cema && meta.replay_len() > config.replay_min as u64 {
                state.student.version = meta.version + 1;
                let replayed =
                    self.replay(scope, &meta, config.replay_only_batch, &handle.model, state.student.version, 0)?;
                let refs: Vec<&SampleValues> = replayed.iter().collect();
                let report = adapter.distill_step(&mut state, &refs)?;
                self.record_step(scope, state.student.version, None, &report);
                self.metrics.replay_only_steps.inc();
                commit.stepped = true;
            }
            commit.marker = Some(marker);
        }
        // A batch's statistics count once: in the round that completes its marker.
        if commit.marker.is_some()
            && config.student_statistics == StudentStatistics::Edge
            && let Some(statistics) = &marker_entry.batch_statistics
        {
            let statistics = stored_statistics(statistics)?;
            if !commit.stepped {
                state.student.version = meta.version + 1;
            }
            adapter.follow_edge_statistics(&mut state, &statistics);
            self.metrics.edge_statistics_batches.inc();
            commit.new_version = true;
        }
        let (step_seconds, regular_step) = (started.elapsed().as_secs_f64(), commit.stepped);
        if commit.marker.is_some() {
            self.idle_replay(scope, handle, adapter, &meta, &mut state, &mut commit)?;
        }
        commit.new_version |= commit.stepped;
        if commit.new_version {
            commit.state = Some(state);
        }
        let published_params = commit
            .state
            .as_ref()
            .filter(|_| commit.new_version)
            .map(|s| cema_proto::norm_params_to_wire(&s.student, scope));
        let meta = self.store.commit(scope, &commit, handle.model.keep_versions)?;
        if regular_step {
            self.metrics.steps.inc();
            self.metrics.step_seconds.observe(step_seconds);
        }
        self.metrics.replay_samples.set(meta.replay_len() as f64);
        self.publish(handle, &meta, published_params);
        Ok(true)
    }

    /// The step on `cloud_batch` new samples: foundation step and distillation with replay
    /// (CEMA), or the running-statistics update (`bn-stats`).
    fn step(
        &self,
        scope: &str,
        handle: &ScopeHandle,
        adapter: &mut Adapter,
        meta: &ScopeMeta,
        new: &[(u64, QueueEntry)],
        state: &mut ScopeState,
    ) -> Result<(), EngineError> {
        let config = adapter.config().clone();
        let decoded = decode_all(&handle.model, new.iter().map(|(_, e)| e))?;
        let refs: Vec<&SampleValues> = decoded.iter().collect();
        match config.method {
            CloudMethod::Cema => {
                let lf = adapter.foundation_step(state, &refs)?;
                self.metrics.foundation_loss.set(lf as f64);
                let replayed = if meta.replay_len() >= config.replay_min as u64 {
                    self.replay(scope, meta, config.replay_draw, &handle.model, state.student.version, 0)?
                } else {
                    Vec::new()
                };
                let mut all = refs;
                all.extend(replayed.iter());
                let report = adapter.distill_step(state, &all)?;
                self.record_step(scope, state.student.version, Some(lf), &report);
            }
            CloudMethod::BnStats => adapter.statistics_step(state, &refs)?,
        }
        Ok(())
    }

    /// `idle_replay_steps` replay-only steps in the round that finished a batch (its marker
    /// leaves less than a cloud batch queued, so the engine would wait), stopping as soon as
    /// new work is scheduled for the scope. They join the round's version: the edge gets one
    /// update per batch, as without them.
    fn idle_replay(
        &self,
        scope: &str,
        handle: &ScopeHandle,
        adapter: &mut Adapter,
        meta: &ScopeMeta,
        state: &mut ScopeState,
        commit: &mut Commit,
    ) -> Result<(), EngineError> {
        let config = adapter.config().clone();
        if config.method != CloudMethod::Cema || meta.replay_len() < config.replay_min as u64 {
            return Ok(());
        }
        // The newest `idle_replay_window` samples, or the whole buffer.
        let window = ScopeMeta {
            replay_head: config
                .idle_replay_window
                .map_or(meta.replay_head, |w| meta.replay_head.max(meta.replay_next.saturating_sub(w as u64))),
            ..meta.clone()
        };
        for step in 1..=config.idle_replay_steps as u64 {
            if handle.scheduled.load(Ordering::Acquire) {
                break;
            }
            if !commit.stepped && !commit.new_version {
                state.student.version = meta.version + 1;
            }
            let replayed =
                self.replay(scope, &window, config.replay_only_batch, &handle.model, state.student.version, step)?;
            let refs: Vec<&SampleValues> = replayed.iter().collect();
            let report = adapter.distill_step(state, &refs)?;
            self.record_step(scope, state.student.version, None, &report);
            self.metrics.idle_replay_steps.inc();
            commit.stepped = true;
        }
        Ok(())
    }

    /// Metrics and one structured log line per distillation step (`CEMA_LOG=debug`): the loss
    /// terms and each sample's distillation value, so a step can be audited afterwards.
    fn record_step(&self, scope: &str, version: u64, foundation_loss: Option<f32>, report: &DistillReport) {
        self.metrics.record_distill(report);
        tracing::debug!(
            scope,
            version,
            foundation_loss,
            batch = report.batch,
            ent = report.ent,
            kl = report.kl,
            ce = report.ce,
            total = report.total,
            sample_kl = ?report.sample_kl,
            "distillation step"
        );
    }

    fn publish(&self, handle: &ScopeHandle, meta: &ScopeMeta, params: Option<v1::NormParams>) {
        handle.published.send_modify(|p| {
            p.version = meta.version;
            if let Some(params) = params {
                p.params = Some(Arc::new(params));
            }
            p.through = Arc::new(meta.through.clone());
        });
        self.metrics.version.set(meta.version as f64);
    }

    /// `count` replay samples drawn uniformly without replacement (deterministic per scope,
    /// version and step of the round, so a step redone after a crash draws the same ones).
    fn replay(
        &self,
        scope: &str,
        meta: &ScopeMeta,
        count: usize,
        model: &ModelEntry,
        version: u64,
        step: u64,
    ) -> Result<Vec<SampleValues>, EngineError> {
        let ids = draw_without_replacement(meta.replay_head, meta.replay_next, count, scope, version, step);
        let tensors = self.store.replay_samples(scope, &ids)?;
        Ok(tensors.iter().map(|t| model.decode_sample(t)).collect::<Result<_, _>>()?)
    }
}

fn decode_all<'a>(
    model: &ModelEntry,
    entries: impl Iterator<Item = &'a QueueEntry>,
) -> Result<Vec<SampleValues>, EngineError> {
    entries
        .map(|e| {
            let tensor = e.sample.as_ref().ok_or(EngineError::MarkerAmongSamples)?;
            Ok(model.decode_sample(tensor)?)
        })
        .collect()
}

/// `count` distinct ids from `[head, next)` (all of them if fewer), uniformly: a partial
/// Fisher–Yates shuffle seeded by the scope, the version and the step within the version's
/// round (0 for the round's regular step; idle replay steps count from 1).
pub fn draw_without_replacement(head: u64, next: u64, count: usize, scope: &str, version: u64, step: u64) -> Vec<u64> {
    let mut ids: Vec<u64> = (head..next).collect();
    let take = count.min(ids.len());
    let scope_key = scope.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    const SALT: u64 = 0x7265_706c_6179;
    // Step 0 keeps the key it always had, so earlier draws (and the eval figures) stay the same.
    let mut rng = if step == 0 {
        Rng::for_stream(&[scope_key, version, SALT])
    } else {
        Rng::for_stream(&[scope_key, version, SALT, step])
    };
    for i in 0..take {
        let j = rng.int_inclusive(i as i64, ids.len() as i64 - 1) as usize;
        ids.swap(i, j);
    }
    ids.truncate(take);
    ids
}

impl ScopeState {
    /// Approximate heap size in bytes (for the idle-scope memory figure).
    pub fn approx_bytes(&self) -> usize {
        let params = |p: &cema_core::NormParams| p.tensors.values().map(|t| t.values.len() * 4 + 64).sum::<usize>();
        let velocity = |v: &[(String, Vec<f32>)]| v.iter().map(|(n, x)| n.len() + x.len() * 4).sum::<usize>();
        params(&self.student)
            + params(&self.foundation)
            + velocity(&self.student_velocity)
            + velocity(&self.foundation_velocity)
    }
}
