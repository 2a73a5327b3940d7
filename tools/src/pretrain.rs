//! `cema-model pretrain`: trains a built-in model from its seed with the burn executor, with a
//! progress line, resumable checkpoints, and an ONNX Runtime evaluation (clean and under the 15
//! benchmark corruptions at severity 5) recorded in the manifest it writes.
//!
//! Reproducibility: the seed fixes the initial weights, the data order and every augmentation;
//! a resumed run continues with exactly the batches the uninterrupted run would have used.
//! Floating-point sums in multi-threaded kernels may still differ across machines.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use cema_compute::loss::cross_entropy;
use cema_compute::{Graph, NormMode, Sgd, Trainable, batch, cpu_autodiff, values};
use cema_core::{Manifest, OnnxModel, math};
use cema_shift::corrupt::Corruption;
use cema_shift::dataset::{Dataset, Split, fashion_mnist_dir, load_fashion_mnist};
use cema_shift::image::Image;
use cema_shift::rng::Rng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::builtin::{BuiltIn, Recipe};
use crate::evaluate::{EvalReport, evaluate};

/// Pixels of padding for the random-crop augmentation.
const CROP_PAD: i64 = 2;

/// What to train and where.
#[derive(Debug, Clone)]
pub struct PretrainOptions {
    /// Which built-in.
    pub model: BuiltIn,
    /// Hyperparameters and seed.
    pub recipe: Recipe,
    /// Folder for `<name>.onnx`, `<name>.toml` and the checkpoint `<name>.ckpt`.
    pub out_dir: PathBuf,
    /// Train on the first N training images only (quick checks).
    pub train_limit: Option<usize>,
    /// Evaluate on the first N test images only.
    pub eval_limit: Option<usize>,
    /// Steps between checkpoints (also written at every epoch's end).
    pub checkpoint_every: usize,
    /// Ignore an existing checkpoint and start from the seed.
    pub fresh: bool,
    /// Start from this model's weights instead of the seed's (same built-in architecture):
    /// continues training a shipped model with another schedule.
    pub init: Option<PathBuf>,
    /// The command line, recorded in the manifest.
    pub command: String,
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct PretrainOutcome {
    /// The trained model.
    pub model_path: PathBuf,
    /// Its accuracy (ONNX Runtime, test set).
    pub report: EvalReport,
    /// Training throughput over the steps this process ran.
    pub images_per_second: f64,
}

/// Trains, checkpoints, evaluates and writes the model and its manifest.
pub fn pretrain(options: &PretrainOptions) -> Result<PretrainOutcome> {
    let recipe = &options.recipe;
    ensure!(recipe.epochs > 0 && recipe.batch > 1, "epochs must be ≥ 1 and batch ≥ 2");
    ensure!((0.0..=1.0).contains(&recipe.corruption_prob), "corruption probability must be in [0, 1]");
    std::fs::create_dir_all(&options.out_dir).with_context(|| format!("creating {}", options.out_dir.display()))?;
    let manifest = Manifest::parse(&options.model.manifest_toml(&[]))?;
    let dir = fashion_mnist_dir()?;
    let mut train = load_fashion_mnist(&dir, Split::Train)?;
    truncate(&mut train, options.train_limit);
    let steps_per_epoch = train.len() / recipe.batch;
    ensure!(steps_per_epoch > 0, "{} training images make no batch of {}", train.len(), recipe.batch);
    let total_steps = recipe.epochs * steps_per_epoch;

    let init = options.init.as_deref().map(|path| initial_model(options.model, path)).transpose()?;
    let init_note = match (&options.init, &init) {
        (Some(path), Some(model)) => {
            format!("{} sha256:{}{}", path.display(), model.fingerprint().to_hex(), made_by(path))
        }
        _ => "seed".to_owned(),
    };
    let identity = format!(
        "{} {:?} train_images={} init={}",
        options.model,
        recipe,
        train.len(),
        init.as_ref().map_or_else(|| "seed".to_owned(), |model| model.fingerprint().to_hex())
    );
    let checkpoint_path = options.out_dir.join(format!("{}.ckpt", options.model));
    let checkpoint = if options.fresh { None } else { Checkpoint::read(&checkpoint_path)? };
    let device = cpu_autodiff();
    let mut sgd = Sgd::new(recipe.lr, recipe.momentum).with_weight_decay(recipe.weight_decay);
    let (mut template, mut graph, start) = match checkpoint {
        Some(checkpoint) => {
            if checkpoint.identity != identity {
                bail!(
                    "{} holds a run with other settings ({}); rerun with --fresh to discard it",
                    checkpoint_path.display(),
                    checkpoint.identity
                );
            }
            let graph = Graph::load(&checkpoint.model, &device, Trainable::All)?;
            sgd.restore_velocity(&graph, &checkpoint.velocity)?;
            eprintln!(
                "resuming {} from {} at step {}/{total_steps}",
                options.model,
                checkpoint_path.display(),
                checkpoint.step
            );
            (checkpoint.model, graph, checkpoint.step)
        }
        None => {
            let model = match init.clone() {
                Some(model) => model,
                None => options.model.spec().build(recipe.seed)?,
            };
            let graph = Graph::load(&model, &device, Trainable::All)?;
            (model, graph, 0)
        }
    };
    eprintln!(
        "pretraining {}: {} parameters, {} training images, {} epochs of {steps_per_epoch} steps of {}, \
         lr {} (warm-up, cosine), corruption augmentation p={}, seed {}",
        options.model,
        options.model.spec().parameter_count(),
        train.len(),
        recipe.epochs,
        recipe.batch,
        recipe.lr,
        recipe.corruption_prob,
        recipe.seed
    );

    let spec = options.model.spec();
    let dims = [recipe.batch, spec.in_channels, spec.side, spec.side];
    let mut progress = ProgressLine::new(options.model.name(), total_steps, recipe.batch);
    let mut order: Option<(usize, Vec<usize>)> = None;
    let started = Instant::now();
    for step in start..total_steps {
        let epoch = step / steps_per_epoch;
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            order = Some((epoch, permutation(train.len(), recipe.seed, epoch)));
        }
        let Some((_, ref indices)) = order else { unreachable!("set above") };
        let within = step % steps_per_epoch;
        let chosen = &indices[within * recipe.batch..(within + 1) * recipe.batch];
        let (inputs, labels) = training_batch(&train, chosen, &manifest, recipe, epoch);

        sgd.lr = learning_rate(recipe.lr, step, total_steps, steps_per_epoch.div_ceil(5));
        let forward = graph.forward(batch(&inputs, dims, &device), NormMode::Batch)?;
        let logits = values(forward.logits.clone().detach());
        let loss = cross_entropy(forward.logits, &labels);
        let loss_value = values(loss.clone().detach()).first().copied().unwrap_or(f32::NAN);
        ensure!(loss_value.is_finite(), "the loss diverged at step {step} (lr {}); lower --lr", sgd.lr);
        let grads = loss.backward();
        sgd.step(&mut graph, &grads);
        graph.update_running_stats(&forward.batch_stats);

        let correct = logits
            .chunks_exact(spec.classes)
            .zip(&labels)
            .filter(|(row, label)| math::argmax(row) == Some(**label))
            .count();
        progress.update(step + 1, epoch, recipe.epochs, loss_value, correct as f64 / labels.len() as f64);
        if (step + 1) % options.checkpoint_every.max(1) == 0 || (step + 1) % steps_per_epoch == 0 {
            template = graph.export(&template)?;
            Checkpoint {
                identity: identity.clone(),
                step: step + 1,
                model: template.clone(),
                velocity: sgd.velocity(&graph),
            }
            .write(&checkpoint_path)?;
        }
    }
    progress.finish();
    let trained_steps = total_steps - start;
    let seconds = started.elapsed().as_secs_f64();
    let images_per_second = (trained_steps * recipe.batch) as f64 / seconds.max(1e-9);
    if trained_steps > 0 {
        eprintln!("trained {trained_steps} steps in {seconds:.0} s ({images_per_second:.0} images/s)");
    }
    let trained = graph.export(&template)?;

