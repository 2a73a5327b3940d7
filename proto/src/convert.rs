//! Conversions between wire messages and `cema-core` types. Wire → core conversions check
//! everything a hostile peer could get wrong and name the field at fault.

use std::collections::BTreeMap;

use cema_core::manifest::{Layout, PixelType};
use cema_core::{Compression, EncodedSample, Encoding, Manifest, NormParams, NormTensor};

use crate::v1;

/// Why a wire message could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// A required message field is absent.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// An enum field holds an unspecified or unknown value.
    #[error("field `{field}` has unsupported value {value}")]
    BadEnum {
        /// The field.
        field: &'static str,
        /// The value received.
        value: i32,
    },
    /// A tensor's byte length disagrees with its dims.
    #[error("tensor `{name}`: dims {dims:?} need {expected} bytes, found {actual}")]
    TensorLength {
        /// Tensor name.
        name: String,
        /// Declared dims.
        dims: Vec<u64>,
        /// Bytes required.
        expected: u64,
        /// Bytes present.
        actual: usize,
    },
    /// A tensor name occurs twice in one parameter set.
    #[error("tensor `{0}` occurs twice")]
    DuplicateTensor(String),
}

/// Encodes a core sample for the wire.
pub fn sample_to_wire(sample: &EncodedSample) -> v1::EncodedTensor {
    v1::EncodedTensor {
        encoding: match sample.encoding {
            Encoding::U8 => v1::SampleEncoding::U8,
            Encoding::F16 => v1::SampleEncoding::F16,
            Encoding::F32 => v1::SampleEncoding::F32,
        } as i32,
        compression: match sample.compression {
            Compression::None => v1::SampleCompression::None,
            Compression::Zstd => v1::SampleCompression::Zstd,
        } as i32,
        dims: sample.dims.clone(),
        data: sample.data.clone(),
    }
}

/// Reads a wire sample into a core sample (the payload is decoded later, under limits).
pub fn sample_from_wire(tensor: v1::EncodedTensor) -> Result<EncodedSample, ConvertError> {
    let encoding = match v1::SampleEncoding::try_from(tensor.encoding) {
        Ok(v1::SampleEncoding::U8) => Encoding::U8,
        Ok(v1::SampleEncoding::F16) => Encoding::F16,
        Ok(v1::SampleEncoding::F32) => Encoding::F32,
        _ => {
            return Err(ConvertError::BadEnum { field: "encoding", value: tensor.encoding });
        }
    };
    let compression = match v1::SampleCompression::try_from(tensor.compression) {
        Ok(v1::SampleCompression::None) => Compression::None,
        Ok(v1::SampleCompression::Zstd) => Compression::Zstd,
        Err(_) => {
            return Err(ConvertError::BadEnum { field: "compression", value: tensor.compression });
        }
    };
    Ok(EncodedSample { encoding, compression, dims: tensor.dims, data: tensor.data })
}

/// Encodes normalisation parameters for the wire.
pub fn norm_params_to_wire(params: &NormParams, scope: &str) -> v1::NormParams {
    v1::NormParams {
        version: params.version,
        scope: scope.to_owned(),
        tensors: params
            .tensors
            .iter()
            .map(|(name, t)| v1::NormTensor {
                name: name.clone(),
                dims: t.dims.iter().map(|&d| d as u64).collect(),
                data: cema_core::onnx::f32_le_bytes(&t.values),
            })
            .collect(),
    }
}

/// Reads wire parameters. Byte lengths are checked here; names, shapes and finiteness are
/// checked against the model by [`NormParams::validate`].
pub fn norm_params_from_wire(params: v1::NormParams) -> Result<NormParams, ConvertError> {
    let mut tensors = BTreeMap::new();
    for t in params.tensors {
        let count = t.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let expected = count.and_then(|c| c.checked_mul(4));
        if expected != Some(t.data.len() as u64) {
            return Err(ConvertError::TensorLength {
                name: t.name,
                dims: t.dims,
                expected: expected.unwrap_or(u64::MAX),
                actual: t.data.len(),
            });
        }
        let values = t.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let dims = t.dims.iter().map(|&d| d as usize).collect();
        if tensors.insert(t.name.clone(), NormTensor { dims, values }).is_some() {
            return Err(ConvertError::DuplicateTensor(t.name));
        }
    }
    Ok(NormParams { version: params.version, tensors })
}

