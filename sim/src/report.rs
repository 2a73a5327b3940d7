//! Reading the agents' JSON lines and summarising them.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

/// One prediction line of `cema-edge run`.
#[derive(Debug, Clone, Deserialize)]
pub struct Record {
    /// `position:corruption:severity` for scenario sources.
    pub id: String,
    /// Predicted class.
    pub class: usize,
    /// True class.
    pub label: Option<usize>,
    /// Parameter version used.
    pub params_version: u64,
    /// Selected for upload.
    pub uploaded: bool,
}

impl Record {
    /// The corruption named in the id.
    pub fn corruption(&self) -> &str {
        self.id.split(':').nth(1).unwrap_or("unknown")
    }

    /// Whether the prediction was right.
    pub fn correct(&self) -> bool {
        self.label == Some(self.class)
    }
}

/// Reads a JSON-lines file.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("a line of {}", path.display())))
        .collect()
}

/// Counts over a set of predictions.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    /// Predictions.
    pub n: u64,
    /// Correct ones.
    pub correct: u64,
    /// Uploaded ones.
    pub uploaded: u64,
}

impl Tally {
    /// Adds one prediction.
    pub fn add(&mut self, correct: bool, uploaded: bool) {
        self.n += 1;
        self.correct += correct as u64;
        self.uploaded += uploaded as u64;
    }
    /// Accuracy in [0, 1].
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.n.max(1) as f64
    }
    /// Uploaded fraction in [0, 1].
    pub fn uploaded_fraction(&self) -> f64 {
        self.uploaded as f64 / self.n.max(1) as f64
    }
}

/// Tallies per corruption (in first-seen order) and overall.
pub fn by_corruption(records: &[Record]) -> (Vec<(String, Tally)>, Tally) {
    let mut order: Vec<String> = Vec::new();
    let mut map: BTreeMap<String, Tally> = BTreeMap::new();
    let mut total = Tally::default();
    for r in records {
        let c = r.corruption().to_owned();
        if !map.contains_key(&c) {
            order.push(c.clone());
        }
        map.entry(c).or_default().add(r.correct(), r.uploaded);
        total.add(r.correct(), r.uploaded);
    }
    (order.into_iter().map(|c| (c.clone(), map[&c])).collect(), total)
}

/// The worst segment of an adapted stream against no adaptation on the same stream: the
/// smallest accuracy difference (method − none, in [−1, 1]) over the corruptions both saw;
/// `None` when they share none.
pub fn worst_segment_harm(adapted: &[Record], none: &[Record]) -> Option<f64> {
    let none: BTreeMap<String, Tally> = by_corruption(none).0.into_iter().collect();
    by_corruption(adapted)
        .0
        .iter()
        .filter_map(|(corruption, t)| none.get(corruption).map(|n| t.accuracy() - n.accuracy()))
        .min_by(f64::total_cmp)
}

/// The `q` quantile bound of a Prometheus histogram in `metrics` text: the smallest `le` whose
/// cumulative count reaches `q` of the total (NaN without observations).
pub fn histogram_quantile(metrics: &str, name: &str, q: f64) -> f64 {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return f64::NAN;
    }
    buckets.iter().find(|(_, cumulative)| *cumulative >= q * total).map_or(f64::INFINITY, |b| b.0)
}

/// A trailing average of `value` over up to `window` predictions (fewer at the start),
/// sampled every `step`.
pub fn moving(records: &[Record], window: usize, step: usize, value: impl Fn(&Record) -> f64) -> Vec<(f64, f64)> {
    let values: Vec<f64> = records.iter().map(value).collect();
    let mut out = Vec::new();
    let mut i = step.max(1).min(values.len());
    while i <= values.len() && i > 0 {
        let slice = &values[i - window.min(i)..i];
        out.push((i as f64, slice.iter().sum::<f64>() / slice.len() as f64));
        if i == values.len() {
            break;
        }
        i = (i + step).min(values.len());
    }
    out
}