    eprintln!("evaluating with ONNX Runtime on the test set, clean and under 15 corruptions at severity 5");
    let mut test = load_fashion_mnist(&dir, Split::Test)?;
    truncate(&mut test, options.eval_limit);
    let report = evaluate(&trained, &manifest, &test, &Corruption::BENCHMARK, 5)?;

    let model_path = options.model.model_path(&options.out_dir);
    let provenance = provenance(options, train.len(), &report, &init_note);
    write_atomically(&model_path, &trained.encode())?;
    write_atomically(&Manifest::path_for(&model_path), options.model.manifest_toml(&provenance).as_bytes())?;
    if checkpoint_path.exists() {
        std::fs::remove_file(&checkpoint_path).with_context(|| format!("removing {}", checkpoint_path.display()))?;
    }
    Ok(PretrainOutcome { model_path, report, images_per_second })
}

/// Loads `path` and checks that it has the built-in's architecture: every initializer of the
/// seed-built model, by name, with the same dimensions.
fn initial_model(model: BuiltIn, path: &Path) -> Result<OnnxModel> {
    let loaded = OnnxModel::load(path).with_context(|| format!("loading --init {}", path.display()))?;
    let reference = model.spec().build(0)?;
    for expected in &reference.graph().initializer {
        let name = expected.name.as_deref().unwrap_or_default();
        let found = loaded.initializer(name).with_context(|| {
            format!("--init {} is not a built-in {model}: it has no tensor `{name}`", path.display())
        })?;
        ensure!(
            found.dims == expected.dims,
            "--init {} is not a built-in {model}: `{name}` has dims {:?}, expected {:?}",
            path.display(),
            found.dims,
            expected.dims
        );
    }
    Ok(loaded)
}

