//! Drift detection (`--drift-reset`): a Page–Hinkley test over the batches' mean prediction
//! entropy. An abrupt change of the input distribution (a new corruption, a new scene) raises
//! the entropy of the served model's predictions at once; slow adaptation lowers it. When the
//! test fires, the agent returns to the model's own parameters and asks its scope for a reset,
//! because resetting beats adapting slowly out of a state fitted to what is gone (RDumb,
//! NeurIPS 2023; `docs/algorithm.md`, "Drift and reset").

/// Tolerated rise of the normalised batch entropy (a share of `ln C`) per batch: the test's
/// δ. Batch-to-batch noise of a 64-sample mean stays below it.
pub const DRIFT_TOLERANCE: f64 = 0.02;

/// The test fires when the accumulated rise beyond the tolerance exceeds this (a share of
/// `ln C`): the test's λ. A rise of 0.1·ln C (a change of corruption) fires within about three
/// batches.
pub const DRIFT_THRESHOLD: f64 = 0.25;

/// Batches the test watches after a (re)start before it may fire: the mean it compares with
/// needs a few batches, and the first batches after a reset settle.
pub const DRIFT_WARMUP_BATCHES: u64 = 5;

/// Page–Hinkley test for an increase of a stream's mean.
#[derive(Debug, Clone, Default)]
pub struct DriftDetector {
    batches: u64,
    mean: f64,
    cumulative: f64,
    minimum: f64,
}

impl DriftDetector {
    /// Adds one batch's mean entropy, normalised by `ln C` (0..1); returns whether the test
    /// fires. After firing it starts over.
    pub fn observe(&mut self, normalised_entropy: f64) -> bool {
        self.batches += 1;
        self.mean += (normalised_entropy - self.mean) / self.batches as f64;
        self.cumulative += normalised_entropy - self.mean - DRIFT_TOLERANCE;
        self.minimum = self.minimum.min(self.cumulative);
        let fired = self.batches > DRIFT_WARMUP_BATCHES && self.cumulative - self.minimum > DRIFT_THRESHOLD;
        if fired {
            *self = Self::default();
        }
        fired
    }

    /// Starts over (after a reset the served model, and so its entropy, changes).
    pub fn restart(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic noise in [−amplitude, amplitude].
    fn noise(i: u64, amplitude: f64) -> f64 {
        let x = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
        (2.0 * x - 1.0) * amplitude
    }

    #[test]
    fn a_stationary_or_falling_stream_never_fires() {
        let mut detector = DriftDetector::default();
        for i in 0..2000 {
            assert!(!detector.observe(0.3 + noise(i, 0.03)), "fired at batch {i} of a stationary stream");
        }
        let mut detector = DriftDetector::default();
        for i in 0..500 {
            let adapting = 0.5 - 0.3 * (i as f64 / 500.0);
            assert!(!detector.observe(adapting + noise(i, 0.03)), "fired at batch {i} while entropy fell");
        }
    }

    #[test]
    fn an_abrupt_rise_fires_within_a_few_batches_then_starts_over() {
        let mut detector = DriftDetector::default();
        for i in 0..50 {
            assert!(!detector.observe(0.25 + noise(i, 0.03)));
        }
        let fired_after = (0..10).position(|i| detector.observe(0.4 + noise(100 + i, 0.03)));
        assert!(matches!(fired_after, Some(0..=4)), "a rise of 0.15 fired after {fired_after:?} batches");
        // The new level is the normal one now.
        for i in 0..200 {
            assert!(!detector.observe(0.4 + noise(200 + i, 0.03)), "fired again at batch {i} of the new level");
        }
    }
}
