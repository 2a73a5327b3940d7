//! `cema-sim eval`: every method through a real cloud and real agents in lockstep on the same
//! streams (independent and continual protocols), with bytes uploaded per method.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cema_edge::config::PacingSpec;
use cema_shift::{Corruption, Protocol};
use cema_sim::fleet::{self, Binaries, CloudProcess};
use cema_sim::plot;
use cema_sim::report::{self, Record, Tally};
use serde_json::json;

use crate::common::*;
use crate::harm::{harm_table, worst_segment_harms};

#[derive(clap::Args)]
pub(crate) struct EvalArgs {
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
    /// Edge agents running at once (with `realtime:` pacing, the load the cloud keeps up with).
    #[arg(long, visible_alias = "edges", default_value_t = 3)]
    parallel: usize,
    /// `lockstep` (the paper's protocol: batch t+1 waits for every update caused by batches ≤ t)
    /// or `realtime:<images per second>` (each edge streams at a camera's pace and uses
    /// whatever update has arrived: how users run the system).
    #[arg(long, default_value = "lockstep")]
    pacing: String,
    /// Idle replay steps per batch of the `uplink-budget-replay` method's cloud model (at most
    /// 16).
    #[arg(long, default_value_t = IDLE_REPLAY_STEPS)]
    idle_replay_steps: usize,
    /// Newest replay samples the idle steps draw from (default 256; 0: the whole buffer).
    #[arg(long, default_value_t = IDLE_REPLAY_WINDOW.unwrap_or(0))]
    idle_replay_window: usize,
}

/// The edge flag of the statistics uplink.
pub(crate) const UPLINK: &str = "--statistics-uplink";

