//! The adaptation engine over a real sled store: replay bound, the 256 threshold, replay-only
//! steps, versions, that a distillation step moves the edge model towards the teacher, and
//! that with the statistics uplink the edge model's running statistics follow the edges'.
#![allow(clippy::unwrap_used)] // a failing test should panic where it fails

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cema_cloud::engine::Engine;
use cema_cloud::metrics::Metrics;
use cema_cloud::replay::draw_without_replacement;
use cema_cloud::store::{Incoming, Store};
use cema_cloud::{ScopeId, ScopeKind};
use cema_compute::adapt::{AdaptConfig, StudentStatistics};
use cema_core::OnnxModel;
use cema_proto::v1::{BatchOutcome, GuardOutcome};

fn scope() -> ScopeId {
    ScopeId::device("d1")
}

struct Feed {
    seq: u64,
    image: u64,
}

impl Feed {
    /// Stores `samples` new samples and a batch-end marker for `batch`.
    fn batch(&mut self, store: &Store, samples: usize, batch: u64, capacity: u64) {
        self.batch_reporting(store, samples, batch, capacity, None, None);
    }

    /// The same, the marker carrying the batch's statistics and what the edge served.
    fn batch_reporting(
        &mut self,
        store: &Store,
        samples: usize,
        batch: u64,
        capacity: u64,
        batch_statistics: Option<cema_proto::v1::NormStatistics>,
        outcome: Option<cema_proto::v1::BatchOutcome>,
    ) {
        let mut entries = Vec::new();
        for _ in 0..samples {
            self.seq += 1;
            self.image += 1;
            entries.push(Incoming::Sample { seq: self.seq, input: support::image(self.image) });
        }
        self.seq += 1;
        entries.push(Incoming::BatchEnd { seq: self.seq, batch, statistics: None, batch_statistics, outcome });
        store.ingest("d1", &scope(), &entries, capacity).unwrap();
    }
}

/// The spec's step rule: a step once a cloud batch is queued, never a partial one
/// (`max_wait_seconds = 0`), so the counts below do not depend on the machine's speed.
fn spec_rule() -> AdaptConfig {
    AdaptConfig { max_wait_seconds: 0.0, ..AdaptConfig::default() }
}

/// A tiny-model engine on a fresh sled store with one device scope being watched.
type Started = (
    tempfile::TempDir,
    std::path::PathBuf,
    Store,
    Arc<Metrics>,
    Arc<Engine>,
    tokio::sync::watch::Receiver<cema_cloud::engine::Published>,
);

fn started(adapt: AdaptConfig) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let (student, foundation) = support::tiny_models(dir.path());
    let model = support::entry(&student, &foundation, adapt, ScopeKind::Device);
    let db = sled::open(dir.path().join("state")).unwrap();
    let store = Store::open(&db).unwrap();
    let metrics = Arc::new(Metrics::default());
    let (engine, _threads) = Engine::start(store.clone(), vec![model], 1, Arc::clone(&metrics)).unwrap();
    let model = engine.model("default").unwrap();
    let watch = engine.subscribe(&scope(), &model).unwrap();
    (dir, student, store, metrics, engine, watch)
}

