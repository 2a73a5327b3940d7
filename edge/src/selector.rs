//! Which predictions are worth uploading (cema-spec, "Edge"): an upper entropy bound (static,
//! or dynamic after a warm-up), an optional lower bound, and EATA's redundancy filter. Every
//! threshold scales with `ln C`; the redundancy margin by default with `√(1000/C)`, because the
//! reference 0.05 was tuned for 1000 classes and rejects nearly everything at 10.

use serde::{Deserialize, Serialize};

/// The reference redundancy margin, tuned for 1000 classes.
pub const REFERENCE_D_MARGIN: f64 = 0.05;

/// How the redundancy filter's margin is set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode", content = "value")]
pub enum Redundancy {
    /// `margin · √(1000/C)` (the default; 0.5 for C = 10 with margin 0.05).
    Scaled(f64),
    /// The margin as given, whatever the class count.
    Raw(f64),
    /// No redundancy filter.
    Off,
}

/// Selection settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectorConfig {
    /// Upper bound `E_max = e_max_frac · ln C`; `None` disables selection by entropy.
    pub e_max_frac: Option<f64>,
    /// Samples after which the dynamic bound starts; `None` keeps the bound static.
    pub warmup_samples: Option<u64>,
    /// λ of the dynamic bound.
    pub lambda: f64,
    /// Lower bound `E_min = e_min_frac · ln C`; `None` for none.
    pub e_min_frac: Option<f64>,
    /// Redundancy filter.
    pub redundancy: Redundancy,
    /// After the bounds and the filter, keep each remaining sample with this probability
    /// (decided by a hash of its position in the stream, so a restart decides the same way).
    /// With upload-all's settings: a uniform random subsample, the baseline a selection rule
    /// must beat at the same upload budget. `None`: keep them all.
    #[serde(default)]
    pub random_fraction: Option<f64>,
    /// Upload budget: at most this share of each batch (rounded down, at least one sample when
    /// the share is positive), keeping the samples of highest entropy among those the other
    /// rules kept — with a much stronger foundation model, the student's uncertain samples are
    /// the ones distillation learns most from (`docs/algorithm.md`, "Upload budget").
    /// `None`: no budget.
    #[serde(default)]
    pub budget: Option<f64>,
}

/// Named settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// The released code: static upper bound, redundancy filter (scaled margin).
    Reference,
    /// The paper: dynamic upper bound after 1024 samples (λ = 1), lower bound 0.02·ln C,
    /// redundancy filter (scaled margin).
    Paper,
    /// EATA's selection: static upper bound and redundancy filter (the reference code's edge
    /// selection is EATA's, so the two presets select identically).
    EataSelect,
    /// No selection: every prediction is uploaded.
    UploadAll,
}

impl Preset {
    /// The settings of a preset.
    pub fn config(self) -> SelectorConfig {
        let base = SelectorConfig {
            e_max_frac: Some(0.4),
            warmup_samples: None,
            lambda: 1.0,
            e_min_frac: None,
            redundancy: Redundancy::Scaled(REFERENCE_D_MARGIN),
            random_fraction: None,
            budget: None,
        };
        match self {
            Preset::Reference | Preset::EataSelect => base,
            Preset::Paper => SelectorConfig { warmup_samples: Some(1024), e_min_frac: Some(0.02), ..base },
            Preset::UploadAll => SelectorConfig { e_max_frac: None, redundancy: Redundancy::Off, ..base },
        }
    }
}

/// What the selector remembers between batches (persisted by the agent).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SelectorState {
    /// Predictions seen.
    pub seen: u64,
    /// Sum of their entropies.
    pub entropy_sum: f64,
    /// `Ē_0`, frozen at the end of the warm-up.
    pub e0: Option<f64>,
    /// The redundancy filter's moving-average probability vector.
    pub mean_probs: Option<Vec<f64>>,
}

/// The per-sample decisions and the bound used.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Whether each sample is uploaded.
    pub keep: Vec<bool>,
    /// The upper bound applied to this batch (∞ when disabled).
    pub upper: f64,
    /// The lower bound (−∞ when none).
    pub lower: f64,
}

/// The edge's sample selector.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    config: SelectorConfig,
    classes: usize,
    state: SelectorState,
}

impl Selector {
    /// A selector for a `classes`-way classifier, from a saved state.
    pub fn new(config: SelectorConfig, classes: usize, state: SelectorState) -> Self {
        Self { config, classes, state }
    }

    /// The state to persist.
    pub fn state(&self) -> &SelectorState {
        &self.state
    }