/// `, made by `<command>`` from the provenance in the model's manifest, so that a chain of
/// runs stays reproducible; empty when there is none.
fn made_by(model_path: &Path) -> String {
    Manifest::load(Manifest::path_for(model_path))
        .ok()
        .and_then(|manifest| manifest.provenance.get("command")?.as_str().map(|c| format!(", made by `{c}`")))
        .unwrap_or_default()
}

fn truncate(data: &mut Dataset, limit: Option<usize>) {
    if let Some(limit) = limit {
        data.images.truncate(limit);
        data.labels.truncate(limit);
    }
}

fn provenance(
    options: &PretrainOptions,
    train_images: usize,
    report: &EvalReport,
    init_note: &str,
) -> Vec<(String, toml::Value)> {
    let r = &options.recipe;
    let round = |x: f64| (x * 1e4).round() / 1e4;
    vec![
        ("command".into(), toml::Value::String(options.command.clone())),
        ("seed".into(), toml::Value::Integer(r.seed as i64)),
        ("init".into(), toml::Value::String(init_note.to_owned())),
        ("epochs".into(), toml::Value::Integer(r.epochs as i64)),
        ("batch".into(), toml::Value::Integer(r.batch as i64)),
        ("lr".into(), toml::Value::Float(r.lr)),
        ("momentum".into(), toml::Value::Float(r.momentum)),
        ("weight_decay".into(), toml::Value::Float(r.weight_decay)),
        ("corruption_prob".into(), toml::Value::Float(r.corruption_prob)),
        ("parameters".into(), toml::Value::Integer(options.model.spec().parameter_count() as i64)),
        ("train_data".into(), toml::Value::String(format!("Fashion-MNIST train, {train_images} images"))),
        ("eval_images".into(), toml::Value::Integer(report.images as i64)),
        ("clean_accuracy".into(), toml::Value::Float(round(report.clean))),
        ("corrupted_sev5_mean_accuracy".into(), toml::Value::Float(round(report.corrupted_mean()))),
        ("cema_version".into(), toml::Value::String(env!("CARGO_PKG_VERSION").into())),
    ]
}

/// Linear warm-up over `warmup` steps, then cosine decay to zero at `total`.
fn learning_rate(peak: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    0.5 * peak * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// The data order of one epoch (Fisher–Yates from the seed and epoch).
fn permutation(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = Rng::for_stream(&[seed, epoch as u64, 0x6f_7264_6572]);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.int_inclusive(0, i as i64) as usize;
        order.swap(i, j);
    }
    order
}

