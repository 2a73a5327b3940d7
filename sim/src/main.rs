//! `cema-sim`: CEMA end to end on this machine. `demo` starts a real cloud and real edge
//! agents (separate processes on loopback), streams Fashion-MNIST shift scenarios through
//! them and reports accuracy with and without adaptation; `eval` compares methods on the same
//! streams; both write `summary.md`, `results.json` and PNG plots into a run folder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cema_edge::{OrtLibrary, Runtime};
use cema_shift::{Corruption, Dataset, Protocol, Scenario, ScenarioConfig};
use clap::{Parser, Subcommand};
use serde_json::json;

use cema_sim::fleet::{self, Binaries, CloudProcess, EdgeSpec};
use cema_sim::plot;
use cema_sim::report::{self, Record, Tally};

/// CEMA end to end: real cloud, real edges, shift scenarios, reports.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One cloud and several edges, each on its own continual shift stream (the 15 benchmark
    /// corruptions split between them), without adaptation vs with CEMA, in lockstep and in
    /// real time. Prints a table; writes summary.md, results.json and plots.
    Demo(DemoArgs),
    /// Methods compared on the same streams and seeds: none, bn-stats, upload-all,
    /// eata-select, cema-reference, cema-paper. Ends with `cema_minus_none=… cema_uploaded=…`.
    Eval(EvalArgs),
    /// The system's figures: edge throughput vs raw ONNX Runtime and selection overhead
    /// (`cema-edge bench`), then `cema-reference` and `upload-all` on the same continual stream
    /// through a real cloud in lockstep: bytes per uploaded sample, update latency (upload
    /// acknowledged → parameters applied on the edge) p50/p99, cloud step time, and accuracy
    /// gained per uploaded megabyte against upload-all. Ends with one `key=value` line.
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct Common {
    /// Folder with student.onnx and foundation.onnx (and manifests).
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Where run folders are created.
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// Corruption severity 1–5.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(1..=5))]
    severity: u8,
    /// Samples streamed per corruption.
    #[arg(long)]
    samples_per_corruption: Option<usize>,
    /// Scenario seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per edge batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Selector overrides of the CEMA edges (cema-reference, cema-paper and the demo's),
    /// `key=value` joined by `+`: e-max-frac, e-min-frac, d-margin, lambda, warmup-samples.
    /// The default was chosen on a held-apart validation stream (seed 1, see README); `''`
    /// runs cema-spec's values.
    #[arg(long, default_value = VALIDATED_SELECTOR)]
    selector: String,
}

/// The selector setting chosen on the validation stream (`cema-sim eval --seed 1`, both
/// protocols): the largest redundancy margin whose independent-protocol uploads stay ≤ 50%.
const VALIDATED_SELECTOR: &str = "d-margin=scaled:0.035";

#[derive(clap::Args)]
struct DemoArgs {
    #[command(flatten)]
    common: Common,
    /// Edge agents (the corruptions are split between them).
    #[arg(long, default_value_t = 3)]
    edges: usize,
    /// Frame rate of each edge in the real-time run (images per second).
    #[arg(long, default_value_t = 64.0)]
    fps: f64,
    /// Skip the real-time run.
    #[arg(long)]
    lockstep_only: bool,
}

#[derive(clap::Args)]
struct EvalArgs {
    #[command(flatten)]
    common: Common,
    /// Methods, comma-separated: none, bn-stats, upload-all, eata-select, cema-reference,
    /// cema-paper; stats-only (the statistics uplink alone, no images), edge-local (the edge
    /// follows its own statistics, no uploads), uplink-budget (the uplink with first-batch
    /// statistics, plus the most uncertain quarter of each batch), uplink-budget-replay (the same,
    /// the cloud spending its idle time on replay steps), uplink-random (the same with a
    /// random quarter), random@random-fraction=<p> (a uniform random share). Also available:
    /// random-half, cema-first-batch, cema-stats (cema-reference + the uplink).
    #[arg(
        long,
        default_value = "none,bn-stats,upload-all,eata-select,cema-reference,cema-paper,stats-only,edge-local,uplink-budget,uplink-random,random@random-fraction=0.25"
    )]
    methods: String,
    /// Protocols, comma-separated: independent, continual.
    #[arg(long, default_value = "independent,continual")]
    protocols: String,
    /// Corruptions, comma-separated (default: the 15 benchmark corruptions).
    #[arg(long)]
    corruptions: Option<String>,
    /// Edge agents running at once.
    #[arg(long, default_value_t = 3)]
    parallel: usize,
    /// Idle replay steps per batch of the `uplink-budget-replay` method's cloud model (at most
    /// 16).
    #[arg(long, default_value_t = IDLE_REPLAY_STEPS)]
    idle_replay_steps: usize,
    /// Newest replay samples the idle steps draw from (default 256; 0: the whole buffer).
    #[arg(long, default_value_t = IDLE_REPLAY_WINDOW.unwrap_or(0))]
    idle_replay_window: usize,
}