    /// `E_max` (∞ when the upper bound is disabled).
    pub fn e_max(&self) -> f64 {
        self.config.e_max_frac.map_or(f64::INFINITY, |f| f * (self.classes as f64).ln())
    }

    /// The redundancy margin in effect (`None` when off).
    pub fn d_margin(&self) -> Option<f64> {
        match self.config.redundancy {
            Redundancy::Scaled(m) => Some(m * (1000.0 / self.classes as f64).sqrt()),
            Redundancy::Raw(m) => Some(m),
            Redundancy::Off => None,
        }
    }

    /// Decides a batch: `entropy[i]` and the row-major `probs` (`batch × classes`).
    pub fn select(&mut self, entropy: &[f32], probs: &[f32]) -> Selection {
        let n = entropy.len();
        let c = self.classes;
        debug_assert_eq!(probs.len(), n * c);
        let first_position = self.state.seen;
        // Dynamic bound: the cumulative mean includes this batch, before any filtering.
        self.state.seen += n as u64;
        self.state.entropy_sum += entropy.iter().map(|&h| h as f64).sum::<f64>();
        let mean = self.state.entropy_sum / self.state.seen.max(1) as f64;
        let e_max = self.e_max();
        let upper = match self.config.warmup_samples {
            Some(warmup) if self.config.e_max_frac.is_some() => {
                if self.state.e0.is_none() && self.state.seen >= warmup {
                    self.state.e0 = Some(mean);
                }
                match self.state.e0 {
                    Some(e0) if e0 > 0.0 => self.config.lambda * e_max * mean / e0,
                    _ => e_max,
                }
            }
            _ => e_max,
        };
        let lower = self.config.e_min_frac.map_or(f64::NEG_INFINITY, |f| f * (c as f64).ln());
        let mut keep: Vec<bool> = entropy.iter().map(|&h| (h as f64) < upper && (h as f64) > lower).collect();

        if let Some(margin) = self.d_margin() {
            let survivors: Vec<usize> = (0..n).filter(|&i| keep[i]).collect();
            let row = |i: usize| &probs[i * c..(i + 1) * c];
            match &self.state.mean_probs {
                None => {
                    if !survivors.is_empty() {
                        self.state.mean_probs = Some(mean_rows(&survivors, row, c));
                    }
                }
                Some(m) => {
                    for &i in &survivors {
                        if cosine(m, row(i)).abs() >= margin {
                            keep[i] = false;
                        }
                    }
                    let kept: Vec<usize> = (0..n).filter(|&i| keep[i]).collect();
                    if !kept.is_empty() {
                        let fresh = mean_rows(&kept, row, c);
                        let updated = m.iter().zip(&fresh).map(|(a, b)| 0.9 * a + 0.1 * b).collect();
                        self.state.mean_probs = Some(updated);
                    }
                }
            }
        }
        if let Some(fraction) = self.config.random_fraction {
            for (i, keep) in keep.iter_mut().enumerate() {
                *keep &= unit_interval(first_position + i as u64) < fraction;
            }
        }
        if let Some(budget) = self.config.budget {
            keep_highest_entropy(&mut keep, entropy, budget);
        }
        Selection { keep, upper, lower }
    }
}

/// Keeps at most `budget · n` (rounded down; one if the budget is positive but rounds to none)
/// of the kept samples: those of highest entropy, ties to the earlier sample.
fn keep_highest_entropy(keep: &mut [bool], entropy: &[f32], budget: f64) {
    let n = keep.len();
    let allowed = ((budget * n as f64).floor() as usize).max(usize::from(budget > 0.0)).min(n);
    let mut kept: Vec<usize> = (0..n).filter(|&i| keep[i]).collect();
    if kept.len() <= allowed {
        return;
    }
    kept.sort_by(|&a, &b| entropy[b].total_cmp(&entropy[a]).then(a.cmp(&b)));
    for &i in &kept[allowed..] {
        keep[i] = false;
    }
}

/// A uniform number in [0, 1) from a stream position (SplitMix64).
fn unit_interval(position: u64) -> f64 {
    let mut z = position.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as f64 / (u64::MAX as f64 + 1.0)
}

fn mean_rows<'a>(rows: &[usize], row: impl Fn(usize) -> &'a [f32], c: usize) -> Vec<f64> {
    let mut sum = vec![0.0f64; c];
    for &i in rows {
        for (s, &p) in sum.iter_mut().zip(row(i)) {
            *s += p as f64;
        }
    }
    sum.iter().map(|s| s / rows.len() as f64).collect()
}

