//! `cema-cloud`: the operators' command: device identity, model checks and evaluation,
//! pretraining of the built-in models, benchmarks.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cema_cloud::DeviceRegistry;
use cema_cloud::builtin::BuiltIn;
use cema_cloud::evaluate::evaluate;
use cema_cloud::pretrain::PretrainOptions;
use cema_cloud::server::{Cloud, CloudConfig, termination};
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
        /// Config file (TOML; see README "Cloud configuration").
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
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ZooArch {
    /// The small 224-px depthwise CNN of `bench compute` (10 classes).
    Mobile224,
    /// MobileNet v1 at 224 px with 1,000 classes (≈ 4.2 M parameters).
    MobilenetV1,
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
    cema_edge::admin::init_logging();
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
        Command::Model(ModelCommand::Zoo { arch, out, seed }) => {
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
