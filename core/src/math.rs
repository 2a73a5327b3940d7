//! Numerically stable softmax, log-softmax and entropy over one row of logits.
//!
//! Edge selection and cloud losses must agree on entropy to the last bit that matters, so
//! both use these functions. Work is done in f64 and subtracts the row maximum, so large
//! logits (|z| ≫ 88, where `exp` overflows f32) give exact probabilities and entropies.

/// Natural-log entropy of the uniform distribution over `classes`: the largest possible `H`.
pub fn max_entropy(classes: usize) -> f32 {
    (classes as f32).ln()
}

/// `log Σ exp(z)` of a row, stable for any finite logits; NaN if any logit is NaN.
fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = logits.iter().map(|&z| (z as f64 - max).exp()).sum();
    max + sum.ln()
}

/// Writes `log softmax(logits)` into `out` (same length).
///
/// # Panics
/// If `out.len() != logits.len()`.
pub fn log_softmax(logits: &[f32], out: &mut [f32]) {
    assert_eq!(logits.len(), out.len(), "log_softmax: output length");
    let lse = log_sum_exp(logits);
    for (o, &z) in out.iter_mut().zip(logits) {
        *o = (z as f64 - lse) as f32;
    }
}

/// Writes `softmax(logits)` into `out` (same length).
///
/// # Panics
/// If `out.len() != logits.len()`.
pub fn softmax(logits: &[f32], out: &mut [f32]) {
    assert_eq!(logits.len(), out.len(), "softmax: output length");
    let lse = log_sum_exp(logits);
    for (o, &z) in out.iter_mut().zip(logits) {
        *o = (z as f64 - lse).exp() as f32;
    }
}

/// Entropy `H = −Σ p ln p` of `softmax(logits)`, in nats.
///
/// Computed as `lse − Σ p·z`, which needs no `ln p` and so stays exact when some `p` underflow
/// to zero. NaN logits give NaN; a row of equal logits gives `ln C`.
pub fn entropy_of_logits(logits: &[f32]) -> f32 {
    let lse = log_sum_exp(logits);
    if !lse.is_finite() {
        return f32::NAN;
    }
    let mut h = 0.0f64;
    for &z in logits {
        let log_p = z as f64 - lse;
        let p = log_p.exp();
        if p > 0.0 {
            h -= p * log_p;
        }
    }
    h.max(0.0) as f32
}

/// Entropy `H = −Σ p ln p` of a probability vector, in nats (terms with `p = 0` contribute 0).
pub fn entropy_of_probs(probs: &[f32]) -> f32 {
    let h: f64 = probs.iter().filter(|&&p| p > 0.0).map(|&p| -(p as f64) * (p as f64).ln()).sum();
    h as f32
}

/// Index of the largest value (the first one on ties); `None` for an empty row.
pub fn argmax(values: &[f32]) -> Option<usize> {
    values
        .iter()
        .enumerate()
        .fold(None, |best: Option<(usize, f32)>, (i, &v)| match best {
            Some((_, b)) if b >= v => best,
            _ => Some((i, v)),
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_have_maximal_entropy() {
        let h = entropy_of_logits(&[3.0; 10]);
        assert!((h - max_entropy(10)).abs() < 1e-6, "{h}");
        assert!((max_entropy(10) - std::f32::consts::LN_10).abs() < 1e-6);
    }

    #[test]
    fn huge_logits_do_not_overflow() {
        let logits = [1000.0, 0.0, -1000.0];
        let mut p = [0.0; 3];
        softmax(&logits, &mut p);
        assert_eq!(p, [1.0, 0.0, 0.0]);
        assert_eq!(entropy_of_logits(&logits), 0.0);
        let mut lp = [0.0; 3];
        log_softmax(&logits, &mut lp);
        assert_eq!(lp[0], 0.0);
        assert_eq!(lp[1], -1000.0);
    }

    #[test]
    fn entropy_matches_hand_computation() {
        // p = softmax([ln 1, ln 2, ln 3, ln 4]) = [0.1, 0.2, 0.3, 0.4]
        let logits = [1f32.ln(), 2f32.ln(), 3f32.ln(), 4f32.ln()];
        let expected = -[0.1f64, 0.2, 0.3, 0.4].iter().map(|p| p * p.ln()).sum::<f64>();
        assert!((entropy_of_logits(&logits) as f64 - expected).abs() < 1e-6);
        assert!((entropy_of_probs(&[0.1, 0.2, 0.3, 0.4]) as f64 - expected).abs() < 1e-6);
    }

    #[test]
    fn nan_logits_give_nan_entropy() {
        assert!(entropy_of_logits(&[0.0, f32::NAN]).is_nan());
    }

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), Some(1));
        assert_eq!(argmax(&[]), None);
    }
}