/// Waits until the engine has published the processing of `batch` (the last thing it does
/// for a batch, after the commit and the metrics).
fn wait_through(watch: &tokio::sync::watch::Receiver<cema_cloud::engine::Published>, batch: u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while watch.borrow().through.get("d1").copied().unwrap_or(0) < batch {
        assert!(Instant::now() < deadline, "the engine did not process batch {batch}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn replay_threshold_replay_only_steps_and_the_buffer_bound_follow_the_spec() {
    let (_dir, _, store, metrics, engine, watch) = started(AdaptConfig { replay_capacity: 400, ..spec_rule() });
    let mut feed = Feed { seq: 0, image: 0 };

    // 20 queued < 32: no step; replay 20 ≤ 256: no replay-only step.
    feed.batch(&store, 20, 1, 400);
    engine.schedule(&scope());
    wait_through(&watch, 1);
    assert_eq!(metrics.steps.get(), 0);
    assert_eq!(store.meta(&scope()).unwrap().version, 0);

    // 60 queued: one step of 32 new samples, no replay yet (buffer 60 < 256).
    feed.batch(&store, 40, 2, 400);
    engine.schedule(&scope());
    wait_through(&watch, 2);
    assert_eq!(metrics.steps.get(), 1);
    assert_eq!(metrics.distill_batch.get(), 32.0);
    assert_eq!(metrics.queue_age_seconds.count(), 32, "each stepped sample's wait is measured");
    let meta = store.meta(&scope()).unwrap();
    assert_eq!((meta.version, meta.queued_samples, meta.replay_len()), (1, 28, 60));
    assert_eq!(watch.borrow().version, 1, "the version was published");

    // 28 + 200 = 228 queued, buffer 260 ≥ 256: 7 steps of 32 new + 96 replayed.
    feed.batch(&store, 200, 3, 400);
    engine.schedule(&scope());
    wait_through(&watch, 3);
    assert_eq!(metrics.steps.get(), 8);
    assert_eq!(metrics.distill_batch.get(), 128.0);
    assert_eq!(metrics.replay_only_steps.get(), 0);
    let meta = store.meta(&scope()).unwrap();
    assert_eq!((meta.version, meta.queued_samples), (8, 4));

    // A batch that uploads nothing triggers no step; the buffer holds > 256: one replay-only
    // step on 128 replayed samples.
    feed.batch(&store, 0, 4, 400);
    engine.schedule(&scope());
    wait_through(&watch, 4);
    assert_eq!(metrics.steps.get(), 9);
    assert_eq!(metrics.replay_only_steps.get(), 1);
    assert_eq!(metrics.distill_batch.get(), 128.0);
    assert_eq!(store.meta(&scope()).unwrap().version, 9);

    // The buffer keeps the newest 400 (FIFO): 560 stored, the oldest 160 gone.
    feed.batch(&store, 300, 5, 400);
    engine.schedule(&scope());
    wait_through(&watch, 5);
    let meta = store.meta(&scope()).unwrap();
    assert_eq!((meta.replay_len(), meta.replay_head, meta.replay_next), (400, 160, 560));
    // Versions are contiguous and only the last 5 are kept.
    let versions = store.versions(&scope()).unwrap();
    let last = meta.version;
    assert_eq!(versions, ((last - 4)..=last).collect::<Vec<_>>());
    engine.stop();
}

#[test]
fn samples_that_waited_max_wait_seconds_are_stepped_on_topped_up_to_a_cloud_batch() {
    let (_dir, _, store, metrics, engine, watch) = started(AdaptConfig { max_wait_seconds: 0.05, ..spec_rule() });
    let mut feed = Feed { seq: 0, image: 0 };

    // 40 queued: one step of 32; 8 are left waiting for the next batch end.
    feed.batch(&store, 40, 1, 10_000);
    engine.schedule(&scope());
    wait_through(&watch, 1);
    assert_eq!((metrics.steps.get(), metrics.partial_steps.get()), (1, 0));
    assert_eq!(store.meta(&scope()).unwrap().queued_samples, 8);

    // A batch end with no uploads, once the 8 have waited longer than 50 ms: the spec's rule
    // would keep them queued until 24 more arrive; they are stepped on now, with the newest 24
    // samples stepped on before (distillation on 32, replay being below 256).
    std::thread::sleep(Duration::from_millis(100));
    feed.batch(&store, 0, 2, 10_000);
    engine.schedule(&scope());
    wait_through(&watch, 2);
    assert_eq!((metrics.steps.get(), metrics.partial_steps.get()), (2, 1));
    assert_eq!(metrics.distill_batch.get(), 32.0, "8 new samples topped up to a cloud batch");
    assert_eq!(metrics.queue_age_seconds.count(), 40, "each new sample's wait is measured once");
    let meta = store.meta(&scope()).unwrap();
    assert_eq!((meta.version, meta.queued_samples, meta.replay_len()), (2, 0, 40));
    engine.stop();
}

#[test]
fn rollback_republishes_a_stored_version_as_the_next_one() {
    let (_dir, _, store, _metrics, engine, watch) = started(spec_rule());
    let mut feed = Feed { seq: 0, image: 0 };
    // 96 samples: three steps, versions 1–3.
    feed.batch(&store, 96, 1, 10_000);
    engine.schedule(&scope());
    wait_through(&watch, 1);
    engine.stop();
    assert_eq!(store.meta(&scope()).unwrap().version, 3);
    let first = store.version(&scope(), 1).unwrap().unwrap();

    assert_eq!(store.rollback(&scope(), 1).unwrap(), 4);
    let meta = store.meta(&scope()).unwrap();
    assert_eq!((meta.version, meta.steps), (4, 3), "a new version, no step");
    let republished = store.version(&scope(), 4).unwrap().unwrap();
    assert_eq!(republished.tensors, first.tensors, "version 4 holds version 1's parameters");
    assert_eq!(republished.version, 4);
    let state = store.state(&scope()).unwrap().unwrap();
    assert_eq!(state.student.version, 4);
    assert!(state.student_velocity.is_empty(), "the edge model's momentum is reset");

    let unknown = store.rollback(&scope(), 99).unwrap_err();
    assert!(unknown.to_string().contains("holds no version 99"), "{unknown}");
    assert_eq!(store.meta(&scope()).unwrap().version, 4, "a refused rollback changes nothing");
}

#[test]
fn stale_samples_leave_the_queue_for_replay_when_batches_pile_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&sled::open(dir.path().join("state")).unwrap()).unwrap();
    let mut feed = Feed { seq: 0, image: 0 };
    // One batch end queued: never skipped, whatever the backlog (lockstep's case).
    feed.batch(&store, 40, 1, 10_000);
    assert_eq!(store.skip_stale(&scope(), 10).unwrap(), 0);
    // Three batches of 40 queued, keep 50: the oldest 70 samples and the first batch end go.
    feed.batch(&store, 40, 2, 10_000);
    feed.batch(&store, 40, 3, 10_000);
    assert_eq!(store.skip_stale(&scope(), 200).unwrap(), 0, "within the bound");
    assert_eq!(store.skip_stale(&scope(), 50).unwrap(), 70);
    let meta = store.meta(&scope()).unwrap();
    assert_eq!(meta.queued_samples, 50);
    assert_eq!(meta.replay_len(), 120, "skipped samples stay in the replay buffer");
    assert_eq!(meta.through.get("d1"), Some(&1), "a skipped batch end counts as processed");
    // The next round starts at the 71st sample: 71–80, then batch 2's end.
    let round = store.next_round(&scope()).unwrap();
    assert_eq!(round.len(), 11);
    assert_eq!(round.last().unwrap().1.batch, 2);
    let samples: Vec<_> = round[..10].iter().map(|(_, e)| e.sample.clone().unwrap()).collect();
    assert_eq!(samples, (71..=80).map(support::image).collect::<Vec<_>>());
    assert!(round.iter().all(|(_, e)| e.received_unix_ms > 0), "ingest stamps each entry");
}

