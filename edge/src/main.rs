//! `cema-edge`: the agent on the device. `run` streams a source through the model, serves
//! predictions as JSON lines, uploads the informative ones and applies the cloud's updates.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cema_core::SampleValues;
use cema_edge::outbox::{FullPolicy, OutboxLimits};
use cema_edge::serve::{ServeOptions, ServeSummary, Source, finish, serve};
use cema_edge::{Agent, AgentConfig, CloudLink, OrtLibrary, Pacing, Preset, Runtime};
use cema_proto::transport::{ClientTlsFiles, ClientTransport};
use cema_shift::{Corruption, Protocol, Scenario, ScenarioConfig};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

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

#[derive(Args, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
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
    admin_addr: Option<std::net::SocketAddr>,
    /// Seconds to wait for the outbox to drain at the end. Default 30.
    #[arg(long, env = "CEMA_EDGE_DRAIN_TIMEOUT")]
    drain_timeout: Option<f64>,
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

fn merge(mut args: RunArgs) -> Result<RunArgs> {
    let Some(path) = args.config.clone() else { return Ok(args) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let file: RunArgs = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    macro_rules! fill { ($($f:ident),*) => { $( if args.$f.is_none() { args.$f = file.$f; } )* } }
    fill!(
        model,
        device_id,
        cloud,
        ca_cert,
        client_cert,
        client_key,
        tls_server_name,
        plaintext,
        token,
        token_file,
        data_dir,
        ort_library,
        threads,
        source,
        labels,
        protocol,
        corruptions,
        severity,
        samples_per_segment,
        seed,
        scenario_device,
        limit,
        batch,
        preset,
        e_max_frac,
        e_min_frac,
        warmup_samples,
        lambda,
        d_margin,
        random_fraction,
        budget,
        pacing,
        compress,
        upload_encoding,
        stats_init,
        statistics_uplink,
        adapt,
        max_samples_per_s,
        outbox_max_mib,
        outbox_max_entries,
        outbox_policy,
        output,
        admin_addr,
        drain_timeout,
        lockstep_timeout
    );
    Ok(args)
}

fn source(args: &RunArgs, manifest: &cema_core::Manifest) -> Result<Source> {
    let spec = args.source.clone().unwrap_or_else(|| "scenario".to_owned());
    let to_values = |image: &cema_shift::Image| SampleValues::U8(image.to_chw());
    if spec == "scenario" {
        let dir = cema_shift::dataset::fashion_mnist_dir()?;
        let data = Box::leak(Box::new(cema_shift::dataset::load_fashion_mnist(&dir, cema_shift::Split::Test)?));
        let protocol = match args.protocol.as_deref().unwrap_or("continual") {
            "independent" => Protocol::Independent,
            "continual" => Protocol::Continual,
            "gradual" => Protocol::Gradual,
            "mixed" => Protocol::Mixed,
            other => bail!("unknown protocol `{other}` (independent, continual, gradual, mixed)"),
        };
        let corruptions: Vec<Corruption> = match &args.corruptions {
            Some(list) => {
                list.split(',').map(|s| s.trim().parse().map_err(anyhow::Error::msg)).collect::<Result<_>>()?
            }
            None => Corruption::BENCHMARK.to_vec(),
        };
        let severity = args.severity.unwrap_or(5);
        if !(1..=5).contains(&severity) {
            bail!("severity {severity} is not in 1–5");
        }
        let scenario = Scenario::new(
            data,
            ScenarioConfig {
                protocol,
                corruptions,
                severities: vec![severity],
                samples_per_segment: args.samples_per_segment.unwrap_or(1000),
                seed: args.seed.unwrap_or(0),
                device: args.scenario_device.unwrap_or(0),
            },
        );
        let len = scenario.len() as u64;
        return Ok(Source {
            samples: Box::new(move |start, end| {
                scenario
                    .batch(start, end)
                    .into_iter()
                    .map(|s| {
                        (format!("{}:{}:{}", s.position, s.corruption, s.severity), to_values(&s.image), Some(s.label))
                    })
                    .collect()
            }),
            len,
        });
    }
    let (images, labels, names): (Vec<cema_shift::Image>, Option<Vec<u32>>, Vec<String>) =
        if let Some(path) = spec.strip_prefix("idx:") {
            let images = cema_shift::dataset::read_idx_images(Path::new(path))?;
            let labels = args.labels.as_deref().map(cema_shift::dataset::read_idx_labels).transpose()?;
            let names = (0..images.len()).map(|i| i.to_string()).collect();
            (images, labels, names)
        } else if let Some(path) = spec.strip_prefix("folder:") {
            let (h, _) = manifest.spatial();
            let options = cema_shift::dataset::FolderOptions {
                resize_shorter: manifest.preprocess.resize_shorter.unwrap_or(h as u32),
                center_crop: manifest.preprocess.center_crop.unwrap_or(h as u32),
                grey: manifest.channels() == 1,
            };
            let data = cema_shift::dataset::load_folder(Path::new(path), options)?;
            let names = (0..data.len()).map(|i| i.to_string()).collect();
            (data.images, Some(data.labels), names)
        } else {
            bail!("unknown source `{spec}`: use scenario, idx:<file> or folder:<dir>");
        };
    if let Some(labels) = &labels
        && labels.len() != images.len()
    {
        bail!("{} labels for {} images", labels.len(), images.len());
    }
    let len = images.len() as u64;
    Ok(Source {
        samples: Box::new(move |start, end| {
            (start as usize..(end as usize).min(images.len()))
                .map(|i| (names[i].clone(), to_values(&images[i]), labels.as_ref().map(|l| l[i])))
                .collect()
        }),
        len,
    })
}

fn selector_config(args: &RunArgs) -> Result<cema_edge::SelectorConfig> {
    let preset = match args.preset.as_deref().unwrap_or("reference") {
        "reference" => Preset::Reference,
        "paper" => Preset::Paper,
        "eata-select" => Preset::EataSelect,
        "upload-all" => Preset::UploadAll,
        other => bail!("unknown preset `{other}` (reference, paper, eata-select, upload-all)"),
    };
    let mut config = preset.config();
    if let Some(v) = args.e_max_frac {
        config.e_max_frac = Some(v);
    }
    if let Some(v) = args.e_min_frac {
        config.e_min_frac = Some(v);
    }
    if let Some(v) = args.warmup_samples {
        config.warmup_samples = Some(v);
    }
    if let Some(v) = args.lambda {
        config.lambda = v;
    }
    if let Some(fraction) = args.random_fraction {
        if !(0.0..=1.0).contains(&fraction) {
            bail!("random_fraction {fraction}: use a share between 0 and 1");
        }
        config.random_fraction = Some(fraction);
    }
    if let Some(budget) = args.budget {
        if !(0.0..=1.0).contains(&budget) {
            bail!("budget {budget}: use a share between 0 and 1");
        }
        config.budget = Some(budget);
    }
    if let Some(margin) = &args.d_margin {
        use cema_edge::selector::Redundancy;
        let number = |s: &str| s.parse::<f64>().with_context(|| format!("d_margin `{margin}`"));
        config.redundancy = match margin.split_once(':') {
            _ if margin == "off" => Redundancy::Off,
            Some(("scaled", m)) => Redundancy::Scaled(number(m)?),
            Some(("raw", m)) => Redundancy::Raw(number(m)?),
            _ => bail!("d_margin `{margin}`: use scaled:<m>, raw:<m> or off"),
        };
    }
    Ok(config)
}

fn run(args: RunArgs) -> Result<()> {
    let args = merge(args)?;
    // Checked before anything is opened, so a bad TLS setting changes no state.
    let transport = ClientTransport::from_options(
        args.plaintext.unwrap_or(false),
        &ClientTlsFiles {
            ca_cert: args.ca_cert.clone(),
            client_cert: args.client_cert.clone(),
            client_key: args.client_key.clone(),
            server_name: args.tls_server_name.clone(),
        },
    )?;
    if let Some(endpoint) = &args.cloud {
        transport.endpoint(endpoint)?;
    }
    let model = args.model.clone().unwrap_or_else(|| PathBuf::from("models/student.onnx"));
    let library = OrtLibrary::get(args.ort_library.as_deref())?;
    let runtime = Runtime::load(library, &model, args.threads.unwrap_or(1))
        .with_context(|| format!("loading {}", model.display()))?;
    let mut source = source(&args, runtime.manifest())?;
    let device_id = match &args.device_id {
        Some(id) => id.clone(),
        None => std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or("edge".into()),
    };
    let data_dir = args.data_dir.clone().unwrap_or_else(|| PathBuf::from("cema-edge-data"));
    let db = sled::open(&data_dir)
        .with_context(|| format!("opening the agent state {} (is another agent using it?)", data_dir.display()))?;
    let pacing_spec = args.pacing.clone().unwrap_or_else(|| "free".to_owned());
    let lockstep_timeout = Duration::from_secs_f64(args.lockstep_timeout.unwrap_or(300.0));
    let (pacing, fps) = match pacing_spec.as_str() {
        "free" => (Pacing::Free, None),
        "lockstep" => (Pacing::Lockstep(lockstep_timeout), None),
        spec => match spec.strip_prefix("realtime:").and_then(|f| f.parse::<f64>().ok()) {
            Some(fps) if fps > 0.0 => (Pacing::Free, Some(fps)),
            _ => bail!("pacing `{spec}`: use free, lockstep or realtime:<images per second>"),
        },
    };
    let policy = match args.outbox_policy.as_deref().unwrap_or("drop_oldest") {
        "drop_oldest" => FullPolicy::DropOldest,
        "drop_newest" => FullPolicy::DropNewest,
        "block" => FullPolicy::Block,
        other => bail!("outbox policy `{other}`: use drop_oldest, drop_newest or block"),
    };
    let config = AgentConfig {
        device_id: device_id.clone(),
        selector: selector_config(&args)?,
        compress: args.compress.unwrap_or(false),
        float_encoding: match args.upload_encoding.as_deref().unwrap_or("f16") {
            "f16" => cema_core::Encoding::F16,
            "f32" => cema_core::Encoding::F32,
            other => bail!("upload_encoding `{other}`: use f16 or f32 (u8 models always upload u8)"),
        },
        stats_init: args.stats_init.as_deref().unwrap_or("source").parse().map_err(anyhow::Error::msg)?,
        uplink_statistics: args.statistics_uplink.unwrap_or(false),
        local_every: match args.adapt.as_deref().unwrap_or("cloud") {
            "cloud" => None,
            "local" => Some(1),
            spec => match spec.strip_prefix("local:").and_then(|n| n.parse::<u64>().ok()) {
                Some(every) if every > 0 => Some(every),
                _ => bail!("adapt `{spec}`: use cloud, local or local:<batches>"),
            },
        },
        outbox: OutboxLimits {
            max_bytes: args.outbox_max_mib.unwrap_or(256) << 20,
            max_entries: args.outbox_max_entries.unwrap_or(1_000_000),
            policy,
        },
        pacing,
    };
    let mut agent = Agent::open(runtime, &db, config)?;
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let link = match &args.cloud {
        Some(endpoint) => {
            let token = match (&args.token, &args.token_file) {
                (Some(token), _) => token.clone(),
                (None, Some(file)) => std::fs::read_to_string(file)
                    .with_context(|| format!("reading the token file {}", file.display()))?
                    .trim()
                    .to_owned(),
                (None, None) => bail!("--cloud needs a device token (--token-file, CEMA_EDGE_TOKEN or --token)"),
            };
            let mut link = CloudLink::new(endpoint.clone(), token).with_transport(transport);
            link.max_samples_per_s = args.max_samples_per_s;
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
    if let Some(addr) = args.admin_addr {
        let metrics = agent.metrics();
        let outbox = Arc::clone(agent.outbox());
        let render: cema_host::admin::Render = Arc::new(move || {
            let (entries, bytes) = outbox.usage();
            metrics.render(entries, bytes)
        });
        let router = cema_host::admin::router(render, Arc::clone(&ready));
        let listener =
            tokio.block_on(tokio::net::TcpListener::bind(addr)).with_context(|| format!("binding {addr}"))?;
        tokio.spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
    }
    ready.store(true, Ordering::Release);

    let mut out: Box<dyn Write> = match &args.output {
        Some(path) if path.as_os_str() != "-" => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        _ => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let options = ServeOptions { batch: args.batch.unwrap_or(64) as u64, limit: args.limit, fps };
    let summary = serve(&mut agent, &mut source, link.is_some(), tokio.handle(), &mut out, &stop, &options)?;
    ready.store(false, Ordering::Release);
    if let Some(link) = link {
        finish(&agent, link, tokio.handle(), Duration::from_secs_f64(args.drain_timeout.unwrap_or(30.0)));
    }
    db.flush()?;
    let ServeSummary { served, uploaded, labelled, correct, seconds, .. } = summary;
    let accuracy = if labelled > 0 { format!("{:.4}", correct as f64 / labelled as f64) } else { "n/a".into() };
    let metrics = agent.metrics();
    let latency_ms = |q: f64| {
        metrics.update_latency_quantile(q).map_or_else(|| "n/a".to_owned(), |d| format!("{:.0}", d.as_secs_f64() * 1e3))
    };
    eprintln!(
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
    );
    Ok(())
}

fn reset(data_dir: &Path) -> Result<()> {
    let db = sled::open(data_dir).with_context(|| format!("opening {}", data_dir.display()))?;
    db.open_tree("agent")?.remove(b"applied_params")?;
    db.flush()?;
    println!("adapted parameters forgotten; the next run serves the model's own");
    Ok(())
}

fn cema_edge_bench(model: &Path, batch: usize, batches: usize, agent_only: bool) -> Result<()> {
    let line = cema_edge::bench::run(model, batch.max(1), batches.max(1), agent_only)?;
    println!("{line}");
    Ok(())
}
