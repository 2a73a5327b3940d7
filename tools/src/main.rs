//! `cema-model`: the model tools — will a model work (`check`), how accurate is it under shift
//! (`eval`), train the built-in models (`pretrain`), write zoo architectures (`zoo`), and what
//! the cloud's compute and ingest cost (`bench`). The service itself is `cema-cloud`.

/// burn allocates a buffer per tensor operation; mimalloc reuses freed ones where glibc
/// returns them to the kernel and faults them back in (see `Cargo.toml`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use anyhow::{Context, Result};
use cema_tools::builtin::BuiltIn;
use cema_tools::evaluate::evaluate;
use cema_tools::pretrain::PretrainOptions;
use clap::{Parser, Subcommand};

/// CEMA's model tools: checks, evaluation, pretraining, zoo architectures, benchmarks.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Will this model work? Runs it with burn and ONNX Runtime, lists operators and
    /// normalisation layers, and ends with `supported=… bn_layers=… max_rel_err=…`.
    /// Exits non-zero when unsupported or when the engines differ by more than 1e-4.
    Check {
        /// The ONNX model (a manifest `model.toml` beside it is used if present).
        model: PathBuf,
        /// Samples in the random batch.
        #[arg(long, default_value_t = 2)]
        batch: usize,
    },
    /// Accuracy of a Fashion-MNIST model (ONNX + manifest) with ONNX Runtime, clean and under
    /// the 15 benchmark corruptions.
    Eval {
        /// The ONNX model (its manifest `model.toml` beside it).
        model: PathBuf,
        /// Corruption severity, 1–5.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(1..=5))]
        severity: u8,
        /// Evaluate on the first N test images only.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Write an architecture of the zoo with seeded random weights (ONNX only; draft its
    /// manifest with `cema-edge manifest init`): for benchmarks and checks at sizes no
    /// shipped model has.
    Zoo {
        /// Which architecture.
        #[arg(value_enum)]
        arch: ZooArch,
        /// The ONNX file to write (an existing one is kept).
        #[arg(long)]
        out: PathBuf,
        /// Seed of the weights.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Train a built-in model on Fashion-MNIST and write `<out>/<model>.onnx` and its manifest
    /// `<out>/<model>.toml` (with the command, seed and measured accuracy). Resumes from
    /// `<out>/<model>.ckpt` when interrupted. The shipped files in `models/` were made this way
    /// (then named `cema-cloud pretrain`) with the defaults, the foundation then continued
    /// with `--init` (its manifest records the exact commands).
    Pretrain(PretrainArgs),
    /// Measure (prints figures, asserts nothing).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(clap::Args)]
struct PretrainArgs {
    /// Which built-in model.
    #[arg(long, value_enum)]
    model: BuiltIn,
    /// Output folder.
    #[arg(long, default_value = cema_tools::builtin::MODELS_DIR)]
    out: PathBuf,
    /// Passes over the training set (default: the model's recipe).
    #[arg(long)]
    epochs: Option<usize>,
    /// Images per step (default: the model's recipe).
    #[arg(long)]
    batch: Option<usize>,
    /// Peak learning rate (default: the model's recipe).
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of weights, data order and augmentation (default: the model's recipe).
    #[arg(long)]
    seed: Option<u64>,
    /// Probability of corrupting a training image (default: 0 student, 0.4 foundation).
    #[arg(long)]
    corruption_prob: Option<f64>,
    /// Train on the first N training images only.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Evaluate on the first N test images only.
    #[arg(long)]
    eval_limit: Option<usize>,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 50)]
    checkpoint_every: usize,
    /// Discard an existing checkpoint and start from the seed.
    #[arg(long)]
    fresh: bool,
    /// Continue from this model's weights (a built-in of the same kind) instead of the seed's
    /// initialisation; the seed still fixes data order and augmentation.
    #[arg(long)]
    init: Option<PathBuf>,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// burn forward vs ONNX Runtime, pretraining throughput, CEMA step time; ends with a
    /// `key=value` line including `step_seconds` and `forward_vs_ort`.
    Compute,
    /// Ingest on loopback with simulated devices (a cloud in this process); ends with a
    /// `key=value` line including `samples_per_s` and `p99_ack_ms`. Also the memory of an idle
    /// adaptation scope.
    Ingest {
        /// Concurrent devices.
        #[arg(long, default_value_t = 10)]
        devices: usize,
        /// Seconds of load.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ZooArch {
    /// The small 224-px depthwise CNN of `bench compute` (10 classes).
    Mobile224,
    /// MobileNet v1 at 224 px with 1,000 classes (≈ 4.2 M parameters).
    MobilenetV1,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    cema_host::init_logging();
    match cli.command {
        Command::Check { model, batch } => {
            let report = cema_tools::check::check_model(&model, batch.max(1))?;
            print!("{}", report.text);
            println!("{}", report.summary_line());
            std::process::exit(if report.passed() { 0 } else { 1 });
        }
        Command::Eval { model, severity, limit } => {
            let onnx = cema_core::OnnxModel::load(&model)?;
            let manifest = cema_core::Manifest::load(cema_core::Manifest::path_for(&model))?;
            let dir = cema_shift::dataset::fashion_mnist_dir()?;
            let mut test = cema_shift::dataset::load_fashion_mnist(&dir, cema_shift::Split::Test)?;
            if let Some(limit) = limit {
                test.images.truncate(limit);
                test.labels.truncate(limit);
            }
            let report = evaluate(&onnx, &manifest, &test, &cema_shift::Corruption::BENCHMARK, severity)?;
            print!("{}", report.table());
            println!(
                "clean_accuracy={:.4} corrupted_mean_accuracy={:.4} severity={severity} images={}",
                report.clean,
                report.corrupted_mean(),
                report.images
            );
            Ok(())
        }
        Command::Zoo { arch, out, seed } => {
            if out.exists() {
                anyhow::bail!("{} exists; remove it or choose another --out", out.display());
            }
            let model = match arch {
                ZooArch::Mobile224 => cema_compute::zoo::mobile_224(seed)?,
                ZooArch::MobilenetV1 => cema_compute::zoo::mobilenet_v1_224(seed)?,
            };
            std::fs::write(&out, model.encode()).with_context(|| format!("writing {}", out.display()))?;
            let bn = cema_core::NormDiscovery::of(&model).layers.len();
            println!("{}: {bn} BN layers; next: cema-edge manifest init {}", out.display(), out.display());
            Ok(())
        }
        Command::Pretrain(args) => pretrain(args),
        Command::Bench(BenchCommand::Ingest { devices, seconds }) => {
            let scopes = cema_tools::bench::bench_idle_scopes(1000)?;
            let line = cema_tools::bench::bench_ingest(devices, seconds)?;
            println!("{line} {scopes}");
            Ok(())
        }
        Command::Bench(BenchCommand::Compute) => {
            let line = cema_tools::bench::bench_compute()?;
            println!("{line}");
            Ok(())
        }
    }
}

fn pretrain(args: PretrainArgs) -> Result<()> {
    let mut recipe = args.model.recipe();
    recipe.epochs = args.epochs.unwrap_or(recipe.epochs);
    recipe.batch = args.batch.unwrap_or(recipe.batch);
    recipe.lr = args.lr.unwrap_or(recipe.lr);
    recipe.seed = args.seed.unwrap_or(recipe.seed);
    recipe.corruption_prob = args.corruption_prob.unwrap_or(recipe.corruption_prob);
    let command = std::iter::once("cema-model".to_owned()).chain(std::env::args().skip(1)).collect::<Vec<_>>();
    let options = PretrainOptions {
        model: args.model,
        recipe,
        out_dir: args.out,
        train_limit: args.train_limit,
        eval_limit: args.eval_limit,
        checkpoint_every: args.checkpoint_every,
        fresh: args.fresh,
        init: args.init,
        command: command.join(" "),
    };
    let outcome = cema_tools::pretrain::pretrain(&options)?;
    print!("{}", outcome.report.table());
    println!(
        "model={} clean_accuracy={:.4} corrupted_mean_accuracy={:.4} images_per_s={:.0} path={}",
        options.model,
        outcome.report.clean,
        outcome.report.corrupted_mean(),
        outcome.images_per_second,
        outcome.model_path.display()
    );
    Ok(())
}