fn outcome(guard: GuardOutcome, drift: bool) -> Option<BatchOutcome> {
    Some(BatchOutcome { served_version: 1, guard: guard.into(), drift })
}

#[test]
fn a_drift_report_resets_the_scope_and_leaves_what_was_queued_before_to_replay() {
    let config = AdaptConfig { max_queue_seconds: 0.0, ..spec_rule() };
    let (_dir, _, store, metrics, engine, watch) = started(config.clone());
    let mut feed = Feed { seq: 0, image: 0 };
    feed.batch(&store, 40, 1, 10_000);
    engine.schedule(&scope());
    wait_through(&watch, 1);
    // The version says what it was fitted on: this device's seqs 1–32.
    let window = watch.borrow().window.clone().expect("a step's version carries its data window");
    assert_eq!(window.devices.len(), 1);
    let range = &window.devices[0];
    assert_eq!((range.device_id.as_str(), range.first_seq, range.last_seq), ("d1", 1, 32));
    assert!(window.oldest_received_unix_ms > 0 && window.oldest_received_unix_ms <= window.newest_received_unix_ms);
    assert!(window.fitted_unix_ms >= window.newest_received_unix_ms);

    // Batch 2 queues behind the 8 left of batch 1; batch 3 reports drift.
    feed.batch(&store, 40, 2, 10_000);
    feed.batch_reporting(&store, 40, 3, 10_000, None, outcome(GuardOutcome::Adapted, true));
    engine.schedule(&scope());
    wait_through(&watch, 3);
    engine.stop();
    assert_eq!(metrics.resets.get(), 1);
    assert_eq!(metrics.stale_skipped.get(), 48, "batch 2 and batch 1's rest went to replay alone");
    let meta = store.meta(&scope()).unwrap();
    assert_eq!((meta.resets, meta.queued_samples, meta.replay_len()), (1, 8, 120));
    assert_eq!(meta.version, 2, "the reset and the step on batch 3 are one version");
    assert_eq!(metrics.guard_adapted.get(), 1, "the guard's outcome is counted");
    let window = watch.borrow().window.clone().expect("the reset's step says what it was fitted on");
    let range = &window.devices[0];
    assert_eq!((range.first_seq, range.last_seq), (83, 114), "batch 3's first 32 samples");
    let after_reset = store.state(&scope()).unwrap().unwrap();

    // A new scope that sees only batch 3's samples ends in the same state: nothing of the
    // earlier adaptation survived the reset.
    let (_dir, _, fresh_store, _, fresh_engine, fresh_watch) = started(config);
    let mut fresh_feed = Feed { seq: 0, image: 80 };
    fresh_feed.batch(&fresh_store, 40, 1, 10_000);
    fresh_engine.schedule(&scope());
    wait_through(&fresh_watch, 1);
    fresh_engine.stop();
    let fresh = fresh_store.state(&scope()).unwrap().unwrap();
    assert_eq!(after_reset.student.tensors, fresh.student.tensors);
    assert_eq!(after_reset.foundation.tensors, fresh.foundation.tensors);
    assert_eq!(after_reset.student_velocity, fresh.student_velocity);
}

