//! `cema-sim demo`: a real cloud and three edges on the built-in models, the continual
//! severity-5 scenario split between them, none vs CEMA in lockstep and in real time.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use cema_shift::{Corruption, Protocol};
use cema_sim::fleet::{self, Binaries, CloudProcess};
use cema_sim::plot;
use cema_sim::report::{self, Record, Tally};
use serde_json::json;

use crate::common::*;
use crate::eval::selector_flags;

#[derive(clap::Args)]
pub(crate) struct DemoArgs {
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

pub(crate) fn demo(args: DemoArgs) -> Result<()> {
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
        let runs = run_pacing(&bins, &dir, c, (&student, &foundation), &groups, (label, pacing))?;
        for (i, (result, records)) in runs.into_iter().enumerate() {
            results.push(result);
            streams[i].push((format!("cema {label}"), records));
        }
    }
    let (table, per_corruption, means) = demo_table(&streams, &pacings);
    let plots = write_plots(&dir, &streams)?;
    let summary = format!(
        "# CEMA demo\n\n{} edges, continual Fashion-MNIST streams at severity {}, {} samples per corruption, batch {}, seed {}, selector overrides `{}`.\n\
         Accuracy (%) of the predictions served, before each update (lockstep: batch t+1 uses every update caused by batches ≤ t;\n\
         real time: each edge streams at {} images/s, uses whatever has arrived, with the source guard).\n\n{table}\n\
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
    let per_pacing = pacing_figures(&streams, &pacings, &means);
    println!(
        "none_accuracy={:.4} cema_accuracy={:.4} cema_minus_none={:.2} cema_uploaded={:.4} {} seconds={:.0}",
        means[0].accuracy(),
        cema.accuracy(),
        100.0 * (cema.accuracy() - means[0].accuracy()),
        cema.uploaded_fraction(),
        per_pacing.join(" "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Per pacing: its mean against none, and its worst segment (edge, corruption) against none,
/// in points.
fn pacing_figures(
    streams: &[Vec<(String, Vec<Record>)>],
    pacings: &[(String, String)],
    means: &[Tally],
) -> Vec<String> {
    pacings
        .iter()
        .enumerate()
        .map(|(p, (_, pacing))| {
            let key = pacing.split(':').next().unwrap_or(pacing);
            let harm = streams
                .iter()
                .filter_map(|runs| report::worst_segment_harm(&runs.get(p + 1)?.1, &runs[0].1))
                .fold(f64::INFINITY, f64::min);
            let minus_none = 100.0 * (means[p + 1].accuracy() - means[0].accuracy());
            format!("{key}_minus_none={minus_none:.2} {key}_worst_segment_harm={:.2}", 100.0 * harm)
        })
        .collect()
}

/// One pacing's CEMA run: a cloud and one agent per corruption group, all at once. Per edge,
/// its figures as JSON and its served predictions.
fn run_pacing(
    bins: &Binaries,
    dir: &Path,
    c: &Common,
    (student, foundation): (&Path, &Path),
    groups: &[Vec<Corruption>],
    (label, pacing): (&str, &str),
) -> Result<Vec<(serde_json::Value, Vec<Record>)>> {
    let data = dir.join(format!("cloud-{}", pacing.replace([':', '.'], "-")));
    std::fs::create_dir_all(&data)?;
    let mut specs = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let mut args = scenario_args(c, "continual", group, i as u64);
        args.extend(selector_flags(&c.selector)?);
        args.extend(realtime_flags(pacing));
        specs.push(edge_spec(bins, &data, &format!("edge-{}", i + 1), "cema", student, pacing, args)?);
    }
    let cloud = CloudProcess::start(
        bins,
        &data,
        &cloud_config(student, foundation, (IDLE_REPLAY_STEPS, IDLE_REPLAY_WINDOW), pacing),
    )?;
    eprintln!("CEMA, {label}: cloud on {}, {} edges streaming", cloud.grpc, specs.len());
    fleet::run_edges(bins, &cloud, &specs, specs.len())?;
    let metrics = cloud.metrics().unwrap_or_default();
    cloud.stop()?;
    let steps = fleet::metric(&metrics, "cema_cloud_steps_total").unwrap_or(0.0);
    let step_s = fleet::metric(&metrics, "cema_cloud_step_seconds_sum").unwrap_or(0.0) / steps.max(1.0);
    let queue_age_p99 = report::histogram_quantile(&metrics, "cema_cloud_queue_age_seconds", 0.99);
    let skipped = fleet::metric(&metrics, "cema_cloud_stale_skipped_total").unwrap_or(0.0);
    eprintln!(
        "CEMA, {label}: {steps} steps of {step_s:.3} s, queue age p99 ≤ {queue_age_p99} s, {skipped} stale samples left to replay"
    );
    specs
        .iter()
        .map(|spec| {
            let records = report::read(&spec.output)?;
            let summary = report::edge_summary(&spec.data_dir.with_extension("log"));
            let result = json!({
                "edge": spec.device, "pacing": pacing,
                "updates_applied": summary.get("updates_applied"),
                "upload_bytes": summary.get("upload_bytes"),
                "cloud_steps": steps, "cloud_step_seconds": step_s,
                "queue_age_p99_s": queue_age_p99, "stale_skipped": skipped,
            });
            Ok((result, records))
        })
        .collect()
}

/// Per edge and corruption, none vs CEMA (each pacing) and the uploaded fraction: the table,
/// its rows as JSON, and the tallies over everything (none first, then each pacing).
fn demo_table(
    streams: &[Vec<(String, Vec<Record>)>],
    pacings: &[(String, String)],
) -> (String, Vec<serde_json::Value>, Vec<Tally>) {
    let mut table = String::from("| edge | corruption | no adaptation |");
    for (label, _) in pacings {
        table.push_str(&format!(" CEMA {label} | uploaded ({label}) |"));
    }
    table.push_str("\n|---|---|---|");
    for _ in pacings {
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
                let key = label.split(' ').next().unwrap_or(label);
                row[format!("cema_{key}_accuracy")] = json!(t.accuracy());
                row[format!("cema_{key}_uploaded_fraction")] = json!(t.uploaded_fraction());
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
    (table, per_corruption, means)
}

pub(crate) fn names(group: &[Corruption]) -> String {
    group.iter().map(|c| c.name()).collect::<Vec<_>>().join(",")
}

pub(crate) fn write_plots(dir: &Path, streams: &[Vec<(String, Vec<Record>)>]) -> Result<String> {
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