#[derive(clap::Args)]
struct BenchArgs {
    #[command(flatten)]
    common: Common,
    /// Corruptions of the stream, comma-separated.
    #[arg(long, default_value = "gaussian_noise,defocus_blur,snow,contrast,jpeg_compression")]
    corruptions: String,
    /// Batches timed by `cema-edge bench`.
    #[arg(long, default_value_t = 100)]
    edge_batches: usize,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo(args),
        Command::Eval(args) => eval(args),
        Command::Bench(args) => bench(args),
    };
    if let Err(e) = result {
        eprintln!("cema-sim: error: {e:#}");
        std::process::exit(1);
    }
}

fn run_dir(runs: &Path, kind: &str) -> Result<PathBuf> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let dir = runs.join(format!("{kind}-{stamp}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(std::path::absolute(&dir)?)
}

fn model_paths(models: &Path) -> Result<(PathBuf, PathBuf)> {
    let student = std::path::absolute(models.join("student.onnx"))?;
    let foundation = std::path::absolute(models.join("foundation.onnx"))?;
    for p in [&student, &foundation] {
        if !p.is_file() {
            bail!("{} is missing; the built-in models ship in models/ (or run `cema-model pretrain`)", p.display());
        }
    }
    Ok((student, foundation))
}

/// The Fashion-MNIST test set, which every stream draws from.
fn test_set() -> Result<Dataset> {
    let dir = cema_shift::dataset::fashion_mnist_dir()?;
    Ok(cema_shift::dataset::load_fashion_mnist(&dir, cema_shift::Split::Test)?)
}

/// Scenario flags of `cema-edge run`.
fn scenario_args(c: &Common, protocol: &str, corruptions: &[Corruption], device: u64) -> Vec<String> {
    let names: Vec<&str> = corruptions.iter().map(|c| c.name()).collect();
    vec![
        "--source".into(),
        "scenario".into(),
        "--protocol".into(),
        protocol.into(),
        "--corruptions".into(),
        names.join(","),
        "--severity".into(),
        c.severity.to_string(),
        "--samples-per-segment".into(),
        c.samples_per_corruption.unwrap_or(320).to_string(),
        "--seed".into(),
        c.seed.to_string(),
        "--scenario-device".into(),
        device.to_string(),
        "--batch".into(),
        c.batch.to_string(),
    ]
}

/// Predictions of the edge model without adaptation on the same stream (ONNX Runtime, in
/// process: exactly what an agent without a cloud serves).
fn offline(
    student: &Path,
    data: &Dataset,
    c: &Common,
    protocol: Protocol,
    corruptions: &[Corruption],
    device: u64,
) -> Result<Vec<Record>> {
    let library = OrtLibrary::get(None)?;
    let mut runtime = Runtime::load(library, student, 1)?;
    let scenario = Scenario::new(
        data,
        ScenarioConfig {
            protocol,
            corruptions: corruptions.to_vec(),
            severities: vec![c.severity],
            samples_per_segment: c.samples_per_corruption.unwrap_or(320),
            seed: c.seed,
            device,
        },
    );
    let mut records = Vec::with_capacity(scenario.len());
    let mut start = 0u64;
    while start < scenario.len() as u64 {
        let end = (start + c.batch as u64).min(scenario.len() as u64);
        let batch = scenario.batch(start, end);
        let mut input = Vec::new();
        for s in &batch {
            runtime.manifest().preprocess_u8(&s.image.to_chw(), &mut input);
        }
        let prediction = runtime.predict(&input, batch.len())?;
        for (s, class) in batch.iter().zip(&prediction.class) {
            records.push(Record {
                id: format!("{}:{}:{}", s.position, s.corruption, s.severity),
                class: *class,
                label: Some(s.label as usize),
                params_version: 0,
                uploaded: false,
            });
        }
        start = end;
    }
    Ok(records)
}

/// Registers `id` with the cloud state in `data` for `cloud_model` and describes its agent: the
/// student, `pacing`, then `args` (scenario and selector flags); state, output and log in `data`.
fn edge_spec(
    bins: &Binaries,
    data: &Path,
    id: &str,
    cloud_model: &str,
    student: &Path,
    pacing: &str,
    args: Vec<String>,
) -> Result<EdgeSpec> {
    let token = fleet::add_device(bins, data, id, cloud_model)?;
    let mut all = vec!["--model".into(), student.display().to_string(), "--pacing".into(), pacing.to_owned()];
    all.extend(args);
    Ok(EdgeSpec {
        device: id.to_owned(),
        token,
        data_dir: data.join(id),
        output: data.join(format!("{id}.jsonl")),
        args: all,
    })
}

/// Idle replay steps of the `uplink-budget-replay` method's cloud model (chosen on the seed-1
/// validation stream).
const IDLE_REPLAY_STEPS: usize = 4;
/// Its replay window (newest samples drawn from; `None`: the whole buffer).
const IDLE_REPLAY_WINDOW: Option<usize> = Some(256);

fn cloud_config(student: &Path, foundation: &Path, (idle_replay_steps, window): (usize, Option<usize>)) -> String {
    let idle_replay_window = window.map(|w| format!("idle_replay_window = {w}\n")).unwrap_or_default();
    format!(
        "engine_workers = 1\n\n[models.cema]\nedge = {s:?}\nfoundation = {f:?}\n\n\
         [models.bnstats]\nedge = {s:?}\nfoundation = {f:?}\n[models.bnstats.adapt]\nmethod = \"bn-stats\"\n\n\
         [models.cemafb]\nedge = {s:?}\nfoundation = {f:?}\n[models.cemafb.adapt]\nstats_init = \"first_batch\"\n\n\
         [models.stats]\nedge = {s:?}\nfoundation = {f:?}\n[models.stats.adapt]\nstudent_statistics = \"edge\"\n\n\
         [models.statsidle]\nedge = {s:?}\nfoundation = {f:?}\n[models.statsidle.adapt]\nstudent_statistics = \"edge\"\n\
         idle_replay_steps = {idle_replay_steps}\n{idle_replay_window}",
        s = student.display().to_string(),
        f = foundation.display().to_string()
    )
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

fn demo(args: DemoArgs) -> Result<()> {
    let started = Instant::now();
    let c = &args.common;
    let bins = Binaries::locate()?;
    let (student, foundation) = model_paths(&c.models)?;
    let dir = run_dir(&c.runs, "demo")?;
    let edges = args.edges.clamp(1, Corruption::BENCHMARK.len());
    let groups: Vec<Vec<Corruption>> = (0..edges)
        .map(|i| {
            let n = Corruption::BENCHMARK.len();
            Corruption::BENCHMARK[i * n / edges..(i + 1) * n / edges].to_vec()
        })
        .collect();
    println!("run folder: {}", dir.display());
    let mut pacings = vec![("lockstep".to_owned(), "lockstep".to_owned())];
    if !args.lockstep_only {
        pacings.push((format!("realtime {} img/s", args.fps), format!("realtime:{}", args.fps)));
    }
    let mut results = Vec::new();
    let mut streams: Vec<Vec<(String, Vec<Record>)>> = vec![Vec::new(); edges];
    let data = test_set()?;
    for (i, group) in groups.iter().enumerate() {
        eprintln!("edge-{}: {} (no adaptation, ONNX Runtime)", i + 1, names(group));
        streams[i].push(("none".to_owned(), offline(&student, &data, c, Protocol::Continual, group, i as u64)?));
    }
    for (label, pacing) in &pacings {
        let data = dir.join(format!("cloud-{}", pacing.replace([':', '.'], "-")));
        std::fs::create_dir_all(&data)?;
        let mut specs = Vec::new();
        for (i, group) in groups.iter().enumerate() {
            let mut args = scenario_args(c, "continual", group, i as u64);
            args.extend(selector_flags(&c.selector)?);
            specs.push(edge_spec(&bins, &data, &format!("edge-{}", i + 1), "cema", &student, pacing, args)?);
        }
        let cloud = CloudProcess::start(
            &bins,
            &data,
            &cloud_config(&student, &foundation, (IDLE_REPLAY_STEPS, IDLE_REPLAY_WINDOW)),
        )?;
        eprintln!("CEMA, {label}: cloud on {}, {} edges streaming", cloud.grpc, specs.len());
        fleet::run_edges(&bins, &cloud, &specs, specs.len())?;
        let metrics = cloud.metrics().unwrap_or_default();
        cloud.stop()?;
        let steps = fleet::metric(&metrics, "cema_cloud_steps_total").unwrap_or(0.0);
        let step_s = fleet::metric(&metrics, "cema_cloud_step_seconds_sum").unwrap_or(0.0) / steps.max(1.0);
        for (i, spec) in specs.iter().enumerate() {
            let records = report::read(&spec.output)?;
            let summary = report::edge_summary(&spec.data_dir.with_extension("log"));
            results.push(json!({
                "edge": spec.device, "pacing": pacing,
                "updates_applied": summary.get("updates_applied"),
                "upload_bytes": summary.get("upload_bytes"),
                "cloud_steps": steps, "cloud_step_seconds": step_s,
            }));
            streams[i].push((format!("cema {label}"), records));
        }
    }

    // Table: per corruption, none vs CEMA (each pacing), uploaded fraction.
    let mut table = String::from("| edge | corruption | no adaptation |");
    for (label, _) in &pacings {
        table.push_str(&format!(" CEMA {label} | uploaded ({label}) |"));
    }
    table.push_str("\n|---|---|---|");
    for _ in &pacings {
        table.push_str("---|---|");
    }
    table.push('\n');
    let mut per_corruption = Vec::new();
    let mut means = vec![Tally::default(); pacings.len() + 1];
    for (i, runs) in streams.iter().enumerate() {
        let tallies: Vec<(Vec<(String, Tally)>, Tally)> = runs.iter().map(|(_, r)| report::by_corruption(r)).collect();
        for (k, (corruption, none)) in tallies[0].0.iter().enumerate() {
            table.push_str(&format!("| edge-{} | {corruption} | {} |", i + 1, pct(none.accuracy())));
            let mut row =
                json!({"edge": format!("edge-{}", i + 1), "corruption": corruption, "none_accuracy": none.accuracy()});
            for (p, (label, _)) in pacings.iter().enumerate() {
                let t = tallies[p + 1].0.get(k).map(|x| x.1).unwrap_or_default();
                table.push_str(&format!(" {} | {} |", pct(t.accuracy()), pct(t.uploaded_fraction())));
                row[format!("cema_{}_accuracy", label.split(' ').next().unwrap_or(label))] = json!(t.accuracy());
                row[format!("cema_{}_uploaded_fraction", label.split(' ').next().unwrap_or(label))] =
                    json!(t.uploaded_fraction());
            }
            table.push('\n');
            per_corruption.push(row);
        }
        for (m, (_, total)) in tallies.iter().enumerate() {
            means[m].n += total.n;
            means[m].correct += total.correct;
            means[m].uploaded += total.uploaded;
        }
    }
    table.push_str(&format!("| all | all | {} |", pct(means[0].accuracy())));
    for m in &means[1..] {
        table.push_str(&format!(" {} | {} |", pct(m.accuracy()), pct(m.uploaded_fraction())));
    }
    table.push('\n');

    let plots = write_plots(&dir, &streams)?;
    let summary = format!(
        "# CEMA demo\n\n{} edges, continual Fashion-MNIST streams at severity {}, {} samples per corruption, batch {}, seed {}, selector overrides `{}`.\n\
         Accuracy (%) of the predictions served, before each update (lockstep: batch t+1 uses every update caused by batches ≤ t;\n\
         real time: each edge streams at {} images/s and uses whatever has arrived).\n\n{table}\n\
         ![accuracy](accuracy.png)\n\n![uploads](uploads.png)\n\nWall time: {:.0} s.\n",
        edges,
        c.severity,
        c.samples_per_corruption.unwrap_or(320),
        c.batch,
        c.seed,
        c.selector,
        args.fps,
        started.elapsed().as_secs_f64()
    );
    std::fs::write(dir.join("summary.md"), &summary)?;
    let results_json = json!({
        "kind": "demo",
        "config": {"edges": edges, "selector": c.selector, "severity": c.severity, "samples_per_corruption": c.samples_per_corruption.unwrap_or(320),
                   "batch": c.batch, "seed": c.seed, "fps": args.fps, "protocol": "continual",
                   "models": c.models.display().to_string(), "corruptions": groups.iter().map(|g| names(g)).collect::<Vec<_>>()},
        "per_corruption": per_corruption,
        "runs": results,
        "mean": {"none_accuracy": means[0].accuracy(),
                 "cema": pacings.iter().zip(&means[1..]).map(|((l, _), t)| json!({"pacing": l, "accuracy": t.accuracy(), "uploaded_fraction": t.uploaded_fraction()})).collect::<Vec<_>>()},
    });
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&results_json)?)?;
    println!("{table}");
    println!("wrote {}/summary.md, results.json, {plots}", dir.display());
    let cema = &means[1];
    println!(
        "none_accuracy={:.4} cema_accuracy={:.4} cema_minus_none={:.2} cema_uploaded={:.4} seconds={:.0}",
        means[0].accuracy(),
        cema.accuracy(),
        100.0 * (cema.accuracy() - means[0].accuracy()),
        cema.uploaded_fraction(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn names(group: &[Corruption]) -> String {
    group.iter().map(|c| c.name()).collect::<Vec<_>>().join(",")
}

fn write_plots(dir: &Path, streams: &[Vec<(String, Vec<Record>)>]) -> Result<String> {
    let accuracy: Vec<plot::Panel> = streams
        .iter()
        .enumerate()
        .map(|(i, runs)| plot::Panel {
            title: format!("edge-{}: accuracy, moving average over 256 predictions", i + 1),
            y_range: (0.0, 1.0),
            series: runs
                .iter()
                .map(|(label, r)| plot::Series {
                    label: label.clone(),
                    points: report::moving(r, 256, 32, |x| x.correct() as u8 as f64),
                })
                .collect(),
        })
        .collect();
    plot::write(&dir.join("accuracy.png"), &accuracy, "predictions")?;
    let uploads: Vec<plot::Panel> = streams
        .iter()
        .enumerate()
        .map(|(i, runs)| plot::Panel {
            title: format!("edge-{}: uploaded fraction, moving average over 256 predictions", i + 1),
            y_range: (0.0, 1.0),
            series: runs
                .iter()
                .skip(1)
                .map(|(label, r)| plot::Series {
                    label: label.clone(),
                    points: report::moving(r, 256, 32, |x| x.uploaded as u8 as f64),
                })
                .collect(),
        })
        .collect();
    plot::write(&dir.join("uploads.png"), &uploads, "predictions")?;
    Ok("accuracy.png, uploads.png".to_owned())
}

/// The edge flag of the statistics uplink.
const UPLINK: &str = "--statistics-uplink";

/// Edge flags and cloud model of a method. The CEMA methods take `selector` (see
/// [`Common::selector`]), then any overrides after `@` in the method's name, joined by `+`:
/// `cema-reference@e-max-frac=0.3+d-margin=scaled:0.04` (what a validation sweep compares).
fn method_setup(method: &str, selector: &str) -> Result<(Vec<String>, &'static str)> {
    let (base, own) = method.split_once('@').unwrap_or((method, ""));
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let (mut flags, model) = match base {
        "bn-stats" => (s(&["--preset", "upload-all"]), "bnstats"),
        "upload-all" => (s(&["--preset", "upload-all"]), "cema"),
        "eata-select" => (s(&["--preset", "eata-select", "--d-margin", "raw:0.05"]), "cema"),
        "cema-reference" => (s(&["--preset", "reference"]), "cema"),
        "cema-paper" => (s(&["--preset", "paper"]), "cema"),
        // cema-reference with both models' running statistics taken from the first batch each
        // sees (the edge's before it serves it): the reference code's `stats_init`.
        "cema-first-batch" => (s(&["--preset", "reference", "--stats-init", "first_batch"]), "cemafb"),
        // The statistics uplink: every batch's statistics from every sample, no images.
        "stats-only" => {
            (s(&["--preset", "upload-all", "--random-fraction", "0", "--statistics-uplink", "true"]), "stats")
        }
        // The edge follows its own statistics; nothing is uploaded.
        "edge-local" => (s(&["--adapt", "local"]), "cema"),
        // cema-reference's uploads for distillation (γ, β), the uplink's statistics for the
        // running statistics.
        "cema-stats" => (s(&[UPLINK, "true", "--preset", "reference"]), "stats"),
        // A uniform random share of the samples (`random@random-fraction=0.25`).
        "random" => (s(&["--preset", "upload-all"]), "cema"),
        // Chosen on the seed-1 validation stream: the statistics uplink with first-batch
        // initialisation for the running statistics, and a quarter of each batch — its most
        // uncertain samples — for distillation of γ and β.
        "uplink-budget" => {
            (s(&[UPLINK, "true", "--stats-init", "first_batch", "--preset", "upload-all", "--budget", "0.25"]), "stats")
        }
        // The same uploads; the cloud spends its idle time between batches on replay
        // (`idle_replay_steps`, `--idle-replay-steps`).
        "uplink-budget-replay" => (
            s(&[UPLINK, "true", "--stats-init", "first_batch", "--preset", "upload-all", "--budget", "0.25"]),
            "statsidle",
        ),
        // The same with a uniform random quarter: what the budget rule must beat.
        "uplink-random" => (
            s(&[UPLINK, "true", "--stats-init", "first_batch", "--preset", "upload-all", "--random-fraction", "0.25"]),
            "stats",
        ),
        other => bail!(
            "unknown method `{other}`: use none, bn-stats, upload-all, eata-select, cema-reference, cema-paper, cema-first-batch, stats-only, edge-local, cema-stats, uplink-budget, uplink-budget-replay, uplink-random, random@random-fraction=<p> or random-half"
        ),
    };
    let inherited = if base.starts_with("cema-") { selector } else { "" };
    flags.extend(selector_flags(inherited).with_context(|| format!("--selector `{selector}`"))?);
    flags.extend(selector_flags(own).with_context(|| format!("method `{method}`"))?);
    Ok((flags, model))
}

/// `cema-edge` flags of selector overrides `key=value+key=value` (later ones win).
fn selector_flags(overrides: &str) -> Result<Vec<String>> {
    let mut flags = Vec::new();
    for pair in overrides.split('+').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("override `{pair}` is not key=value");
        };
        const KEYS: [&str; 8] = [
            "e-max-frac",
            "e-min-frac",
            "d-margin",
            "lambda",
            "warmup-samples",
            "random-fraction",
            "budget",
            "stats-init",
        ];
        if !KEYS.contains(&key) {
            bail!("unknown override `{key}` ({})", KEYS.join(", "));
        }
        flags.extend([format!("--{key}"), value.to_owned()]);
    }
    Ok(flags)
}

/// A device id for stream `index` of a method: ids allow only letters, digits, `_` and `-`.
fn stream_device_id(method: &str, index: usize, suffix: &str) -> String {
    let clean: String = method.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    let short: String = clean.chars().take(32).collect();
    format!("{short}-{index}-{suffix}")
}

/// The share of samples a method may upload to compete for `best_method` (on every protocol).
const BUDGET: f64 = 0.25;

fn eval(args: EvalArgs) -> Result<()> {
    let started = Instant::now();
    let c = &args.common;
    let bins = Binaries::locate()?;
    let (student, foundation) = model_paths(&c.models)?;
    let dir = run_dir(&c.runs, "eval")?;
    let corruptions: Vec<Corruption> = match &args.corruptions {
        Some(list) => list.split(',').map(|s| s.trim().parse().map_err(anyhow::Error::msg)).collect::<Result<_>>()?,
        None => Corruption::BENCHMARK.to_vec(),
    };
    let methods: Vec<String> = args.methods.split(',').map(|m| m.trim().to_owned()).collect();
    let protocols: Vec<String> = args.protocols.split(',').map(|p| p.trim().to_owned()).collect();
    for p in &protocols {
        if p != "independent" && p != "continual" {
            bail!("protocol `{p}`: use independent or continual");
        }
    }
    println!("run folder: {}", dir.display());
    // (method, protocol, device-index, corruptions of that stream, device id)
    let mut streams: Vec<(String, String, usize, Vec<Corruption>, String)> = Vec::new();
    for (m, method) in methods.iter().enumerate() {
        if method != "none" {
            method_setup(method, &c.selector)?;
        }
        for protocol in &protocols {
            if protocol == "independent" {
                for (k, corruption) in corruptions.iter().enumerate() {
                    streams.push((
                        method.clone(),
                        protocol.clone(),
                        k,
                        vec![*corruption],
                        stream_device_id(method, m, &format!("ind-{}", corruption.name())),
                    ));
                }
            } else {
                streams.push((
                    method.clone(),
                    protocol.clone(),
                    0,
                    corruptions.clone(),
                    stream_device_id(method, m, "cont"),
                ));
            }
        }
    }
    let data = dir.join("cloud");
    std::fs::create_dir_all(&data)?;
    let test = test_set()?;
    let mut specs = Vec::new();
    let mut outputs: Vec<(usize, PathBuf, PathBuf)> = Vec::new(); // (stream, predictions, log)
    let mut records: Vec<Option<Vec<Record>>> = vec![None; streams.len()];
    for (i, (method, protocol, device, group, id)) in streams.iter().enumerate() {
        let proto = if protocol == "independent" { Protocol::Independent } else { Protocol::Continual };
        if method == "none" {
            records[i] = Some(offline(&student, &test, c, proto, group, *device as u64)?);
            continue;
        }
        let (flags, model) = method_setup(method, &c.selector)?;
        let mut args = scenario_args(c, protocol, group, *device as u64);
        args.extend(flags);
        let spec = edge_spec(&bins, &data, id, model, &student, "lockstep", args)?;
        outputs.push((i, spec.output.clone(), spec.data_dir.with_extension("log")));
        specs.push(spec);
    }
    if !specs.is_empty() {
        let cloud = CloudProcess::start(
            &bins,
            &data,
            &cloud_config(
                &student,
                &foundation,
                (args.idle_replay_steps, Some(args.idle_replay_window).filter(|&w| w > 0)),
            ),
        )?;
        eprintln!("{} adapted streams on cloud {} ({} at a time)", specs.len(), cloud.grpc, args.parallel);
        fleet::run_edges(&bins, &cloud, &specs, args.parallel)?;
        cloud.stop()?;
    }
    let mut upload_bytes = vec![0u64; streams.len()];
    for (i, output, log) in outputs {
        records[i] = Some(report::read(&output)?);
        upload_bytes[i] = report::upload_bytes(&log)?;
    }

    // Per method and protocol: accuracy and uploaded fraction per corruption.
    let mut rows = Vec::new();
    let mut table = String::new();
    let mut headline: Option<(f64, f64, f64)> = None; // (cema, none, uploaded) of the first protocol
    let mut means = report::Means::new();
    let mut uploads = String::from(
        "\n### Bytes uploaded (images and statistics) and accuracy points over none per MB\n\n\
         | method | protocol | MB | points/MB |\n|---|---|---|---|\n",
    );
    for protocol in &protocols {
        table.push_str(&format!("\n### {protocol}, severity {} — accuracy % (uploaded %)\n\n| method |", c.severity));
        for corruption in &corruptions {
            table.push_str(&format!(" {} |", corruption.name()));
        }
        table.push_str(" mean |\n|---|");
        table.push_str(&"---|".repeat(corruptions.len() + 1));
        table.push('\n');
        let mut none_mean = None;
        for method in &methods {
            let mut per: Vec<Tally> = vec![Tally::default(); corruptions.len()];
            for (i, (m, p, _, _, _)) in streams.iter().enumerate() {
                if m != method || p != protocol {
                    continue;
                }
                for r in records[i].as_deref().unwrap_or_default() {
                    if let Some(k) = corruptions.iter().position(|c| c.name() == r.corruption()) {
                        per[k].add(r.correct(), r.uploaded);
                    }
                }
            }
            table.push_str(&format!("| {method} |"));
            for (corruption, t) in corruptions.iter().zip(&per) {
                table.push_str(&format!(" {} ({}) |", pct(t.accuracy()), pct(t.uploaded_fraction())));
                rows.push(json!({"method": method, "protocol": protocol, "severity": c.severity, "corruption": corruption.name(),
                                 "accuracy": t.accuracy(), "uploaded_fraction": t.uploaded_fraction(), "samples": t.n}));
            }
            let mean_acc = per.iter().map(Tally::accuracy).sum::<f64>() / per.len() as f64;
            let mean_up = per.iter().map(Tally::uploaded_fraction).sum::<f64>() / per.len() as f64;
            table.push_str(&format!(" **{}** ({}) |\n", pct(mean_acc), pct(mean_up)));
            rows.push(json!({"method": method, "protocol": protocol, "severity": c.severity, "corruption": "mean",
                             "accuracy": mean_acc, "uploaded_fraction": mean_up}));
            let bytes: u64 = streams
                .iter()
                .zip(&upload_bytes)
                .filter(|((m, p, ..), _)| m == method && p == protocol)
                .map(|(_, b)| b)
                .sum();
            let megabytes = bytes as f64 / 1e6;
            let points_per_mb =
                none_mean.map(|none: f64| 100.0 * (mean_acc - none) / megabytes).filter(|v| v.is_finite());
            uploads.push_str(&format!(
                "| {method} | {protocol} | {megabytes:.3} | {} |\n",
                points_per_mb.map_or("—".to_owned(), |v| format!("{v:.2}"))
            ));
            rows.push(json!({"method": method, "protocol": protocol, "severity": c.severity, "corruption": "all",
                             "upload_bytes": bytes, "points_per_mb": points_per_mb}));
            if method == "none" {
                none_mean = Some(mean_acc);
            }
            means.insert((method.clone(), protocol.clone()), (mean_acc, mean_up));
            if method == "cema-reference" && headline.is_none() {
                headline = Some((mean_acc, none_mean.unwrap_or(f64::NAN), mean_up));
            }
        }
    }
    let summary = format!(
        "# CEMA evaluation\n\nFashion-MNIST test streams, severity {}, {} samples per corruption, batch {}, seed {}, lockstep pacing.\n\
         Methods: none (edge model as shipped), bn-stats (cloud updates running statistics only, from all samples),\n\
         upload-all (CEMA's cloud on every sample), eata-select (EATA's selection with its published margin 0.05),\n\
         cema-reference and cema-paper (cema-spec presets; selector overrides `{}`, chosen on the seed-1 validation stream).\n{table}{uploads}\nWall time: {:.0} s.\n",
        c.severity,
        c.samples_per_corruption.unwrap_or(320),
        c.batch,
        c.seed,
        c.selector,
        started.elapsed().as_secs_f64()
    );
    std::fs::write(dir.join("summary.md"), &summary)?;
    let results = json!({
        "kind": "eval",
        "config": {"selector": c.selector, "severity": c.severity, "samples_per_corruption": c.samples_per_corruption.unwrap_or(320), "batch": c.batch,
                   "seed": c.seed, "methods": methods, "protocols": protocols, "pacing": "lockstep",
                   "corruptions": corruptions.iter().map(|c| c.name()).collect::<Vec<_>>(), "models": c.models.display().to_string()},
        "results": rows,
    });
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    let series: Vec<plot::Panel> = protocols
        .iter()
        .filter(|p| *p == "continual")
        .map(|p| plot::Panel {
            title: format!("{p}: accuracy, moving average over 256 predictions"),
            y_range: (0.0, 1.0),
            series: streams
                .iter()
                .enumerate()
                .filter(|(_, s)| &s.1 == p)
                .map(|(i, s)| plot::Series {
                    label: s.0.clone(),
                    points: report::moving(records[i].as_deref().unwrap_or_default(), 256, 64, |x| {
                        x.correct() as u8 as f64
                    }),
                })
                .collect(),
        })
        .collect();
    if !series.is_empty() {
        plot::write(&dir.join("accuracy.png"), &series, "predictions")?;
    }
    println!("{table}{uploads}");
    println!("wrote {}/summary.md, results.json", dir.display());
    let (cema, none, uploaded) = headline.unwrap_or((f64::NAN, f64::NAN, f64::NAN));
    let best = report::best_at_budget(&means, BUDGET);
    println!(
        "cema_minus_none={:.2} cema_uploaded={:.4} cema_accuracy={cema:.4} none_accuracy={none:.4} {} seconds={:.0}",
        100.0 * (cema - none),
        uploaded,
        best.map_or("best_method=none".to_owned(), |b| b.line()),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn bench(args: BenchArgs) -> Result<()> {
    let started = Instant::now();
    let c = &args.common;
    let bins = Binaries::locate()?;
    let (student, foundation) = model_paths(&c.models)?;
    let dir = run_dir(&c.runs, "bench")?;
    println!("run folder: {}", dir.display());
    let corruptions: Vec<Corruption> =
        args.corruptions.split(',').map(|s| s.trim().parse().map_err(anyhow::Error::msg)).collect::<Result<_>>()?;

    eprintln!("edge: cema-edge bench --batch {} --batches {}", c.batch, args.edge_batches);
    let output = std::process::Command::new(&bins.edge)
        .args(["bench", "--model"])
        .arg(&student)
        .args(["--batch", &c.batch.to_string(), "--batches", &args.edge_batches.to_string()])
        .output()
        .context("running cema-edge bench")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("cema-edge bench failed: {}{}", text, String::from_utf8_lossy(&output.stderr));
    }
    let edge = fleet::summary_line(&text, "agent_vs_raw=").context("cema-edge bench printed no agent_vs_raw line")?;
    let edge_value = |k: &str| edge.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);

    let test = test_set()?;
    let none = offline(&student, &test, c, Protocol::Continual, &corruptions, 0)?;
    let none_accuracy = report::by_corruption(&none).1.accuracy();
    let data = dir.join("cloud");
    std::fs::create_dir_all(&data)?;
    let methods = ["cema-reference", "upload-all"];
    let mut specs = Vec::new();
    for (m, method) in methods.iter().enumerate() {
        let (flags, model) = method_setup(method, &c.selector)?;
        let mut args = scenario_args(c, "continual", &corruptions, 0);
        args.extend(flags);
        specs.push(edge_spec(&bins, &data, &stream_device_id(method, m, "bench"), model, &student, "lockstep", args)?);
    }
    let cloud = CloudProcess::start(
        &bins,
        &data,
        &cloud_config(&student, &foundation, (IDLE_REPLAY_STEPS, IDLE_REPLAY_WINDOW)),
    )?;
    eprintln!("cloud {}: {} and {} in turn, lockstep", cloud.grpc, methods[0], methods[1]);
    // One edge at a time, so that step times and latencies are not shared between streams.
    fleet::run_edges(&bins, &cloud, &specs, 1)?;
    let cloud_metrics = cloud.metrics()?;
    cloud.stop()?;
    let step_count = fleet::metric(&cloud_metrics, "cema_cloud_step_seconds_count").unwrap_or(0.0);
    let step_seconds = fleet::metric(&cloud_metrics, "cema_cloud_step_seconds_sum").unwrap_or(f64::NAN) / step_count;

    let mut rows = Vec::new();
    for spec in &specs {
        let log = std::fs::read_to_string(spec.data_dir.with_extension("log")).unwrap_or_default();
        let summary = fleet::summary_line(&log, "cema-edge: device=")
            .with_context(|| format!("edge {} printed no summary", spec.device))?;
        let get = |k: &str| summary.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
        let records = report::read(&spec.output)?;
        let acc = report::by_corruption(&records).1.accuracy();
        let bytes = get("upload_bytes");
        rows.push(json!({
            "device": spec.device, "accuracy": acc, "uploaded": get("uploaded"), "served": get("served"),
            "upload_bytes": bytes, "bytes_per_uploaded_sample": bytes / get("uploaded"),
            "update_latency_p50_ms": get("update_latency_p50_ms"), "update_latency_p99_ms": get("update_latency_p99_ms"),
            "points_per_mb": 100.0 * (acc - none_accuracy) / (bytes / 1e6),
        }));
    }
    let field = |i: usize, k: &str| rows[i][k].as_f64().unwrap_or(f64::NAN);
    let mut table = format!(
        "| method | accuracy % | uploaded | upload MB | bytes/sample | update latency p50 / p99 ms | points gained per MB |\n|---|---|---|---|---|---|---|\n\
         | none | {} | 0 | 0 | – | – | – |\n",
        pct(none_accuracy)
    );
    for (i, method) in methods.iter().enumerate() {
        table.push_str(&format!(
            "| {method} | {} | {:.0} | {:.2} | {:.0} | {:.0} / {:.0} | {:.2} |\n",
            pct(field(i, "accuracy")),
            field(i, "uploaded"),
            field(i, "upload_bytes") / 1e6,
            field(i, "bytes_per_uploaded_sample"),
            field(i, "update_latency_p50_ms"),
            field(i, "update_latency_p99_ms"),
            field(i, "points_per_mb"),
        ));
    }
    let summary = format!(
        "# CEMA benchmark\n\nEdge (`cema-edge bench`, batch {}): agent throughput / raw ONNX Runtime = {:.3}, selection \
         overhead = {:.5} of inference time, parameter swap {:.1} ms.\n\nContinual stream ({}; severity {}, {} samples each, \
         seed {}), lockstep, one edge at a time; cloud step (foundation step + distillation) mean {:.3} s over {} steps.\n\n\
         {table}\nWall time: {:.0} s.\n",
        c.batch,
        edge_value("agent_vs_raw"),
        edge_value("select_overhead"),
        edge_value("swap_ms"),
        args.corruptions,
        c.severity,
        c.samples_per_corruption.unwrap_or(320),
        c.seed,
        step_seconds,
        step_count,
        started.elapsed().as_secs_f64()
    );
    print!("{summary}");
    std::fs::write(dir.join("summary.md"), &summary)?;
    let results = json!({
        "kind": "bench",
        "config": {"selector": c.selector, "severity": c.severity, "samples_per_corruption": c.samples_per_corruption.unwrap_or(320), "batch": c.batch,
                   "seed": c.seed, "corruptions": args.corruptions, "pacing": "lockstep", "edge_batches": args.edge_batches,
                   "models": c.models.display().to_string()},
        "edge": edge, "none_accuracy": none_accuracy, "cloud_step_seconds": step_seconds, "cloud_steps": step_count,
        "methods": rows,
    });
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    println!("wrote {}/summary.md, results.json", dir.display());
    println!(
        "edge_vs_raw={:.3} select_overhead={:.5} bytes_per_uploaded_sample={:.0} update_latency_p50_ms={:.0} \
         update_latency_p99_ms={:.0} cloud_step_seconds={:.3} points_per_mb_cema={:.2} points_per_mb_upload_all={:.2} \
         per_byte_vs_upload_all={:.2}",
        edge_value("agent_vs_raw"),
        edge_value("select_overhead"),
        field(0, "bytes_per_uploaded_sample"),
        field(0, "update_latency_p50_ms"),
        field(0, "update_latency_p99_ms"),
        step_seconds,
        field(0, "points_per_mb"),
        field(1, "points_per_mb"),
        field(0, "points_per_mb") / field(1, "points_per_mb"),
    );
    Ok(())
}
