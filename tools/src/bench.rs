//! `cema-model bench compute`: what the burn executor costs on this machine. Prints figures;
//! asserts nothing.

use std::time::Instant;

use cema_compute::loss::cross_entropy;
use cema_compute::zoo::{ResNetSpec, mobile_224};
use cema_compute::{Graph, NormMode, Sgd, Trainable, batch, cpu, cpu_autodiff};

use cema_core::OnnxModel;
use cema_core::onnx::generate::SplitMix64;
use cema_host::OrtLibrary;

/// Repetitions per measurement (the median is reported).
const REPEATS: usize = 5;

fn median_seconds(mut run: impl FnMut()) -> f64 {
    run(); // warm-up: allocations, thread pools, ORT's first-run work
    let mut times: Vec<f64> = (0..REPEATS)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[REPEATS / 2]
}

fn input(n: usize, c: usize, side: usize, seed: u64) -> (Vec<f32>, [usize; 4]) {
    (SplitMix64::new(seed).vec(n * c * side * side, -1.0, 1.0), [n, c, side, side])
}

/// burn inference throughput divided by ONNX Runtime's (2 intra-op threads, as burn uses both cores).
fn forward_ratio(model: &OnnxModel, n: usize) -> anyhow::Result<(f64, f64)> {
    let (x, dims) = input(n, 1, 28, 1);
    let graph = Graph::load(model, &cpu(), Trainable::None)?;
    let burn_s = median_seconds(|| {
        let _ =
            graph.forward(batch(&x, dims, graph.device()), NormMode::Inference).map(|f| cema_compute::values(f.logits));
    });
    let library = OrtLibrary::get(None)?;
    let mut session = library.session(&model.encode(), 2)?;
    // One checked run first, so a failing session cannot be timed as a fast one.
    let tensor = ort::value::TensorRef::from_array_view((dims.to_vec(), x.as_slice()))?;
    session.run(ort::inputs!["input" => tensor])?;
    let ort_s = median_seconds(|| {
        if let Ok(tensor) = ort::value::TensorRef::from_array_view((dims.to_vec(), x.as_slice())) {
            let _ = session.run(ort::inputs!["input" => tensor]);
        }
    });
    Ok((n as f64 / burn_s, n as f64 / ort_s))
}

/// One pretraining step (every weight, batch statistics, cross-entropy, SGD): images per second.
fn pretrain_rate(model: &OnnxModel, n: usize) -> anyhow::Result<f64> {
    let mut graph = Graph::load(model, &cpu_autodiff(), Trainable::All)?;
    let (x, dims) = input(n, 1, 28, 2);
    let labels: Vec<usize> = (0..n).map(|i| i % 10).collect();
    let mut sgd = Sgd::new(0.01, 0.9);
    let seconds = median_seconds(|| {
        if let Ok(forward) = graph.forward(batch(&x, dims, graph.device()), NormMode::Batch) {
            let grads = cross_entropy(forward.logits, &labels).backward();
            sgd.step(&mut graph, &grads);
            graph.update_running_stats(&forward.batch_stats);
        }
    });
    Ok(n as f64 / seconds)
}

/// Seconds of one CEMA cloud step with the real adaptation engine, by phase.
#[derive(Debug, Clone, Copy)]
struct StepPhases {
    /// Foundation step on the 32 new samples (forward in TBR, backward, SGD).
    foundation: f64,
    /// Teacher logits of the 128 samples (the foundation model in inference mode).
    teacher: f64,
    /// The distillation step (teacher logits, edge model forward in TBR, backward, SGD).
    distill: f64,
    /// A whole step: foundation step, then distillation.
    total: f64,
}

/// A CEMA cloud step with the real adaptation engine: a foundation step on 32 new samples and
/// a distillation step on those 32 plus 96 replayed (the full step once the replay buffer
/// holds 256), whole and by phase.
fn cema_step_seconds(student: &OnnxModel, foundation: &OnnxModel, manifest: &str) -> anyhow::Result<StepPhases> {
    use cema_compute::adapt::{AdaptConfig, AdaptError, Adapter};
    use cema_core::SampleValues;
    let manifest = cema_core::Manifest::parse(manifest)?;
    let mut adapter = Adapter::new((student, &manifest), (foundation, &manifest), AdaptConfig::default())?;
    let mut rng = SplitMix64::new(3);
    let samples: Vec<SampleValues> = (0..128)
        .map(|_| SampleValues::U8((0..manifest.sample_elements()).map(|_| (rng.next_u64() >> 56) as u8).collect()))
        .collect();
    let new: Vec<&SampleValues> = samples[..32].iter().collect();
    let all: Vec<&SampleValues> = samples.iter().collect();
    let mut state = adapter.initial_state();
    let mut failure: Option<AdaptError> = None;
    let mut measure = |run: &mut dyn FnMut(&mut Adapter) -> Result<(), AdaptError>| {
        median_seconds(|| {
            if let Err(e) = run(&mut adapter) {
                failure = Some(e);
            }
        })
    };
    let mut phases = StepPhases {
        total: measure(&mut |a| {
            a.foundation_step(&mut state, &new).and_then(|_| a.distill_step(&mut state, &all).map(drop))
        }),
        foundation: 0.0,
        teacher: 0.0,
        distill: 0.0,
    };
    phases.foundation = measure(&mut |a| a.foundation_step(&mut state, &new).map(drop));
    phases.teacher = measure(&mut |a| a.foundation_logits(&state, &all).map(drop));
    phases.distill = measure(&mut |a| a.distill_step(&mut state, &all).map(drop));
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(phases),
    }
}

