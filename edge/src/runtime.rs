//! ONNX Runtime sessions for edge inference.

use std::path::Path;

use cema_core::onnx::{first_batch_statistics_model, observed_statistics_model};
use cema_core::{
    Manifest, ManifestError, ModelError, NormDiscovery, NormParams, NormTensor, OnnxModel, ParamsError, math,
};
use cema_host::OrtError;
pub use cema_host::OrtLibrary;
use ort::session::Session;
use ort::value::TensorRef;

/// Why the runtime could not be set up or run.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// ONNX Runtime could not be loaded, or refused a session.
    #[error(transparent)]
    Library(#[from] OrtError),
    /// ONNX Runtime refused the model or failed to run it.
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    /// The model file is unusable.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The manifest is unusable or disagrees with the model.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A parameter update is invalid for this model.
    #[error("parameter update refused: {0}")]
    Params(#[from] ParamsError),
    /// The batch does not fit the model input.
    #[error("input holds {actual} values, expected {expected} ({batch} samples of {per_sample})")]
    InputSize {
        /// Values given.
        actual: usize,
        /// Values required.
        expected: usize,
        /// Samples in the batch.
        batch: usize,
        /// Values per sample.
        per_sample: usize,
    },
    /// The model produced output of an unexpected size.
    #[error("model output `{name}` has {actual} values, expected {expected} ({batch} × {classes} classes)")]
    OutputSize {
        /// Output name.
        name: String,
        /// Values produced.
        actual: usize,
        /// Values expected.
        expected: usize,
        /// Samples in the batch.
        batch: usize,
        /// Classes per sample.
        classes: usize,
    },
}

impl From<ort::Error> for RuntimeError {
    fn from(e: ort::Error) -> Self {
        RuntimeError::Ort(e.to_string())
    }
}

/// CEMA's first-batch initialisation (`stats_init = first_batch`), forward-only: runs
/// `model` rewritten by [`first_batch_statistics_model`] once on `input` (`dims`, batch
/// first) and returns the model's parameters with every layer's running statistics
/// replaced by that batch's own (mean, unbiased variance), version 0.
pub fn first_batch_params(
    library: &OrtLibrary,
    model: &OnnxModel,
    discovery: &NormDiscovery,
    dims: &[usize],
    input: &[f32],
) -> Result<NormParams, RuntimeError> {
    let rewritten = first_batch_statistics_model(model, discovery)?;
    let mut session = library.session(&rewritten.model.encode(), 1)?;
    let input_name = model.input_names().first().map(|n| (*n).to_owned()).unwrap_or_default();
    let tensor = TensorRef::from_array_view((dims.to_vec(), input))?;
    let outputs = session.run(ort::inputs![input_name.as_str() => tensor])?;
    let statistics = read_statistics(&outputs, discovery, &rewritten.outputs)?;
    let params = NormParams::source(model)?.overlaid(&statistics);
    params.validate_against(model, discovery)?;
    Ok(params)
}

/// The result of predicting one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Samples in the batch.
    pub batch: usize,
    /// Classes per sample.
    pub classes: usize,
    /// Logits, `batch × classes`, row-major.
    pub logits: Vec<f32>,
    /// Softmax probabilities, `batch × classes`, row-major.
    pub probs: Vec<f32>,
    /// Entropy (nats) of each sample's prediction.
    pub entropy: Vec<f32>,
    /// Predicted class of each sample.
    pub class: Vec<usize>,
    /// The parameter version that produced these predictions.
    pub params_version: u64,
    /// Per layer, the batch mean and unbiased variance of its input over every sample, when the
    /// runtime observes statistics ([`Runtime::observe_statistics`]).
    pub statistics: Option<NormParams>,
}

impl Prediction {
    /// Probabilities of sample `i`.
    pub fn probs_of(&self, i: usize) -> &[f32] {
        &self.probs[i * self.classes..(i + 1) * self.classes]
    }

    /// Mean entropy of the batch's predictions (nats).
    pub fn mean_entropy(&self) -> f64 {
        self.entropy.iter().map(|&h| h as f64).sum::<f64>() / self.batch.max(1) as f64
    }
}

/// A session built with a given parameter version, ready to be swapped in.
#[derive(Debug)]
pub struct PreparedSession {
    session: Session,
    version: u64,
}

impl PreparedSession {
    /// The parameter version this session runs.
    pub fn version(&self) -> u64 {
        self.version
    }
}

/// Builds sessions with new parameters for a runtime, from any thread (the parameter watcher
/// prepares off the inference path; the inference loop only swaps).
#[derive(Debug, Clone)]
pub struct Preparer {
    /// The model sessions are built from: the source, or the source with statistics outputs.
    serving: std::sync::Arc<OnnxModel>,
    discovery: std::sync::Arc<NormDiscovery>,
    library: OrtLibrary,
    intra_threads: usize,
}

