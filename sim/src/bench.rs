//! `cema-sim bench`: the system's figures — edge overhead, update latency, step time,
//! accuracy per byte.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use cema_shift::{Corruption, Protocol};
use cema_sim::fleet::{self, Binaries, CloudProcess};
use cema_sim::report::{self};
use serde_json::json;

use crate::common::*;
use crate::eval::{method_setup, stream_device_id};

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    common: Common,
    /// Corruptions of the stream, comma-separated.
    #[arg(long, default_value = "gaussian_noise,defocus_blur,snow,contrast,jpeg_compression")]
    corruptions: String,
    /// Batches timed by `cema-edge bench`.
    #[arg(long, default_value_t = 100)]
    edge_batches: usize,
}

pub(crate) fn bench(args: BenchArgs) -> Result<()> {
    let started = Instant::now();
    let c = &args.common;
    let bins = Binaries::locate()?;
    let (student, foundation) = model_paths(&c.models)?;
    let dir = run_dir(&c.runs, "bench")?;
    println!("run folder: {}", dir.display());
    let corruptions: Vec<Corruption> =
        args.corruptions.split(',').map(|s| s.trim().parse().map_err(anyhow::Error::msg)).collect::<Result<_>>()?;

    let edge = edge_bench(&bins, &student, c.batch, args.edge_batches)?;
    let edge_value = |k: &str| edge.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);

    let test = test_set()?;
    let none = offline(&student, &test, c, Protocol::Continual, &corruptions, 0)?;
    let none_accuracy = report::by_corruption(&none).1.accuracy();
    let methods = ["cema-reference", "upload-all"];
    let (specs, step_seconds, step_count) =
        adapted_streams(&bins, &dir, c, (&student, &foundation), &corruptions, &methods)?;
    let rows = specs.iter().map(|spec| method_row(spec, none_accuracy)).collect::<Result<Vec<_>>>()?;
    let field = |i: usize, k: &str| rows[i][k].as_f64().unwrap_or(f64::NAN);
    let table = bench_table(&methods, &rows, none_accuracy);
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

/// The per-method table: accuracy, uploads, bytes, update latency, points per MB.
fn bench_table(methods: &[&str], rows: &[serde_json::Value], none_accuracy: f64) -> String {
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
    table
}

/// The methods' continual streams in lockstep, one edge at a time so that step times and
/// latencies are not shared between streams; their specs and the cloud's mean step time and
/// step count.
fn adapted_streams(
    bins: &Binaries,
    dir: &std::path::Path,
    c: &Common,
    (student, foundation): (&std::path::Path, &std::path::Path),
    corruptions: &[Corruption],
    methods: &[&str],
) -> Result<(Vec<fleet::EdgeSpec>, f64, f64)> {
    let data = dir.join("cloud");
    std::fs::create_dir_all(&data)?;
    let mut specs = Vec::new();
    for (m, method) in methods.iter().enumerate() {
        let (flags, model) = method_setup(method, &c.selector)?;
        let mut args = scenario_args(c, "continual", corruptions, 0);
        args.extend(flags);
        specs.push(edge_spec(bins, &data, &stream_device_id(method, m, "bench"), model, student, "lockstep", args)?);
    }
    let config = cloud_config(student, foundation, (IDLE_REPLAY_STEPS, IDLE_REPLAY_WINDOW), "lockstep");
    let cloud = CloudProcess::start(bins, &data, &config)?;
    eprintln!("cloud {}: {} in turn, lockstep", cloud.grpc, methods.join(" and "));
    fleet::run_edges(bins, &cloud, &specs, 1)?;
    let cloud_metrics = cloud.metrics()?;
    cloud.stop()?;
    let step_count = fleet::metric(&cloud_metrics, "cema_cloud_step_seconds_count").unwrap_or(0.0);
    let step_seconds = fleet::metric(&cloud_metrics, "cema_cloud_step_seconds_sum").unwrap_or(f64::NAN) / step_count;
    Ok((specs, step_seconds, step_count))
}

/// `cema-edge bench` on the student: its closing line's fields.
fn edge_bench(
    bins: &Binaries,
    student: &std::path::Path,
    batch: usize,
    batches: usize,
) -> Result<std::collections::BTreeMap<String, String>> {
    eprintln!("edge: cema-edge bench --batch {batch} --batches {batches}");
    let output = std::process::Command::new(&bins.edge)
        .args(["bench", "--model"])
        .arg(student)
        .args(["--batch", &batch.to_string(), "--batches", &batches.to_string()])
        .output()
        .context("running cema-edge bench")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("cema-edge bench failed: {}{}", text, String::from_utf8_lossy(&output.stderr));
    }
    fleet::summary_line(&text, "agent_vs_raw=").context("cema-edge bench printed no agent_vs_raw line")
}

/// One adapted stream's figures: accuracy, uploads, bytes, update latency, points per MB.
fn method_row(spec: &fleet::EdgeSpec, none_accuracy: f64) -> Result<serde_json::Value> {
    let log = std::fs::read_to_string(spec.data_dir.with_extension("log")).unwrap_or_default();
    let summary = fleet::summary_line(&log, "cema-edge: device=")
        .with_context(|| format!("edge {} printed no summary", spec.device))?;
    let get = |k: &str| summary.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    let records = report::read(&spec.output)?;
    let acc = report::by_corruption(&records).1.accuracy();
    let bytes = get("upload_bytes");
    Ok(json!({
        "device": spec.device, "accuracy": acc, "uploaded": get("uploaded"), "served": get("served"),
        "upload_bytes": bytes, "bytes_per_uploaded_sample": bytes / get("uploaded"),
        "update_latency_p50_ms": get("update_latency_p50_ms"), "update_latency_p99_ms": get("update_latency_p99_ms"),
        "points_per_mb": 100.0 * (acc - none_accuracy) / (bytes / 1e6),
    }))
}
