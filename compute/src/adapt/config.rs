//! Settings of the cloud step: what the cloud does with uploads, the spec's hyperparameters
//! (defaults: the reference code's, `docs/algorithm.md`), and their validation.

use serde::Deserialize;

pub use cema_core::StatsInit;

/// What the cloud does with uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CloudMethod {
    /// Foundation step + distillation with replay (CEMA).
    #[default]
    Cema,
    /// Only the edge model's running statistics follow the uploads (no gradient step).
    BnStats,
}

/// Where the edge model's running statistics come from between first-batch initialisation
/// and the end of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StudentStatistics {
    /// TBR's momentum update in each distillation step, from the uploaded (and replayed)
    /// samples: cema-spec.
    #[default]
    Uploads,
    /// The statistics each edge measured on every sample of a batch (the statistics uplink),
    /// by TBR's momentum per batch; distillation trains γ and β only.
    Edge,
}

/// The most idle replay steps one batch may add.
pub const MAX_IDLE_REPLAY_STEPS: usize = 16;

/// The default `max_queue_seconds`: uploads older than this are stale for a camera's stream.
pub const DEFAULT_MAX_QUEUE_SECONDS: f64 = 3.0;

/// The default `max_wait_seconds`: at 64 images/s a camera's batch of 64 ends every second, so
/// a queued sample is stepped on within about three seconds of arriving.
pub const DEFAULT_MAX_WAIT_SECONDS: f64 = 2.0;

/// The default `reset_after_reverts`.
pub const DEFAULT_RESET_AFTER_REVERTS: u64 = 16;

/// Hyperparameters of the cloud step (defaults: the reference code's).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptConfig {
    /// What the cloud does.
    pub method: CloudMethod,
    /// New samples per step.
    pub cloud_batch: usize,
    /// Replay buffer capacity (oldest dropped).
    pub replay_capacity: usize,
    /// Replayed samples added to a distillation step.
    pub replay_draw: usize,
    /// Replay starts once the buffer holds this many samples.
    pub replay_min: usize,
    /// Samples of a replay-only step.
    pub replay_only_batch: usize,
    /// Learning rate of the edge model.
    pub lr_student: f64,
    /// Learning rate of the foundation model.
    pub lr_foundation: f64,
    /// SGD momentum of both.
    pub momentum: f64,
    /// α (entropy), β (KL), γ (cross-entropy) of the distillation loss.
    pub alpha: f64,
    /// See `alpha`.
    pub beta: f64,
    /// See `alpha`.
    pub gamma: f64,
    /// Distillation temperature.
    pub temperature: f64,
    /// `E_max = e_max_frac · ln C`.
    pub e_max_frac: f64,
    /// Where running statistics start.
    pub stats_init: StatsInit,
    /// Where the edge model's running statistics come from afterwards.
    pub student_statistics: StudentStatistics,
    /// With `student_statistics = "edge"`: the weight of each edge batch's statistics in the
    /// running ones (`None`: TBR's, 1 − the layer's ONNX momentum, 0.1 by default). Larger
    /// follows a shift faster.
    pub edge_statistics_weight: Option<f64>,
    /// Extra replay-only distillation steps (each `replay_only_batch` samples) after the round
    /// that finishes a batch, when less than a cloud batch is left queued: the time the engine
    /// would otherwise wait for uploads, spent on replay. They stop early once new work waits
    /// for the scope. 0 (default): the spec's step schedule.
    pub idle_replay_steps: usize,
    /// With `idle_replay_steps`: draw the idle steps' samples from the newest this many in the
    /// replay buffer instead of all of it (`None`: all), so idle time goes to the distribution
    /// the edges see now.
    pub idle_replay_window: Option<usize>,
    /// Newest data first: when a scope's queue holds more than one batch end and more samples
    /// than the engine steps through in this many seconds (at its measured step time), the
    /// oldest queued samples go to the replay buffer alone, unstepped. Lockstep never queues
    /// two batch ends, so it never skips. 0: every sample is stepped on, however late.
    pub max_queue_seconds: f64,
    /// Real time, beyond the spec's step rule (a step once `cloud_batch` samples are queued):
    /// at a batch end whose queued samples are fewer than a cloud batch but the oldest of them
    /// has waited this long, the round steps on them, topped up with the newest samples
    /// stepped on before (`docs/algorithm.md`, "Partial steps"). A scope whose edges upload
    /// little is adapted within seconds instead of once 32 samples have come together. 0: the
    /// spec's rule; lockstep evaluations use it, so their figures do not depend on the clock.
    pub max_wait_seconds: f64,
    /// Reset a scope whose edges' source guard served the model's own parameters instead of
    /// the scope's for this many batch ends in a row: the adapted state has diverged from
    /// what the edges see (`docs/algorithm.md`, "Drift and reset"). 0: never. Edges without the
    /// guard report no outcome and never count.
    pub reset_after_reverts: u64,
}