/// Edge flags and cloud model of a method. The CEMA methods take `selector` (see
/// [`Common::selector`]), then any overrides after `@` in the method's name, joined by `+`:
/// `cema-reference@e-max-frac=0.3+d-margin=scaled:0.04` (what a validation sweep compares).
pub(crate) fn method_setup(method: &str, selector: &str) -> Result<(Vec<String>, &'static str)> {
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
pub(crate) fn selector_flags(overrides: &str) -> Result<Vec<String>> {
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
pub(crate) fn stream_device_id(method: &str, index: usize, suffix: &str) -> String {
    let clean: String = method.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    let short: String = clean.chars().take(32).collect();
    format!("{short}-{index}-{suffix}")
}

/// The share of samples a method may upload to compete for `best_method` (on every protocol).
pub(crate) const BUDGET: f64 = 0.25;

/// One stream of the evaluation: a method on a protocol's corruptions, as one device.
pub(crate) struct Stream {
    pub(crate) method: String,
    pub(crate) protocol: String,
    /// Scenario device number (the corruption's index on the independent protocol).
    pub(crate) device: usize,
    pub(crate) corruptions: Vec<Corruption>,
    pub(crate) device_id: String,
}

/// The tables and figures of an evaluation.
#[derive(Default)]
struct Tables {
    /// Accuracy (uploaded %) per method and corruption, per protocol.
    accuracy: String,
    /// Bytes and points per MB per method and protocol.
    uploads: String,
    /// Every figure as JSON rows.
    rows: Vec<serde_json::Value>,
    /// (cema-reference, none, cema-reference's uploaded share) of the first protocol.
    headline: Option<(f64, f64, f64)>,
    /// Mean accuracy and uploaded share per (method, protocol).
    means: report::Means,
    /// Each method's worst segment against none.
    harms: String,
}

pub(crate) fn eval(args: EvalArgs) -> Result<()> {
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
    // The edge's own parser; `free` pacing has no place in an evaluation.
    match PacingSpec::try_from(args.pacing.clone()) {
        Ok(PacingSpec::Lockstep | PacingSpec::Realtime(_)) => {}
        _ => bail!("pacing `{}`: use lockstep or realtime:<images per second>", args.pacing),
    }
    println!("run folder: {}", dir.display());
    let streams = plan_streams(&methods, &protocols, &corruptions, &c.selector)?;
    let data = dir.join("cloud");
    std::fs::create_dir_all(&data)?;
    let test = test_set()?;
    let mut specs = Vec::new();
    let mut outputs: Vec<(usize, PathBuf, PathBuf)> = Vec::new(); // (stream, predictions, log)
    let mut records: Vec<Option<Vec<Record>>> = vec![None; streams.len()];
    let pacing = args.pacing.clone();
    for (i, stream) in streams.iter().enumerate() {
        let proto = if stream.protocol == "independent" { Protocol::Independent } else { Protocol::Continual };
        if stream.method == "none" {
            records[i] = Some(offline(&student, &test, c, proto, &stream.corruptions, stream.device as u64)?);
            continue;
        }
        let (flags, model) = method_setup(&stream.method, &c.selector)?;
        let mut args = scenario_args(c, &stream.protocol, &stream.corruptions, stream.device as u64);
        args.extend(flags);
        args.extend(realtime_flags(&pacing));
        let spec = edge_spec(&bins, &data, &stream.device_id, model, &student, &pacing, args)?;
        outputs.push((i, spec.output.clone(), spec.data_dir.with_extension("log")));
        specs.push(spec);
    }
    let mut cloud_metrics = String::new();
    if !specs.is_empty() {
        let idle_window = Some(args.idle_replay_window).filter(|&w| w > 0);
        let config = cloud_config(&student, &foundation, (args.idle_replay_steps, idle_window), &args.pacing);
        let cloud = CloudProcess::start(&bins, &data, &config)?;
        eprintln!("{} adapted streams on cloud {} ({} at a time)", specs.len(), cloud.grpc, args.parallel);
        fleet::run_edges(&bins, &cloud, &specs, args.parallel)?;
        cloud_metrics = cloud.metrics().unwrap_or_default();
        cloud.stop()?;
    }
    let mut upload_bytes = vec![0u64; streams.len()];
    let mut latencies_ms: Vec<Vec<f64>> = vec![Vec::new(); streams.len()];
    for (i, output, log) in outputs {
        records[i] = Some(report::read(&output)?);
        upload_bytes[i] = report::upload_bytes(&log)?;
        let summary = report::edge_summary(&log);
        latencies_ms[i] = summary.get("update_latency_p50_ms").and_then(|v| v.parse().ok()).into_iter().collect();
    }
    let harms = worst_segment_harms(&streams, &records);
    let mut tables = tabulate(&streams, &records, &upload_bytes, &methods, &protocols, &corruptions, c.severity);
    tables.harms = harm_table(&methods, &harms);
    let plan = (&methods[..], &protocols[..], &corruptions[..], args.pacing.as_str());
    write_outputs(&dir, c, &tables, &streams, &records, plan, started)?;
    println!("{}{}{}", tables.accuracy, tables.uploads, tables.harms);
    println!("wrote {}/summary.md, results.json", dir.display());
    println!("{}", closing_line(&tables, &harms, &streams, &latencies_ms, &cloud_metrics, &args.pacing, started));
    Ok(())
}

/// The last line: cema-reference against none, the best method within the budget, the worst
/// segment, and (real time) update latency and queue age.
fn closing_line(
    tables: &Tables,
    harms: &std::collections::BTreeMap<String, f64>,
    streams: &[Stream],
    latencies_ms: &[Vec<f64>],
    cloud_metrics: &str,
    pacing: &str,
    started: Instant,
) -> String {
    let (cema, none, uploaded) = tables.headline.unwrap_or((f64::NAN, f64::NAN, f64::NAN));
    let best = report::best_at_budget(&tables.means, BUDGET);
    let harm = harms.get("cema-reference").copied().unwrap_or(f64::NAN);
    // The median over cema-reference's streams of each stream's median update latency.
    let mut latency: Vec<f64> = streams
        .iter()
        .zip(latencies_ms)
        .filter(|(s, _)| s.method == "cema-reference")
        .flat_map(|(_, l)| l.iter().copied())
        .collect();
    latency.sort_by(f64::total_cmp);
    let latency_p50 = latency.get(latency.len() / 2).copied().unwrap_or(f64::NAN);
    let queue_age_p99 = report::histogram_quantile(cloud_metrics, "cema_cloud_queue_age_seconds", 0.99);
    format!(
        "cema_minus_none={:.2} cema_uploaded={:.4} cema_accuracy={cema:.4} none_accuracy={none:.4} {} \
         worst_segment_harm={:.2} update_latency_p50_ms={latency_p50:.0} queue_age_p99_s={queue_age_p99} pacing={} seconds={:.0}",
        100.0 * (cema - none),
        uploaded,
        best.map_or("best_method=none".to_owned(), |b| b.line()),
        100.0 * harm,
        pacing,
        started.elapsed().as_secs_f64()
    )
}

/// Every stream in evaluation order: per method, per protocol, one stream per corruption
/// (independent) or one over all of them (continual). Device ids name the method's position.
fn plan_streams(
    methods: &[String],
    protocols: &[String],
    corruptions: &[Corruption],
    selector: &str,
) -> Result<Vec<Stream>> {
    let mut streams = Vec::new();
    for (m, method) in methods.iter().enumerate() {
        if method != "none" {
            method_setup(method, selector)?;
        }
        for protocol in protocols {
            let stream = |device: usize, corruptions: Vec<Corruption>, suffix: &str| Stream {
                method: method.clone(),
                protocol: protocol.clone(),
                device,
                corruptions,
                device_id: stream_device_id(method, m, suffix),
            };
            if protocol == "independent" {
                for (k, corruption) in corruptions.iter().enumerate() {
                    streams.push(stream(k, vec![*corruption], &format!("ind-{}", corruption.name())));
                }
            } else {
                streams.push(stream(0, corruptions.to_vec(), "cont"));
            }
        }
    }
    Ok(streams)
}

/// Per method and protocol: accuracy and uploaded fraction per corruption, bytes uploaded.
fn tabulate(
    streams: &[Stream],
    records: &[Option<Vec<Record>>],
    upload_bytes: &[u64],
    methods: &[String],
    protocols: &[String],
    corruptions: &[Corruption],
    severity: u8,
) -> Tables {
    let mut t = Tables {
        uploads: String::from(
            "\n### Bytes uploaded (images and statistics) and accuracy points over none per MB\n\n\
             | method | protocol | MB | points/MB |\n|---|---|---|---|\n",
        ),
        ..Tables::default()
    };
    for protocol in protocols {
        t.accuracy.push_str(&format!("\n### {protocol}, severity {severity} — accuracy % (uploaded %)\n\n| method |"));
        for corruption in corruptions {
            t.accuracy.push_str(&format!(" {} |", corruption.name()));
        }
        t.accuracy.push_str(" mean |\n|---|");
        t.accuracy.push_str(&"---|".repeat(corruptions.len() + 1));
        t.accuracy.push('\n');
        let mut none_mean = None;
        for method in methods {
            let of_method = |s: &Stream| &s.method == method && &s.protocol == protocol;
            let mut per: Vec<Tally> = vec![Tally::default(); corruptions.len()];
            for (i, _) in streams.iter().enumerate().filter(|(_, s)| of_method(s)) {
                for r in records[i].as_deref().unwrap_or_default() {
                    if let Some(k) = corruptions.iter().position(|c| c.name() == r.corruption()) {
                        per[k].add(r.correct(), r.uploaded);
                    }
                }
            }
            t.accuracy.push_str(&format!("| {method} |"));
            for (corruption, tally) in corruptions.iter().zip(&per) {
                t.accuracy.push_str(&format!(" {} ({}) |", pct(tally.accuracy()), pct(tally.uploaded_fraction())));
                t.rows.push(json!({"method": method, "protocol": protocol, "severity": severity, "corruption": corruption.name(),
                                   "accuracy": tally.accuracy(), "uploaded_fraction": tally.uploaded_fraction(), "samples": tally.n}));
            }
            let mean_acc = per.iter().map(Tally::accuracy).sum::<f64>() / per.len() as f64;
            let mean_up = per.iter().map(Tally::uploaded_fraction).sum::<f64>() / per.len() as f64;
            t.accuracy.push_str(&format!(" **{}** ({}) |\n", pct(mean_acc), pct(mean_up)));
            t.rows.push(json!({"method": method, "protocol": protocol, "severity": severity, "corruption": "mean",
                               "accuracy": mean_acc, "uploaded_fraction": mean_up}));
            let bytes: u64 = streams.iter().zip(upload_bytes).filter(|(s, _)| of_method(s)).map(|(_, b)| b).sum();
            let megabytes = bytes as f64 / 1e6;
            let points_per_mb =
                none_mean.map(|none: f64| 100.0 * (mean_acc - none) / megabytes).filter(|v| v.is_finite());
            t.uploads.push_str(&format!(
                "| {method} | {protocol} | {megabytes:.3} | {} |\n",
                points_per_mb.map_or("—".to_owned(), |v| format!("{v:.2}"))
            ));
            t.rows.push(json!({"method": method, "protocol": protocol, "severity": severity, "corruption": "all",
                               "upload_bytes": bytes, "points_per_mb": points_per_mb}));
            if method == "none" {
                none_mean = Some(mean_acc);
            }
            t.means.insert((method.clone(), protocol.clone()), (mean_acc, mean_up));
            if method == "cema-reference" && t.headline.is_none() {
                t.headline = Some((mean_acc, none_mean.unwrap_or(f64::NAN), mean_up));
            }
        }
    }
    t
}

/// `summary.md`, `results.json` and the continual protocol's accuracy plot.
fn write_outputs(
    dir: &std::path::Path,
    c: &Common,
    tables: &Tables,
    streams: &[Stream],
    records: &[Option<Vec<Record>>],
    (methods, protocols, corruptions, pacing): (&[String], &[String], &[Corruption], &str),
    started: Instant,
) -> Result<()> {
    let summary = format!(
        "# CEMA evaluation\n\nFashion-MNIST test streams, severity {}, {} samples per corruption, batch {}, seed {}, {} pacing.\n\
         Methods: none (edge model as shipped), bn-stats (cloud updates running statistics only, from all samples),\n\
         upload-all (CEMA's cloud on every sample), eata-select (EATA's selection with its published margin 0.05),\n\
         cema-reference and cema-paper (cema-spec presets; selector overrides `{}`, chosen on the seed-1 validation stream).\n{}{}{}\nWall time: {:.0} s.\n",
        c.severity,
        c.samples_per_corruption.unwrap_or(320),
        c.batch,
        c.seed,
        pacing,
        c.selector,
        tables.accuracy,
        tables.uploads,
        tables.harms,
        started.elapsed().as_secs_f64()
    );
    std::fs::write(dir.join("summary.md"), &summary)?;
    let results = json!({
        "kind": "eval",
        "config": {"selector": c.selector, "severity": c.severity, "samples_per_corruption": c.samples_per_corruption.unwrap_or(320), "batch": c.batch,
                   "seed": c.seed, "methods": methods, "protocols": protocols, "pacing": pacing,
                   "corruptions": corruptions.iter().map(|c| c.name()).collect::<Vec<_>>(), "models": c.models.display().to_string()},
        "results": tables.rows,
    });
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    let panels: Vec<plot::Panel> = protocols
        .iter()
        .filter(|p| *p == "continual")
        .map(|p| plot::Panel {
            title: format!("{p}: accuracy, moving average over 256 predictions"),
            y_range: (0.0, 1.0),
            series: streams
                .iter()
                .enumerate()
                .filter(|(_, s)| &s.protocol == p)
                .map(|(i, s)| plot::Series {
                    label: s.method.clone(),
                    points: report::moving(records[i].as_deref().unwrap_or_default(), 256, 64, |x| {
                        x.correct() as u8 as f64
                    }),
                })
                .collect(),
        })
        .collect();
    if !panels.is_empty() {
        plot::write(&dir.join("accuracy.png"), &panels, "predictions")?;
    }
    Ok(())
}