/// Augmented, preprocessed inputs and labels of one step.
fn training_batch(
    data: &Dataset,
    indices: &[usize],
    manifest: &Manifest,
    recipe: &Recipe,
    epoch: usize,
) -> (Vec<f32>, Vec<usize>) {
    let augmented: Vec<Vec<u8>> =
        indices.par_iter().map(|&i| augment(&data.images[i], recipe, epoch, i as u64).to_chw()).collect();
    let mut inputs = Vec::with_capacity(augmented.len() * manifest.sample_elements());
    for pixels in &augmented {
        manifest.preprocess_u8(pixels, &mut inputs);
    }
    (inputs, indices.iter().map(|&i| data.labels[i] as usize).collect())
}

/// With probability `corruption_prob` a random corruption at a random severity, then a random
/// crop (zero padding of two pixels) and a random horizontal flip.
fn augment(image: &Image, recipe: &Recipe, epoch: usize, index: u64) -> Image {
    let mut rng = Rng::for_stream(&[recipe.seed, epoch as u64, index, 0x6175_676d]);
    let corrupted;
    let source = if recipe.corruption_prob > 0.0 && rng.unit() < recipe.corruption_prob {
        let all: Vec<Corruption> = Corruption::all().collect();
        let corruption = all[rng.int_inclusive(0, all.len() as i64 - 1) as usize];
        let severity = rng.int_inclusive(1, 5) as u8;
        corrupted = corruption.apply(image, severity, recipe.seed ^ (epoch as u64) << 32, index);
        &corrupted
    } else {
        image
    };
    let dx = rng.int_inclusive(-CROP_PAD, CROP_PAD);
    let dy = rng.int_inclusive(-CROP_PAD, CROP_PAD);
    let flip = rng.unit() < 0.5;
    let (w, h, c) = (source.width as i64, source.height as i64, source.channels);
    let mut out = Image::new(source.width, source.height, c, vec![0; source.pixels.len()]);
    for y in 0..h {
        for x in 0..w {
            let sx = if flip { w - 1 - x } else { x } + dx;
            let sy = y + dy;
            if (0..w).contains(&sx) && (0..h).contains(&sy) {
                let (to, from) = (((y * w + x) as usize) * c, ((sy * w + sx) as usize) * c);
                out.pixels[to..to + c].copy_from_slice(&source.pixels[from..from + c]);
            }
        }
    }
    out
}

/// A resumable training state: the weights (as ONNX, running statistics included), the
/// optimiser's momentum, the next step, and the settings that produced them.
struct Checkpoint {
    identity: String,
    step: usize,
    model: OnnxModel,
    velocity: Vec<(String, Vec<f32>)>,
}

const CHECKPOINT_MAGIC: &[u8; 12] = b"CEMA-CKPT-1\n";

impl Checkpoint {
    fn write(&self, path: &Path) -> Result<()> {
        let mut bytes = CHECKPOINT_MAGIC.to_vec();
        let mut put = |chunk: &[u8]| {
            bytes.extend_from_slice(&(chunk.len() as u64).to_le_bytes());
            bytes.extend_from_slice(chunk);
        };
        put(self.identity.as_bytes());
        put(&(self.step as u64).to_le_bytes());
        put(&self.model.encode());
        put(&(self.velocity.len() as u64).to_le_bytes());
        for (name, values) in &self.velocity {
            put(name.as_bytes());
            put(&cema_core::onnx::f32_le_bytes(values));
        }
        let digest = Sha256::digest(&bytes);
        bytes.extend_from_slice(&digest);
        write_atomically(path, &bytes)
    }

