//! `cema-edge`: the agent on the device. `run` streams a source through the model, serves
//! predictions as JSON lines, uploads the informative ones and applies the cloud's updates.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cema_edge::config::EdgeConfig;
use cema_edge::outbox::OutboxLimits;
use cema_edge::serve::{ServeOptions, ServeSummary, finish, serve};
use cema_edge::{Agent, CloudLink, EdgeStore, OrtLibrary, Runtime};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

mod manifest_init;

/// The CEMA edge agent: forward-only inference, selective upload, live parameter updates.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream a source through the model; print one JSON line per prediction.
    ///
    /// Settings come from flags, then `CEMA_EDGE_*` environment variables, then `--config`
    /// (TOML, same names with underscores), then defaults. SIGTERM/SIGINT finish the batch,
    /// drain the outbox (up to --drain-timeout) and exit 0.
    Run(Box<RunArgs>),
    /// Forget adapted parameters; the next run serves the model's own.
    Reset {
        /// The agent's state folder.
        #[arg(long, env = "CEMA_EDGE_DATA_DIR", default_value = "cema-edge-data")]
        data_dir: PathBuf,
    },
    /// Agent throughput against raw ONNX Runtime, selection overhead, update apply time and
    /// peak RSS. Ends with `agent_vs_raw=… select_overhead=… swap_ms=… peak_rss_mb=…`.
    Bench {
        /// The ONNX model (manifest beside it).
        #[arg(long, default_value = "models/student.onnx")]
        model: PathBuf,
        /// Batch size.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Batches per measurement.
        #[arg(long, default_value_t = 50)]
        batches: usize,
        /// Hold only what a deployed agent holds (its session and one prepared update), so
        /// `peak_rss_mb` is the agent's footprint; skips the raw comparisons.
        #[arg(long)]
        agent_only: bool,
    },
    /// Model manifests (the TOML beside each `.onnx`).
    #[command(subcommand)]
    Manifest(ManifestCommand),
}

#[derive(Subcommand)]
enum ManifestCommand {
    /// Draft `<model>.toml` from the graph: input name and shape, layout, logits output,
    /// class names (`--classes`), preprocessing preset. Validated against the model before it
    /// is written; an existing manifest is kept unless `--force`.
    Init(manifest_init::InitArgs),
}