impl Default for AdaptConfig {
    fn default() -> Self {
        Self {
            method: CloudMethod::Cema,
            cloud_batch: 32,
            replay_capacity: 10_000,
            replay_draw: 96,
            replay_min: 256,
            replay_only_batch: 128,
            lr_student: 2.5e-3,
            lr_foundation: 2.5e-4,
            momentum: 0.9,
            alpha: 3.0,
            beta: 3.0,
            gamma: 1.0,
            temperature: 1.0,
            e_max_frac: 0.4,
            stats_init: StatsInit::Source,
            student_statistics: StudentStatistics::Uploads,
            edge_statistics_weight: None,
            idle_replay_steps: 0,
            idle_replay_window: None,
            max_queue_seconds: DEFAULT_MAX_QUEUE_SECONDS,
            max_wait_seconds: DEFAULT_MAX_WAIT_SECONDS,
            reset_after_reverts: DEFAULT_RESET_AFTER_REVERTS,
        }
    }
}

impl AdaptConfig {
    /// Problems with the values, all at once.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.cloud_batch < 2 {
            problems.push("cloud_batch must be ≥ 2 (TBR needs batch statistics)".to_owned());
        }
        if self.replay_only_batch < 2 {
            problems.push("replay_only_batch must be ≥ 2".to_owned());
        }
        if self.replay_capacity < self.replay_min.max(self.replay_draw) {
            problems.push("replay_capacity must be ≥ replay_min and replay_draw".to_owned());
        }
        for (key, value) in [
            ("lr_student", self.lr_student),
            ("lr_foundation", self.lr_foundation),
            ("momentum", self.momentum),
            ("alpha", self.alpha),
            ("beta", self.beta),
            ("gamma", self.gamma),
            ("e_max_frac", self.e_max_frac),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                problems.push(format!("{key} must be a finite number ≥ 0, found {value}"));
            }
        }
        if let Some(w) = self.edge_statistics_weight
            && !(w > 0.0 && w <= 1.0)
        {
            problems.push(format!("edge_statistics_weight must be in (0, 1], found {w}"));
        }
        if self.idle_replay_steps > MAX_IDLE_REPLAY_STEPS {
            problems.push(format!(
                "idle_replay_steps must be ≤ {MAX_IDLE_REPLAY_STEPS} (each delays the batch's update), found {}",
                self.idle_replay_steps
            ));
        }
        if let Some(window) = self.idle_replay_window
            && window < self.replay_only_batch
        {
            problems.push(format!(
                "idle_replay_window must be ≥ replay_only_batch ({}), found {window}",
                self.replay_only_batch
            ));
        }
        for (key, value) in [("max_queue_seconds", self.max_queue_seconds), ("max_wait_seconds", self.max_wait_seconds)]
        {
            if !(value.is_finite() && value >= 0.0) {
                problems.push(format!("{key} must be ≥ 0 (0: off), found {value}"));
            }
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            problems.push(format!("temperature must be > 0, found {}", self.temperature));
        }
        problems
    }
}
