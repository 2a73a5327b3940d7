//! `cema-cloud`: the operators' command: device identity, model checks and evaluation,
//! pretraining of the built-in models, benchmarks.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cema_cloud::DeviceRegistry;
use cema_cloud::builtin::BuiltIn;
use cema_cloud::evaluate::evaluate;
use cema_cloud::pretrain::PretrainOptions;
use cema_cloud::server::{Cloud, CloudConfig, termination};
use clap::{Parser, Subcommand};

/// The CEMA cloud: adapts edge models under distribution shift.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Folder holding the cloud's state (a sled database).
    #[arg(long, env = "CEMA_CLOUD_DATA_DIR", default_value = "cema-cloud-data", global = true)]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: gRPC for edges, admin HTTP (`/metrics`, `/healthz`, `/readyz`).
    /// Without `--config`, serves model `default` = models/student.onnx adapted from
    /// models/foundation.onnx. Stops gracefully on SIGTERM/SIGINT.
    Serve {
        /// Config file (TOML; see README "Cloud configuration").
        #[arg(long, env = "CEMA_CLOUD_CONFIG")]
        config: Option<PathBuf>,
        /// gRPC listen address (overrides the config).
        #[arg(long, env = "CEMA_CLOUD_GRPC_ADDR")]
        grpc_addr: Option<std::net::SocketAddr>,
        /// Admin HTTP listen address (overrides the config).
        #[arg(long, env = "CEMA_CLOUD_ADMIN_ADDR")]
        admin_addr: Option<std::net::SocketAddr>,
    },
    /// Parameter versions of an adaptation scope (run while the service is stopped).
    #[command(subcommand)]
    Params(ParamsCommand),
    /// Manage the devices allowed to connect.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Inspect models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Measure (prints figures, asserts nothing).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Train a built-in model on Fashion-MNIST and write `<out>/<model>.onnx` and its manifest
    /// `<out>/<model>.toml` (with the command, seed and measured accuracy). Resumes from
    /// `<out>/<model>.ckpt` when interrupted. The shipped files in `models/` were made by
    /// `cema-cloud pretrain --model student` and `--model foundation` with the defaults, the
    /// foundation then continued with `--init` (its manifest records the exact commands).
    Pretrain(PretrainArgs),
}