#[test]
fn reverts_in_a_row_reset_a_diverged_scope() {
    let config = AdaptConfig { max_queue_seconds: 0.0, reset_after_reverts: 2, ..spec_rule() };
    let (_dir, _, store, metrics, engine, watch) = started(config);
    let mut feed = Feed { seq: 0, image: 0 };
    let guards = [GuardOutcome::Source, GuardOutcome::Adapted, GuardOutcome::Source, GuardOutcome::Source];
    for (batch, guard) in (1..).zip(guards) {
        feed.batch_reporting(&store, 8, batch, 10_000, None, outcome(guard, false));
        engine.schedule(&scope());
        wait_through(&watch, batch);
        assert_eq!(metrics.resets.get(), 0, "no reset before two reverts in a row (batch {batch})");
    }
    assert_eq!(store.meta(&scope()).unwrap().consecutive_reverts, 2);
    assert_eq!(metrics.guard_source.get(), 3);
    feed.batch_reporting(&store, 8, 5, 10_000, None, outcome(GuardOutcome::Adapted, false));
    engine.schedule(&scope());
    wait_through(&watch, 5);
    engine.stop();
    assert_eq!(metrics.resets.get(), 1);
    let meta = store.meta(&scope()).unwrap();
    assert_eq!((meta.resets, meta.consecutive_reverts), (1, 0));
    assert_eq!(store.state(&scope()).unwrap().unwrap().student.version, meta.version, "the reset is a new version");
}

#[test]
fn replay_draws_are_distinct_in_range_and_uniform() {
    let ids = draw_without_replacement(100, 400, 96, "device:x", 7, 0);
    assert_eq!(ids.len(), 96);
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 96, "no id twice");
    assert!(ids.iter().all(|&i| (100..400).contains(&i)));
    assert_eq!(draw_without_replacement(0, 50, 96, "s", 1, 0).len(), 50, "all of a small buffer");
    // Uniform: over many draws every id is picked about equally often (chi-square, 99 dof,
    // far below the 0.1% critical value 148 for a fair draw).
    let mut counts = vec![0u32; 100];
    for version in 0..2000 {
        for id in draw_without_replacement(0, 100, 32, "uniform", version, 0) {
            counts[id as usize] += 1;
        }
    }
    let expected = 2000.0 * 32.0 / 100.0;
    let chi2: f64 = counts.iter().map(|&c| (c as f64 - expected).powi(2) / expected).sum();
    assert!(chi2 < 148.0, "chi-square {chi2}");
    // The steps of one round draw differently, each reproducibly.
    let step = |s| draw_without_replacement(0, 1000, 128, "device:x", 7, s);
    assert_eq!(step(1), step(1));
    assert_ne!(step(0), step(1));
    assert_ne!(step(1), step(2));
}

