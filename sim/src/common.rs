//! What every `cema-sim` command shares: the common flags, run folders, the model and data
//! paths, scenario flags of the edges, offline (unadapted) accuracy, edge specs and the cloud's
//! config.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cema_edge::{OrtLibrary, Runtime};
use cema_shift::{Corruption, Dataset, Protocol, Scenario, ScenarioConfig};
use cema_sim::fleet::{self, Binaries, EdgeSpec};
use cema_sim::report::Record;

#[derive(clap::Args)]
pub(crate) struct Common {
    /// Folder with student.onnx and foundation.onnx (and manifests).
    #[arg(long, default_value = "models")]
    pub(crate) models: PathBuf,
    /// Where run folders are created.
    #[arg(long, default_value = "runs")]
    pub(crate) runs: PathBuf,
    /// Corruption severity 1–5.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub(crate) severity: u8,
    /// Samples streamed per corruption.
    #[arg(long)]
    pub(crate) samples_per_corruption: Option<usize>,
    /// Scenario seed.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Images per edge batch.
    #[arg(long, default_value_t = 64)]
    pub(crate) batch: usize,
    /// Selector overrides of the CEMA edges (cema-reference, cema-paper and the demo's),
    /// `key=value` joined by `+`: e-max-frac, e-min-frac, d-margin, lambda, warmup-samples.
    /// The default was chosen on a held-apart validation stream (seed 1, see README); `''`
    /// runs cema-spec's values.
    #[arg(long, default_value = VALIDATED_SELECTOR)]
    pub(crate) selector: String,
}

/// The selector setting chosen on the validation stream (`cema-sim eval --seed 1`, both
/// protocols): the largest redundancy margin whose independent-protocol uploads stay ≤ 50%.
pub(crate) const VALIDATED_SELECTOR: &str = "d-margin=scaled:0.035";

pub(crate) fn run_dir(runs: &Path, kind: &str) -> Result<PathBuf> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let dir = runs.join(format!("{kind}-{stamp}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(std::path::absolute(&dir)?)
}

pub(crate) fn model_paths(models: &Path) -> Result<(PathBuf, PathBuf)> {
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
pub(crate) fn test_set() -> Result<Dataset> {
    let dir = cema_shift::dataset::fashion_mnist_dir()?;
    Ok(cema_shift::dataset::load_fashion_mnist(&dir, cema_shift::Split::Test)?)
}

/// Scenario flags of `cema-edge run`.
pub(crate) fn scenario_args(c: &Common, protocol: &str, corruptions: &[Corruption], device: u64) -> Vec<String> {
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
pub(crate) fn offline(
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
pub(crate) fn edge_spec(
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
pub(crate) const IDLE_REPLAY_STEPS: usize = 4;
/// Its replay window (newest samples drawn from; `None`: the whole buffer).
pub(crate) const IDLE_REPLAY_WINDOW: Option<usize> = Some(256);

/// The evaluation cloud: one model per cloud method (`cema`, `bnstats`, `cemafb`, `stats`,
/// `statsidle`). In lockstep every model keeps the spec's step rule (`max_wait_seconds = 0`),
/// so lockstep figures do not depend on the clock; real time uses the default.
pub(crate) fn cloud_config(
    student: &Path,
    foundation: &Path,
    (idle_replay_steps, window): (usize, Option<usize>),
    pacing: &str,
) -> String {
    let idle_replay_window = window.map(|w| format!("idle_replay_window = {w}\n")).unwrap_or_default();
    let idle = format!("student_statistics = \"edge\"\nidle_replay_steps = {idle_replay_steps}\n{idle_replay_window}");
    let models = [
        ("cema", String::new()),
        ("bnstats", "method = \"bn-stats\"\n".to_owned()),
        ("cemafb", "stats_init = \"first_batch\"\n".to_owned()),
        ("stats", "student_statistics = \"edge\"\n".to_owned()),
        ("statsidle", idle),
    ];
    let lockstep = if pacing.starts_with("realtime:") { "" } else { "max_wait_seconds = 0.0\n" };
    let mut config = String::from("engine_workers = 1\n");
    for (id, adapt) in models {
        config.push_str(&format!(
            "\n[models.{id}]\nedge = {s:?}\nfoundation = {f:?}\n[models.{id}.adapt]\n{adapt}{lockstep}",
            s = student.display().to_string(),
            f = foundation.display().to_string()
        ));
    }
    config
}

/// Edge flags of a pacing: at a camera's pace (`realtime:`), the source guard (an update can
/// arrive after the shift it was fitted to); none in lockstep.
pub(crate) fn realtime_flags(pacing: &str) -> Vec<String> {
    if pacing.starts_with("realtime:") { vec!["--guard".into(), "true".into()] } else { Vec::new() }
}

pub(crate) fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}
