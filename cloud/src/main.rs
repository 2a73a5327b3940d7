//! `cema-cloud`: the operators' command: the service, device identity, TLS material, state
//! (parameter versions, backups). Model tools live in `cema-model` (`tools/`).

/// burn allocates a buffer per tensor operation; mimalloc reuses freed ones where glibc
/// returns them to the kernel and faults them back in (see `Cargo.toml`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use anyhow::{Context, Result};
use cema_cloud::DeviceRegistry;
use cema_cloud::server::{Cloud, CloudConfig};
use cema_proto::transport::{ClientTlsFiles, ClientTransport, ServerTlsFiles};
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
        /// Config file (TOML; every key: README, "The cloud (`cema-cloud serve`)").
        #[arg(long, env = "CEMA_CLOUD_CONFIG")]
        config: Option<PathBuf>,
        /// gRPC listen address (overrides the config).
        #[arg(long, env = "CEMA_CLOUD_GRPC_ADDR")]
        grpc_addr: Option<std::net::SocketAddr>,
        /// Admin HTTP listen address (overrides the config).
        #[arg(long, env = "CEMA_CLOUD_ADMIN_ADDR")]
        admin_addr: Option<std::net::SocketAddr>,
        /// Serve gRPC without TLS (the config's `plaintext = true`): nothing encrypted, the
        /// cloud not authenticated — only on a network you trust.
        #[arg(long, env = "CEMA_CLOUD_PLAINTEXT")]
        plaintext: bool,
        /// PEM certificate chain of the gRPC port (the config's `[tls] cert`); needs --tls-key.
        #[arg(long, env = "CEMA_CLOUD_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// Its PEM private key (`[tls] key`).
        #[arg(long, env = "CEMA_CLOUD_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// PEM CA of client certificates (`[tls] client_ca`): every client must present one
        /// it signed (mutual TLS).
        #[arg(long, env = "CEMA_CLOUD_TLS_CLIENT_CA", requires = "tls_cert")]
        tls_client_ca: Option<PathBuf>,
    },
    /// TLS material for a private deployment.
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Parameter versions of an adaptation scope (run while the service is stopped).
    #[command(subcommand)]
    Params(ParamsCommand),
    /// Manage the devices allowed to connect: in the state folder while the cloud is stopped,
    /// or through a running cloud's operator API with `--server`.
    Device(DeviceArgs),
    /// Write a consistent snapshot of the state (devices, queues, replay buffers, adaptation
    /// state, versions, acknowledged seqs) to a file: from a running cloud with `--server`, or
    /// from the state folder while the cloud is stopped. The file is checked before it is kept.
    Backup {
        /// The backup file to write.
        file: PathBuf,
        /// A running cloud's gRPC endpoint, e.g. `https://127.0.0.1:50051`.
        #[arg(long, env = "CEMA_CLOUD_SERVER")]
        server: Option<String>,
        /// The operator token's file, with `--server` (default: `<data dir>/operator.token`).
        #[arg(long, env = "CEMA_OPERATOR_TOKEN_FILE")]
        operator_token_file: Option<PathBuf>,
        #[command(flatten)]
        tls: ClientTlsArgs,
    },
    /// Restore a backup into `--data-dir`, which must be empty or absent; then `serve` it. The
    /// operator token is not part of a backup: the first start writes a new one.
    Restore {
        /// The backup file.
        file: PathBuf,
    },
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
        scope: cema_cloud::ScopeId,
        /// A stored version.
        version: u64,
    },
}

#[derive(clap::Args)]
struct DeviceArgs {
    /// A running cloud's gRPC endpoint, e.g. `https://127.0.0.1:50051`: the change goes through
    /// its operator API and takes effect at once (a revoked or rotated token's open streams
    /// end). Without it the state folder is changed directly, which needs the cloud stopped.
    #[arg(long, env = "CEMA_CLOUD_SERVER", global = true)]
    server: Option<String>,
    /// The operator token's file, with `--server` (default: `<data dir>/operator.token`).
    #[arg(long, env = "CEMA_OPERATOR_TOKEN_FILE", global = true)]
    operator_token_file: Option<PathBuf>,
    #[command(flatten)]
    tls: ClientTlsArgs,
    #[command(subcommand)]
    command: DeviceCommand,
}

/// How `--server` is reached: TLS (the default) or plaintext.
#[derive(clap::Args)]
struct ClientTlsArgs {
    /// PEM CA certificate the cloud's certificate must chain to (default: the system's roots).
    #[arg(long, env = "CEMA_CLOUD_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// PEM client certificate, for a cloud that requires one (mutual TLS); needs --client-key.
    #[arg(long, env = "CEMA_CLOUD_CLIENT_CERT", global = true)]
    client_cert: Option<PathBuf>,
    /// The client certificate's PEM private key.
    #[arg(long, env = "CEMA_CLOUD_CLIENT_KEY", global = true)]
    client_key: Option<PathBuf>,
    /// Name the cloud's certificate must carry, when it differs from the endpoint's host.
    #[arg(long, global = true)]
    tls_server_name: Option<String>,
    /// Reach an http:// `--server` without TLS.
    #[arg(long, global = true)]
    plaintext: bool,
}