fn print_phases(what: &str, p: &StepPhases) {
    println!(
        "CEMA step, {what}: {:.3} s (foundation step on 32 {:.3} s; distillation on 128 {:.3} s, of which teacher forward {:.3} s)",
        p.total, p.foundation, p.distill, p.teacher
    );
}

const MOBILE_MANIFEST: &str = "[input]\nname = \"x\"\nshape = [3, 224, 224]\nlayout = \"nchw\"\npixels = \"u8\"\n\n\
    [output]\nname = \"logits\"\n\n[preprocess]\nscale = 0.003921569\nmean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n\n\
    [classes]\nnames = [\"c0\", \"c1\", \"c2\", \"c3\", \"c4\", \"c5\", \"c6\", \"c7\", \"c8\", \"c9\"]\n";

/// Runs every measurement, printing as it goes; returns the closing `key=value` line.
pub fn bench_compute() -> anyhow::Result<String> {
    let student = ResNetSpec::STUDENT.build(1)?;
    let foundation = ResNetSpec::FOUNDATION.build(2)?;
    println!(
        "built-in architectures: student {} parameters, foundation {} (random weights; timing only)",
        ResNetSpec::STUDENT.parameter_count(),
        ResNetSpec::FOUNDATION.parameter_count()
    );
    let (burn_rate, ort_rate) = forward_ratio(&student, 64)?;
    let ratio = burn_rate / ort_rate;
    println!(
        "forward, student, batch 64: burn {burn_rate:.0} img/s, ONNX Runtime {ort_rate:.0} img/s (ratio {ratio:.3})"
    );
    let student_train = pretrain_rate(&student, 64)?;
    let foundation_train = pretrain_rate(&foundation, 64)?;
    println!("pretraining step, batch 64: student {student_train:.0} img/s, foundation {foundation_train:.0} img/s");
    let step = cema_step_seconds(&student, &foundation, &crate::builtin::BuiltIn::Student.manifest_toml(&[]))?;
    print_phases("built-ins", &step);
    let mobile = mobile_224(3)?;
    let step_224 = cema_step_seconds(&mobile, &mobile, MOBILE_MANIFEST)?;
    print_phases("224-px depthwise CNN as edge and foundation model", &step_224);
    let (step, step_224) = (step.total, step_224.total);
    Ok(format!(
        "forward_vs_ort={ratio:.3} step_seconds={step:.3} step_seconds_224={step_224:.3} pretrain_student_img_per_s={student_train:.0} pretrain_foundation_img_per_s={foundation_train:.0}"
    ))
}

/// `cema-model bench ingest`: a cloud in this process (tiny models, a temporary state folder)
/// and `devices` simulated devices on loopback, each streaming requests of 16 small samples
/// and waiting for each acknowledgement. Prints samples/s, ack latency percentiles, and the
/// memory an idle scope costs; returns the closing `key=value` line.
pub fn bench_ingest(devices: usize, seconds: f64) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(ingest(devices.max(1), seconds))
}

async fn ingest(devices: usize, seconds: f64) -> anyhow::Result<String> {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use cema_cloud::server::{Cloud, CloudConfig, ModelConfig};

    let dir = tempfile::tempdir()?;
    let (model, _) = crate::builtin::write_tiny_models(dir.path())?;
    let manifest_text = crate::builtin::BuiltIn::Student.manifest_toml(&[]);
    // Loopback and plaintext: the figure is the ingest path's, not TLS's.
    let mut model_config = ModelConfig::new(model.clone(), model.clone());
    model_config.keep_versions = 5;
    let config = CloudConfig::loopback(BTreeMap::from([("default".to_owned(), model_config)]));
    let cloud = Cloud::start(&config, &dir.path().join("data")).await?;
    let addr = format!("http://{}", cloud.grpc_addr());
    let registry = cloud.registry();
    let tokens: Vec<String> =
        (0..devices).map(|i| registry.add(&format!("dev-{i}"), "default")).collect::<Result<_, _>>()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cloud.run(async move {
        let _ = stop_rx.await;
    }));
    let fingerprint = cema_core::OnnxModel::load(&model)?.fingerprint().to_hex();
    let manifest = cema_core::Manifest::parse(&manifest_text)?;
    let summary = cema_proto::manifest_summary(&manifest);
    let pixels = cema_core::codec::encode_u8(&[1, 28, 28], &[128u8; 784], cema_core::Compression::None)?;
    let input = cema_proto::sample_to_wire(&pixels);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let (addr, input, fingerprint, summary) = (addr.clone(), input.clone(), fingerprint.clone(), summary.clone());
        tasks.push(tokio::spawn(stream_device(
            format!("dev-{i}"),
            token,
            addr,
            input,
            (fingerprint, summary),
            deadline,
        )));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        if let Ok(Some(l)) = task.await {
            latencies.extend(l);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let pick =
        |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
    let rate = latencies.len() as f64 * 16.0 / elapsed;
    let (p50, p99) = (pick(0.5), pick(0.99));
    let _ = stop_tx.send(());
    let _ = server.await;
    println!(
        "ingest, {devices} devices × requests of 16 samples (28×28 u8), each durable before its ack: {rate:.0} samples/s, ack p50 {p50:.2} ms, p99 {p99:.2} ms"
    );
    Ok(format!("devices={devices} samples_per_s={rate:.0} p50_ack_ms={p50:.2} p99_ack_ms={p99:.2}"))
}

