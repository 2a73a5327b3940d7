//! The agent: predicts batches, selects, writes the selection to the outbox before reporting
//! it, and swaps in parameter updates between batches. The network side — the uploader and
//! the parameter watcher — runs on the agent's own small tokio runtime (see [`crate::link`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cema_core::{Encoding, NormParams, SampleValues, StatsInit};
use cema_proto::v1;
use tokio::sync::{Notify, watch};

use crate::drift::DriftDetector;
use crate::link::{AckedBatches, CloudLink, LinkState, Pending, PendingUpdate};
use crate::local::LocalAdaptation;
use crate::metrics::EdgeMetrics;
use crate::outbox::{Outbox, OutboxError, OutboxLimits};
use crate::runtime::{Prediction, Runtime, RuntimeError};
use crate::selector::{Selector, SelectorConfig};
use crate::store::{BatchRecords, EdgeStore, EdgeStoreError};

/// How the agent paces itself against parameter updates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// Use whatever parameters have arrived (deployment).
    Free,
    /// Before batch t+1, wait until the cloud has processed batch t and its update is applied
    /// (the paper's protocol), for at most the given time.
    Lockstep(Duration),
}

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Device id (as registered at the cloud).
    pub device_id: String,
    /// Selection.
    pub selector: SelectorConfig,
    /// zstd-compress uploads.
    pub compress: bool,
    /// How float model inputs travel: `F16` (half the bytes; moves the cloud's statistics by
    /// about 1e-5 relative) or `F32` (lossless). Models that take u8 pixels always upload u8.
    pub float_encoding: Encoding,
    /// Where the served model's running statistics start: `FirstBatch` initialises them on the
    /// edge from the first batch, before serving it, and sends them with that batch's end.
    pub stats_init: StatsInit,
    /// Send each batch's statistics, measured on every sample, with its batch end (the
    /// statistics uplink: the cloud can follow the edge's input distribution from all of it).
    pub uplink_statistics: bool,
    /// Edge-local adaptation: follow the edge's own statistics, applying them every this many
    /// batches, and upload no samples. `None`: adaptation comes from the cloud.
    pub local_every: Option<u64>,
    /// Outbox bounds and policy.
    pub outbox: OutboxLimits,
    /// Pacing.
    pub pacing: Pacing,
    /// The source guard: run each batch through the model's own parameters too, and serve
    /// those instead when they carry more information about it
    /// (see [`crate::guard::GUARD_MARGIN_FRACTION`]).
    pub guard: bool,
    /// Drift reset: a Page–Hinkley test over the batches' mean entropy returns the edge to the
    /// model's own parameters and asks the cloud to reset the scope ([`crate::drift`]).
    pub drift_reset: bool,
}

/// Why the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The model runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The agent's state store failed.
    #[error(transparent)]
    State(#[from] EdgeStoreError),
    /// Bad input.
    #[error("input: {0}")]
    Input(String),
    /// The cloud refused the agent for good (token, model mismatch).
    #[error("the cloud refused this agent: {0}")]
    Refused(String),
}

/// A batch's mean prediction entropy as a share of `ln C` (what the drift test watches).
fn normalised_mean_entropy(prediction: &crate::runtime::Prediction) -> f64 {
    prediction.mean_entropy() / (prediction.classes.max(2) as f64).ln()
}

/// One served prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionRecord {
    /// Predicted class.
    pub class: usize,
    /// Its probability.
    pub probability: f32,
    /// Entropy (nats).
    pub entropy: f32,
    /// Parameter version that produced it.
    pub params_version: u64,
    /// Whether it was selected for upload (and stored in the outbox).
    pub uploaded: bool,
}

/// The edge agent.
pub struct Agent {
    runtime: Runtime,
    selector: Selector,
    store: EdgeStore,
    config: AgentConfig,
    batch_index: u64,
    pending: Pending,
    acked_batches: AckedBatches,
    link: watch::Receiver<LinkState>,
    outbox_changed: Arc<Notify>,
    metrics: Arc<EdgeMetrics>,
    applied: Arc<AtomicU64>,
    /// Edge-local adaptation, when configured.
    local: Option<LocalAdaptation>,
    /// Whether the serving parameters are the model's own, untouched (no update applied, no
    /// first-batch initialisation): what `stats_init = first_batch` waits for.
    serving_source: bool,
    /// The drift test over the batches' mean entropy (`drift_reset`).
    drift: DriftDetector,
    /// Updates that account only for batches before this one were fitted before the last
    /// drift reset, and are dropped.
    fresh_from_batch: u64,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("device", &self.config.device_id).field("batch", &self.batch_index).finish()
    }
}