impl Preparer {
    /// Validates `params` against the model and builds a session that uses them.
    pub fn prepare(&self, params: &NormParams) -> Result<PreparedSession, RuntimeError> {
        let bytes = params.patch_against(&self.serving, &self.discovery)?.encode();
        let session = self.library.session(&bytes, self.intra_threads)?;
        Ok(PreparedSession { session, version: params.version })
    }
}

/// An edge model: the source ONNX model, its manifest, and the session currently serving.
#[derive(Debug)]
pub struct Runtime {
    source: OnnxModel,
    /// What sessions are built from: `source`, or `source` with statistics outputs.
    serving: OnnxModel,
    /// The statistics outputs of `serving`, per layer (mean, variance), when observed.
    statistics: Option<Vec<(String, String)>>,
    discovery: NormDiscovery,
    manifest: Manifest,
    library: OrtLibrary,
    intra_threads: usize,
    current: PreparedSession,
    /// A session with the model's own parameters beside the serving one (the source guard).
    source_session: Option<PreparedSession>,
}

impl Runtime {
    /// Builds a runtime from a model and its manifest, serving the model's own parameters
    /// (version 0). `intra_threads` is ONNX Runtime's intra-op thread count (1 suits devices
    /// whose cores are shared).
    pub fn new(
        library: OrtLibrary,
        source: OnnxModel,
        manifest: Manifest,
        intra_threads: usize,
    ) -> Result<Self, RuntimeError> {
        manifest.check_model(&source)?;
        let discovery = NormDiscovery::of(&source);
        let session = library.session(&source.encode(), intra_threads)?;
        Ok(Self {
            serving: source.clone(),
            statistics: None,
            source,
            discovery,
            manifest,
            library,
            intra_threads,
            current: PreparedSession { session, version: 0 },
            source_session: None,
        })
    }

    /// Loads `model.onnx` and its manifest (`model.toml` beside it).
    pub fn load(library: OrtLibrary, model: &Path, intra_threads: usize) -> Result<Self, RuntimeError> {
        let source = OnnxModel::load(model)?;
        let manifest = Manifest::load(Manifest::path_for(model))?;
        Self::new(library, source, manifest, intra_threads)
    }

    /// The model's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The source model (before any parameter update).
    pub fn source(&self) -> &OnnxModel {
        &self.source
    }

    /// The normalisation layers of the model.
    pub fn discovery(&self) -> &NormDiscovery {
        &self.discovery
    }

    /// The parameter version currently serving.
    pub fn version(&self) -> u64 {
        self.current.version
    }

    /// From now on, every prediction also measures each layer's input statistics over the
    /// batch ([`Prediction::statistics`]; the statistics uplink and edge-local adaptation). The
    /// extra outputs keep ONNX Runtime from folding BatchNormalization into the convolution
    /// before it (`cema-edge bench` prints the cost as `statistics_vs_raw`). Call it before any swap:
    /// the serving session is rebuilt with the source parameters.
    pub fn observe_statistics(&mut self) -> Result<(), RuntimeError> {
        let observed = observed_statistics_model(&self.source, &self.discovery)?;
        let session = self.library.session(&observed.model.encode(), self.intra_threads)?;
        self.serving = observed.model;
        self.statistics = Some(observed.outputs);
        self.current = PreparedSession { session, version: 0 };
        Ok(())
    }

    /// Validates `params` and builds a session that uses them. Does not touch the serving
    /// session, so it can run while predictions continue; an invalid update changes nothing.
    pub fn prepare(&self, params: &NormParams) -> Result<PreparedSession, RuntimeError> {
        // Validation happens inside the patch, once, with the discovery made at load time.
        let bytes = params.patch_against(&self.serving, &self.discovery)?.encode();
        let session = self.library.session(&bytes, self.intra_threads)?;
        Ok(PreparedSession { session, version: params.version })
    }

    /// The first-batch parameters of a batch of preprocessed inputs (see
    /// [`first_batch_params`]), measured on the source model.
    pub fn first_batch_params(&self, input: &[f32], batch: usize) -> Result<NormParams, RuntimeError> {
        let per_sample = self.manifest.sample_elements();
        if input.len() != batch * per_sample || batch < 2 {
            return Err(RuntimeError::InputSize {
                actual: input.len(),
                expected: batch.max(2) * per_sample,
                batch,
                per_sample,
            });
        }
        let mut dims = vec![batch];
        dims.extend(self.manifest.input.shape.iter().copied());
        first_batch_params(&self.library, &self.source, &self.discovery, &dims, input)
    }

    /// A handle that prepares sessions for this runtime on another thread.
    pub fn preparer(&self) -> Preparer {
        Preparer {
            serving: std::sync::Arc::new(self.serving.clone()),
            discovery: std::sync::Arc::new(self.discovery.clone()),
            library: self.library.clone(),
            intra_threads: self.intra_threads,
        }
    }

