//! The adaptation engine: scopes, their scheduling onto compute threads, and the broadcast of
//! each new parameter version.
//!
//! A scope is scheduled when a batch-end marker is stored for it. A fixed pool of engine
//! threads (default 1: burn's kernels already use every core,
//! `docs/decisions/one-engine-pool.md`) takes scheduled scopes one at a time, so a scope is
//! never adapted by two threads at once, and runs its rounds: the engine takes the queue up to
//! the first marker, hands `cloud_batch` new samples (or none) to [`Adapter::round`], which
//! runs CEMA's steps in their order, then commits the consumed entries with the new state and
//! publishes the version to the scope's watchers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use cema_compute::adapt::{AdaptConfig, AdaptError, Adapter, DistillKind, RoundInput, RoundOutcome, ScopeState};
use cema_core::SampleValues;
use cema_proto::ConvertError;
use cema_proto::v1;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::model::{ModelEntry, SampleError, stored_statistics};
use crate::replay::StoredReplay;
use crate::scope::ScopeId;
use crate::store::{Commit, QueueEntry, ScopeMeta, Store, StoreError};

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
    /// The data `params` was fitted on (absent when no step on new samples made it).
    pub window: Option<Arc<v1::DataWindow>>,
}

/// One scope's figures for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeGauges {
    /// The scope id.
    pub scope: ScopeId,
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
    scopes: Mutex<HashMap<ScopeId, Arc<ScopeHandle>>>,
    work: Mutex<Option<mpsc::Sender<ScopeId>>>,
    metrics: Arc<Metrics>,
    /// Per model, a moving average of the wall time of its recent rounds that stepped (reads,
    /// step, commit, publish): what newest-data-first budgets with. Per model, since CEMA's
    /// and `bn-stats`' rounds cost tens of times apart; whole rounds, since a cheap step's
    /// round is mostly the store's work.
    round_seconds: Mutex<HashMap<String, f64>>,
}