impl Agent {
    /// Opens the agent over `db` (its state: outbox, selector, applied parameters) and resumes
    /// where a previous run stopped, adapted parameters included.
    pub fn open(mut runtime: Runtime, db: &sled::Db, config: AgentConfig) -> Result<Self, AgentError> {
        if config.uplink_statistics || config.local_every.is_some() {
            runtime.observe_statistics()?;
        }
        if config.guard {
            runtime.keep_source_session()?;
        }
        let store = EdgeStore::open(db, config.outbox)?;
        let selector_state = store.selector_state()?;
        let batch_index = store.batch_index()?;
        let resumed = store.applied_params()?;
        let serving_source = resumed.is_none();
        if let Some(params) = &resumed {
            let prepared = runtime.prepare(params)?;
            runtime.swap(prepared);
            tracing::info!(version = params.version, "resumed with adapted parameters");
        }
        let local = match config.local_every {
            Some(every) => {
                let serving = match resumed {
                    Some(params) => params,
                    None => NormParams::source(runtime.source()).map_err(RuntimeError::from)?,
                };
                Some(LocalAdaptation::new(serving, every))
            }
            None => None,
        };
        let classes = runtime.manifest().num_classes();
        let metrics = Arc::new(EdgeMetrics::default());
        metrics.params_version.store(runtime.version(), Ordering::Relaxed);
        let (_, link) = watch::channel(LinkState::default());
        Ok(Self {
            selector: Selector::new(config.selector.clone(), classes, selector_state),
            applied: Arc::new(AtomicU64::new(runtime.version())),
            runtime,
            store,
            config,
            batch_index,
            pending: Arc::new(Mutex::new(None)),
            acked_batches: AckedBatches::default(),
            link,
            outbox_changed: Arc::new(Notify::new()),
            metrics,
            local,
            serving_source,
            drift: DriftDetector::default(),
            fresh_from_batch: 0,
        })
    }

    /// Connects to the cloud: starts the uploader and the watcher on `handle`.
    pub fn connect(&mut self, handle: &tokio::runtime::Handle, link: CloudLink) -> crate::link::LinkTasks {
        let (tasks, state) = crate::link::start(
            handle,
            link,
            crate::link::Shared {
                device_id: self.config.device_id.clone(),
                fingerprint: self.runtime.source().fingerprint().to_hex(),
                manifest: cema_proto::manifest_summary(self.runtime.manifest()),
                outbox: Arc::clone(self.store.outbox()),
                outbox_changed: Arc::clone(&self.outbox_changed),
                preparer: self.runtime.preparer(),
                pending: Arc::clone(&self.pending),
                acked_batches: Arc::clone(&self.acked_batches),
                applied: Arc::clone(&self.applied),
                metrics: Arc::clone(&self.metrics),
            },
        );
        self.link = state;
        tasks
    }

    /// The metrics.
    pub fn metrics(&self) -> Arc<EdgeMetrics> {
        Arc::clone(&self.metrics)
    }

    /// The outbox.
    pub fn outbox(&self) -> &Arc<Outbox> {
        self.store.outbox()
    }

    /// The runtime (model, manifest, serving version).
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The parameter version serving now.
    pub fn version(&self) -> u64 {
        self.runtime.version()
    }

    /// Batches pushed so far (over restarts).
    pub fn batches(&self) -> u64 {
        self.batch_index
    }

