//! The loaded models of one model id and the single steps of CEMA's cloud side; the order
//! they run in is `round.rs`.

use burn::Tensor;
use cema_core::{Manifest, NormParams, OnnxModel, SampleValues};

use super::{AdaptConfig, AdaptError, StatsInit, StudentStatistics};
use crate::loss::{DistillWeights, distillation, weighted_entropy};
use burn::tensor::{Device, TensorData};

use crate::{Graph, NormMode, Sgd, Trainable, batch, cpu, cpu_autodiff, values};

/// One scope's adaptation state.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopeState {
    /// The edge model's normalisation parameters; `version` is the scope's version.
    pub student: NormParams,
    /// The foundation model's normalisation parameters.
    pub foundation: NormParams,
    /// SGD momentum of the edge model's γ/β, by tensor name.
    pub student_velocity: Vec<(String, Vec<f32>)>,
    /// SGD momentum of the foundation model's γ/β.
    pub foundation_velocity: Vec<(String, Vec<f32>)>,
    /// Whether `stats_init = first_batch` has already replaced the edge model's statistics.
    pub student_stats_set: bool,
    /// The same for the foundation model.
    pub foundation_stats_set: bool,
}

impl ScopeState {
    /// Approximate heap size in bytes (for the idle-scope memory figure).
    pub fn approx_bytes(&self) -> usize {
        let params = |p: &NormParams| p.tensors.values().map(|t| t.values.len() * 4 + 64).sum::<usize>();
        let velocity = |v: &[(String, Vec<f32>)]| v.iter().map(|(n, x)| n.len() + x.len() * 4).sum::<usize>();
        params(&self.student)
            + params(&self.foundation)
            + velocity(&self.student_velocity)
            + velocity(&self.foundation_velocity)
    }
}

/// Loss values of one distillation step (before the update).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DistillReport {
    /// Samples in the step.
    pub batch: usize,
    /// Weighted entropy term.
    pub ent: f32,
    /// Weighted KL term.
    pub kl: f32,
    /// Weighted cross-entropy term.
    pub ce: f32,
    /// `α·Ent + β·KL + γ·CE`.
    pub total: f32,
    /// Each sample's unweighted `T²·KL(teacher ‖ student)`, in step order (new samples first,
    /// then replayed ones).
    pub sample_kl: Vec<f32>,
}

