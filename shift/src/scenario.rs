//! Shift scenarios: streams of `(image, label, corruption, severity)` drawn from a data set.
//!
//! - `independent`: every (corruption, severity) is its own segment and models reset before
//!   each (the paper's protocol);
//! - `continual`: the corruptions one after another at one severity, no reset;
//! - `gradual`: per corruption, severity ramps 1→5→1 (nine segments), no reset;
//! - `mixed`: one segment where every sample draws its own corruption.
//!
//! Each simulated device walks its own permutation of the data set (seeded by scenario seed
//! and device number) and gets its own corruption noise, so N devices see different data.

use rayon::prelude::*;

use crate::corrupt::Corruption;
use crate::dataset::Dataset;
use crate::image::Image;
use crate::rng::Rng;

/// How corruptions are sequenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// Each (corruption, severity) a separate stream, reset before each.
    Independent,
    /// All corruptions in sequence at one severity, no reset.
    Continual,
    /// Severity 1→5→1 per corruption, no reset.
    Gradual,
    /// Every sample draws its own corruption.
    Mixed,
}

/// What a scenario streams.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioConfig {
    /// Sequencing.
    pub protocol: Protocol,
    /// Corruptions used, in order.
    pub corruptions: Vec<Corruption>,
    /// Severities used by `independent` (each its own segment); `continual` and `mixed` use the first.
    pub severities: Vec<u8>,
    /// Samples per segment.
    pub samples_per_segment: usize,
    /// Seed of the data order and the corruption noise.
    pub seed: u64,
    /// Device number: devices differ in data order and noise.
    pub device: u64,
}

impl Default for ScenarioConfig {
    fn default() -> Self {
        Self {
            protocol: Protocol::Continual,
            corruptions: Corruption::BENCHMARK.to_vec(),
            severities: vec![5],
            samples_per_segment: 1000,
            seed: 0,
            device: 0,
        }
    }
}

/// One stretch of a stream with a fixed shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// The corruption; `None` in a mixed segment (each sample draws its own).
    pub corruption: Option<Corruption>,
    /// Severity 1–5.
    pub severity: u8,
    /// Whether models reset before this segment.
    pub reset: bool,
}

/// One streamed sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ShiftSample {
    /// Position in the stream (0-based).
    pub position: u64,
    /// Index of the clean image in the data set.
    pub source_index: usize,
    /// Index of the segment it belongs to.
    pub segment: usize,
    /// The corrupted image.
    pub image: Image,
    /// Its label.
    pub label: u32,
    /// The corruption applied.
    pub corruption: Corruption,
    /// The severity applied.
    pub severity: u8,
}

/// A planned scenario over a data set.
#[derive(Debug, Clone)]
pub struct Scenario<'d> {
    data: &'d Dataset,
    config: ScenarioConfig,
    segments: Vec<Segment>,
    order: Vec<usize>,
    noise_seed: u64,
}

/// Severities of one gradual ramp.
const GRADUAL_RAMP: [u8; 9] = [1, 2, 3, 4, 5, 4, 3, 2, 1];

impl<'d> Scenario<'d> {
    /// Plans a scenario.
    ///
    /// # Panics
    /// If the data set is empty, no corruption or severity is given, or a severity is not 1–5.
    pub fn new(data: &'d Dataset, config: ScenarioConfig) -> Self {
        assert!(!data.is_empty(), "empty data set");
        assert!(!config.corruptions.is_empty() && !config.severities.is_empty(), "no corruption or severity");
        assert!(config.severities.iter().all(|s| (1..=5).contains(s)), "severities must be 1–5");
        let first = config.severities[0];
        let segment = |corruption, severity, reset| Segment { corruption, severity, reset };
        let segments: Vec<Segment> = match config.protocol {
            Protocol::Independent => config
                .corruptions
                .iter()
                .flat_map(|&c| config.severities.iter().map(move |&s| segment(Some(c), s, true)))
                .collect(),
            Protocol::Continual => {
                config.corruptions.iter().enumerate().map(|(i, &c)| segment(Some(c), first, i == 0)).collect()
            }
            Protocol::Gradual => config
                .corruptions
                .iter()
                .flat_map(|&c| GRADUAL_RAMP.iter().map(move |&s| (c, s)))
                .enumerate()
                .map(|(i, (c, s))| segment(Some(c), s, i == 0))
                .collect(),
            Protocol::Mixed => vec![segment(None, first, true)],
        };
        // Fisher–Yates with a stream keyed by seed and device.
        let mut rng = Rng::for_stream(&[config.seed, config.device, 0x5eed]);
        let mut order: Vec<usize> = (0..data.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.int_inclusive(0, i as i64) as usize);
        }
        let noise_seed = Rng::for_stream(&[config.seed, config.device, 0x0015e]).next_u64();
        Self { data, config, segments, order, noise_seed }
    }

    /// The segments in stream order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Total number of samples.
    pub fn len(&self) -> usize {
        self.segments.len() * self.config.samples_per_segment
    }

    /// Whether the scenario streams nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The seed the corruption noise of this scenario (this device) is drawn with: sample at
    /// `position` is `corruption.apply(image, severity, noise_seed, position)`.
    pub fn noise_seed(&self) -> u64 {
        self.noise_seed
    }

    /// The configuration.
    pub fn config(&self) -> &ScenarioConfig {
        &self.config
    }

    /// The sample at stream `position`.
    pub fn sample(&self, position: u64) -> ShiftSample {
        let per = self.config.samples_per_segment.max(1) as u64;
        let segment_index = ((position / per) as usize).min(self.segments.len() - 1);
        let segment = self.segments[segment_index];
        let source_index = self.order[(position % self.order.len() as u64) as usize];
        let corruption = segment.corruption.unwrap_or_else(|| {
            let mut rng = Rng::for_stream(&[self.noise_seed, position, 0x313d]);
            let k = rng.int_inclusive(0, self.config.corruptions.len() as i64 - 1) as usize;
            self.config.corruptions[k]
        });
        ShiftSample {
            position,
            source_index,
            segment: segment_index,
            image: corruption.apply(&self.data.images[source_index], segment.severity, self.noise_seed, position),
            label: self.data.labels[source_index],
            corruption,
            severity: segment.severity,
        }
    }

    /// Samples `start..end` (clamped to the scenario), corrupted in parallel; the result is
    /// the same whatever the number of threads.
    pub fn batch(&self, start: u64, end: u64) -> Vec<ShiftSample> {
        let end = end.min(self.len() as u64);
        (start..end).into_par_iter().map(|p| self.sample(p)).collect()
    }
}
