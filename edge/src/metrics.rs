//! The agent's metrics, rendered at `/metrics`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cema_host::admin::metric;

/// Counters and gauges of the agent (all relaxed atomics).
#[derive(Debug, Default)]
pub struct EdgeMetrics {
    /// Predictions served.
    pub predictions: AtomicU64,
    /// Batches predicted.
    pub batches: AtomicU64,
    /// Samples selected and stored in the outbox.
    pub selected: AtomicU64,
    /// Entries acknowledged by the cloud.
    pub acked: AtomicU64,
    /// Bytes of upload requests sent.
    pub bytes_sent: AtomicU64,
    /// Samples dropped by the outbox's full policy.
    pub drops: AtomicU64,
    /// Parameter version serving.
    pub params_version: AtomicU64,
    /// Updates applied.
    pub swaps: AtomicU64,
    /// Updates refused (invalid).
    pub rejected_updates: AtomicU64,
    /// Running-statistics initialisations from a first batch (`stats_init = first_batch`).
    pub first_batch_inits: AtomicU64,
    /// Edge-local adaptations applied.
    pub local_applies: AtomicU64,
    /// Batches served with the model's own parameters because theirs carried more information
    /// about the batch than the adapted ones' (the source guard).
    pub guard_reverts: AtomicU64,
    /// Batches the source guard compared and served with the adapted parameters.
    pub guard_kept: AtomicU64,
    /// Updates dropped because they were fitted before the edge's last drift reset.
    pub stale_updates: AtomicU64,
    /// Drift resets (`--drift-reset`).
    pub drift_resets: AtomicU64,
    /// Seqs this device assigned after the newest of its samples the last applied update was
    /// fitted on (from the update's data window).
    pub update_data_lag_seqs: AtomicU64,
    /// Microseconds to validate and prepare the last update.
    pub prepare_us: AtomicU64,
    /// Microseconds from the last update's arrival to its swap.
    pub last_update_ms: AtomicU64,
    /// Total inference microseconds.
    pub inference_us: AtomicU64,
    /// Total selection microseconds.
    pub select_us: AtomicU64,
    /// Reconnect attempts.
    pub reconnects: AtomicU64,
    /// Update latency: from the cloud acknowledging a batch's uploads to the swap of the first
    /// parameters that account for that batch (the last [`LATENCY_WINDOW`] batches).
    pub update_latency: Mutex<VecDeque<Duration>>,
}

/// Batches whose update latency is kept for the quantiles.
pub const LATENCY_WINDOW: usize = 4096;

impl EdgeMetrics {
    /// Records one batch's update latency.
    pub fn record_update_latency(&self, latency: Duration) {
        let mut window = self.update_latency.lock().unwrap_or_else(|e| e.into_inner());
        if window.len() == LATENCY_WINDOW {
            window.pop_front();
        }
        window.push_back(latency);
    }