/// Encodes batch statistics (running-mean and running-variance tensors) for the wire, as f32
/// or, with `bfloat16`, in half the bytes (see `NormStatistics.bfloat16`).
pub fn statistics_to_wire(statistics: &NormParams, samples: u32, bfloat16: bool) -> v1::NormStatistics {
    let mut tensors = norm_params_to_wire(statistics, "").tensors;
    if bfloat16 {
        for tensor in &mut tensors {
            tensor.data = tensor.data.chunks_exact(4).flat_map(|b| bfloat16_bytes([b[0], b[1], b[2], b[3]])).collect();
        }
    }
    v1::NormStatistics { tensors, samples, bfloat16 }
}

/// The bfloat16 nearest to an f32 (ties to even), as little-endian bytes.
fn bfloat16_bytes(f32_le: [u8; 4]) -> [u8; 2] {
    let bits = u32::from_le_bytes(f32_le);
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16;
    (rounded as u16).to_le_bytes()
}

/// Reads wire statistics into named tensors (version 0). Byte lengths are checked here; which
/// tensors must be present, and their values, by [`NormParams::validate_statistics`].
pub fn statistics_from_wire(statistics: v1::NormStatistics) -> Result<NormParams, ConvertError> {
    let mut tensors = statistics.tensors;
    if statistics.bfloat16 {
        for tensor in &mut tensors {
            let count = tensor.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            if count.and_then(|c| c.checked_mul(2)) != Some(tensor.data.len() as u64) {
                return Err(ConvertError::TensorLength {
                    name: tensor.name.clone(),
                    dims: tensor.dims.clone(),
                    expected: count.and_then(|c| c.checked_mul(2)).unwrap_or(u64::MAX),
                    actual: tensor.data.len(),
                });
            }
            tensor.data = tensor.data.chunks_exact(2).flat_map(|b| [0, 0, b[0], b[1]]).collect();
        }
    }
    norm_params_from_wire(v1::NormParams { version: 0, scope: String::new(), tensors })
}

/// The manifest summary both sides compare at registration.
pub fn manifest_summary(manifest: &Manifest) -> v1::ManifestSummary {
    v1::ManifestSummary {
        input_name: manifest.input.name.clone(),
        input_shape: manifest.input.shape.iter().map(|&d| d as u64).collect(),
        layout: match manifest.input.layout {
            Layout::Nchw => "nchw",
            Layout::Nhwc => "nhwc",
        }
        .to_owned(),
        pixels: match manifest.input.pixels {
            PixelType::U8 => v1::PixelType::U8,
            PixelType::F32 => v1::PixelType::F32,
        } as i32,
        output_name: manifest.output.name.clone(),
        num_classes: manifest.num_classes() as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statistics(values: Vec<f32>) -> NormParams {
        let mut params = NormParams::default();
        params.tensors.insert("bn.running_var".into(), NormTensor { dims: vec![values.len()], values });
        params
    }

    #[test]
    fn bfloat16_statistics_take_half_the_bytes_and_round_to_nearest() {
        let values = vec![1.0, 3.0e5, 1.0e-7, 0.333_333_34, 1.0 + 1.5 / 128.0, -2.5];
        let exact = statistics_to_wire(&statistics(values.clone()), 64, false);
        let compact = statistics_to_wire(&statistics(values.clone()), 64, true);
        assert_eq!(compact.tensors[0].data.len() * 2, exact.tensors[0].data.len());
        let back = statistics_from_wire(compact).expect("decodes");
        for (b, v) in back.tensors["bn.running_var"].values.iter().zip(&values) {
            // bfloat16 keeps 8 significant bits: rounding to nearest errs by at most 2^-8.
            assert!(((b - v) / v).abs() <= 1.0 / 256.0, "{b} vs {v}");
        }
        // 1 + 1.5/128 lies halfway between bfloat16 neighbours 1 + 1/128 and 1 + 2/128: the tie
        // goes to the even one, the latter (truncation would give the former).
        assert_eq!(back.tensors["bn.running_var"].values[4], 1.0 + 2.0 / 128.0);
        assert_eq!(statistics_from_wire(exact).expect("decodes").tensors["bn.running_var"].values, values);
    }

    #[test]
    fn bfloat16_statistics_of_the_wrong_length_are_refused() {
        let mut compact = statistics_to_wire(&statistics(vec![1.0, 2.0]), 64, true);
        compact.tensors[0].data.pop();
        assert!(matches!(statistics_from_wire(compact), Err(ConvertError::TensorLength { .. })));
    }
}