/// Weight of the newest round in a model's moving average.
const ROUND_AVERAGE_WEIGHT: f64 = 0.25;

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
        let (tx, rx) = mpsc::channel::<ScopeId>();
        let engine = Arc::new(Self {
            store,
            models,
            scopes: Mutex::new(HashMap::new()),
            work: Mutex::new(Some(tx)),
            metrics,
            round_seconds: Mutex::new(HashMap::new()),
        });
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

    fn model_of_scope(&self, scope: &ScopeId) -> Option<Arc<ModelEntry>> {
        match scope {
            ScopeId::Fleet(model) => self.model(model),
            // A device scope's model is the device's registered model; the registry lives in
            // the same database.
            ScopeId::Device(device) => {
                let registry = crate::DeviceRegistry::open(&self.store.db()).ok()?;
                self.model(&registry.get(device).ok()?.model_id)
            }
        }
    }

    /// Subscribes to a scope's versions, creating the scope if new.
    pub fn subscribe(
        &self,
        scope: &ScopeId,
        model: &Arc<ModelEntry>,
    ) -> Result<watch::Receiver<Published>, StoreError> {
        Ok(self.scope(scope, model)?.published.subscribe())
    }

    /// The latest published state of a scope.
    pub fn latest(&self, scope: &ScopeId, model: &Arc<ModelEntry>) -> Result<Published, StoreError> {
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

    fn scope(&self, scope: &ScopeId, model: &Arc<ModelEntry>) -> Result<Arc<ScopeHandle>, StoreError> {
        let mut scopes = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = scopes.get(scope) {
            return Ok(Arc::clone(handle));
        }
        let meta = self.store.meta(scope)?;
        let params = match meta.version {
            0 => None,
            v => self.store.version(scope, v)?.map(Arc::new),
        };
        let published =
            Published { version: meta.version, params, through: Arc::new(meta.through.clone()), window: None };
        let handle = Arc::new(ScopeHandle {
            model: Arc::clone(model),
            published: watch::Sender::new(published),
            scheduled: AtomicBool::new(false),
        });
        scopes.insert(scope.clone(), Arc::clone(&handle));
        Ok(handle)
    }

    /// Queues a scope for the engine threads (once, however often it is called meanwhile).
    pub fn schedule(&self, scope: &ScopeId) {
        let handle = self.scopes.lock().unwrap_or_else(|e| e.into_inner()).get(scope).cloned();
        if let Some(handle) = handle
            && !handle.scheduled.swap(true, Ordering::AcqRel)
            && let Some(tx) = self.work.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
        {
            let _ = tx.send(scope.clone());
        }
    }

    /// Stops accepting work; engine threads finish their current round and exit.
    pub fn stop(&self) {
        self.work.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn work_loop(&self, rx: &Mutex<mpsc::Receiver<ScopeId>>) {
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
            if self.work.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
                return;
            }
            match self.round(&scope, &handle, adapter) {
                // One round per turn, then to the back of the line: scopes with work take
                // turns (the share of the engine `skip_stale` counts on), so a scope whose
                // uploads outrun the engine cannot hold it while others' samples age.
                Ok(true) => self.schedule(&scope),
                Ok(false) => {}
                Err(e) => {
                    self.metrics.engine_errors.inc();
                    tracing::error!(%scope, error = %e, "adaptation round failed; the scope waits for new work");
                }
            }
        }
    }

    /// Runs one round of a scope; returns whether there may be more.
    fn round(&self, scope: &ScopeId, handle: &ScopeHandle, adapter: &mut Adapter) -> Result<bool, EngineError> {
        let started = Instant::now();
        let before_drift = self.store.skip_before_drift(scope)?;
        if before_drift > 0 {
            self.metrics.stale_skipped.add(before_drift);
        }
        self.skip_stale(scope, &handle.model.id, adapter.config())?;
        let entries = self.store.next_round(scope)?;
        let Some(((marker_key, marker_entry), samples)) = entries.split_last() else { return Ok(false) };
        let meta = self.store.meta(scope)?;
        let reset_after = adapter.config().reset_after_reverts;
        let diverged = reset_after > 0 && meta.consecutive_reverts >= reset_after;
        let mut state = self.store.state(scope)?.unwrap_or_else(|| adapter.initial_state());
        let cloud_batch = adapter.config().cloud_batch;
        let new = if samples.len() >= cloud_batch {
            Some(&samples[..cloud_batch])
        } else {
            overdue(samples, adapter.config().max_wait_seconds).then_some(samples)
        };
        if new.is_some_and(|new| new.len() < cloud_batch) {
            self.metrics.partial_steps.inc();
        }
        let finishes_batch = samples.len() < 2 * cloud_batch;
        let input = RoundInput {
            version: meta.version,
            new: new.map(|new| decode_all(&handle.model, new.iter().map(|(_, e)| e))).transpose()?,
            finishes_batch,
            first_batch_statistics: marker_entry.statistics.as_ref().map(stored_statistics).transpose()?,
            // The round uses a batch's statistics only in the round that finishes it.
            batch_statistics: match &marker_entry.batch_statistics {
                Some(statistics) if finishes_batch => Some(stored_statistics(statistics)?),
                _ => None,
            },
            reset: marker_entry.drift() || diverged,
        };
        let mut replay = StoredReplay { store: &self.store, scope, meta: &meta, model: &handle.model };
        let work_waiting = || handle.scheduled.load(Ordering::Acquire);
        let outcome = adapter.round(&mut state, &input, &mut replay, &work_waiting)?;
        self.record(scope, marker_entry, &state, &outcome);
        let commit = Commit {
            consumed: new.map(|new| new.iter().map(|(k, _)| *k).collect()).unwrap_or_default(),
            marker: input.finishes_batch.then(|| (*marker_key, marker_entry.device.clone(), marker_entry.batch)),
            guard: marker_entry.outcome.map(|o| o.guard()).filter(|_| input.finishes_batch),
            // A reset happens once: a batch end that takes more rounds forgets its request.
            reset: outcome.reset.then(|| (*marker_key, (!input.finishes_batch).then(|| forget_drift(marker_entry)))),
            drift_answered: outcome.reset && marker_entry.drift(),
            stepped: outcome.stepped,
            new_version: outcome.new_version,
            state: outcome.state_changed.then_some(state),
        };
        let published_params = commit
            .state
            .as_ref()
            .filter(|_| commit.new_version)
            .map(|s| cema_proto::norm_params_to_wire(&s.student, &scope.to_string()));
        let window = new.map(|new| data_window(new.iter().map(|(_, e)| e)));
        let meta = self.store.commit(scope, &commit, handle.model.keep_versions)?;
        if outcome.reset {
            self.metrics.resets.inc();
            let reason =
                if marker_entry.drift() { "an edge detected drift" } else { "the edges' guard kept reverting" };
            tracing::info!(%scope, device = %marker_entry.device, batch = marker_entry.batch, reason, "reset the scope to the source models");
        }
        if let Some(outcome) = marker_entry.outcome.filter(|_| input.finishes_batch) {
            self.metrics.record_guard(outcome.guard());
        }
        // After the commit, so a round that fails and runs again counts its samples once.
        if let Some(new) = new {
            observe_queue_age(&self.metrics, new.iter().map(|(_, e)| e));
        }
        if let Some(seconds) = outcome.step_seconds {
            self.metrics.steps.inc();
            self.metrics.step_seconds.observe(seconds);
        }
        self.metrics.replay_samples.set(meta.replay_len() as f64);
        self.metrics.backlog_samples.set(meta.queued_samples as f64);
        self.publish(handle, &meta, published_params.map(|p| (p, window)));
        if outcome.stepped {
            let seconds = started.elapsed().as_secs_f64();
            let mut averages = self.round_seconds.lock().unwrap_or_else(|e| e.into_inner());
            averages
                .entry(handle.model.id.clone())
                .and_modify(|average| *average += ROUND_AVERAGE_WEIGHT * (seconds - *average))
                .or_insert(seconds);
        }
        Ok(true)
    }

    /// Newest data first (`max_queue_seconds`): the samples the engine would step through for
    /// this scope in that time — one round per turn, a turn lasting a round of its own and
    /// one of each other scope waiting, each at its model's recent round time (1 s before a
    /// model's first step) — are kept queued; older ones go to the replay buffer alone.
    fn skip_stale(&self, scope: &ScopeId, model: &str, config: &AdaptConfig) -> Result<(), EngineError> {
        if config.max_queue_seconds <= 0.0 {
            return Ok(());
        }
        let averages = self.round_seconds.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let round_seconds = |model: &str| averages.get(model).map_or(1.0, |s| s.max(1e-3));
        // The engine takes waiting scopes in turn, a round each: one turn of this scope lasts
        // its own round and one of every other scope waiting, at their models' costs.
        let others: f64 = self
            .scopes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(id, h)| *id != scope && h.scheduled.load(Ordering::Acquire))
            .map(|(_, h)| round_seconds(&h.model.id))
            .sum();
        let steps = (config.max_queue_seconds / (round_seconds(model) + others)).floor().max(1.0);
        let keep = (steps * config.cloud_batch as f64) as u64;
        let skipped = self.store.skip_stale(scope, keep)?;
        if skipped > 0 {
            self.metrics.stale_skipped.add(skipped);
            tracing::debug!(%scope, skipped, keep, "the engine fell behind: stale samples left to replay");
        }
        Ok(())
    }

    /// Metrics, and one structured log line per distillation step (`CEMA_LOG=debug`): the loss
    /// terms and each sample's distillation value, so a step can be audited afterwards.
    fn record(&self, scope: &ScopeId, marker: &QueueEntry, state: &ScopeState, outcome: &RoundOutcome) {
        if outcome.adopted_edge_statistics {
            self.metrics.edge_statistics_adopted.inc();
            tracing::info!(%scope, device = %marker.device, batch = marker.batch, "adopted the edge's first-batch statistics");
        }
        if outcome.followed_edge_statistics {
            self.metrics.edge_statistics_batches.inc();
        }
        for step in &outcome.distilled {
            match step.kind {
                DistillKind::WithNew => {}
                DistillKind::ReplayOnly => self.metrics.replay_only_steps.inc(),
                DistillKind::IdleReplay => self.metrics.idle_replay_steps.inc(),
            }
            if let Some(loss) = step.foundation_loss {
                self.metrics.foundation_loss.set(loss as f64);
            }
            let report = &step.report;
            self.metrics.record_distill(report);
            tracing::debug!(
                %scope,
                version = state.student.version,
                foundation_loss = step.foundation_loss,
                batch = report.batch,
                ent = report.ent,
                kl = report.kl,
                ce = report.ce,
                total = report.total,
                sample_kl = ?report.sample_kl,
                "distillation step"
            );
        }
    }

    fn publish(
        &self,
        handle: &ScopeHandle,
        meta: &ScopeMeta,
        params: Option<(v1::NormParams, Option<v1::DataWindow>)>,
    ) {
        handle.published.send_modify(|p| {
            p.version = meta.version;
            if let Some((params, window)) = params {
                p.params = Some(Arc::new(params));
                p.window = window.map(Arc::new);
            }
            p.through = Arc::new(meta.through.clone());
        });
        self.metrics.version.set(meta.version as f64);
    }
}

