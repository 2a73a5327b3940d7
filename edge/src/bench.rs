//! `cema-edge bench`: what the agent costs on top of ONNX Runtime. Prints figures; asserts
//! nothing.

use std::path::Path;
use std::time::Instant;

use cema_core::onnx::observed_statistics_model;
use cema_core::{Manifest, NormDiscovery, NormParams, OnnxModel, SampleValues};
use ort::value::TensorRef;

use crate::agent::{Agent, AgentConfig, AgentError, Pacing};
use crate::outbox::OutboxLimits;
use crate::runtime::{OrtLibrary, Runtime, RuntimeError};
use crate::selector::Preset;

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// ONNX Runtime, the model or a parameter update failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// ONNX Runtime could not be loaded or refused a session.
    #[error(transparent)]
    Library(#[from] cema_host::OrtError),
    /// A run failed.
    #[error("ONNX Runtime: {0}")]
    Ort(#[from] ort::Error),
    /// The model file is unusable.
    #[error(transparent)]
    Model(#[from] cema_core::ModelError),
    /// Its manifest is unusable.
    #[error(transparent)]
    Manifest(#[from] cema_core::ManifestError),
    /// The source parameters could not be read.
    #[error(transparent)]
    Params(#[from] cema_core::ParamsError),
    /// The agent failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The temporary agent state could not be opened.
    #[error("the benchmark's agent state: {0}")]
    Store(#[from] sled::Error),
}

fn random_samples(manifest: &Manifest, n: usize, seed: u64) -> Vec<SampleValues> {
    let mut rng = cema_core::rng::Rng::for_stream(&[seed]);
    let per = manifest.sample_elements();
    (0..n)
        .map(|_| match manifest.input.pixels {
            cema_core::manifest::PixelType::U8 => SampleValues::U8((0..per).map(|_| rng.next_u64() as u8).collect()),
            cema_core::manifest::PixelType::F32 => SampleValues::F32((0..per).map(|_| rng.unit() as f32).collect()),
        })
        .collect()
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// What the agent achieved on the benchmark's batches.
struct AgentFigures {
    /// Images per second through `Agent::push`.
    rate: f64,
    /// Selection time over inference time.
    overhead: f64,
    /// Share of the random inputs selected.
    selected: f64,
    /// Milliseconds to apply a parameter update.
    swap_ms: f64,
}

/// Runs the benchmark; returns the closing `key=value` line. With `agent_only` the process
/// holds only what a deployed agent holds — its session and, during an update, one prepared
/// session — so `peak_rss_mb` is the agent's footprint; the raw and statistics comparisons
/// are skipped.
pub fn run(model_path: &Path, batch: usize, batches: usize, agent_only: bool) -> Result<String, BenchError> {
    let library = OrtLibrary::get(None)?;
    let model = OnnxModel::load(model_path)?;
    let manifest = Manifest::load(Manifest::path_for(model_path))?;
    let samples = random_samples(&manifest, batch, 7);
    let (raw_rate, statistics_vs_raw) = if agent_only {
        (f64::NAN, f64::NAN)
    } else {
        let mut input = Vec::new();
        for s in &samples {
            match s {
                SampleValues::U8(p) => manifest.preprocess_u8(p, &mut input),
                SampleValues::F32(v) => input.extend_from_slice(v),
            }
        }
        let rate = raw_rate(&library, &model, &manifest, &input, batches)?;
        // The same with each normalisation layer's input statistics as extra outputs (the
        // statistics uplink, edge-local adaptation): what they cost, fusion lost included.
        let observed = observed_statistics_model(&model, &NormDiscovery::of(&model))?;
        (rate, raw_rate(&library, &observed.model, &manifest, &input, batches)? / rate)
    };
    let agent = agent_figures(library, &model, &manifest, &samples, batches, agent_only)?;
    println!(
        "model {}, batch {batch}, {batches} batches, 1 intra-op thread{}",
        model_path.display(),
        if agent_only { ", agent only" } else { "" }
    );
    let AgentFigures { rate: agent_rate, overhead, selected, swap_ms } = agent;
    if agent_only {
        println!("agent (preprocess, predict, select, outbox): {agent_rate:.0} images/s");
        println!("parameter update (validate + patch + prepared session): {swap_ms:.1} ms");
        return Ok(format!(
            "agent_only=1 swap_ms={swap_ms:.1} peak_rss_mb={:.1} agent_img_per_s={agent_rate:.0}",
            peak_rss_mb()
        ));
    }
    let ratio = agent_rate / raw_rate;
    println!("raw Session::run: {raw_rate:.0} images/s");
    println!(
        "agent (preprocess, predict, select, outbox): {agent_rate:.0} images/s ({:.1}% of raw); selected {:.1}% of random inputs",
        100.0 * ratio,
        100.0 * selected
    );
    println!("selection: {:.3}% of inference time", 100.0 * overhead);
    println!("with per-layer statistics outputs (statistics uplink): {:.1}% of raw", 100.0 * statistics_vs_raw);
    println!("parameter update (validate + patch + session + swap): {swap_ms:.1} ms");
    Ok(format!(
        "agent_vs_raw={ratio:.3} select_overhead={overhead:.5} statistics_vs_raw={statistics_vs_raw:.3} swap_ms={swap_ms:.1} peak_rss_mb={:.1} raw_img_per_s={raw_rate:.0} agent_img_per_s={agent_rate:.0}",
        peak_rss_mb()
    ))
}

/// Raw: one ORT session, the same preprocessed batch, `Session::run` only; images per second.
fn raw_rate(
    library: &OrtLibrary,
    model: &OnnxModel,
    manifest: &Manifest,
    input: &[f32],
    batches: usize,
) -> Result<f64, BenchError> {
    let batch = input.len() / manifest.sample_elements();
    let mut dims = vec![batch as i64];
    dims.extend(manifest.input.shape.iter().map(|&d| d as i64));
    let mut session = library.session(&model.encode(), 1)?;
    let mut run = || -> Result<(), BenchError> {
        let tensor = TensorRef::from_array_view((dims.clone(), input))?;
        session.run(ort::inputs![manifest.input.name.as_str() => tensor])?;
        Ok(())
    };
    run()?;
    let t = Instant::now();
    for _ in 0..batches {
        run()?;
    }
    Ok((batch * batches) as f64 / t.elapsed().as_secs_f64())
}

/// Agent: raw samples → preprocess → predict → select → outbox (sled, flushed); then an update
/// applied (validate + patch + new session + swap) with perturbed parameters.
fn agent_figures(
    library: OrtLibrary,
    model: &OnnxModel,
    manifest: &Manifest,
    samples: &[SampleValues],
    batches: usize,
    agent_only: bool,
) -> Result<AgentFigures, BenchError> {
    let dir = std::env::temp_dir().join(format!("cema-edge-bench-{}", std::process::id()));
    let db = sled::open(&dir)?;
    let runtime = Runtime::new(library.clone(), model.clone(), manifest.clone(), 1)?;
    let config = AgentConfig {
        device_id: "bench".into(),
        selector: Preset::Reference.config(),
        compress: false,
        float_encoding: cema_core::Encoding::F16,
        stats_init: cema_core::StatsInit::Source,
        uplink_statistics: false,
        local_every: None,
        outbox: OutboxLimits::default(),
        pacing: Pacing::Free,
        guard: false,
        drift_reset: false,
    };
    let mut agent = Agent::open(runtime, &db, config)?;
    agent.push(samples)?;
    let metrics = agent.metrics();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let (inference0, select0) = (load(&metrics.inference_us), load(&metrics.select_us));
    let t = Instant::now();
    for _ in 0..batches {
        agent.push(samples)?;
    }
    let rate = (samples.len() * batches) as f64 / t.elapsed().as_secs_f64();
    let inference = (load(&metrics.inference_us) - inference0) as f64;
    let select = (load(&metrics.select_us) - select0) as f64;
    let selected = load(&metrics.selected) as f64 / load(&metrics.predictions).max(1) as f64;
    let mut params = NormParams::source(model)?;
    params.version = 1;
    for tensor in params.tensors.values_mut() {
        tensor.values.iter_mut().for_each(|v| *v *= 1.01);
    }
    let swap_ms = if agent_only {
        // The agent's own runtime prepares the update beside its serving session, as in service.
        let t = Instant::now();
        let prepared = agent.runtime().prepare(&params)?;
        let prepare_ms = t.elapsed().as_secs_f64() * 1e3;
        drop(prepared);
        prepare_ms
    } else {
        let mut runtime = Runtime::new(library, model.clone(), manifest.clone(), 1)?;
        let t = Instant::now();
        let prepared = runtime.prepare(&params)?;
        runtime.swap(prepared);
        t.elapsed().as_secs_f64() * 1e3
    };
    drop(agent);
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(AgentFigures { rate, overhead: select / inference.max(1.0), selected, swap_ms })
}
