//! `cema-cloud bench compute`: what the burn executor costs on this machine. Prints figures;
//! asserts nothing.

use std::time::Instant;

use burn::tensor::activation;
use cema_compute::loss::{cross_entropy, mean_entropy};
use cema_compute::zoo::{ResNetSpec, mobile_224};
use cema_compute::{Graph, NormMode, Sgd, Trainable, batch, cpu, cpu_autodiff};
use cema_core::OnnxModel;
use cema_core::onnx::generate::SplitMix64;
use cema_edge::OrtLibrary;

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
fn forward_ratio(model: &OnnxModel, n: usize) -> Result<(f64, f64), String> {
    let (x, dims) = input(n, 1, 28, 1);
    let graph = Graph::load(model, &cpu(), Trainable::None).map_err(|e| e.to_string())?;
    let burn_s = median_seconds(|| {
        let _ =
            graph.forward(batch(&x, dims, graph.device()), NormMode::Inference).map(|f| cema_compute::values(f.logits));
    });
    let library = OrtLibrary::get(None).map_err(|e| e.to_string())?;
    let mut session = library.session(&model.encode(), 2).map_err(|e| e.to_string())?;
    // One checked run first, so a failing session cannot be timed as a fast one.
    let tensor = ort::value::TensorRef::from_array_view((dims.to_vec(), x.as_slice())).map_err(|e| e.to_string())?;
    session.run(ort::inputs!["input" => tensor]).map_err(|e| e.to_string())?;
    let ort_s = median_seconds(|| {
        if let Ok(tensor) = ort::value::TensorRef::from_array_view((dims.to_vec(), x.as_slice())) {
            let _ = session.run(ort::inputs!["input" => tensor]);
        }
    });
    Ok((n as f64 / burn_s, n as f64 / ort_s))
}

/// One pretraining step (every weight, batch statistics, cross-entropy, SGD): images per second.
fn pretrain_rate(model: &OnnxModel, n: usize) -> Result<f64, String> {
    let mut graph = Graph::load(model, &cpu_autodiff(), Trainable::All).map_err(|e| e.to_string())?;
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

/// The compute of one CEMA cloud step: a foundation-model TBR step on 32 new samples, a
/// foundation forward on 128 (the teacher), and a student TBR step on 128. Losses are an
/// entropy stand-in until the adaptation engine lands; they cost a negligible share.
fn cema_step_seconds(student: &OnnxModel, foundation: &OnnxModel, dims: [usize; 3]) -> Result<f64, String> {
    let device = cpu_autodiff();
    let mut student = Graph::load(student, &device, Trainable::NormAffine).map_err(|e| e.to_string())?;
    let mut teacher = Graph::load(foundation, &device, Trainable::NormAffine).map_err(|e| e.to_string())?;
    let [c, h, _] = dims;
    let (new, new_dims) = input(32, c, h, 3);
    let (all, all_dims) = input(128, c, h, 4);
    let (mut sgd_s, mut sgd_t) = (Sgd::new(2.5e-3, 0.9), Sgd::new(2.5e-4, 0.9));
    let seconds = median_seconds(|| {
        if let Ok(f) = teacher.forward(batch(&new, new_dims, &device), NormMode::Tbr) {
            let grads = mean_entropy(f.logits).backward();
            sgd_t.step(&mut teacher, &grads);
            teacher.update_running_stats(&f.batch_stats);
        }
        let targets = teacher.forward(batch(&all, all_dims, &device), NormMode::Inference).map(|f| f.logits.detach());
        if let (Ok(f), Ok(t)) = (student.forward(batch(&all, all_dims, &device), NormMode::Tbr), targets) {
            let kl = activation::softmax(t.clone(), 1)
                .mul(activation::log_softmax(t, 1).sub(activation::log_softmax(f.logits.clone(), 1)))
                .sum_dim(1)
                .mean();
            let grads = kl.add(mean_entropy(f.logits)).backward();
            sgd_s.step(&mut student, &grads);
            student.update_running_stats(&f.batch_stats);
        }
    });
    Ok(seconds)
}

/// Runs every measurement, printing as it goes; returns the closing `key=value` line.
pub fn bench_compute() -> Result<String, String> {
    let student = ResNetSpec::STUDENT.build(1).map_err(|e| e.to_string())?;
    let foundation = ResNetSpec::FOUNDATION.build(2).map_err(|e| e.to_string())?;
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
    let step = cema_step_seconds(&student, &foundation, [1, 28, 28])?;
    println!(
        "CEMA step (foundation TBR step on 32 + teacher forward and student TBR step on 128), built-ins: {step:.3} s"
    );
    let mobile = mobile_224(3).map_err(|e| e.to_string())?;
    let step_224 = cema_step_seconds(&mobile, &mobile, [3, 224, 224])?;
    println!("CEMA step, 224-px depthwise CNN as student and foundation: {step_224:.3} s");
    Ok(format!(
        "forward_vs_ort={ratio:.3} step_seconds={step:.3} step_seconds_224={step_224:.3} pretrain_student_img_per_s={student_train:.0} pretrain_foundation_img_per_s={foundation_train:.0}"
    ))
}
