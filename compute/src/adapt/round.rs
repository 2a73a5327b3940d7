//! One round of a scope: the order CEMA's cloud side runs its steps in for one queued batch.
//!
//! A round takes `cloud_batch` new samples (or none, when fewer precede the batch end; or all
//! of them once the oldest has waited `max_wait_seconds`: a partial step) and:
//! 0. resets the scope to the source models when asked (drift, or a diverged state);
//! 1. adopts the edge's first-batch statistics, if the batch end carries them and the scope's
//!    statistics were not yet set from data;
//! 2. with new samples: the foundation step, then distillation on the new samples plus
//!    `replay_draw` replayed ones once the buffer holds `replay_min` (CEMA), or the
//!    running-statistics update (`bn-stats`); without: one replay-only distillation step once
//!    the buffer holds more than `replay_min`;
//! 3. in the round that finishes a batch, under the statistics uplink: the batch's edge
//!    statistics by TBR's momentum;
//! 4. in that round too: up to `idle_replay_steps` replay-only steps, stopping once new work
//!    waits for the scope.
//!
//! Everything the round changes lands in one version, `version + 1`. Where samples come from,
//! what is stored and who is told is the caller's (the cloud's engine).

use std::time::Instant;

use cema_core::{NormParams, SampleValues};

use super::{AdaptError, Adapter, CloudMethod, DistillReport, ScopeState, StudentStatistics};

/// A scope's replay buffer as a round draws from it.
pub trait Replay {
    /// Samples the buffer held when the round began.
    fn held(&self) -> u64;

    /// `count` samples (all of them if fewer) drawn uniformly without replacement for step
    /// `step` of the round that makes `version` (0 for the round's regular or replay-only step;
    /// idle replay steps count from 1), from the newest `window` samples (`None`: all). The
    /// draw must depend on these arguments alone, so a round redone after a crash draws the
    /// same samples.
    fn draw(
        &mut self,
        count: usize,
        version: u64,
        step: u64,
        window: Option<usize>,
    ) -> Result<Vec<SampleValues>, AdaptError>;

    /// The newest `count` samples (all of them if fewer) among those already stepped on, i.e.
    /// before the ones still queued: what a partial step tops its batch up with.
    fn recent(&mut self, count: usize) -> Result<Vec<SampleValues>, AdaptError>;
}

/// What one round works on, taken from the scope's queue by the caller.
#[derive(Debug, Clone, Default)]
pub struct RoundInput {
    /// The scope's latest version; a round that changes the edge model makes `version + 1`.
    pub version: u64,
    /// `cloud_batch` new samples in queue order, or `None` when fewer precede the batch end; or
    /// fewer (a partial step, `max_wait_seconds`), which the round tops up to a cloud batch with
    /// the newest samples stepped on before.
    pub new: Option<Vec<SampleValues>>,
    /// Whether this round completes its batch end: less than a cloud batch is left before it
    /// after this round's samples (always so when `new` is `None`).
    pub finishes_batch: bool,
    /// First-batch statistics the edge sent with the batch end.
    pub first_batch_statistics: Option<NormParams>,
    /// The batch's statistics measured on the edge (the statistics uplink).
    pub batch_statistics: Option<NormParams>,
    /// Restart the scope from the source models before anything else (an edge detected drift,
    /// or the adapted state diverged): both models' parameters, momentum and the
    /// statistics-set flags return to a new scope's, so first-batch statistics apply again.
    pub reset: bool,
}

/// Which samples a distillation step ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistillKind {
    /// New samples, plus replayed ones once the buffer is full enough.
    WithNew,
    /// Replayed samples only: the batch end triggered no step on new samples.
    ReplayOnly,
    /// Replayed samples only, in time the engine would otherwise wait (`idle_replay_steps`).
    IdleReplay,
}

/// One distillation step of a round.
#[derive(Debug, Clone)]
pub struct DistilledStep {
    /// Which samples it ran on.
    pub kind: DistillKind,
    /// `L_f` of the foundation step before it (steps on new samples).
    pub foundation_loss: Option<f32>,
    /// Its loss terms.
    pub report: DistillReport,
}

/// What a round did to the state.
#[derive(Debug, Clone, Default)]
pub struct RoundOutcome {
    /// Whether any step ran (counted in the scope's steps).
    pub stepped: bool,
    /// Whether the state's `student.version` is a new version for the edges.
    pub new_version: bool,
    /// Whether the state changed and must be stored: a new version, or adopted statistics.
    pub state_changed: bool,
    /// Seconds of the round's steps before idle replay, if a step ran.
    pub step_seconds: Option<f64>,
    /// The edge's first-batch statistics became the scope's.
    pub adopted_edge_statistics: bool,
    /// The batch's edge statistics moved the scope's running statistics.
    pub followed_edge_statistics: bool,
    /// The distillation steps, in order.
    pub distilled: Vec<DistilledStep>,
    /// The round began by resetting the scope.
    pub reset: bool,
}

