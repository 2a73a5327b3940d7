//! Accuracy of a model on a labelled data set, clean and under each corruption, measured with
//! ONNX Runtime — the engine the edge serves with.

use cema_core::{Manifest, OnnxModel};
use cema_edge::Runtime;
use cema_host::OrtLibrary;
use cema_shift::corrupt::Corruption;
use cema_shift::dataset::Dataset;
use cema_shift::image::Image;
use rayon::prelude::*;

/// Seed of the corrupted copies of the test set (fixed, so every model sees the same images).
pub const EVAL_SEED: u64 = 2024;

/// Images per ONNX Runtime call.
const EVAL_BATCH: usize = 500;

/// Accuracy, clean and per corruption.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    /// Images evaluated per condition.
    pub images: usize,
    /// Top-1 accuracy on the clean images.
    pub clean: f64,
    /// Severity of the corrupted conditions.
    pub severity: u8,
    /// Top-1 accuracy per corruption.
    pub corrupted: Vec<(Corruption, f64)>,
}

impl EvalReport {
    /// Mean accuracy over the corruptions.
    pub fn corrupted_mean(&self) -> f64 {
        if self.corrupted.is_empty() {
            return f64::NAN;
        }
        self.corrupted.iter().map(|(_, a)| a).sum::<f64>() / self.corrupted.len() as f64
    }

    /// A table, one line per condition, accuracies in percent.
    pub fn table(&self) -> String {
        let mut text = format!("{:<20} {:>8}\n{:<20} {:>7.2}%\n", "condition", "accuracy", "clean", 100.0 * self.clean);
        for (corruption, accuracy) in &self.corrupted {
            text.push_str(&format!("{:<20} {:>7.2}%\n", format!("{corruption}-{}", self.severity), 100.0 * accuracy));
        }
        text.push_str(&format!(
            "{:<20} {:>7.2}%\n",
            format!("mean corrupted-{}", self.severity),
            100.0 * self.corrupted_mean()
        ));
        text
    }
}

/// Top-1 accuracy of `model` on `data`, clean and under each of `corruptions` at `severity`.
pub fn evaluate(
    model: &OnnxModel,
    manifest: &Manifest,
    data: &Dataset,
    corruptions: &[Corruption],
    severity: u8,
) -> anyhow::Result<EvalReport> {
    let library = OrtLibrary::get(None)?;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut runtime = Runtime::new(library, model.clone(), manifest.clone(), threads)?;
    let clean = accuracy(&mut runtime, &data.images, &data.labels)?;
    let mut corrupted = Vec::with_capacity(corruptions.len());
    for &corruption in corruptions {
        let images: Vec<Image> = data
            .images
            .par_iter()
            .enumerate()
            .map(|(i, image)| corruption.apply(image, severity, EVAL_SEED, i as u64))
            .collect();
        corrupted.push((corruption, accuracy(&mut runtime, &images, &data.labels)?));
    }
    Ok(EvalReport { images: data.len(), clean, severity, corrupted })
}

/// Top-1 accuracy of the runtime's model on raw images.
pub fn accuracy(runtime: &mut Runtime, images: &[Image], labels: &[u32]) -> anyhow::Result<f64> {
    let mut correct = 0usize;
    let mut input = Vec::new();
    for (chunk, chunk_labels) in images.chunks(EVAL_BATCH).zip(labels.chunks(EVAL_BATCH)) {
        input.clear();
        for image in chunk {
            runtime.manifest().preprocess_u8(&image.to_chw(), &mut input);
        }
        let prediction = runtime.predict(&input, chunk.len())?;
        correct += prediction.class.iter().zip(chunk_labels).filter(|(p, l)| **p == **l as usize).count();
    }
    Ok(correct as f64 / images.len().max(1) as f64)
}
