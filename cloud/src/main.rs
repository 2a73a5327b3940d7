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
    let db = sled::open(cli.data_dir.join("state"))
        .with_context(|| format!("opening the cloud state in {}", cli.data_dir.display()))?;
    let registry = DeviceRegistry::open(&db)?;
    match cli.command {
        Command::Device(DeviceCommand::Add { id, model }) => {
            let token = registry.add(&id, &model)?;
            eprintln!("device `{id}` added for model `{model}`; its token (store it now, it is not shown again):");
            println!("{token}");
        }
        Command::Device(DeviceCommand::List) => {
            println!("{:<24} {:<16} {:<8} created (unix s)", "device", "model", "status");
            for device in registry.list()? {
                let status = if device.revoked { "revoked" } else { "active" };
                println!("{:<24} {:<16} {:<8} {}", device.id, device.model_id, status, device.created_unix_s);
            }
        }
        Command::Device(DeviceCommand::Revoke { id }) => {
            registry.revoke(&id)?;
            println!("device `{id}` revoked");
        }
    }
    Ok(())
}