/// Both models of one model id, loaded once.
pub struct Adapter {
    student: Graph,
    foundation: Graph,
    /// The same models without autodiff, for forward passes nothing is learnt from (the
    /// teacher's logits, evaluation): no tape is recorded and no activation kept for a backward.
    student_frozen: Graph,
    foundation_frozen: Graph,
    student_manifest: Manifest,
    foundation_manifest: Manifest,
    source_state: ScopeState,
    config: AdaptConfig,
    e_max: f64,
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Adapter {
    /// Loads the edge (student) and foundation models. They must have the same classes.
    pub fn new(
        student: (&OnnxModel, &Manifest),
        foundation: (&OnnxModel, &Manifest),
        config: AdaptConfig,
    ) -> Result<Self, AdaptError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(AdaptError::Settings(problems));
        }
        if student.1.classes.names != foundation.1.classes.names {
            return Err(AdaptError::ClassesDiffer);
        }
        let load = |(model, manifest): (&OnnxModel, &Manifest), role: &'static str, trainable: Trainable| {
            manifest.check_model(model).map_err(|source| AdaptError::Manifest { role, source })?;
            let device = if trainable == Trainable::None { cpu() } else { cpu_autodiff() };
            Graph::load(model, &device, trainable).map_err(|source| AdaptError::Load { role, source })
        };
        let student_graph = load(student, "edge", Trainable::NormAffine)?;
        let foundation_graph = load(foundation, "foundation", Trainable::NormAffine)?;
        let student_frozen = load(student, "edge", Trainable::None)?;
        let foundation_frozen = load(foundation, "foundation", Trainable::None)?;
        if student_graph.norm_layers().is_empty() {
            return Err(AdaptError::NothingToAdapt);
        }
        let source_state = ScopeState {
            student: student_graph.norm_params(0),
            foundation: foundation_graph.norm_params(0),
            student_velocity: Vec::new(),
            foundation_velocity: Vec::new(),
            student_stats_set: false,
            foundation_stats_set: false,
        };
        let e_max = config.e_max_frac * (student.1.num_classes() as f64).ln();
        Ok(Self {
            student: student_graph,
            foundation: foundation_graph,
            student_frozen,
            foundation_frozen,
            student_manifest: student.1.clone(),
            foundation_manifest: foundation.1.clone(),
            source_state,
            config,
            e_max,
        })
    }

    /// The state of a new scope: both models' own parameters, version 0.
    pub fn initial_state(&self) -> ScopeState {
        self.source_state.clone()
    }

    /// The settings.
    pub fn config(&self) -> &AdaptConfig {
        &self.config
    }

    /// `E_max` for this model's class count.
    pub fn e_max(&self) -> f64 {
        self.e_max
    }

    /// The foundation step on new samples: `L_f` with TBR, SGD, running-statistics update.
    /// Returns `L_f` before the update.
    pub fn foundation_step(&mut self, state: &mut ScopeState, samples: &[&SampleValues]) -> Result<f32, AdaptError> {
        let input = self.input(&self.foundation_manifest, samples, self.foundation.device())?;
        let graph = &mut self.foundation;
        graph.load_norm_params(&state.foundation)?;
        let first = self.config.stats_init == StatsInit::FirstBatch && !state.foundation_stats_set;
        let mut sgd = Sgd::new(self.config.lr_foundation, self.config.momentum);
        sgd.restore_velocity(graph, &state.foundation_velocity)?;
        let forward = graph.forward(input, tbr_mode(first))?;
        let loss = weighted_entropy(forward.logits, self.e_max);
        let value = scalar(&loss);
        sgd.step(graph, &loss.backward());
        follow_statistics(graph, first, &forward.batch_stats);
        state.foundation_stats_set |= first;
        state.foundation = graph.norm_params(state.student.version);
        state.foundation_velocity = sgd.velocity(graph);
        Ok(value)
    }

    /// The distillation step: teacher logits from the foundation model in inference mode, the
    /// edge model in TBR, `L_g`, SGD, running-statistics update.
    pub fn distill_step(
        &mut self,
        state: &mut ScopeState,
        samples: &[&SampleValues],
    ) -> Result<DistillReport, AdaptError> {
        let teacher = self.foundation_logits(state, samples)?;
        let teacher_logits = batch_logits(teacher, samples.len(), self.student.device());

        let input = self.input(&self.student_manifest, samples, self.student.device())?;
        let graph = &mut self.student;
        graph.load_norm_params(&state.student)?;
        // With the statistics uplink the edge model's statistics come from the edges alone.
        let first = self.config.student_statistics == StudentStatistics::Uploads
            && self.config.stats_init == StatsInit::FirstBatch
            && !state.student_stats_set;
        let mut sgd = Sgd::new(self.config.lr_student, self.config.momentum);
        sgd.restore_velocity(graph, &state.student_velocity)?;
        let forward = graph.forward(input, tbr_mode(first))?;
        let weights = DistillWeights {
            alpha: self.config.alpha,
            beta: self.config.beta,
            gamma: self.config.gamma,
            temperature: self.config.temperature,
            e_max: self.e_max,
        };
        let loss = distillation(forward.logits, teacher_logits, &weights);
        let report = DistillReport {
            batch: samples.len(),
            ent: scalar(&loss.ent),
            kl: scalar(&loss.kl),
            ce: scalar(&loss.ce),
            total: scalar(&loss.total),
            sample_kl: values(loss.sample_kl.clone()),
        };
        sgd.step(graph, &loss.total.backward());
        if self.config.student_statistics == StudentStatistics::Uploads {
            follow_statistics(graph, first, &forward.batch_stats);
            state.student_stats_set |= first;
        }
        state.student = graph.norm_params(state.student.version);
        state.student_velocity = sgd.velocity(graph);
        Ok(report)
    }

    /// Makes `statistics` (the running means and variances the edge initialised itself with
    /// from its first batch) the scope's edge-model statistics, unless those were already set
    /// from data. Returns whether they were adopted.
    pub fn adopt_edge_statistics(&self, state: &mut ScopeState, statistics: &NormParams) -> bool {
        if state.student_stats_set {
            return false;
        }
        let version = state.student.version;
        state.student = state.student.overlaid(statistics);
        state.student.version = version;
        state.student_stats_set = true;
        true
    }

    /// Moves the scope's edge-model running statistics towards one batch's statistics measured
    /// on the edge (`running ← m·running + (1 − m)·batch`, each layer's ONNX momentum `m`, or
    /// `1 − edge_statistics_weight`).
    pub fn follow_edge_statistics(&self, state: &mut ScopeState, statistics: &NormParams) {
        let weight = self.config.edge_statistics_weight.map(|w| w as f32);
        state.student.follow_statistics(statistics, self.student.norm_layers(), weight);
        state.student_stats_set = true;
    }

    /// The `bn-stats` baseline: the edge model's running statistics take a TBR momentum
    /// update from the samples; nothing is trained.
    pub fn statistics_step(&mut self, state: &mut ScopeState, samples: &[&SampleValues]) -> Result<(), AdaptError> {
        let input = self.input(&self.student_manifest, samples, self.student.device())?;
        let graph = &mut self.student;
        graph.load_norm_params(&state.student)?;
        let forward = graph.forward(input, NormMode::Tbr)?;
        graph.update_running_stats(&forward.batch_stats);
        state.student = graph.norm_params(state.student.version);
        Ok(())
    }

    /// The edge model's logits for samples under a scope's parameters (inference mode).
    pub fn student_logits(&mut self, state: &ScopeState, samples: &[&SampleValues]) -> Result<Vec<f32>, AdaptError> {
        let input = self.input(&self.student_manifest, samples, self.student_frozen.device())?;
        self.student_frozen.load_norm_params(&state.student)?;
        let forward = self.student_frozen.forward(input, NormMode::Inference)?;
        Ok(values(forward.logits))
    }

    /// The foundation model's logits for samples under a scope's parameters (inference mode).
    pub fn foundation_logits(&mut self, state: &ScopeState, samples: &[&SampleValues]) -> Result<Vec<f32>, AdaptError> {
        let input = self.input(&self.foundation_manifest, samples, self.foundation_frozen.device())?;
        self.foundation_frozen.load_norm_params(&state.foundation)?;
        let forward = self.foundation_frozen.forward(input, NormMode::Inference)?;
        Ok(values(forward.logits))
    }

    /// Model input `[N, …input shape]` from raw samples, preprocessed by `manifest`.
    fn input(&self, manifest: &Manifest, samples: &[&SampleValues], device: &Device) -> Result<Tensor<4>, AdaptError> {
        let per_sample = manifest.sample_elements();
        let mut values = Vec::with_capacity(samples.len() * per_sample);
        for sample in samples {
            if sample.len() != per_sample {
                return Err(AdaptError::SampleSize { actual: sample.len(), expected: per_sample });
            }
            match sample {
                SampleValues::U8(pixels) => manifest.preprocess_u8(pixels, &mut values),
                SampleValues::F32(v) => values.extend_from_slice(v),
            }
        }
        let shape = &manifest.input.shape;
        let dims = [samples.len(), shape[0], shape[1], shape[2]];
        Ok(batch(&values, dims, device))
    }
}

/// TBR, or on a model's first batch under `stats_init = first_batch` TBR whose running
/// statistics are the batch's own (`r = 1`, `d = 0`: `docs/algorithm.md`).
fn tbr_mode(first_batch: bool) -> NormMode {
    if first_batch { NormMode::TbrFirstBatch } else { NormMode::Tbr }
}

/// After a training forward: the first batch's statistics become the running ones; later
/// batches move them by TBR's momentum.
fn follow_statistics(graph: &mut Graph, first_batch: bool, stats: &[Option<crate::BatchStats>]) {
    if first_batch {
        graph.set_running_stats(stats);
    } else {
        graph.update_running_stats(stats);
    }
}

/// Row-major logits of `rows` samples as a `[rows, classes]` tensor on `device`.
fn batch_logits(logits: Vec<f32>, rows: usize, device: &Device) -> Tensor<2> {
    let classes = logits.len() / rows.max(1);
    Tensor::from_data(TensorData::new(logits, [rows, classes]), device)
}

fn scalar(loss: &Tensor<1>) -> f32 {
    values(loss.clone().detach()).first().copied().unwrap_or(f32::NAN)
}
