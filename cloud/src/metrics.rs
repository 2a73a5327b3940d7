//! Operational metrics, rendered in the Prometheus text format at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::ScopeGauges;
use cema_compute::adapt::DistillReport;

/// What `/metrics` reads from the engine at render time.
#[derive(Debug, Clone, Default)]
pub struct LiveView {
    /// Scopes in memory.
    pub scopes: usize,
    /// Connected watchers over all scopes.
    pub watchers: usize,
    /// Per-scope figures of the first scopes in scope order (at most `scope_metrics_limit`).
    pub per_scope: Vec<ScopeGauges>,
    /// Scopes beyond the limit, not labelled.
    pub omitted: usize,
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }
    /// The value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Sum and count of observations (Prometheus summary without quantiles).
#[derive(Debug, Default)]
pub struct Summary {
    sum: Mutex<(f64, u64)>,
}

impl Summary {
    /// Records one observation.
    pub fn observe(&self, value: f64) {
        let mut s = self.sum.lock().unwrap_or_else(|e| e.into_inner());
        s.0 += value;
        s.1 += 1;
    }
    /// (sum, count).
    pub fn get(&self) -> (f64, u64) {
        *self.sum.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Seconds an uploaded sample waited in the queue before a step consumed it: the histogram's
/// bucket bounds.
pub const QUEUE_AGE_BUCKETS: [f64; 11] = [0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 30.0, 60.0];

/// Observations counted into fixed buckets (a Prometheus histogram).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bound, observations ≤ it (not cumulative), then the count above the last; sum.
    state: Mutex<(Vec<u64>, f64)>,
}

impl Histogram {
    /// A histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, state: Mutex::new((vec![0; bounds.len() + 1], 0.0)) }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = self.bounds.iter().position(|b| value <= *b).unwrap_or(self.bounds.len());
        state.0[bucket] += 1;
        state.1 += value;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0.iter().sum()
    }

    /// The Prometheus text of the histogram.
    fn render(&self, out: &mut String, name: &str, help: &str) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&state.0) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += state.0.last().copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {cumulative}\n{name}_sum {}\n{name}_count {cumulative}",
            state.1
        );
    }
}

impl Default for Histogram {
    /// A queue-age histogram ([`QUEUE_AGE_BUCKETS`]).
    fn default() -> Self {
        Self::new(&QUEUE_AGE_BUCKETS)
    }
}

/// Every metric of the cloud.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Samples stored.
    pub samples_accepted: Counter,
    /// Entries received again (already stored).
    pub duplicates: Counter,
    /// Batch-end markers stored.
    pub batch_ends: Counter,
    /// Refused requests by reason.
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// Adaptation steps (foundation + distillation, or replay-only).
    pub steps: Counter,
    /// Replay-only steps.
    pub replay_only_steps: Counter,
    /// Replay-only steps spent on idle time (`idle_replay_steps`).
    pub idle_replay_steps: Counter,
    /// Failed adaptation rounds.
    pub engine_errors: Counter,
    /// Queued samples skipped for the replay buffer alone because the engine fell behind
    /// (`max_queue_seconds`).
    pub stale_skipped: Counter,
    /// Steps on fewer than a cloud batch of new samples, whose oldest had waited
    /// `max_wait_seconds`.
    pub partial_steps: Counter,
    /// Scope resets (drift reported by an edge, or the edges' guard reverting in a row).
    pub resets: Counter,
    /// Batch ends whose edge's source guard served the scope's parameters.
    pub guard_adapted: Counter,
    /// Batch ends whose edge's source guard served the model's own parameters instead.
    pub guard_source: Counter,
    /// Seconds each sample a step consumed had waited in the queue.
    pub queue_age_seconds: Histogram,
    /// Samples waiting in the queue of the scope adapted last.
    pub backlog_samples: Gauge,
    /// Seconds per step.
    pub step_seconds: Summary,
    /// Replay-buffer size of the scope adapted last.
    pub replay_samples: Gauge,
    /// Latest version of the scope adapted last.
    pub version: Gauge,
    /// Last foundation loss.
    pub foundation_loss: Gauge,
    /// Last distillation loss terms.
    pub distill_ent: Gauge,
    /// See `distill_ent`.
    pub distill_kl: Gauge,
    /// See `distill_ent`.
    pub distill_ce: Gauge,
    /// See `distill_ent`.
    pub distill_total: Gauge,
    /// Samples in the last distillation step (32 + replayed, or a replay-only batch).
    pub distill_batch: Gauge,
    /// Per-sample distillation values `T²·KL(teacher ‖ student)` of every step.
    pub distill_sample_kl: Summary,
    /// The largest per-sample distillation value of the last step.
    pub distill_sample_kl_max: Gauge,
    /// Scopes whose edge-model statistics were taken from an edge's first batch.
    pub edge_statistics_adopted: Counter,
    /// Batch statistics from edges applied to a scope's edge model (statistics uplink).
    pub edge_statistics_batches: Counter,
}

