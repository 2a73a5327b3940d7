//! The source guard (`--guard`): while adapted parameters serve, each batch also runs with the
//! model's own, forward-only, and the predictions that carry more information about the batch
//! are served (`docs/algorithm.md`, "Real time").

use crate::runtime::Prediction;

/// The source guard's rule, per batch and forward-only: serve the model's own parameters when
/// the information the predictions carry about the batch — the entropy of the batch's mean
/// predicted distribution minus the mean entropy of each prediction (SHOT's information
/// maximisation) — is higher under them than under the adapted ones by more than this share of
/// `ln C`. Negative: the adapted parameters must carry at least 0.02·ln C more than the model's
/// own to serve. Parameters fitted to another distribution (an update that arrives after the
/// shift it was fitted to) collapse predictions onto few classes or leave them uncertain, and
/// score low; the batch's uploads follow what was served, so the cloud keeps receiving
/// informative samples. With 0 (whichever carries more) `make demo` in real time lost 3.1–3.4
/// points on a blur segment in two of three runs, where the adapted parameters carried about
/// as much information as the source's and were slightly less accurate; with −0.02 no segment
/// lost more than 0.6 in four runs, at +7.4 to +8.4 points overall (`docs/algorithm.md`).
pub const GUARD_MARGIN_FRACTION: f64 = -0.02;

/// Whether `source`'s predictions of a batch should be served instead of `adapted`'s.
pub(crate) fn prefer_source(adapted: &Prediction, source: &Prediction) -> bool {
    let margin = GUARD_MARGIN_FRACTION * (adapted.classes as f64).ln();
    information(adapted) < information(source) - margin
}

/// The information a batch's predictions carry about its inputs (nats): the entropy of the
/// batch's mean predicted distribution (high when the batch is spread over the classes, 0 when
/// every sample gets the same one) minus the mean entropy of each prediction (0 when every
/// prediction is certain). Collapsed predictions and uncertain ones both score low.
fn information(prediction: &Prediction) -> f64 {
    let mut mean = vec![0.0f64; prediction.classes];
    for i in 0..prediction.batch {
        for (m, p) in mean.iter_mut().zip(prediction.probs_of(i)) {
            *m += *p as f64 / prediction.batch as f64;
        }
    }
    let marginal = -mean.iter().filter(|p| **p > 0.0).map(|p| p * p.ln()).sum::<f64>();
    marginal - prediction.mean_entropy()
}