    fn read(path: &Path) -> Result<Option<Self>> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let corrupt = || anyhow::anyhow!("{} is not a valid checkpoint; delete it or use --fresh", path.display());
        let body_len = bytes.len().checked_sub(32).ok_or_else(corrupt)?;
        let (body, digest) = bytes.split_at(body_len);
        if !body.starts_with(CHECKPOINT_MAGIC) || Sha256::digest(body).as_slice() != digest {
            return Err(corrupt());
        }
        let mut rest = &body[CHECKPOINT_MAGIC.len()..];
        let mut take = || -> Result<&[u8]> {
            let len = rest.get(..8).ok_or_else(corrupt)?;
            let len = u64::from_le_bytes(len.try_into()?) as usize;
            let chunk = rest.get(8..8 + len).ok_or_else(corrupt)?;
            rest = &rest[8 + len..];
            Ok(chunk)
        };
        let number = |chunk: &[u8]| -> Result<usize> { Ok(u64::from_le_bytes(chunk.try_into()?) as usize) };
        let identity = String::from_utf8(take()?.to_vec())?;
        let step = number(take()?)?;
        let model = OnnxModel::decode(take()?)?;
        let count = number(take()?)?;
        let mut velocity = Vec::with_capacity(count.min(4096));
        for _ in 0..count {
            let name = String::from_utf8(take()?.to_vec())?;
            let values = take()?.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            velocity.push((name, values));
        }
        Ok(Some(Self { identity, step, model, velocity }))
    }
}

/// Writes through a temporary file and a rename, so a crash leaves the old file or the new one.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes).and_then(|_| file.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// One progress line on stderr: rewritten in place on a terminal, printed every 2% otherwise.
struct ProgressLine {
    name: &'static str,
    total: usize,
    batch: usize,
    terminal: bool,
    started: Instant,
    steps_this_run: usize,
    loss: Option<f64>,
    accuracy: Option<f64>,
    last_printed: usize,
}

impl ProgressLine {
    fn new(name: &'static str, total: usize, batch: usize) -> Self {
        Self {
            name,
            total,
            batch,
            terminal: std::io::stderr().is_terminal(),
            started: Instant::now(),
            steps_this_run: 0,
            loss: None,
            accuracy: None,
            last_printed: 0,
        }
    }

    fn update(&mut self, done: usize, epoch: usize, epochs: usize, loss: f32, accuracy: f64) {
        let smooth = |old: Option<f64>, new: f64| Some(old.map_or(new, |o| 0.95 * o + 0.05 * new));
        self.loss = smooth(self.loss, loss as f64);
        self.accuracy = smooth(self.accuracy, accuracy);
        self.steps_this_run += 1;
        let every = (self.total / 50).max(1);
        if !self.terminal && done - self.last_printed < every && done != self.total {
            return;
        }
        self.last_printed = done;
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = (self.steps_this_run * self.batch) as f64 / elapsed.max(1e-9);
        let eta = (self.total - done) as f64 * self.batch as f64 / rate.max(1e-9);
        let width = 24;
        let filled = width * done / self.total.max(1);
        let line = format!(
            "{} epoch {}/{} [{}{}] {done}/{} loss {:.3} acc {:.1}% {rate:.0} img/s eta {}m{:02}s",
            self.name,
            epoch + 1,
            epochs,
            "#".repeat(filled),
            ".".repeat(width - filled),
            self.total,
            self.loss.unwrap_or(f64::NAN),
            100.0 * self.accuracy.unwrap_or(f64::NAN),
            (eta / 60.0) as u64,
            (eta % 60.0) as u64
        );
        if self.terminal {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }

    fn finish(&self) {
        if self.terminal && self.steps_this_run > 0 {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_warms_up_then_decays_to_zero() {
        assert!((learning_rate(0.1, 0, 100, 10) - 0.01).abs() < 1e-12);
        assert!((learning_rate(0.1, 9, 100, 10) - 0.1).abs() < 1e-12);
        assert!((learning_rate(0.1, 10, 100, 10) - 0.1).abs() < 1e-12);
        assert!(learning_rate(0.1, 99, 100, 10) < 1e-3);
    }

    #[test]
    fn a_permutation_holds_every_index_once_and_depends_on_the_epoch() {
        let a = permutation(1000, 7, 0);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_eq!(a, permutation(1000, 7, 0));
        assert_ne!(a, permutation(1000, 7, 1));
    }
}
