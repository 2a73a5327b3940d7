//! `cema-model pretrain`: trains a built-in model from its seed with the burn executor, with a
//! progress line, resumable checkpoints, and an ONNX Runtime evaluation (clean and under the 15
//! benchmark corruptions at severity 5) recorded in the manifest it writes.
//!
//! Reproducibility: the seed fixes the initial weights, the data order and every augmentation;
//! a resumed run continues with exactly the batches the uninterrupted run would have used.
//! Floating-point sums in multi-threaded kernels may still differ across machines.

mod checkpoint;
mod data;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use cema_compute::loss::cross_entropy;
use cema_compute::{Graph, NormMode, Sgd, Trainable, batch, cpu_autodiff, values};
use cema_core::{Manifest, OnnxModel, math};
use cema_shift::corrupt::Corruption;
use cema_shift::dataset::{Dataset, Split, fashion_mnist_dir, load_fashion_mnist};

use crate::builtin::{BuiltIn, Recipe};
use crate::evaluate::{EvalReport, evaluate};
use checkpoint::{Checkpoint, ProgressLine, write_atomically};
use data::{learning_rate, permutation, training_batch};

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
    let mut sgd = Sgd::new(recipe.lr, recipe.momentum).with_weight_decay(recipe.weight_decay);
    let (template, mut graph, start) = start_state(options, init, &identity, &checkpoint_path, &mut sgd, total_steps)?;
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
    let run = TrainingRun { options, train: &train, manifest: &manifest, identity, checkpoint_path: &checkpoint_path };
    let started = Instant::now();
    let template = run.train(&mut graph, &mut sgd, template, start..total_steps)?;
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

/// The weights, graph and first step: from the checkpoint when one of these settings exists,
/// else from `init` or the seed.
fn start_state(
    options: &PretrainOptions,
    init: Option<OnnxModel>,
    identity: &str,
    checkpoint_path: &Path,
    sgd: &mut Sgd,
    total_steps: usize,
) -> Result<(OnnxModel, Graph, usize)> {
    let device = &cpu_autodiff();
    let checkpoint = if options.fresh { None } else { Checkpoint::read(checkpoint_path)? };
    let Some(checkpoint) = checkpoint else {
        let model = match init {
            Some(model) => model,
            None => options.model.spec().build(options.recipe.seed)?,
        };
        let graph = Graph::load(&model, device, Trainable::All)?;
        return Ok((model, graph, 0));
    };
    if checkpoint.identity != identity {
        bail!(
            "{} holds a run with other settings ({}); rerun with --fresh to discard it",
            checkpoint_path.display(),
            checkpoint.identity
        );
    }
    let graph = Graph::load(&checkpoint.model, device, Trainable::All)?;
    sgd.restore_velocity(&graph, &checkpoint.velocity)?;
    eprintln!(
        "resuming {} from {} at step {}/{total_steps}",
        options.model,
        checkpoint_path.display(),
        checkpoint.step
    );
    Ok((checkpoint.model, graph, checkpoint.step))
}

/// What the training loop works with.
struct TrainingRun<'a> {
    options: &'a PretrainOptions,
    train: &'a Dataset,
    manifest: &'a Manifest,
    identity: String,
    checkpoint_path: &'a Path,
}

impl TrainingRun<'_> {
    /// Runs `steps` (of the whole schedule), checkpointing every `checkpoint_every` steps and
    /// at each epoch's end; returns the last exported model.
    fn train(
        &self,
        graph: &mut Graph,
        sgd: &mut Sgd,
        mut template: OnnxModel,
        steps: std::ops::Range<usize>,
    ) -> Result<OnnxModel> {
        let device = &graph.device().clone();
        let (options, recipe) = (self.options, &self.options.recipe);
        let steps_per_epoch = self.train.len() / recipe.batch;
        let total_steps = recipe.epochs * steps_per_epoch;
        let spec = options.model.spec();
        let dims = [recipe.batch, spec.in_channels, spec.side, spec.side];
        let mut progress = ProgressLine::new(options.model.name(), total_steps, recipe.batch);
        let mut order: Option<(usize, Vec<usize>)> = None;
        for step in steps {
            let epoch = step / steps_per_epoch;
            if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                order = Some((epoch, permutation(self.train.len(), recipe.seed, epoch)));
            }
            let Some((_, ref indices)) = order else { unreachable!("set above") };
            let within = step % steps_per_epoch;
            let chosen = &indices[within * recipe.batch..(within + 1) * recipe.batch];
            let (inputs, labels) = training_batch(self.train, chosen, self.manifest, recipe, epoch);

            sgd.lr = learning_rate(recipe.lr, step, total_steps, steps_per_epoch.div_ceil(5));
            let forward = graph.forward(batch(&inputs, dims, device), NormMode::Batch)?;
            let logits = values(forward.logits.clone().detach());
            let loss = cross_entropy(forward.logits, &labels);
            let loss_value = values(loss.clone().detach()).first().copied().unwrap_or(f32::NAN);
            ensure!(loss_value.is_finite(), "the loss diverged at step {step} (lr {}); lower --lr", sgd.lr);
            let grads = loss.backward();
            sgd.step(graph, &grads);
            graph.update_running_stats(&forward.batch_stats);

            let correct = logits
                .chunks_exact(spec.classes)
                .zip(&labels)
                .filter(|(row, label)| math::argmax(row) == Some(**label))
                .count();
            progress.update(step + 1, epoch, recipe.epochs, loss_value, correct as f64 / labels.len() as f64);
            if (step + 1) % options.checkpoint_every.max(1) == 0 || (step + 1) % steps_per_epoch == 0 {
                template = graph.export(&template)?;
                let velocity = sgd.velocity(graph);
                let checkpoint =
                    Checkpoint { identity: self.identity.clone(), step: step + 1, model: template.clone(), velocity };
                checkpoint.write(self.checkpoint_path)?;
            }
        }
        progress.finish();
        Ok(template)
    }
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