    /// Swaps in a prepared update, if one is waiting, and records it durably.
    pub fn apply_pending(&mut self) -> Result<bool, AgentError> {
        let next = self.pending.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(PendingUpdate { session, wire, arrived, through_batch, window }) = next else { return Ok(false) };
        if session.version() <= self.runtime.version() && self.runtime.version() != 0 {
            return Ok(false);
        }
        if through_batch < self.fresh_from_batch {
            self.metrics.stale_updates.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                version = session.version(),
                through_batch,
                "dropped an update fitted before the drift reset"
            );
            return Ok(false);
        }
        self.store.save_applied(&wire)?;
        self.runtime.swap(session);
        self.serving_source = false;
        let now = Instant::now();
        let mut acked = self.acked_batches.lock().unwrap_or_else(|e| e.into_inner());
        let later = acked.split_off(&(through_batch + 1));
        for acked_at in std::mem::replace(&mut *acked, later).into_values() {
            self.metrics.record_update_latency(now.saturating_duration_since(acked_at));
        }
        drop(acked);
        self.applied.store(self.runtime.version(), Ordering::Release);
        self.metrics.params_version.store(self.runtime.version(), Ordering::Relaxed);
        self.metrics.swaps.fetch_add(1, Ordering::Relaxed);
        self.metrics.last_update_ms.store(arrived.elapsed().as_micros() as u64, Ordering::Relaxed);
        if let Some(range) = window.iter().flat_map(|w| &w.devices).find(|d| d.device_id == self.config.device_id) {
            // How much of this device's own stream came after the data the update was fitted on.
            let lag = self.store.outbox().last_seq()?.saturating_sub(range.last_seq);
            self.metrics.update_data_lag_seqs.store(lag, Ordering::Relaxed);
            tracing::debug!(
                version = self.runtime.version(),
                first_seq = range.first_seq,
                last_seq = range.last_seq,
                lag,
                "applied an update"
            );
        }
        Ok(true)
    }

    /// The drift test fired on `batch` (whose end asks the cloud for a reset): serve the
    /// model's own parameters from the next batch (re-initialised from it under
    /// `stats_init = first_batch`) and drop updates fitted before the cloud's reset.
    fn reset_after_drift(&mut self, batch: u64) -> Result<(), AgentError> {
        self.reset()?;
        self.drift.restart();
        self.fresh_from_batch = batch;
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.metrics.drift_resets.fetch_add(1, Ordering::Relaxed);
        tracing::info!(batch, "drift: the batches' entropy rose abruptly; back to the model's own parameters");
        Ok(())
    }

    /// Returns to the model's own parameters and forgets the adapted ones.
    pub fn reset(&mut self) -> Result<(), AgentError> {
        let source = self.runtime.prepare_source()?;
        self.store.forget_applied()?;
        self.runtime.swap(source);
        self.serving_source = true;
        if let Some(local) = &mut self.local {
            local.restart(NormParams::source(self.runtime.source()).map_err(RuntimeError::from)?);
        }
        self.applied.store(0, Ordering::Release);
        Ok(())
    }

    /// Predicts one batch of raw samples (each `sample_elements` values in the manifest's
    /// layout), selects, stores the selection in the outbox (flushed) and returns the
    /// predictions. Pending parameter updates are applied first, never mid-batch.
    pub fn push(&mut self, samples: &[SampleValues]) -> Result<Vec<PredictionRecord>, AgentError> {
        if samples.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(reason) = self.link.borrow().fatal.clone() {
            return Err(AgentError::Refused(reason));
        }
        self.apply_pending()?;
        let input = crate::batch::model_input(self.runtime.manifest(), samples)?;
        let first_batch = self.first_batch_init(&input, samples.len())?;
        let started = Instant::now();
        let mut prediction = self.runtime.predict(&input, samples.len())?;
        let mut guard = v1::GuardOutcome::Unspecified;
        if self.config.guard
            && !self.serving_source
            && let Some(source) = self.runtime.predict_source(&input, samples.len())?
        {
            if crate::guard::prefer_source(&prediction, &source) {
                prediction = source;
                guard = v1::GuardOutcome::Source;
                self.metrics.guard_reverts.fetch_add(1, Ordering::Relaxed);
            } else {
                guard = v1::GuardOutcome::Adapted;
                self.metrics.guard_kept.fetch_add(1, Ordering::Relaxed);
            }
        }
        let drift = self.config.drift_reset && self.drift.observe(normalised_mean_entropy(&prediction));
        self.metrics.inference_us.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let select_started = Instant::now();
        let mut selection = self.selector.select(&prediction.entropy, &prediction.probs);
        if self.local.is_some() {
            // Edge-local adaptation uploads nothing.
            selection.keep.iter_mut().for_each(|k| *k = false);
        }
        self.metrics.select_us.fetch_add(select_started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let selected_indices: Vec<usize> = (0..samples.len()).filter(|&i| selection.keep[i]).collect();
        let encoding = self.config.float_encoding;
        let selected = crate::batch::encode_selected(
            self.runtime.manifest(),
            (self.config.compress, encoding),
            samples,
            &selected_indices,
            &prediction,
        )?;
        let batch = self.batch_index + 1;
        let mut end = v1::BatchEnd { batch, predicted: samples.len() as u32, ..v1::BatchEnd::default() };
        end.outcome = Some(v1::BatchOutcome { served_version: prediction.params_version, guard: guard.into(), drift });
        if let Some(params) = &first_batch {
            // The parameters served from now on and the statistics the cloud adopts are stored
            // with the batch, atomically: a crash before this point re-initialises.
            let statistics = params.statistics(self.runtime.discovery());
            // Exact: the cloud must adapt precisely what the edge serves.
            end.initial_statistics = Some(cema_proto::statistics_to_wire(&statistics, samples.len() as u32, false));
            if let Some(local) = &mut self.local {
                local.restart(params.clone());
            }
        }
        let mut local_params = None;
        if let Some(statistics) = &prediction.statistics {
            if self.config.uplink_statistics {
                end.batch_statistics = Some(cema_proto::statistics_to_wire(statistics, samples.len() as u32, true));
            }
            local_params = self.local_step(statistics)?;
        }
        let applied = local_params.as_ref().or(first_batch.as_ref());
        let records = BatchRecords { batch, selector: self.selector.state(), applied };
        let appended = self.store.append_batch(selected, end, &records)?;
        self.batch_index = batch;
        self.outbox_changed.notify_one();
        let mut stored = vec![false; samples.len()];
        for (i, seq) in selected_indices.iter().zip(&appended.sample_seqs) {
            stored[*i] = seq.is_some();
        }
        self.metrics.predictions.fetch_add(samples.len() as u64, Ordering::Relaxed);
        self.metrics.selected.fetch_add(stored.iter().filter(|s| **s).count() as u64, Ordering::Relaxed);
        self.metrics.drops.fetch_add(appended.dropped, Ordering::Relaxed);
        self.metrics.batches.fetch_add(1, Ordering::Relaxed);
        if drift {
            self.reset_after_drift(batch)?;
        }
        Ok(served_records(&prediction, &stored))
    }

    /// Under `stats_init = first_batch`, while the model's own parameters serve: measures this
    /// batch's statistics forward-only, swaps in a session that uses them, and returns the
    /// parameters (stored with the batch by the caller). A batch of one sample has no variance
    /// and serves with the source statistics; the next batch tries again.
    fn first_batch_init(&mut self, input: &[f32], batch: usize) -> Result<Option<NormParams>, AgentError> {
        if self.config.stats_init != StatsInit::FirstBatch || !self.serving_source || batch < 2 {
            return Ok(None);
        }
        let params = self.runtime.first_batch_params(input, batch)?;
        let prepared = self.runtime.prepare(&params)?;
        self.runtime.swap(prepared);
        self.serving_source = false;
        self.metrics.first_batch_inits.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            batch = self.batch_index + 1,
            samples = batch,
            "running statistics initialised from the first batch"
        );
        Ok(Some(params))
    }

    /// Edge-local adaptation after a batch: follows its statistics and, when due, swaps in the
    /// result (for the next batch); returns the parameters to store with the batch then.
    fn local_step(&mut self, statistics: &NormParams) -> Result<Option<NormParams>, AgentError> {
        let Some(local) = &mut self.local else { return Ok(None) };
        let Some(params) = local.observe(statistics, self.runtime.discovery()) else { return Ok(None) };
        let params = params.clone();
        let prepared = self.runtime.prepare(&params)?;
        self.runtime.swap(prepared);
        self.serving_source = false;
        self.metrics.local_applies.fetch_add(1, Ordering::Relaxed);
        Ok(Some(params))
    }

    /// In lockstep pacing: waits until the cloud has processed every pushed batch and the
    /// resulting update is applied (or the timeout passes, or the link fails for good).
    /// Returns whether it caught up.
    pub fn wait_for_cloud(&mut self, handle: &tokio::runtime::Handle) -> Result<bool, AgentError> {
        let Pacing::Lockstep(timeout) = self.config.pacing else { return Ok(true) };
        let target = self.batch_index;
        let mut link = self.link.clone();
        let caught_up = handle.block_on(async move {
            tokio::time::timeout(timeout, link.wait_for(|s| s.through_batch >= target || s.fatal.is_some()))
                .await
                .map(|r| r.map(|s| s.fatal.clone()))
        });
        match caught_up {
            Ok(Ok(Some(fatal))) => Err(AgentError::Refused(fatal)),
            Ok(Ok(None)) => {
                self.apply_pending()?;
                Ok(true)
            }
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(batch = target, "the cloud did not answer in time; continuing with current parameters");
                Ok(false)
            }
        }
    }

    /// Waits until the outbox is empty (everything acknowledged), at most `timeout`.
    pub fn drain(&self, handle: &tokio::runtime::Handle, timeout: Duration) -> bool {
        let outbox = Arc::clone(self.store.outbox());
        handle.block_on(async move {
            let deadline = Instant::now() + timeout;
            while outbox.usage().0 > 0 {
                if Instant::now() >= deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            true
        })
    }
}

/// The served predictions of a batch, with whether each was stored for upload.
fn served_records(prediction: &Prediction, uploaded: &[bool]) -> Vec<PredictionRecord> {
    (0..prediction.batch)
        .map(|i| PredictionRecord {
            class: prediction.class[i],
            probability: prediction.probs_of(i)[prediction.class[i]],
            entropy: prediction.entropy[i],
            params_version: prediction.params_version,
            uploaded: uploaded[i],
        })
        .collect()
}
