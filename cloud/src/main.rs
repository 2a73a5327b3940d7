//! `cema-cloud`: the operators' command. Device identity is available now; the service
//! (`serve`) arrives with the adaptation engine.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cema_cloud::DeviceRegistry;
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
    /// Manage the devices allowed to connect.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Inspect models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Measure (prints figures, asserts nothing).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// burn forward vs ONNX Runtime, pretraining throughput, CEMA step time; ends with a
    /// `key=value` line including `step_seconds` and `forward_vs_ort`.
    Compute,
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
    match cli.command {
        Command::Model(ModelCommand::Check { model, batch }) => {
            let report = cema_cloud::check::check_model(&model, batch.max(1)).map_err(anyhow::Error::msg)?;
            print!("{}", report.text);
            println!("{}", report.summary_line());
            std::process::exit(if report.passed() { 0 } else { 1 });
        }
        Command::Bench(BenchCommand::Compute) => {
            let line = cema_cloud::bench::bench_compute().map_err(anyhow::Error::msg)?;
            println!("{line}");
            Ok(())
        }
        Command::Device(command) => device(&cli.data_dir, command),
    }
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