    /// A session with the model's own parameters (version 0), for a reset.
    pub fn prepare_source(&self) -> Result<PreparedSession, RuntimeError> {
        let session = self.library.session(&self.serving.encode(), self.intra_threads)?;
        Ok(PreparedSession { session, version: 0 })
    }

    /// Makes `prepared` the serving session. Takes `&mut self`, so it can never happen in
    /// the middle of a batch.
    pub fn swap(&mut self, prepared: PreparedSession) {
        self.current = prepared;
    }

    /// Predicts a batch of preprocessed model inputs (`batch × sample_elements` values).
    pub fn predict(&mut self, input: &[f32], batch: usize) -> Result<Prediction, RuntimeError> {
        let outputs =
            Outputs { manifest: &self.manifest, statistics: self.statistics.as_deref(), discovery: &self.discovery };
        outputs.predict(&mut self.current, input, batch)
    }

    /// Keeps a session with the model's own parameters beside the serving one, for
    /// [`Runtime::predict_source`] (costs one more session's memory).
    pub fn keep_source_session(&mut self) -> Result<(), RuntimeError> {
        if self.source_session.is_none() {
            self.source_session = Some(self.prepare_source()?);
        }
        Ok(())
    }

    /// Predicts a batch with the model's own parameters (version 0), if a source session is
    /// kept ([`Runtime::keep_source_session`]).
    pub fn predict_source(&mut self, input: &[f32], batch: usize) -> Result<Option<Prediction>, RuntimeError> {
        let Some(source) = &mut self.source_session else { return Ok(None) };
        let outputs =
            Outputs { manifest: &self.manifest, statistics: self.statistics.as_deref(), discovery: &self.discovery };
        outputs.predict(source, input, batch).map(Some)
    }
}

/// What a run's outputs are read with.
struct Outputs<'a> {
    manifest: &'a Manifest,
    statistics: Option<&'a [(String, String)]>,
    discovery: &'a NormDiscovery,
}

impl Outputs<'_> {
    /// Runs `session` on a batch of preprocessed inputs.
    fn predict(&self, session: &mut PreparedSession, input: &[f32], batch: usize) -> Result<Prediction, RuntimeError> {
        let per_sample = self.manifest.sample_elements();
        let expected = batch * per_sample;
        if input.len() != expected || batch == 0 {
            return Err(RuntimeError::InputSize { actual: input.len(), expected, batch, per_sample });
        }
        let mut shape = vec![batch as i64];
        shape.extend(self.manifest.input.shape.iter().map(|&d| d as i64));
        let classes = self.manifest.num_classes();
        let output_name = self.manifest.output.name.as_str();
        let tensor = TensorRef::from_array_view((shape, input))?;
        let outputs = session.session.run(ort::inputs![self.manifest.input.name.as_str() => tensor])?;
        let value = outputs
            .get(output_name)
            .ok_or_else(|| RuntimeError::Ort(format!("the model produced no output named `{output_name}`")))?;
        let (_, logits) = value.try_extract_tensor::<f32>()?;
        if logits.len() != batch * classes {
            return Err(RuntimeError::OutputSize {
                name: output_name.to_owned(),
                actual: logits.len(),
                expected: batch * classes,
                batch,
                classes,
            });
        }
        let logits = logits.to_vec();
        let statistics = match self.statistics {
            Some(names) => Some(read_statistics(&outputs, self.discovery, names)?),
            None => None,
        };
        let mut probs = vec![0.0; logits.len()];
        let mut entropy = Vec::with_capacity(batch);
        let mut class = Vec::with_capacity(batch);
        for (row, out) in logits.chunks_exact(classes).zip(probs.chunks_exact_mut(classes)) {
            math::softmax(row, out);
            entropy.push(math::entropy_of_logits(row));
            class.push(math::argmax(row).unwrap_or(0));
        }
        Ok(Prediction { batch, classes, logits, probs, entropy, class, params_version: session.version, statistics })
    }
}

/// The statistics outputs `names` (per layer: mean, variance) of a run, as the layers'
/// running-mean and running-variance tensors.
fn read_statistics(
    outputs: &ort::session::SessionOutputs<'_>,
    discovery: &NormDiscovery,
    names: &[(String, String)],
) -> Result<NormParams, RuntimeError> {
    let mut statistics = NormParams::default();
    for (layer, (mean, var)) in discovery.layers.iter().zip(names) {
        for (target, output) in [(&layer.mean, mean), (&layer.var, var)] {
            let value = outputs
                .get(output.as_str())
                .ok_or_else(|| RuntimeError::Ort(format!("no statistics output `{output}`")))?;
            let values = value.try_extract_tensor::<f32>()?.1.to_vec();
            if values.len() != layer.channels {
                return Err(RuntimeError::Ort(format!(
                    "statistics of `{}` have {} values, the layer {} channels",
                    layer.node,
                    values.len(),
                    layer.channels
                )));
            }
            statistics.tensors.insert(target.clone(), NormTensor { dims: vec![values.len()], values });
        }
    }
    Ok(statistics)
}
