//! The CEMA cloud step, exactly as `cema-spec.md` ("Cloud") states it: a foundation step
//! (EATA-weighted entropy, TBR), a distillation step into the edge model (`α·Ent + β·KL + γ·CE`
//! with reliability weights, TBR), and the replay-only variant. Only γ/β are trained; running
//! statistics follow TBR's momentum update; every other weight is never touched.
//!
//! One [`Adapter`] per model id holds the two loaded graphs; each adaptation scope's state
//! ([`ScopeState`]: normalisation parameters and momentum of both models) is swapped in for a
//! step and taken out after it, so a thousand idle scopes cost a thousand small states, not a
//! thousand copies of the networks.

use burn::Tensor;
use cema_compute::loss::{DistillWeights, distillation, weighted_entropy};
use cema_compute::{Graph, GraphError, NormMode, Sgd, Trainable, batch, cpu_autodiff, values};
use cema_core::{Manifest, ManifestError, NormParams, OnnxModel, SampleValues};
use serde::Deserialize;

pub use cema_core::StatsInit;

/// Why the cloud step cannot be built or run.
#[derive(Debug, thiserror::Error)]
pub enum AdaptError {
    /// The `[models.<id>.adapt]` settings are out of range (every problem listed).
    #[error("adaptation settings: {}", .0.join("; "))]
    Settings(Vec<String>),
    /// The two models cannot distil into each other.
    #[error("the edge and foundation models' manifests list different classes")]
    ClassesDiffer,
    /// A manifest disagrees with its model.
    #[error("{role} model: {source}")]
    Manifest {
        /// `edge` or `foundation`.
        role: &'static str,
        /// What disagrees.
        source: ManifestError,
    },
    /// The burn executor cannot load a model.
    #[error("{role} model: {source}")]
    Load {
        /// `edge` or `foundation`.
        role: &'static str,
        /// Why.
        source: GraphError,
    },
    /// The edge model has nothing CEMA adapts.
    #[error("the edge model has no normalisation layer to adapt")]
    NothingToAdapt,
    /// A sample does not fit the model input.
    #[error("a sample has {actual} values, the model input {expected}")]
    SampleSize {
        /// Values in the sample.
        actual: usize,
        /// Values the input takes.
        expected: usize,
    },
    /// A forward or backward pass, or restoring state into the graph, failed.
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// What the cloud does with uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CloudMethod {
    /// Foundation step + distillation with replay (CEMA).
    #[default]
    Cema,
    /// Only the edge model's running statistics follow the uploads (no gradient step).
    BnStats,
}

/// Where the edge model's running statistics come from between first-batch initialisation
/// and the end of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StudentStatistics {
    /// TBR's momentum update in each distillation step, from the uploaded (and replayed)
    /// samples: cema-spec.
    #[default]
    Uploads,
    /// The statistics each edge measured on every sample of a batch (the statistics uplink),
    /// by TBR's momentum per batch; distillation trains γ and β only.
    Edge,
}

/// The most idle replay steps one batch may add.
pub const MAX_IDLE_REPLAY_STEPS: usize = 16;

/// Hyperparameters of the cloud step (defaults: the reference code's).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptConfig {
    /// What the cloud does.
    pub method: CloudMethod,
    /// New samples per step.
    pub cloud_batch: usize,
    /// Replay buffer capacity (oldest dropped).
    pub replay_capacity: usize,
    /// Replayed samples added to a distillation step.
    pub replay_draw: usize,
    /// Replay starts once the buffer holds this many samples.
    pub replay_min: usize,
    /// Samples of a replay-only step.
    pub replay_only_batch: usize,
    /// Learning rate of the edge model.
    pub lr_student: f64,
    /// Learning rate of the foundation model.
    pub lr_foundation: f64,
    /// SGD momentum of both.
    pub momentum: f64,
    /// α (entropy), β (KL), γ (cross-entropy) of the distillation loss.
    pub alpha: f64,
    /// See `alpha`.
    pub beta: f64,
    /// See `alpha`.
    pub gamma: f64,
    /// Distillation temperature.
    pub temperature: f64,
    /// `E_max = e_max_frac · ln C`.
    pub e_max_frac: f64,
    /// Where running statistics start.
    pub stats_init: StatsInit,
    /// Where the edge model's running statistics come from afterwards.
    pub student_statistics: StudentStatistics,
    /// With `student_statistics = "edge"`: the weight of each edge batch's statistics in the
    /// running ones (`None`: TBR's, 1 − the layer's ONNX momentum, 0.1 by default). Larger
    /// follows a shift faster.
    pub edge_statistics_weight: Option<f64>,
    /// Extra replay-only distillation steps (each `replay_only_batch` samples) after the round
    /// that finishes a batch, when less than a cloud batch is left queued: the time the engine
    /// would otherwise wait for uploads, spent on replay. They stop early once new work waits
    /// for the scope. 0 (default): the spec's step schedule.
    pub idle_replay_steps: usize,
    /// With `idle_replay_steps`: draw the idle steps' samples from the newest this many in the
    /// replay buffer instead of all of it (`None`: all), so idle time goes to the distribution
    /// the edges see now.
    pub idle_replay_window: Option<usize>,
}