#[derive(clap::Args)]
struct PretrainArgs {
    /// Which built-in model.
    #[arg(long, value_enum)]
    model: BuiltIn,
    /// Output folder.
    #[arg(long, default_value = cema_cloud::builtin::MODELS_DIR)]
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
enum ParamsCommand {
    /// List scopes: latest and stored versions, steps, replay and queue sizes, and each
    /// device's highest acknowledged seq (the running service serves the same at `/scopes`).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Publish an earlier version's parameters again, as a new version (momentum reset).
    Rollback {
        /// Scope, e.g. `device:cam-1` or `fleet:default`.
        scope: String,
        /// A stored version.
        version: u64,
    },
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

#[derive(Subcommand)]
enum ModelCommand {
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
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Register a device and print its token (shown once; only its hash is stored).
    Add {
        /// Device id: 1–64 characters from A–Z, a–z, 0–9, `_`, `-`.
        id: String,
        /// The model id the device runs.
        #[arg(long, default_value = "default")]
        model: String,
    },
    /// List devices.
    List,
    /// Revoke a device's token; its connections are refused from then on.
    Revoke {
        /// Device id.
        id: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    cema_edge::admin::init_logging();
    match cli.command {
        Command::Serve { config, grpc_addr, admin_addr } => {
            let mut config = match config {
                Some(path) => CloudConfig::load(&path)?,
                None => CloudConfig::default(),
            };
            config.grpc_addr = grpc_addr.unwrap_or(config.grpc_addr);
            config.admin_addr = admin_addr.unwrap_or(config.admin_addr);
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let cloud = Cloud::start(&config, &cli.data_dir).await?;
                tracing::info!(grpc = %cloud.grpc_addr(), admin = %cloud.admin_addr(), data = %cli.data_dir.display(), "cema-cloud started");
                cloud.run(termination()).await
            })
        }
        Command::Params(command) => params(&cli.data_dir, command),
        Command::Model(ModelCommand::Check { model, batch }) => {
            let report = cema_cloud::check::check_model(&model, batch.max(1)).map_err(anyhow::Error::msg)?;
            print!("{}", report.text);
            println!("{}", report.summary_line());
            std::process::exit(if report.passed() { 0 } else { 1 });
        }
        Command::Model(ModelCommand::Eval { model, severity, limit }) => {
            let onnx = cema_core::OnnxModel::load(&model)?;
            let manifest = cema_core::Manifest::load(cema_core::Manifest::path_for(&model))?;
            let dir = cema_shift::dataset::fashion_mnist_dir()?;
            let mut test = cema_shift::dataset::load_fashion_mnist(&dir, cema_shift::Split::Test)?;
            if let Some(limit) = limit {
                test.images.truncate(limit);
                test.labels.truncate(limit);
            }
            let report = evaluate(&onnx, &manifest, &test, &cema_shift::Corruption::BENCHMARK, severity)
                .map_err(anyhow::Error::msg)?;
            print!("{}", report.table());
            println!(
                "clean_accuracy={:.4} corrupted_mean_accuracy={:.4} severity={severity} images={}",
                report.clean,
                report.corrupted_mean(),
                report.images
            );
            Ok(())
        }
        Command::Pretrain(args) => pretrain(args),
        Command::Bench(BenchCommand::Ingest { devices, seconds }) => {
            let scopes = cema_cloud::bench::bench_idle_scopes(1000).map_err(anyhow::Error::msg)?;
            let line = cema_cloud::bench::bench_ingest(devices, seconds).map_err(anyhow::Error::msg)?;
            println!("{line} {scopes}");
            Ok(())
        }
        Command::Bench(BenchCommand::Compute) => {
            let line = cema_cloud::bench::bench_compute().map_err(anyhow::Error::msg)?;
            println!("{line}");
            Ok(())
        }
        Command::Device(command) => device(&cli.data_dir, command),
    }
}

fn params(data_dir: &std::path::Path, command: ParamsCommand) -> Result<()> {
    let db = sled::open(data_dir.join("state"))
        .with_context(|| format!("opening the cloud state in {} (stop the service first)", data_dir.display()))?;
    let store = cema_cloud::store::Store::open(&db)?;
    match command {
        ParamsCommand::List { json } => {
            let summaries = store.summaries()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summaries)?);
                return Ok(());
            }
            println!(
                "{:<32} {:>8} {:>8} {:>8} {:>8}  stored versions",
                "scope", "version", "steps", "replay", "queued"
            );
            for s in summaries {
                let range = s.stored_versions.map_or_else(|| "none".to_owned(), |(a, b)| format!("{a}–{b}"));
                println!(
                    "{:<32} {:>8} {:>8} {:>8} {:>8}  {range}",
                    s.scope, s.version, s.steps, s.replay, s.queued_samples
                );
                for (device, progress) in &s.devices {
                    println!(
                        "  {device:<30} acked seq {}, batches processed through {}",
                        progress.acked_seq, progress.through_batch
                    );
                }
            }
        }
        ParamsCommand::Rollback { scope, version } => {
            let new = store.rollback(&scope, version)?;
            println!("scope `{scope}`: version {version} republished as version {new}");
        }
    }
    Ok(())
}

fn pretrain(args: PretrainArgs) -> Result<()> {
    let mut recipe = args.model.recipe();
    recipe.epochs = args.epochs.unwrap_or(recipe.epochs);
    recipe.batch = args.batch.unwrap_or(recipe.batch);
    recipe.lr = args.lr.unwrap_or(recipe.lr);
    recipe.seed = args.seed.unwrap_or(recipe.seed);
    recipe.corruption_prob = args.corruption_prob.unwrap_or(recipe.corruption_prob);
    let command = std::iter::once("cema-cloud".to_owned()).chain(std::env::args().skip(1)).collect::<Vec<_>>();
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
    let outcome = cema_cloud::pretrain::pretrain(&options)?;
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

fn device(data_dir: &std::path::Path, command: DeviceCommand) -> Result<()> {
    let db = sled::open(data_dir.join("state"))
        .with_context(|| format!("opening the cloud state in {}", data_dir.display()))?;
    let registry = DeviceRegistry::open(&db)?;
    match command {
        DeviceCommand::Add { id, model } => {
            let token = registry.add(&id, &model)?;
            eprintln!("device `{id}` added for model `{model}`; its token (store it now, it is not shown again):");
            println!("{token}");
        }
        DeviceCommand::List => {
            println!("{:<24} {:<16} {:<8} created (unix s)", "device", "model", "status");
            for device in registry.list()? {
                let status = if device.revoked { "revoked" } else { "active" };
                println!("{:<24} {:<16} {:<8} {}", device.id, device.model_id, status, device.created_unix_s);
            }
        }
        DeviceCommand::Revoke { id } => {
            registry.revoke(&id)?;
            println!("device `{id}` revoked");
        }
    }
    Ok(())
}