    /// The `q` quantile (nearest rank) of the recorded update latencies, if any.
    pub fn update_latency_quantile(&self, q: f64) -> Option<Duration> {
        let mut sorted: Vec<Duration> =
            self.update_latency.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_unstable();
        let rank = ((q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        Some(sorted[rank - 1])
    }
}

impl EdgeMetrics {
    /// The Prometheus text, with the outbox depth read at render time.
    pub fn render(&self, outbox_entries: u64, outbox_bytes: u64) -> String {
        let mut out = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        for (name, kind, help, value) in [
            ("cema_edge_predictions_total", "counter", "Predictions served.", get(&self.predictions)),
            ("cema_edge_batches_total", "counter", "Batches predicted.", get(&self.batches)),
            ("cema_edge_selected_total", "counter", "Samples selected for upload.", get(&self.selected)),
            ("cema_edge_uploaded_total", "counter", "Outbox entries acknowledged by the cloud.", get(&self.acked)),
            ("cema_edge_upload_bytes_total", "counter", "Bytes of upload requests sent.", get(&self.bytes_sent)),
            ("cema_edge_outbox_drops_total", "counter", "Samples dropped by the full policy.", get(&self.drops)),
            ("cema_edge_outbox_entries", "gauge", "Entries waiting in the outbox.", outbox_entries as f64),
            ("cema_edge_outbox_bytes", "gauge", "Bytes waiting in the outbox.", outbox_bytes as f64),
            ("cema_edge_params_version", "gauge", "Parameter version serving.", get(&self.params_version)),
            ("cema_edge_param_swaps_total", "counter", "Parameter updates applied.", get(&self.swaps)),
            ("cema_edge_rejected_updates_total", "counter", "Invalid updates refused.", get(&self.rejected_updates)),
            (
                "cema_edge_first_batch_inits_total",
                "counter",
                "Running statistics initialised from a first batch.",
                get(&self.first_batch_inits),
            ),
            ("cema_edge_local_applies_total", "counter", "Edge-local statistics applied.", get(&self.local_applies)),
            (
                "cema_edge_guard_reverts_total",
                "counter",
                "Batches served with the source parameters: theirs carried more information (the source guard).",
                get(&self.guard_reverts),
            ),
            (
                "cema_edge_guard_kept_total",
                "counter",
                "Batches the source guard compared and served with the adapted parameters.",
                get(&self.guard_kept),
            ),
            (
                "cema_edge_drift_resets_total",
                "counter",
                "Abrupt rises of the batches' entropy answered by a reset (--drift-reset).",
                get(&self.drift_resets),
            ),
            (
                "cema_edge_update_data_lag_seqs",
                "gauge",
                "Seqs assigned after the newest own sample the last applied update was fitted on.",
                get(&self.update_data_lag_seqs),
            ),
            (
                "cema_edge_stale_updates_total",
                "counter",
                "Updates dropped: fitted before the last drift reset.",
                get(&self.stale_updates),
            ),
            ("cema_edge_prepare_seconds", "gauge", "Validate + build of the last update.", get(&self.prepare_us) / 1e6),
            (
                "cema_edge_update_to_swap_seconds",
                "gauge",
                "Arrival to swap of the last update.",
                get(&self.last_update_ms) / 1e6,
            ),
            ("cema_edge_inference_seconds_total", "counter", "Time in inference.", get(&self.inference_us) / 1e6),
            ("cema_edge_selection_seconds_total", "counter", "Time in selection.", get(&self.select_us) / 1e6),
            ("cema_edge_reconnects_total", "counter", "Reconnect attempts.", get(&self.reconnects)),
        ] {
            metric(&mut out, name, kind, help, value);
        }
        use std::fmt::Write;
        let name = "cema_edge_update_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Upload acknowledged to the swap of parameters that account for it.\n# TYPE {name} summary"
        );
        for q in [0.5, 0.99] {
            if let Some(latency) = self.update_latency_quantile(q) {
                let _ = writeln!(out, "{name}{{quantile=\"{q}\"}} {}", latency.as_secs_f64());
            }
        }
        let count = self.update_latency.lock().unwrap_or_else(|e| e.into_inner()).len();
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_latency_quantiles_are_nearest_rank_over_a_bounded_window() {
        let metrics = EdgeMetrics::default();
        assert_eq!(metrics.update_latency_quantile(0.5), None);
        for ms in (1..=100).rev() {
            metrics.record_update_latency(Duration::from_millis(ms));
        }
        assert_eq!(metrics.update_latency_quantile(0.5), Some(Duration::from_millis(50)));
        assert_eq!(metrics.update_latency_quantile(0.99), Some(Duration::from_millis(99)));
        assert_eq!(metrics.update_latency_quantile(1.0), Some(Duration::from_millis(100)));
        for _ in 0..LATENCY_WINDOW {
            metrics.record_update_latency(Duration::from_millis(7));
        }
        assert_eq!(metrics.update_latency_quantile(1.0), Some(Duration::from_millis(7)), "old values leave the window");
        let text = metrics.render(0, 0);
        assert!(text.contains("cema_edge_update_latency_seconds{quantile=\"0.5\"} 0.007"), "{text}");
        assert!(text.contains(&format!("cema_edge_update_latency_seconds_count {LATENCY_WINDOW}")), "{text}");
    }
}
