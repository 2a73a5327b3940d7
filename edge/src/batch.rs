//! A batch on its way through the agent: raw samples to the model's input, and the selected
//! ones to the encoded samples that are uploaded.

use cema_core::{Compression, Encoding, Manifest, SampleValues, codec};
use cema_proto::v1;

use crate::agent::AgentError;
use crate::runtime::Prediction;

/// The model input of a batch: each sample checked for size and preprocessed.
pub(crate) fn model_input(manifest: &Manifest, samples: &[SampleValues]) -> Result<Vec<f32>, AgentError> {
    let per_sample = manifest.sample_elements();
    let mut input = Vec::with_capacity(samples.len() * per_sample);
    for (i, sample) in samples.iter().enumerate() {
        if sample.len() != per_sample {
            return Err(AgentError::Input(format!(
                "sample {i} has {} values; the model takes {per_sample}",
                sample.len()
            )));
        }
        match sample {
            SampleValues::U8(pixels) => manifest.preprocess_u8(pixels, &mut input),
            SampleValues::F32(values) => input.extend_from_slice(values),
        }
    }
    Ok(input)
}

/// The selected samples as they are uploaded: encoded raw inputs with their predictions.
pub(crate) fn encode_selected(
    manifest: &Manifest,
    (compress, float_encoding): (bool, Encoding),
    samples: &[SampleValues],
    selected: &[usize],
    prediction: &Prediction,
) -> Result<Vec<v1::Sample>, AgentError> {
    let shape: Vec<u64> = manifest.input.shape.iter().map(|&d| d as u64).collect();
    let compression = if compress { Compression::Zstd } else { Compression::None };
    selected
        .iter()
        .map(|&i| {
            let encoded = match &samples[i] {
                SampleValues::U8(pixels) => codec::encode_u8(&shape, pixels, compression),
                SampleValues::F32(values) => codec::encode_f32(&shape, values, float_encoding, compression),
            }
            .map_err(|e| AgentError::Input(e.to_string()))?;
            Ok(v1::Sample {
                seq: 0,
                input: Some(cema_proto::sample_to_wire(&encoded)),
                entropy: prediction.entropy[i],
                params_version: prediction.params_version,
                predicted_class: prediction.class[i] as u32,
            })
        })
        .collect()
}