/// One simulated device of `bench ingest`: registers, then sends requests of 16 samples until
/// `deadline`, each after the last one's acknowledgement. Its ack latencies in ms (`None` if
/// the cloud refused it).
async fn stream_device(
    device: String,
    token: String,
    addr: String,
    input: cema_proto::v1::EncodedTensor,
    (fingerprint, summary): (String, cema_proto::v1::ManifestSummary),
    deadline: Instant,
) -> Option<Vec<f64>> {
    use cema_proto::v1::cema_client::CemaClient;
    use cema_proto::v1::{Sample, UploadRequest};

    let channel = tonic::transport::Endpoint::from_shared(addr).ok()?.connect().await.ok()?;
    let auth = cema_proto::bearer(&token);
    let mut client = CemaClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert(cema_proto::AUTHORIZATION, auth.parse().map_err(|_| tonic::Status::internal("token"))?);
        Ok(r)
    });
    let register = cema_proto::v1::RegisterRequest {
        device_id: device.clone(),
        model_fingerprint: fingerprint,
        manifest: Some(summary),
        agent_version: "bench".into(),
        applied_version: 0,
    };
    client.register(register).await.ok()?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut acks = client.upload(tokio_stream::wrappers::ReceiverStream::new(rx)).await.ok()?.into_inner();
    let mut latencies = Vec::new();
    let mut seq = 0u64;
    while Instant::now() < deadline {
        let samples = (0..16)
            .map(|_| {
                seq += 1;
                Sample { seq, input: Some(input.clone()), entropy: 0.3, params_version: 0, predicted_class: 0 }
            })
            .collect();
        let sent = Instant::now();
        tx.send(UploadRequest { device_id: device.clone(), samples, batch_ends: Vec::new() }).await.ok()?;
        acks.message().await.ok()??;
        latencies.push(sent.elapsed().as_secs_f64() * 1e3);
    }
    Some(latencies)
}

/// Resident memory of this process in bytes.
fn rss_bytes() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |pages| pages * 4096.0)
}

/// Memory of idle adaptation scopes: RSS growth while `scopes` device scopes are created and
/// given their (source) state, divided by their number.
pub fn bench_idle_scopes(scopes: usize) -> anyhow::Result<String> {
    use cema_compute::adapt::{AdaptConfig, Adapter};
    let student = ResNetSpec::STUDENT.build(1)?;
    let foundation = ResNetSpec::FOUNDATION.build(2)?;
    let manifest = cema_core::Manifest::parse(&crate::builtin::BuiltIn::Student.manifest_toml(&[]))?;
    let adapter = Adapter::new((&student, &manifest), (&foundation, &manifest), AdaptConfig::default())?;
    let (tx, _rx) = tokio::sync::watch::channel(0u64);
    let before = rss_bytes();
    let states: Vec<_> = (0..scopes)
        .map(|_| {
            let mut s = adapter.initial_state();
            // A scope that has stepped also holds momentum for every γ and β.
            s.student_velocity = s.student.tensors.iter().map(|(n, t)| (n.clone(), t.values.clone())).collect();
            s.foundation_velocity = s.foundation.tensors.iter().map(|(n, t)| (n.clone(), t.values.clone())).collect();
            (s, tx.subscribe(), cema_cloud::store::ScopeMeta::default())
        })
        .collect();
    let per_scope = (rss_bytes() - before) / scopes as f64;
    let approx = states.first().map(|s| s.0.approx_bytes()).unwrap_or(0);
    println!(
        "idle scope (built-ins, state with momentum, watcher, bookkeeping): {:.0} KB measured by RSS over {scopes} scopes ({:.0} KB of tensors)",
        per_scope / 1024.0,
        approx as f64 / 1024.0
    );
    drop(states);
    Ok(format!("idle_scope_kb={:.0}", per_scope / 1024.0))
}