impl Metrics {
    /// Counts a refused request.
    pub fn reject(&self, reason: &'static str) {
        *self.rejected.lock().unwrap_or_else(|e| e.into_inner()).entry(reason).or_default() += 1;
    }

    /// Refusals of one reason.
    pub fn rejected(&self, reason: &str) -> u64 {
        self.rejected.lock().unwrap_or_else(|e| e.into_inner()).get(reason).copied().unwrap_or(0)
    }

    /// Counts an edge's source-guard outcome for one batch.
    pub fn record_guard(&self, outcome: cema_proto::v1::GuardOutcome) {
        match outcome {
            cema_proto::v1::GuardOutcome::Adapted => self.guard_adapted.inc(),
            cema_proto::v1::GuardOutcome::Source => self.guard_source.inc(),
            cema_proto::v1::GuardOutcome::Unspecified => {}
        }
    }

    /// Records a distillation step's losses.
    pub fn record_distill(&self, report: &DistillReport) {
        self.distill_ent.set(report.ent as f64);
        self.distill_kl.set(report.kl as f64);
        self.distill_ce.set(report.ce as f64);
        self.distill_total.set(report.total as f64);
        self.distill_batch.set(report.batch as f64);
        for &kl in &report.sample_kl {
            self.distill_sample_kl.observe(kl as f64);
        }
        self.distill_sample_kl_max.set(report.sample_kl.iter().copied().fold(0.0f32, f32::max) as f64);
    }