impl Default for AdaptConfig {
    fn default() -> Self {
        Self {
            method: CloudMethod::Cema,
            cloud_batch: 32,
            replay_capacity: 10_000,
            replay_draw: 96,
            replay_min: 256,
            replay_only_batch: 128,
            lr_student: 2.5e-3,
            lr_foundation: 2.5e-4,
            momentum: 0.9,
            alpha: 3.0,
            beta: 3.0,
            gamma: 1.0,
            temperature: 1.0,
            e_max_frac: 0.4,
            stats_init: StatsInit::Source,
            student_statistics: StudentStatistics::Uploads,
            edge_statistics_weight: None,
            idle_replay_steps: 0,
            idle_replay_window: None,
        }
    }
}

impl AdaptConfig {
    /// Problems with the values, all at once.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.cloud_batch < 2 {
            problems.push("cloud_batch must be ≥ 2 (TBR needs batch statistics)".to_owned());
        }
        if self.replay_only_batch < 2 {
            problems.push("replay_only_batch must be ≥ 2".to_owned());
        }
        if self.replay_capacity < self.replay_min.max(self.replay_draw) {
            problems.push("replay_capacity must be ≥ replay_min and replay_draw".to_owned());
        }
        for (key, value) in [
            ("lr_student", self.lr_student),
            ("lr_foundation", self.lr_foundation),
            ("momentum", self.momentum),
            ("alpha", self.alpha),
            ("beta", self.beta),
            ("gamma", self.gamma),
            ("e_max_frac", self.e_max_frac),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                problems.push(format!("{key} must be a finite number ≥ 0, found {value}"));
            }
        }
        if let Some(w) = self.edge_statistics_weight
            && !(w > 0.0 && w <= 1.0)
        {
            problems.push(format!("edge_statistics_weight must be in (0, 1], found {w}"));
        }
        if self.idle_replay_steps > MAX_IDLE_REPLAY_STEPS {
            problems.push(format!(
                "idle_replay_steps must be ≤ {MAX_IDLE_REPLAY_STEPS} (each delays the batch's update), found {}",
                self.idle_replay_steps
            ));
        }
        if let Some(window) = self.idle_replay_window
            && window < self.replay_only_batch
        {
            problems.push(format!(
                "idle_replay_window must be ≥ replay_only_batch ({}), found {window}",
                self.replay_only_batch
            ));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            problems.push(format!("temperature must be > 0, found {}", self.temperature));
        }
        problems
    }
}

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
        let device = cpu_autodiff();
        let load = |(model, manifest): (&OnnxModel, &Manifest), role: &'static str| {
            manifest.check_model(model).map_err(|source| AdaptError::Manifest { role, source })?;
            Graph::load(model, &device, Trainable::NormAffine).map_err(|source| AdaptError::Load { role, source })
        };
        let student_graph = load(student, "edge")?;
        let foundation_graph = load(foundation, "foundation")?;
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
        let input = self.input(&self.foundation_manifest, samples)?;
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
        let teacher_input = self.input(&self.foundation_manifest, samples)?;
        self.foundation.load_norm_params(&state.foundation)?;
        let teacher = self.foundation.forward(teacher_input, NormMode::Inference)?;
        let teacher_logits = teacher.logits.detach();

        let input = self.input(&self.student_manifest, samples)?;
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
        let input = self.input(&self.student_manifest, samples)?;
        let graph = &mut self.student;
        graph.load_norm_params(&state.student)?;
        let forward = graph.forward(input, NormMode::Tbr)?;
        graph.update_running_stats(&forward.batch_stats);
        state.student = graph.norm_params(state.student.version);
        Ok(())
    }

    /// The edge model's logits for samples under a scope's parameters (inference mode).
    pub fn student_logits(&mut self, state: &ScopeState, samples: &[&SampleValues]) -> Result<Vec<f32>, AdaptError> {
        let input = self.input(&self.student_manifest, samples)?;
        self.student.load_norm_params(&state.student)?;
        let forward = self.student.forward(input, NormMode::Inference)?;
        Ok(values(forward.logits.detach()))
    }

    /// The foundation model's logits for samples under a scope's parameters (inference mode).
    pub fn foundation_logits(&mut self, state: &ScopeState, samples: &[&SampleValues]) -> Result<Vec<f32>, AdaptError> {
        let input = self.input(&self.foundation_manifest, samples)?;
        self.foundation.load_norm_params(&state.foundation)?;
        let forward = self.foundation.forward(input, NormMode::Inference)?;
        Ok(values(forward.logits.detach()))
    }

    /// Model input `[N, …input shape]` from raw samples, preprocessed by `manifest`.
    fn input(&self, manifest: &Manifest, samples: &[&SampleValues]) -> Result<Tensor<4>, AdaptError> {
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
        Ok(batch(&values, dims, &cpu_autodiff()))
    }
}

/// TBR, or on a model's first batch under `stats_init = first_batch` TBR whose running
/// statistics are the batch's own (`r = 1`, `d = 0`: `docs/algorithm.md`).
fn tbr_mode(first_batch: bool) -> NormMode {
    if first_batch { NormMode::TbrFirstBatch } else { NormMode::Tbr }
}

/// After a training forward: the first batch's statistics become the running ones; later
/// batches move them by TBR's momentum.
fn follow_statistics(graph: &mut Graph, first_batch: bool, stats: &[Option<cema_compute::BatchStats>]) {
    if first_batch {
        graph.set_running_stats(stats);
    } else {
        graph.update_running_stats(stats);
    }
}

fn scalar(loss: &Tensor<1>) -> f32 {
    values(loss.clone().detach()).first().copied().unwrap_or(f32::NAN)
}