/// `key=value` pairs of the agent's closing summary line in its log.
pub fn edge_summary(log: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .find(|l| l.starts_with("cema-edge: device="))
        .map(|l| {
            l.trim_start_matches("cema-edge: ")
                .split_whitespace()
                .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Bytes of upload requests an edge sent (samples, batch ends and their statistics), from the
/// closing line of its log (`upload_bytes=`).
pub fn upload_bytes(log: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    crate::fleet::summary_line(&text, "cema-edge:")
        .and_then(|line| line.get("upload_bytes").and_then(|v| v.parse().ok()))
        .with_context(|| format!("{} has no closing line with upload_bytes", log.display()))
}

/// Mean accuracy and uploaded fraction by (method, protocol).
pub type Means = BTreeMap<(String, String), (f64, f64)>;

/// The most accurate method within an upload budget, against upload-all and random sampling.
#[derive(Debug, Clone, PartialEq)]
pub struct Best {
    /// Its name.
    pub method: String,
    /// Worst protocol's accuracy minus upload-all's, in points (NaN without upload-all).
    pub minus_upload_all: f64,
    /// Its largest uploaded fraction over the protocols.
    pub uploaded: f64,
    /// Worst protocol's accuracy minus the random subsample's closest in uploaded fraction, in
    /// points (NaN without a method whose name contains `random`).
    pub vs_random: f64,
}

impl Best {
    /// `best_method=… best_minus_upload_all=… best_uploaded=… best_vs_random=…`.
    pub fn line(&self) -> String {
        format!(
            "best_method={} best_minus_upload_all={:.2} best_uploaded={:.4} best_vs_random={:.2}",
            self.method, self.minus_upload_all, self.uploaded, self.vs_random
        )
    }
}

/// Among methods that adapt (not none, upload-all, bn-stats or a random subsample: a name
/// containing `random`) and
/// upload at most `budget` of the samples on every protocol, the one with the highest mean
/// accuracy over the protocols.
pub fn best_at_budget(means: &Means, budget: f64) -> Option<Best> {
    let protocols: Vec<&String> =
        means.keys().map(|(_, p)| p).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let methods: std::collections::BTreeSet<&String> = means.keys().map(|(m, _)| m).collect();
    let per = |m: &str| -> Option<Vec<(f64, f64)>> {
        protocols.iter().map(|p| means.get(&(m.to_owned(), (*p).clone())).copied()).collect()
    };
    let mean_accuracy = |v: &[(f64, f64)]| v.iter().map(|(a, _)| a).sum::<f64>() / v.len() as f64;
    let baseline = |m: &str| m == "none" || m == "upload-all" || m == "bn-stats" || m.contains("random");
    let (method, scores) = methods
        .iter()
        .filter(|m| !baseline(m))
        .filter_map(|m| per(m).map(|v| (m.to_string(), v)))
        .filter(|(_, v)| v.iter().all(|(_, up)| *up <= budget))
        .max_by(|a, b| mean_accuracy(&a.1).total_cmp(&mean_accuracy(&b.1)))?;
    let uploaded = scores.iter().map(|(_, up)| *up).fold(0.0, f64::max);
    let worst_gap = |other: &[(f64, f64)]| {
        scores.iter().zip(other).map(|((a, _), (b, _))| 100.0 * (a - b)).fold(f64::INFINITY, f64::min)
    };
    let minus_upload_all = per("upload-all").map_or(f64::NAN, |v| worst_gap(&v));
    let random = methods.iter().filter(|m| m.starts_with("random")).filter_map(|m| per(m)).min_by(|a, b| {
        let distance = |v: &[(f64, f64)]| v.iter().map(|(_, up)| (up - uploaded).abs()).sum::<f64>();
        distance(a).total_cmp(&distance(b))
    });
    let vs_random = random.map_or(f64::NAN, |v| worst_gap(&v));
    Some(Best { method, minus_upload_all, uploaded, vs_random })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn means(rows: &[(&str, &str, f64, f64)]) -> Means {
        rows.iter().map(|(m, p, a, u)| ((m.to_string(), p.to_string()), (*a, *u))).collect()
    }

    #[test]
    fn the_best_method_stays_within_the_budget_on_every_protocol() {
        let m = means(&[
            ("none", "ind", 0.50, 0.0),
            ("none", "cont", 0.50, 0.0),
            ("upload-all", "ind", 0.70, 1.0),
            ("upload-all", "cont", 0.72, 1.0),
            // Most accurate but over budget on one protocol.
            ("greedy", "ind", 0.71, 0.20),
            ("greedy", "cont", 0.73, 0.30),
            ("frugal", "ind", 0.69, 0.20),
            ("frugal", "cont", 0.70, 0.25),
            ("random@random-fraction=0.25", "ind", 0.66, 0.24),
            ("random@random-fraction=0.25", "cont", 0.69, 0.25),
            ("random-half", "ind", 0.68, 0.5),
            ("random-half", "cont", 0.71, 0.5),
        ]);
        let best = best_at_budget(&m, 0.25).expect("a method within budget");
        assert_eq!(best.method, "frugal");
        assert!((best.minus_upload_all - (-2.0)).abs() < 1e-9, "{best:?}");
        assert!((best.uploaded - 0.25).abs() < 1e-12);
        // Against the random subsample at the same budget, not random-half: min(3, 1) points.
        assert!((best.vs_random - 1.0).abs() < 1e-9, "{best:?}");
        assert!(best_at_budget(&m, 0.1).is_none());
    }

    fn record(position: usize, corruption: &str, correct: bool) -> Record {
        let id = format!("{position}:{corruption}:5");
        Record { id, class: 1, label: Some(if correct { 1 } else { 0 }), params_version: 0, uploaded: false }
    }

    #[test]
    fn the_worst_segment_is_the_largest_loss_against_none_on_the_same_corruption() {
        // none: fog 2/4, snow 3/4; adapted: fog 4/4 (+50 points), snow 1/4 (−50 points).
        let none: Vec<Record> = [true, true, false, false]
            .iter()
            .map(|&c| record(0, "fog", c))
            .chain([true, true, true, false].iter().map(|&c| record(4, "snow", c)))
            .collect();
        let adapted: Vec<Record> = [true; 4]
            .iter()
            .map(|&c| record(0, "fog", c))
            .chain([true, false, false, false].iter().map(|&c| record(4, "snow", c)))
            .collect();
        let harm = worst_segment_harm(&adapted, &none).expect("shared corruptions");
        assert!((harm - (-0.5)).abs() < 1e-12, "{harm}");
        assert!(worst_segment_harm(&adapted[..4], &none[4..]).is_none(), "no corruption in common");
    }

    #[test]
    fn histogram_quantiles_are_the_bucket_bound_that_reaches_the_share() {
        let text = "# TYPE a histogram\na_bucket{le=\"0.5\"} 90\na_bucket{le=\"1\"} 98\na_bucket{le=\"5\"} 100\n\
                    a_bucket{le=\"+Inf\"} 100\na_sum 40\na_count 100\n";
        assert_eq!(histogram_quantile(text, "a", 0.5), 0.5);
        assert_eq!(histogram_quantile(text, "a", 0.98), 1.0);
        assert_eq!(histogram_quantile(text, "a", 0.99), 5.0);
        assert!(histogram_quantile("", "a", 0.99).is_nan());
    }
}
