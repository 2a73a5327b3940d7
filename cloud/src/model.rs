//! The models the cloud serves, and the checks uploads pass against them before anything is
//! stored.

use cema_compute::adapt::AdaptConfig;
use cema_core::params::ParamsError;
use cema_core::{
    CodecError, DecodeLimits, Manifest, ModelFingerprint, NormDiscovery, NormParams, OnnxModel, SampleValues,
};
use cema_proto::ConvertError;
use cema_proto::v1;

use crate::scope::{ScopeId, ScopeKind};

/// A model the cloud serves: the edge model, its foundation model and how to adapt.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    /// Model id (devices are registered for one).
    pub id: String,
    /// The edge model as deployed (source parameters).
    pub edge: OnnxModel,
    /// Its manifest.
    pub edge_manifest: Manifest,
    /// Fingerprint the edges must present.
    pub fingerprint: ModelFingerprint,
    /// The foundation model.
    pub foundation: OnnxModel,
    /// Its manifest.
    pub foundation_manifest: Manifest,
    /// Step settings.
    pub adapt: AdaptConfig,
    /// Device or fleet scopes.
    pub scope: ScopeKind,
    /// Parameter versions kept per scope (for rollback).
    pub keep_versions: u64,
}

impl ModelEntry {
    /// The scope a device of this model adapts in.
    pub fn scope_for(&self, device: &str) -> ScopeId {
        match self.scope {
            ScopeKind::Device => ScopeId::device(device),
            ScopeKind::Fleet => ScopeId::fleet(&self.id),
        }
    }

    /// Decodes a stored or uploaded sample, checking it against the edge manifest: encoding
    /// fits the pixel type, dims equal the input shape, values finite.
    pub fn decode_sample(&self, tensor: &v1::EncodedTensor) -> Result<SampleValues, SampleError> {
        let sample = cema_proto::sample_from_wire(tensor.clone())?;
        let shape = &self.edge_manifest.input.shape;
        if sample.dims.len() != shape.len() || sample.dims.iter().zip(shape).any(|(a, b)| *a != *b as u64) {
            return Err(SampleError::Dims { dims: sample.dims.clone(), shape: shape.clone() });
        }
        let values = sample.decode(DecodeLimits::for_dims(shape))?;
        match (&values, self.edge_manifest.input.pixels) {
            (SampleValues::U8(_), cema_core::manifest::PixelType::U8) => Ok(values),
            (SampleValues::F32(v), cema_core::manifest::PixelType::F32) => {
                if v.iter().all(|x| x.is_finite()) {
                    Ok(values)
                } else {
                    Err(SampleError::NonFinite)
                }
            }
            (SampleValues::U8(_), _) => {
                Err(SampleError::Pixels("u8 samples for a model whose manifest takes f32 input"))
            }
            (SampleValues::F32(_), _) => {
                Err(SampleError::Pixels("float samples for a model whose manifest takes u8 pixels"))
            }
        }
    }

    /// Checks statistics uploaded with a batch end (first-batch or batch statistics): exactly
    /// the running mean and variance of every normalisation layer of the edge model, finite,
    /// variances ≥ 0. Ingest calls it; the engine reads what ingest accepted with
    /// [`stored_statistics`].
    pub fn check_statistics(&self, statistics: &v1::NormStatistics) -> Result<(), StatisticsError> {
        let params = stored_statistics(statistics)?;
        Ok(params.validate_statistics(&self.edge, &NormDiscovery::of(&self.edge))?)
    }
}

/// Decodes statistics that ingest checked ([`ModelEntry::check_statistics`]) before storing.
pub(crate) fn stored_statistics(statistics: &v1::NormStatistics) -> Result<NormParams, ConvertError> {
    cema_proto::statistics_from_wire(statistics.clone())
}

/// Why an uploaded or stored sample does not fit the model it is for.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// The wire message is malformed.
    #[error(transparent)]
    Wire(#[from] ConvertError),
    /// The sample's dims are not the model input's.
    #[error("dims {dims:?} differ from the model input {shape:?}")]
    Dims {
        /// The sample's dims.
        dims: Vec<u64>,
        /// The manifest's input shape.
        shape: Vec<usize>,
    },
    /// The encoded values do not decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Float input with NaN or infinity.
    #[error("non-finite values")]
    NonFinite,
    /// The encoding does not match the manifest's pixel type.
    #[error("{0}")]
    Pixels(&'static str),
}

/// Why statistics sent with a batch end are refused.
#[derive(Debug, thiserror::Error)]
pub enum StatisticsError {
    /// The wire message is malformed.
    #[error(transparent)]
    Wire(#[from] ConvertError),
    /// They are not every layer's finite mean and non-negative variance.
    #[error(transparent)]
    Invalid(#[from] ParamsError),
}