#[test]
fn idle_replay_steps_run_after_a_finished_batch_and_join_its_version() {
    // The same feed into an engine without and one with two idle replay steps.
    let run = |idle_replay_steps: usize| {
        let (_dir, _, store, metrics, engine, watch) = started(AdaptConfig { idle_replay_steps, ..spec_rule() });
        let mut feed = Feed { seq: 0, image: 0 };
        // 300 samples (the buffer holds them on arrival): 9 steps of 32, 12 left queued.
        feed.batch(&store, 300, 1, 10_000);
        engine.schedule(&scope());
        wait_through(&watch, 1);
        // 12 + 10 queued < 32: no regular step, one replay-only step (buffer 310 > 256).
        feed.batch(&store, 10, 2, 10_000);
        engine.schedule(&scope());
        wait_through(&watch, 2);
        let meta = store.meta(&scope()).unwrap();
        let params = store.version(&scope(), meta.version).unwrap().unwrap();
        engine.stop();
        (metrics, meta.version, params)
    };
    let (plain, plain_version, plain_params) = run(0);
    let (idle, idle_version, idle_params) = run(2);
    assert_eq!(plain.idle_replay_steps.get(), 0);
    assert_eq!((plain.steps.get(), plain.replay_only_steps.get()), (10, 1));
    // Each batch's last round leaves less than a cloud batch queued: two idle steps after each.
    assert_eq!(idle.idle_replay_steps.get(), 2 + 2);
    assert_eq!((idle.steps.get(), idle.replay_only_steps.get()), (10, 1), "regular steps unchanged");
    assert_eq!(idle_version, plain_version, "one version per batch either way");
    assert_ne!(idle_params, plain_params, "the idle steps moved the parameters");
}

#[test]
fn with_the_statistics_uplink_running_statistics_follow_the_edges_batches() {
    let (_dir, student, store, metrics, engine, watch) =
        started(AdaptConfig { student_statistics: StudentStatistics::Edge, ..spec_rule() });
    let mut feed = Feed { seq: 0, image: 0 };
    let onnx = OnnxModel::load(&student).unwrap();
    let discovery = cema_core::NormDiscovery::of(&onnx);
    let source = cema_core::NormParams::source(&onnx).unwrap();
    let mut statistics = source.statistics(&discovery);
    statistics.tensors.values_mut().for_each(|t| t.values.iter_mut().for_each(|v| *v = v.abs() + 1.0));
    let wire = cema_proto::statistics_to_wire(&statistics, 64, false);

    // No samples, only statistics: a new version whose running statistics moved by momentum
    // 0.1 towards the batch's, γ and β untouched, no step.
    feed.batch_reporting(&store, 0, 1, 10_000, Some(wire.clone()), None);
    engine.schedule(&scope());
    wait_through(&watch, 1);
    assert_eq!((metrics.steps.get(), metrics.edge_statistics_batches.get()), (0, 1));
    let published = watch.borrow().clone();
    assert_eq!(published.version, 1);
    let params = cema_proto::norm_params_from_wire((*published.params.unwrap()).clone()).unwrap();
    for layer in &discovery.layers {
        for name in [&layer.mean, &layer.var] {
            for ((after, before), batch) in params.tensors[name]
                .values
                .iter()
                .zip(&source.tensors[name].values)
                .zip(&statistics.tensors[name].values)
            {
                let expected = 0.9 * before + 0.1 * batch;
                assert!((after - expected).abs() <= 1e-6 * expected.abs().max(1.0), "{name}: {after} vs {expected}");
            }
        }
        assert_eq!(params.tensors[&layer.scale], source.tensors[&layer.scale], "γ moved without a step");
    }

    // 40 samples and statistics: one step (version 2) trains γ/β; the running statistics
    // moved by the batch's statistics only, not by the uploaded samples.
    let before = params;
    feed.batch_reporting(&store, 40, 2, 10_000, Some(wire), None);
    engine.schedule(&scope());
    wait_through(&watch, 2);
    assert_eq!((metrics.steps.get(), metrics.edge_statistics_batches.get()), (1, 2));
    let published = watch.borrow().clone();
    assert_eq!(published.version, 2);
    let params = cema_proto::norm_params_from_wire((*published.params.unwrap()).clone()).unwrap();
    let layer = &discovery.layers[0];
    for ((after, before), batch) in params.tensors[&layer.mean]
        .values
        .iter()
        .zip(&before.tensors[&layer.mean].values)
        .zip(&statistics.tensors[&layer.mean].values)
    {
        let expected = 0.9 * before + 0.1 * batch;
        assert!((after - expected).abs() <= 1e-6 * expected.abs().max(1.0), "mean: {after} vs {expected}");
    }
    assert_ne!(params.tensors[&layer.scale], before.tensors[&layer.scale], "the step trained γ");
}