impl Adapter {
    /// Runs one round on `state` (see the module documentation for the order).
    /// `work_waiting` tells whether new work waits for the scope, which ends idle replay.
    pub fn round(
        &mut self,
        state: &mut ScopeState,
        input: &RoundInput,
        replay: &mut dyn Replay,
        work_waiting: &dyn Fn() -> bool,
    ) -> Result<RoundOutcome, AdaptError> {
        let started = Instant::now();
        let mut outcome = RoundOutcome::default();
        let next_version = input.version + 1;
        if input.reset {
            *state = self.initial_state();
            state.student.version = next_version;
            outcome.reset = true;
            outcome.new_version = true;
        }
        if let Some(statistics) = &input.first_batch_statistics {
            // The edge serves with these, so the cloud adapts from them.
            outcome.adopted_edge_statistics = self.adopt_edge_statistics(state, statistics);
        }
        if let Some(new) = &input.new {
            state.student.version = next_version;
            self.step_on_new(state, new, replay, &mut outcome)?;
            outcome.stepped = true;
        } else if self.config().method == CloudMethod::Cema && replay.held() > self.config().replay_min as u64 {
            state.student.version = next_version;
            let replayed = replay.draw(self.config().replay_only_batch, next_version, 0, None)?;
            let report = self.distill_step(state, &replayed.iter().collect::<Vec<_>>())?;
            outcome.distilled.push(DistilledStep { kind: DistillKind::ReplayOnly, foundation_loss: None, report });
            outcome.stepped = true;
        }
        // A batch's statistics count once: in the round that completes its batch end.
        if input.finishes_batch
            && self.config().student_statistics == StudentStatistics::Edge
            && let Some(statistics) = &input.batch_statistics
        {
            state.student.version = next_version;
            self.follow_edge_statistics(state, statistics);
            outcome.followed_edge_statistics = true;
            outcome.new_version = true;
        }
        if outcome.stepped {
            outcome.step_seconds = Some(started.elapsed().as_secs_f64());
        }
        if input.finishes_batch {
            self.idle_replay(state, next_version, replay, work_waiting, &mut outcome)?;
        }
        outcome.new_version |= outcome.stepped;
        outcome.state_changed = outcome.new_version || outcome.adopted_edge_statistics;
        Ok(outcome)
    }

    /// The step on `cloud_batch` new samples (fewer in a partial step, topped up): foundation
    /// step and distillation with replay (CEMA), or the running-statistics update (`bn-stats`).
    fn step_on_new(
        &mut self,
        state: &mut ScopeState,
        new: &[SampleValues],
        replay: &mut dyn Replay,
        outcome: &mut RoundOutcome,
    ) -> Result<(), AdaptError> {
        let mut samples: Vec<&SampleValues> = new.iter().collect();
        // A partial step keeps the batch size the step's statistics and learning rates were
        // set for: the foundation's TBR statistics over one or two images would be noise.
        let missing = self.config().cloud_batch.saturating_sub(new.len());
        let top_up = if missing > 0 { replay.recent(missing)? } else { Vec::new() };
        samples.extend(top_up.iter());
        match self.config().method {
            CloudMethod::Cema => {
                let foundation_loss = self.foundation_step(state, &samples)?;
                let replayed = if replay.held() >= self.config().replay_min as u64 {
                    replay.draw(self.config().replay_draw, state.student.version, 0, None)?
                } else {
                    Vec::new()
                };
                samples.extend(replayed.iter());
                let report = self.distill_step(state, &samples)?;
                let kind = DistillKind::WithNew;
                outcome.distilled.push(DistilledStep { kind, foundation_loss: Some(foundation_loss), report });
            }
            CloudMethod::BnStats => self.statistics_step(state, &samples)?,
        }
        Ok(())
    }

    /// `idle_replay_steps` replay-only steps in the round that finished a batch (the engine
    /// would otherwise wait for uploads), stopping as soon as new work waits. They join the
    /// round's version: the edge gets one update per batch, as without them.
    fn idle_replay(
        &mut self,
        state: &mut ScopeState,
        next_version: u64,
        replay: &mut dyn Replay,
        work_waiting: &dyn Fn() -> bool,
        outcome: &mut RoundOutcome,
    ) -> Result<(), AdaptError> {
        let config = self.config().clone();
        if config.method != CloudMethod::Cema || replay.held() < config.replay_min as u64 {
            return Ok(());
        }
        for step in 1..=config.idle_replay_steps as u64 {
            if work_waiting() {
                break;
            }
            state.student.version = next_version;
            let replayed = replay.draw(config.replay_only_batch, next_version, step, config.idle_replay_window)?;
            let report = self.distill_step(state, &replayed.iter().collect::<Vec<_>>())?;
            outcome.distilled.push(DistilledStep { kind: DistillKind::IdleReplay, foundation_loss: None, report });
            outcome.stepped = true;
        }
        Ok(())
    }
}
