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