impl ClientTlsArgs {
    /// A channel to `server` with these settings.
    async fn connect(&self, server: &str) -> Result<tonic::transport::Channel> {
        let files = ClientTlsFiles {
            ca_cert: self.ca_cert.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            server_name: self.tls_server_name.clone(),
        };
        let endpoint = ClientTransport::from_options(self.plaintext, &files)?.endpoint(server)?;
        endpoint.connect().await.with_context(|| format!("connecting to {server}"))
    }
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Make a private CA and certificates signed by it, for TLS and mutual TLS without a public
    /// CA: `ca.pem`/`ca.key`, `server.pem`/`server.key` for every `--server-name`, and
    /// `<client>.pem`/`<client>.key` per `--client`. Keys are written with mode 0600; an
    /// existing file is never overwritten.
    Init {
        /// Folder to write into (created).
        #[arg(long, default_value = "tls")]
        out: PathBuf,
        /// Names (DNS or IP) the server certificate is valid for; repeat the flag.
        #[arg(long = "server-name", required = true)]
        server_names: Vec<String>,
        /// A client certificate to issue (its common name); repeat the flag.
        #[arg(long = "client")]
        clients: Vec<String>,
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
    /// Issue a new token for a device (printed once); the old one stops working.
    Rotate {
        /// Device id.
        id: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    cema_host::init_logging();
    match cli.command {
        Command::Serve { config, grpc_addr, admin_addr, plaintext, tls_cert, tls_key, tls_client_ca } => {
            let mut config = match config {
                Some(path) => CloudConfig::load(&path)?,
                None => CloudConfig::default(),
            };
            config.plaintext |= plaintext;
            if let (Some(cert), Some(key)) = (tls_cert, tls_key) {
                config.tls = Some(ServerTlsFiles { cert, key, client_ca: tls_client_ca });
            }
            config.grpc_addr = grpc_addr.unwrap_or(config.grpc_addr);
            config.admin_addr = admin_addr.unwrap_or(config.admin_addr);
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let cloud = Cloud::start(&config, &cli.data_dir).await?;
                tracing::info!(grpc = %cloud.grpc_addr(), admin = %cloud.admin_addr(), data = %cli.data_dir.display(), "cema-cloud started");
                cloud.run(cema_host::termination()).await
            })
        }
        Command::Params(command) => params(&cli.data_dir, command),
        Command::Tls(TlsCommand::Init { out, server_names, clients }) => {
            for file in cema_cloud::certs::init(&out, &server_names, &clients)? {
                println!("{}", file.display());
            }
            Ok(())
        }
        Command::Device(DeviceArgs { server: Some(server), operator_token_file, tls, command }) => {
            let token_file =
                operator_token_file.unwrap_or_else(|| cema_cloud::operator::OperatorToken::default_path(&cli.data_dir));
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(device_remote(&server, &tls, &token_file, command))
        }
        Command::Device(DeviceArgs { server: None, command, .. }) => device(&cli.data_dir, command),
        Command::Backup { file, server, operator_token_file, tls } => {
            let summary = match server {
                Some(server) => {
                    let token_file = operator_token_file
                        .unwrap_or_else(|| cema_cloud::operator::OperatorToken::default_path(&cli.data_dir));
                    let runtime = tokio::runtime::Runtime::new()?;
                    runtime.block_on(backup_remote(&server, &tls, &token_file, &file))?
                }
                None => {
                    let db = open_state(&cli.data_dir)?;
                    cema_cloud::backup::snapshot(&db, &file)?
                }
            };
            println!(
                "backup {}: {} trees, {} entries, {} bytes, checksum verified",
                file.display(),
                summary.trees,
                summary.entries,
                summary.bytes
            );
            Ok(())
        }
        Command::Restore { file } => {
            let summary = cema_cloud::backup::restore(&file, &cli.data_dir)?;
            println!(
                "restored {} into {}: {} trees, {} entries",
                file.display(),
                cli.data_dir.display(),
                summary.trees,
                summary.entries
            );
            Ok(())
        }
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

/// The state database of a stopped cloud.
fn open_state(data_dir: &std::path::Path) -> Result<sled::Db> {
    sled::open(data_dir.join("state")).with_context(|| {
        format!(
            "opening the cloud state in {} (if the cloud is running, use --server <its gRPC endpoint>)",
            data_dir.display()
        )
    })
}

/// Streams a running cloud's snapshot into `file` (via a partial file, verified, renamed).
async fn backup_remote(
    server: &str,
    tls: &ClientTlsArgs,
    token_file: &std::path::Path,
    file: &std::path::Path,
) -> Result<cema_cloud::backup::SnapshotSummary> {
    use cema_proto::v1::{BackupRequest, operator_client::OperatorClient};
    use std::io::Write;
    let token = cema_cloud::operator::read_token(token_file)?;
    let mut client =
        OperatorClient::new(tls.connect(server).await?).max_decoding_message_size(cema_proto::MAX_MESSAGE_BYTES);
    let mut chunks = client
        .backup(authorized(&token, BackupRequest {})?)
        .await
        .map_err(|s| anyhow::anyhow!("{server} refused: {}", s.message()))?
        .into_inner();
    let partial = file.with_extension("partial");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?,
    );
    while let Some(chunk) = chunks.message().await.map_err(|s| anyhow::anyhow!("backup stream: {}", s.message()))? {
        out.write_all(&chunk.data)?;
    }
    out.into_inner()?.sync_all()?;
    let summary = cema_cloud::backup::verify(&partial)?;
    std::fs::rename(&partial, file).with_context(|| format!("writing {}", file.display()))?;
    Ok(summary)
}

fn device(data_dir: &std::path::Path, command: DeviceCommand) -> Result<()> {
    let db = open_state(data_dir)?;
    let registry = DeviceRegistry::open(&db)?;
    match command {
        DeviceCommand::Add { id, model } => print_token(&id, "added for model", &model, &registry.add(&id, &model)?),
        DeviceCommand::List => {
            let devices = registry.list()?;
            print_devices(devices.iter().map(|d| (d.id.as_str(), d.model_id.as_str(), d.revoked, d.created_unix_s)));
        }
        DeviceCommand::Revoke { id } => {
            registry.revoke(&id)?;
            println!("device `{id}` revoked");
        }
        DeviceCommand::Rotate { id } => {
            let token = registry.rotate(&id)?;
            print_token(&id, "given a new token; model", &registry.get(&id)?.model_id, &token);
        }
    }
    Ok(())
}

/// The same commands through a running cloud's `cema.v1.Operator` service.
async fn device_remote(
    server: &str,
    tls: &ClientTlsArgs,
    token_file: &std::path::Path,
    command: DeviceCommand,
) -> Result<()> {
    use cema_proto::v1::{AddDeviceRequest, DeviceRef, ListDevicesRequest, operator_client::OperatorClient};
    let token = cema_cloud::operator::read_token(token_file)?;
    let mut client = OperatorClient::new(tls.connect(server).await?);
    let refused = |status: tonic::Status| anyhow::anyhow!("{server} refused: {}", status.message());
    match command {
        DeviceCommand::Add { id, model } => {
            let request = authorized(&token, AddDeviceRequest { device_id: id, model_id: model.clone() })?;
            let reply = client.add_device(request).await.map_err(refused)?.into_inner();
            print_token(
                &reply.device.map(|d| d.device_id).unwrap_or_default(),
                "added for model",
                &model,
                &reply.token,
            );
        }
        DeviceCommand::List => {
            let reply =
                client.list_devices(authorized(&token, ListDevicesRequest {})?).await.map_err(refused)?.into_inner();
            print_devices(
                reply.devices.iter().map(|d| (d.device_id.as_str(), d.model_id.as_str(), d.revoked, d.created_unix_s)),
            );
        }
        DeviceCommand::Revoke { id } => {
            client.revoke_device(authorized(&token, DeviceRef { device_id: id.clone() })?).await.map_err(refused)?;
            println!("device `{id}` revoked; its open streams were ended");
        }
        DeviceCommand::Rotate { id } => {
            let reply = client
                .rotate_device(authorized(&token, DeviceRef { device_id: id })?)
                .await
                .map_err(refused)?
                .into_inner();
            let device = reply.device.unwrap_or_default();
            print_token(&device.device_id, "given a new token; model", &device.model_id, &reply.token);
        }
    }
    Ok(())
}

/// A request carrying the operator token.
fn authorized<T>(token: &str, message: T) -> Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(cema_proto::AUTHORIZATION, cema_proto::bearer(token).parse()?);
    Ok(request)
}

/// A new token on stdout (alone, for scripts), what happened on stderr.
fn print_token(id: &str, what: &str, model: &str, token: &str) {
    eprintln!("device `{id}` {what} `{model}`; its token (store it now, it is not shown again):");
    println!("{token}");
}

fn print_devices<'a>(devices: impl Iterator<Item = (&'a str, &'a str, bool, u64)>) {
    println!("{:<24} {:<16} {:<8} created (unix s)", "device", "model", "status");
    for (id, model, revoked, created) in devices {
        let status = if revoked { "revoked" } else { "active" };
        println!("{id:<24} {model:<16} {status:<8} {created}");
    }
}