    /// The Prometheus text exposition, with the engine's `live` figures read at render time.
    pub fn render(&self, live: &LiveView) -> String {
        let mut out = String::new();
        for (name, kind, help, value) in self.families(live) {
            cema_host::admin::metric(&mut out, name, kind, help, value);
        }
        for (name, help, value) in [
            ("cema_cloud_step_seconds", "seconds spent in steps", &self.step_seconds),
            (
                "cema_cloud_distill_sample_kl",
                "per-sample distillation values T²·KL(teacher‖student)",
                &self.distill_sample_kl,
            ),
        ] {
            let (sum, count) = value.get();
            cema_host::admin::metric(&mut out, &format!("{name}_sum"), "counter", &format!("Sum of {help}."), sum);
            let count_help = format!("Count of {help}.");
            cema_host::admin::metric(&mut out, &format!("{name}_count"), "counter", &count_help, count as f64);
        }
        let age_help = "Seconds each sample a step consumed had waited in the queue.";
        self.queue_age_seconds.render(&mut out, "cema_cloud_queue_age_seconds", age_help);
        let _ = writeln!(
            out,
            "# HELP cema_cloud_rejected_total Refused requests by reason.\n# TYPE cema_cloud_rejected_total counter"
        );
        for (reason, n) in self.rejected.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "cema_cloud_rejected_total{{reason=\"{reason}\"}} {n}");
        }
        render_per_scope(&mut out, live);
        out
    }

    /// Every single-valued family: name, type, help, value.
    fn families(&self, live: &LiveView) -> [(&'static str, &'static str, &'static str, f64); 26] {
        let count = |c: &Counter| c.get() as f64;
        [
            ("cema_cloud_samples_accepted_total", "counter", "Samples stored.", count(&self.samples_accepted)),
            ("cema_cloud_duplicates_total", "counter", "Entries received again.", count(&self.duplicates)),
            ("cema_cloud_batch_ends_total", "counter", "Batch-end markers stored.", count(&self.batch_ends)),
            ("cema_cloud_steps_total", "counter", "Adaptation steps.", count(&self.steps)),
            ("cema_cloud_replay_only_steps_total", "counter", "Replay-only steps.", count(&self.replay_only_steps)),
            (
                "cema_cloud_idle_replay_steps_total",
                "counter",
                "Replay-only steps run while the engine would have waited (idle_replay_steps).",
                count(&self.idle_replay_steps),
            ),
            ("cema_cloud_engine_errors_total", "counter", "Failed adaptation rounds.", count(&self.engine_errors)),
            (
                "cema_cloud_stale_skipped_total",
                "counter",
                "Queued samples left to the replay buffer alone because the engine fell behind.",
                count(&self.stale_skipped),
            ),
            (
                "cema_cloud_partial_steps_total",
                "counter",
                "Steps on fewer than a cloud batch of new samples, the oldest having waited max_wait_seconds.",
                count(&self.partial_steps),
            ),
            (
                "cema_cloud_scope_resets_total",
                "counter",
                "Scopes reset to the source models (an edge detected drift, or its guard kept reverting).",
                count(&self.resets),
            ),
            (
                "cema_cloud_guard_adapted_batches_total",
                "counter",
                "Batches the edges' source guard served with the scope's parameters.",
                count(&self.guard_adapted),
            ),
            (
                "cema_cloud_guard_source_batches_total",
                "counter",
                "Batches the edges' source guard served with the model's own parameters instead.",
                count(&self.guard_source),
            ),
            (
                "cema_cloud_backlog_samples",
                "gauge",
                "Queued samples of the scope adapted last.",
                self.backlog_samples.get(),
            ),
            (
                "cema_cloud_replay_samples",
                "gauge",
                "Replay buffer of the scope adapted last.",
                self.replay_samples.get(),
            ),
            ("cema_cloud_params_version", "gauge", "Version of the scope adapted last.", self.version.get()),
            ("cema_cloud_foundation_loss", "gauge", "Last foundation loss.", self.foundation_loss.get()),
            ("cema_cloud_distill_ent", "gauge", "Last weighted entropy term.", self.distill_ent.get()),
            ("cema_cloud_distill_kl", "gauge", "Last weighted KL term.", self.distill_kl.get()),
            ("cema_cloud_distill_ce", "gauge", "Last weighted CE term.", self.distill_ce.get()),
            ("cema_cloud_distill_loss", "gauge", "Last distillation loss.", self.distill_total.get()),
            ("cema_cloud_distill_batch", "gauge", "Samples in the last distillation step.", self.distill_batch.get()),
            (
                "cema_cloud_distill_sample_kl_max",
                "gauge",
                "Largest per-sample distillation value of the last step.",
                self.distill_sample_kl_max.get(),
            ),
            (
                "cema_cloud_edge_statistics_adopted_total",
                "counter",
                "Scopes whose edge-model statistics came from an edge's first batch.",
                count(&self.edge_statistics_adopted),
            ),
            (
                "cema_cloud_edge_statistics_batches_total",
                "counter",
                "Edge batch statistics applied (statistics uplink).",
                count(&self.edge_statistics_batches),
            ),
            ("cema_cloud_scopes", "gauge", "Adaptation scopes in memory.", live.scopes as f64),
            ("cema_cloud_watchers", "gauge", "Connected parameter watchers.", live.watchers as f64),
        ]
    }
}

/// The per-scope families, one series per labelled scope.
fn render_per_scope(out: &mut String, live: &LiveView) {
    type Field = fn(&ScopeGauges) -> u64;
    let families: [(&str, &str, &str, Field); 5] = [
        ("cema_cloud_scope_params_version", "gauge", "Latest parameter version of the scope.", |g| g.version),
        ("cema_cloud_scope_steps_total", "counter", "Adaptation steps of the scope.", |g| g.steps),
        ("cema_cloud_scope_replay_samples", "gauge", "Samples in the scope's replay buffer.", |g| g.replay),
        ("cema_cloud_scope_queued_samples", "gauge", "Samples waiting for a step.", |g| g.queued_samples),
        ("cema_cloud_scope_watchers", "gauge", "Connected parameter watchers of the scope.", |g| g.watchers as u64),
    ];
    for (name, kind, help, field) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for gauges in &live.per_scope {
            let _ = writeln!(out, "{name}{{scope=\"{}\"}} {}", label_value(&gauges.scope.to_string()), field(gauges));
        }
    }
    cema_host::admin::metric(
        out,
        "cema_cloud_scope_metrics_omitted",
        "gauge",
        "Scopes beyond scope_metrics_limit, not labelled in the per-scope families.",
        live.omitted as f64,
    );
}