fn cosine(a: &[f64], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, &y)| x * y as f64).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|&y| (y as f64) * (y as f64)).sum::<f64>().sqrt();
    // PyTorch's cosine_similarity clamps each norm at 1e-8.
    dot / (na.max(1e-8) * nb.max(1e-8))
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: usize = 10;

    /// A distribution with `top` on class `k` and the rest spread evenly.
    fn peaked(k: usize, top: f32) -> Vec<f32> {
        (0..C).map(|c| if c == k { top } else { (1.0 - top) / (C - 1) as f32 }).collect()
    }

    fn entropy(p: &[f32]) -> f32 {
        -p.iter().filter(|&&x| x > 0.0).map(|&x| x as f64 * (x as f64).ln()).sum::<f64>() as f32
    }

    #[test]
    fn a_budget_keeps_the_most_uncertain_of_what_the_rules_kept() {
        let config = SelectorConfig { budget: Some(0.25), ..Preset::UploadAll.config() };
        let mut selector = Selector::new(config, C, SelectorState::default());
        let rows: Vec<Vec<f32>> = [0.9, 0.3, 0.5, 0.2, 0.95, 0.4, 0.25, 0.8].iter().map(|&t| peaked(1, t)).collect();
        // 8 samples, budget 2: the two least confident (0.2 and 0.25 on the top class).
        assert_eq!(run(&mut selector, &rows), [false, false, false, true, false, false, true, false]);
        // Fewer survivors than the budget: all kept; a tiny positive budget still keeps one.
        let config = SelectorConfig { budget: Some(0.01), ..Preset::UploadAll.config() };
        let mut selector = Selector::new(config, C, SelectorState::default());
        assert_eq!(run(&mut selector, &rows).iter().filter(|k| **k).count(), 1);
        let mut none = vec![false; 3];
        keep_highest_entropy(&mut none, &[1.0, 2.0, 3.0], 0.5);
        assert_eq!(none, [false; 3]);
    }

    fn run(selector: &mut Selector, rows: &[Vec<f32>]) -> Vec<bool> {
        let h: Vec<f32> = rows.iter().map(|r| entropy(r)).collect();
        let probs: Vec<f32> = rows.concat();
        selector.select(&h, &probs).keep
    }

    #[test]
    fn thresholds_scale_with_the_class_count() {
        let s = Selector::new(Preset::Reference.config(), 10, SelectorState::default());
        assert!((s.e_max() - 0.4 * 10f64.ln()).abs() < 1e-12);
        assert!((s.d_margin().unwrap() - 0.5).abs() < 1e-12);
        let s = Selector::new(Preset::Reference.config(), 1000, SelectorState::default());
        assert!((s.e_max() - 2.763102).abs() < 1e-6);
        assert!((s.d_margin().unwrap() - 0.05).abs() < 1e-12);
    }

    #[test]
    fn a_random_fraction_keeps_that_share_and_decides_the_same_after_a_restart() {
        let config = SelectorConfig { random_fraction: Some(0.3), ..Preset::UploadAll.config() };
        let probs: Vec<f32> = (0..1000).flat_map(|i| peaked(i % C, 0.5)).collect();
        let entropy = vec![1.0f32; 1000];
        let mut whole = Selector::new(config.clone(), C, SelectorState::default());
        let kept = whole.select(&entropy, &probs).keep;
        let share = kept.iter().filter(|k| **k).count() as f64 / 1000.0;
        assert!((share - 0.3).abs() < 0.05, "kept {share}");
        // The same stream in two batches, the second after a restart from the saved state.
        let mut first = Selector::new(config.clone(), C, SelectorState::default());
        let mut split = first.select(&entropy[..400], &probs[..400 * C]).keep;
        let mut restarted = Selector::new(config, C, first.state().clone());
        split.extend(restarted.select(&entropy[400..], &probs[400 * C..]).keep);
        assert_eq!(split, kept);
    }

    #[test]
    fn reference_preset_static_bound_and_redundancy_filter() {
        let mut s = Selector::new(Preset::Reference.config(), C, SelectorState::default());
        // Batch 1: the uniform row (H = ln 10 > E_max) is excluded; the filter is unset, so
        // every survivor is kept and m becomes their mean.
        let batch1 = [peaked(0, 0.95), peaked(1, 0.95), vec![0.1; C], peaked(0, 0.95)];
        assert_eq!(run(&mut s, &batch1), [true, true, false, true]);
        let m1: Vec<f64> =
            (0..C).map(|c| (batch1[0][c] as f64 + batch1[1][c] as f64 + batch1[3][c] as f64) / 3.0).collect();
        let m = s.state().mean_probs.clone().unwrap();
        assert!(m.iter().zip(&m1).all(|(a, b)| (a - b).abs() < 1e-7));
        // Batch 2: a class-0 prediction is redundant with m (cos ≈ 0.90 ≥ 0.5); a class-5 one
        // is not (cos ≈ 0.016) and moves m by 0.1.
        let batch2 = [peaked(0, 0.95), peaked(5, 0.95)];
        assert_eq!(run(&mut s, &batch2), [false, true]);
        let m2: Vec<f64> = (0..C).map(|c| 0.9 * m1[c] + 0.1 * batch2[1][c] as f64).collect();
        let m = s.state().mean_probs.clone().unwrap();
        assert!(m.iter().zip(&m2).all(|(a, b)| (a - b).abs() < 1e-7));
        // Batch 3: nothing survives the filter, so m stays.
        assert_eq!(run(&mut s, &[peaked(0, 0.95)]), [false]);
        assert_eq!(s.state().mean_probs.clone().unwrap(), m);
    }

    #[test]
    fn the_raw_reference_margin_rejects_confident_ten_class_predictions() {
        // After predictions of every class, m is uniform and cos(m, p) = 0.33 for any
        // confident p: the raw margin 0.05 rejects it, the scaled 0.5 keeps it (cema-spec).
        let diverse: Vec<Vec<f32>> = (0..C).map(|k| peaked(k, 0.95)).collect();
        let config = SelectorConfig { redundancy: Redundancy::Raw(0.05), ..Preset::Reference.config() };
        let mut raw = Selector::new(config, C, SelectorState::default());
        let mut scaled = Selector::new(Preset::Reference.config(), C, SelectorState::default());
        assert_eq!(run(&mut raw, &diverse), vec![true; C]);
        assert_eq!(run(&mut scaled, &diverse), vec![true; C]);
        let m = raw.state().mean_probs.clone().unwrap();
        assert!(m.iter().all(|v| (v - 0.1).abs() < 1e-6));
        assert_eq!(run(&mut raw, &[peaked(3, 0.95), peaked(7, 0.95)]), [false, false]);
        assert_eq!(run(&mut scaled, &[peaked(3, 0.95), peaked(7, 0.95)]), [true, true]);
    }

    #[test]
    fn paper_preset_dynamic_upper_bound_after_warm_up_and_lower_bound() {
        let config = SelectorConfig { warmup_samples: Some(4), redundancy: Redundancy::Off, ..Preset::Paper.config() };
        let mut s = Selector::new(config, C, SelectorState::default());
        let e_max = 0.4 * 10f64.ln();
        let e_min = 0.02 * 10f64.ln();
        let uniform = vec![0.1f32; C * 3];
        // Batch 1 (3 seen < 4): static bound; 2.303 is above E_max, 0.01 below E_min.
        let h1 = [0.308f32, std::f32::consts::LN_10, 0.01];
        let sel = s.select(&h1, &uniform);
        assert_eq!(sel.keep, [true, false, false]);
        assert_eq!((sel.upper, sel.lower), (e_max, e_min));
        // Batch 2: 5 seen ≥ 4, so Ē_0 = mean of all 5 and the bound is λ·E_max·Ē/Ē_0 = E_max.
        let h2 = [0.5f32, 0.9];
        let sel = s.select(&h2, &uniform[..2 * C]);
        let e0 = h1.iter().chain(&h2).map(|&h| h as f64).sum::<f64>() / 5.0;
        assert!((s.state().e0.unwrap() - e0).abs() < 1e-12);
        assert!((sel.upper - e_max).abs() < 1e-12);
        assert_eq!(sel.keep, [true, true]);
        // Batch 3: the mean falls, and the bound with it: 0.85 < E_max is now excluded.
        let h3 = [0.2f32, 0.85];
        let sel = s.select(&h3, &uniform[..2 * C]);
        let mean = h1.iter().chain(&h2).chain(&h3).map(|&h| h as f64).sum::<f64>() / 7.0;
        let bound = e_max * mean / e0;
        assert!((sel.upper - bound).abs() < 1e-12, "{} vs {bound}", sel.upper);
        assert!(bound < 0.85 && bound > 0.2);
        assert_eq!(sel.keep, [true, false]);
    }

    #[test]
    fn upload_all_keeps_everything_and_state_round_trips() {
        let mut s = Selector::new(Preset::UploadAll.config(), C, SelectorState::default());
        assert_eq!(run(&mut s, &[vec![0.1; C], peaked(0, 0.999)]), [true, true]);
        let mut s = Selector::new(Preset::Reference.config(), C, SelectorState::default());
        run(&mut s, &[peaked(0, 0.95), peaked(1, 0.95)]);
        let saved = serde_json::to_vec(s.state()).unwrap();
        let restored: SelectorState = serde_json::from_slice(&saved).unwrap();
        assert_eq!(&restored, s.state());
    }
}