/// The flags of `run`, each also an environment variable and a key of the config file
/// (`cema_edge::config::EdgeConfig` holds the defaults and the parsed values).
#[derive(Args, Default, Serialize)]
struct RunArgs {
    /// Config file (TOML) with any of these settings.
    #[arg(long, env = "CEMA_EDGE_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// The ONNX model (its manifest `<name>.toml` beside it). Default models/student.onnx.
    #[arg(long, env = "CEMA_EDGE_MODEL")]
    model: Option<PathBuf>,
    /// Device id as registered at the cloud. Default: the host name.
    #[arg(long, env = "CEMA_EDGE_DEVICE_ID")]
    device_id: Option<String>,
    /// Cloud endpoint, e.g. https://cloud.example:50051 (http:// only with --plaintext).
    /// Without it the agent runs offline (selections wait in the outbox).
    #[arg(long, env = "CEMA_EDGE_CLOUD")]
    cloud: Option<String>,
    /// PEM CA certificate the cloud's certificate must chain to. Default: the system's roots.
    #[arg(long, env = "CEMA_EDGE_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// PEM client certificate for a cloud that requires one (mutual TLS); needs --client-key.
    #[arg(long, env = "CEMA_EDGE_CLIENT_CERT")]
    client_cert: Option<PathBuf>,
    /// The client certificate's PEM private key.
    #[arg(long, env = "CEMA_EDGE_CLIENT_KEY")]
    client_key: Option<PathBuf>,
    /// Name the cloud's certificate must carry, when it differs from the endpoint's host.
    #[arg(long, env = "CEMA_EDGE_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,
    /// Talk to an http:// cloud without TLS (nothing encrypted, the cloud not authenticated):
    /// only on a network you trust.
    #[arg(long, env = "CEMA_EDGE_PLAINTEXT", num_args = 0..=1, default_missing_value = "true")]
    plaintext: Option<bool>,
    /// The device token (prefer --token-file or the environment over the command line).
    #[arg(long, env = "CEMA_EDGE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the device token.
    #[arg(long, env = "CEMA_EDGE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The agent's state folder (outbox, selector, applied parameters). Default cema-edge-data.
    #[arg(long, env = "CEMA_EDGE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// ONNX Runtime library (else $ORT_DYLIB_PATH, else next to the binary).
    #[arg(long, env = "CEMA_EDGE_ORT_LIBRARY")]
    ort_library: Option<PathBuf>,
    /// Intra-op threads of ONNX Runtime. Default 1.
    #[arg(long, env = "CEMA_EDGE_THREADS")]
    threads: Option<usize>,
    /// What to stream: `scenario` (a cema-shift stream over Fashion-MNIST test),
    /// `idx:<images.idx[.gz]>` or `folder:<labelled image folder>`. Default scenario.
    #[arg(long, env = "CEMA_EDGE_SOURCE")]
    source: Option<String>,
    /// Labels for an idx source.
    #[arg(long, env = "CEMA_EDGE_LABELS")]
    labels: Option<PathBuf>,
    /// Scenario protocol: independent, continual, gradual, mixed. Default continual.
    #[arg(long, env = "CEMA_EDGE_PROTOCOL")]
    protocol: Option<String>,
    /// Scenario corruptions, comma-separated (default: the 15 benchmark corruptions).
    #[arg(long, env = "CEMA_EDGE_CORRUPTIONS")]
    corruptions: Option<String>,
    /// Scenario severity 1–5. Default 5.
    #[arg(long, env = "CEMA_EDGE_SEVERITY")]
    severity: Option<u8>,
    /// Scenario samples per corruption. Default 1000.
    #[arg(long, env = "CEMA_EDGE_SAMPLES_PER_SEGMENT")]
    samples_per_segment: Option<usize>,
    /// Scenario seed. Default 0.
    #[arg(long, env = "CEMA_EDGE_SEED")]
    seed: Option<u64>,
    /// Scenario device number (devices differ in order and noise). Default 0.
    #[arg(long, env = "CEMA_EDGE_SCENARIO_DEVICE")]
    scenario_device: Option<u64>,
    /// Stop after this many samples.
    #[arg(long, env = "CEMA_EDGE_LIMIT")]
    limit: Option<u64>,
    /// Images per batch. Default 64.
    #[arg(long, env = "CEMA_EDGE_BATCH")]
    batch: Option<usize>,
    /// Selection preset: reference, paper, eata-select, upload-all. Default reference.
    #[arg(long, env = "CEMA_EDGE_PRESET")]
    preset: Option<String>,
    /// Override e_max_frac of the preset.
    #[arg(long, env = "CEMA_EDGE_E_MAX_FRAC")]
    e_max_frac: Option<f64>,
    /// Override e_min_frac of the preset.
    #[arg(long, env = "CEMA_EDGE_E_MIN_FRAC")]
    e_min_frac: Option<f64>,
    /// Override warmup_samples (enables the dynamic bound).
    #[arg(long, env = "CEMA_EDGE_WARMUP_SAMPLES")]
    warmup_samples: Option<u64>,
    /// Override λ of the dynamic bound.
    #[arg(long, env = "CEMA_EDGE_LAMBDA")]
    lambda: Option<f64>,
    /// Redundancy margin: `scaled:<m>` (m·√(1000/C), default scaled:0.05), `raw:<m>` or `off`.
    #[arg(long, env = "CEMA_EDGE_D_MARGIN")]
    d_margin: Option<String>,
    /// Keep only this share of what the selection keeps, chosen at random (with
    /// `--preset upload-all`: a random subsample baseline). Default: keep all.
    #[arg(long, env = "CEMA_EDGE_RANDOM_FRACTION")]
    random_fraction: Option<f64>,
    /// Upload budget: at most this share of each batch, the most uncertain (highest entropy)
    /// of what the preset keeps. Default: no budget.
    #[arg(long, env = "CEMA_EDGE_BUDGET")]
    budget: Option<f64>,
    /// `free` (use what has arrived), `lockstep` (wait for the cloud after each batch) or
    /// `realtime:<images per second>`. Default free.
    #[arg(long, env = "CEMA_EDGE_PACING")]
    pacing: Option<String>,
    /// zstd-compress uploads. Default false (8-bit images compress little).
    #[arg(long, env = "CEMA_EDGE_COMPRESS")]
    compress: Option<bool>,
    /// How float model inputs are uploaded: f16 (default; half the bytes, moves the cloud's
    /// statistics by ~1e-5 relative) or f32 (lossless). Models taking u8 pixels upload u8.
    #[arg(long, env = "CEMA_EDGE_UPLOAD_ENCODING")]
    upload_encoding: Option<String>,
    /// Where the running statistics start: source (the model's own, default) or first_batch
    /// (measured on the first batch before serving it, and sent to the cloud with it).
    #[arg(long, env = "CEMA_EDGE_STATS_INIT")]
    stats_init: Option<String>,
    /// Send each batch's per-layer input statistics, measured on every sample, with its batch
    /// end (the statistics uplink; the cloud uses them with `student_statistics = "edge"`).
    #[arg(long, env = "CEMA_EDGE_STATISTICS_UPLINK")]
    statistics_uplink: Option<bool>,
    /// `cloud` (default: adaptation comes from the cloud) or `local[:<batches>]`: follow the
    /// edge's own input statistics, applied every <batches> batches (default 1), with no
    /// uploads and no cloud needed.
    #[arg(long, env = "CEMA_EDGE_ADAPT")]
    adapt: Option<String>,
    /// Upload rate limit, samples per second.
    #[arg(long, env = "CEMA_EDGE_MAX_SAMPLES_PER_S")]
    max_samples_per_s: Option<f64>,
    /// Outbox bound in MiB. Default 256.
    #[arg(long, env = "CEMA_EDGE_OUTBOX_MAX_MIB")]
    outbox_max_mib: Option<u64>,
    /// Outbox bound in entries. Default 1,000,000.
    #[arg(long, env = "CEMA_EDGE_OUTBOX_MAX_ENTRIES")]
    outbox_max_entries: Option<u64>,
    /// When the outbox is full: drop_oldest (default), drop_newest, block.
    #[arg(long, env = "CEMA_EDGE_OUTBOX_POLICY")]
    outbox_policy: Option<String>,
    /// Where to write the JSON lines ("-" for stdout). Default stdout.
    #[arg(long, env = "CEMA_EDGE_OUTPUT")]
    output: Option<PathBuf>,
    /// Admin HTTP address for /metrics, /healthz, /readyz (off unless given).
    #[arg(long, env = "CEMA_EDGE_ADMIN_ADDR")]
    admin_addr: Option<SocketAddr>,
    /// Seconds to wait for the outbox to drain at the end. Default 30.
    #[arg(long, env = "CEMA_EDGE_DRAIN_TIMEOUT")]
    drain_timeout: Option<f64>,
    /// The source guard: also run each batch with the model's own parameters and serve those
    /// when their predictions carry more information about the batch than the adapted ones'
    /// (one more forward pass per adapted batch, one more session's memory). For real-time
    /// streams, where an update can arrive after the shift it was fitted to. Default false.
    #[arg(long, env = "CEMA_EDGE_GUARD", num_args = 0..=1, default_missing_value = "true")]
    guard: Option<bool>,
    /// Drift reset: watch the batches' mean prediction entropy (a Page–Hinkley test) and, when
    /// it rises abruptly (a new corruption, a new scene), return to the model's own parameters,
    /// re-initialise from the next batch under `--stats-init first_batch`, and ask the cloud to
    /// reset this device's scope (stale queued samples go to replay). Default false.
    #[arg(long, env = "CEMA_EDGE_DRIFT_RESET", num_args = 0..=1, default_missing_value = "true")]
    drift_reset: Option<bool>,
    /// Seconds to wait for the cloud per batch in lockstep. Default 300.
    #[arg(long, env = "CEMA_EDGE_LOCKSTEP_TIMEOUT")]
    lockstep_timeout: Option<f64>,
}