/// The data window of a step's new samples: per device its seq range, and when they arrived.
fn data_window<'a>(entries: impl Iterator<Item = &'a QueueEntry>) -> v1::DataWindow {
    let mut devices: Vec<v1::DeviceSeqRange> = Vec::new();
    let mut window = v1::DataWindow { fitted_unix_ms: crate::store::unix_ms(), ..v1::DataWindow::default() };
    for entry in entries {
        match devices.iter_mut().find(|d| d.device_id == entry.device) {
            Some(range) => {
                range.first_seq = range.first_seq.min(entry.seq);
                range.last_seq = range.last_seq.max(entry.seq);
            }
            None => devices.push(v1::DeviceSeqRange {
                device_id: entry.device.clone(),
                first_seq: entry.seq,
                last_seq: entry.seq,
            }),
        }
        if entry.received_unix_ms > 0 {
            let oldest = window.oldest_received_unix_ms;
            window.oldest_received_unix_ms =
                if oldest == 0 { entry.received_unix_ms } else { oldest.min(entry.received_unix_ms) };
            window.newest_received_unix_ms = window.newest_received_unix_ms.max(entry.received_unix_ms);
        }
    }
    window.devices = devices;
    window
}

/// A batch end's queue record without its drift flag (its reset has been done).
fn forget_drift(entry: &QueueEntry) -> QueueEntry {
    let mut entry = entry.clone();
    if let Some(outcome) = entry.outcome.as_mut() {
        outcome.drift = false;
    }
    entry
}

/// Whether the oldest of `samples` has waited `max_wait_seconds` (> 0) for a step.
fn overdue(samples: &[(u64, QueueEntry)], max_wait_seconds: f64) -> bool {
    let Some((_, oldest)) = samples.iter().find(|(_, e)| e.received_unix_ms > 0) else { return false };
    let waited_ms = crate::store::unix_ms().saturating_sub(oldest.received_unix_ms);
    max_wait_seconds > 0.0 && waited_ms as f64 >= max_wait_seconds * 1e3
}

/// Records how long each of a step's samples waited in the queue.
fn observe_queue_age<'a>(metrics: &Metrics, entries: impl Iterator<Item = &'a QueueEntry>) {
    let now = crate::store::unix_ms();
    for entry in entries.filter(|e| e.received_unix_ms > 0) {
        metrics.queue_age_seconds.observe(now.saturating_sub(entry.received_unix_ms) as f64 / 1e3);
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