fn main() {
    let cli = Cli::parse();
    cema_host::init_logging();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Reset { data_dir } => reset(&data_dir),
        Command::Bench { model, batch, batches, agent_only } => cema_edge_bench(&model, batch, batches, agent_only),
        Command::Manifest(ManifestCommand::Init(args)) => manifest_init::init(args),
    };
    if let Err(e) = result {
        eprintln!("cema-edge: error: {e:#}");
        std::process::exit(1);
    }
}

/// The environment and flags as a config layer: the keys given, by the config's names.
fn overrides(args: &RunArgs) -> Result<toml::Table> {
    toml::Table::try_from(args).context("reading the flags and environment")
}

fn run(args: RunArgs) -> Result<()> {
    let config = EdgeConfig::layered(args.config.as_deref(), overrides(&args)?)?;
    let transport = config.transport()?;
    let library = OrtLibrary::get(config.ort_library.as_deref())?;
    let runtime = Runtime::load(library, &config.model, config.threads)
        .with_context(|| format!("loading {}", config.model.display()))?;
    let mut source = cema_edge::source::open(&config, runtime.manifest())?;
    let device_id = match &config.device_id {
        Some(id) => id.clone(),
        None => std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or("edge".into()),
    };
    let db = sled::open(&config.data_dir).with_context(|| {
        format!("opening the agent state {} (is another agent using it?)", config.data_dir.display())
    })?;
    let mut agent = Agent::open(runtime, &db, config.agent(&device_id))?;
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let link = match &config.cloud {
        Some(endpoint) => {
            let mut link = CloudLink::new(endpoint.clone(), token(&config)?).with_transport(transport);
            link.max_samples_per_s = config.max_samples_per_s;
            Some(agent.connect(tokio.handle(), link))
        }
        None => {
            tracing::warn!("no --cloud: running offline; selected samples wait in the outbox");
            None
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        tokio.spawn(async move {
            cema_host::termination().await;
            stop.store(true, Ordering::Release);
        });
    }
    if let Some(addr) = config.admin_addr {
        serve_admin(&agent, addr, &tokio, &ready)?;
    }
    ready.store(true, Ordering::Release);
    let mut out: Box<dyn Write> = match &config.output {
        Some(path) if path.as_os_str() != "-" => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        _ => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let options = ServeOptions { batch: config.batch as u64, limit: config.limit, fps: config.fps() };
    let summary = serve(&mut agent, &mut source, link.is_some(), tokio.handle(), &mut out, &stop, &options)?;
    ready.store(false, Ordering::Release);
    if let Some(link) = link {
        finish(&agent, link, tokio.handle(), Duration::from_secs_f64(config.drain_timeout));
    }
    db.flush()?;
    eprintln!("{}", summary_line(&device_id, &agent, &summary));
    Ok(())
}

/// The device token: `token`, else the contents of `token_file`.
fn token(config: &EdgeConfig) -> Result<String> {
    match (&config.token, &config.token_file) {
        (Some(token), _) => Ok(token.clone()),
        (None, Some(file)) => Ok(std::fs::read_to_string(file)
            .with_context(|| format!("reading the token file {}", file.display()))?
            .trim()
            .to_owned()),
        (None, None) => bail!("--cloud needs a device token (--token-file, CEMA_EDGE_TOKEN or --token)"),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr`.
fn serve_admin(
    agent: &Agent,
    addr: SocketAddr,
    tokio: &tokio::runtime::Runtime,
    ready: &Arc<AtomicBool>,
) -> Result<()> {
    let metrics = agent.metrics();
    let outbox = Arc::clone(agent.outbox());
    let render: cema_host::admin::Render = Arc::new(move || {
        let (entries, bytes) = outbox.usage();
        metrics.render(entries, bytes)
    });
    let router = cema_host::admin::router(render, Arc::clone(ready));
    let listener = tokio.block_on(tokio::net::TcpListener::bind(addr)).with_context(|| format!("binding {addr}"))?;
    tokio.spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(())
}

/// The closing line of a run (what cema-sim and the tests read).
fn summary_line(device_id: &str, agent: &Agent, summary: &ServeSummary) -> String {
    let ServeSummary { served, uploaded, labelled, correct, seconds, .. } = *summary;
    let accuracy = if labelled > 0 { format!("{:.4}", correct as f64 / labelled as f64) } else { "n/a".into() };
    let metrics = agent.metrics();
    let latency_ms = |q: f64| {
        metrics.update_latency_quantile(q).map_or_else(|| "n/a".to_owned(), |d| format!("{:.0}", d.as_secs_f64() * 1e3))
    };
    format!(
        "cema-edge: device={device_id} served={served} uploaded={uploaded} uploaded_fraction={:.4} accuracy={accuracy} params_version={} updates_applied={} upload_bytes={} batches={} outbox_left={} update_latency_p50_ms={} update_latency_p99_ms={} seconds={:.1}",
        uploaded as f64 / served.max(1) as f64,
        agent.version(),
        metrics.swaps.load(Ordering::Relaxed),
        metrics.bytes_sent.load(Ordering::Relaxed),
        agent.batches(),
        agent.outbox().usage().0,
        latency_ms(0.5),
        latency_ms(0.99),
        seconds
    )
}

fn reset(data_dir: &Path) -> Result<()> {
    let db = sled::open(data_dir).with_context(|| format!("opening {}", data_dir.display()))?;
    EdgeStore::open(&db, OutboxLimits::default())?.forget_applied()?;
    db.flush()?;
    println!("adapted parameters forgotten; the next run serves the model's own");
    Ok(())
}

fn cema_edge_bench(model: &Path, batch: usize, batches: usize, agent_only: bool) -> Result<()> {
    let line = cema_edge::bench::run(model, batch.max(1), batches.max(1), agent_only)?;
    println!("{line}");
    Ok(())
}
