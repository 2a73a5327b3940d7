//! Compact encoding of uploaded samples: u8, f16 or f32 elements, optionally zstd-compressed.
//!
//! Decoding treats its input as hostile: the declared dims are checked against a caller-given
//! element limit *before* anything is allocated, zstd output is capped at the exact size the
//! dims imply, and float samples must be finite. Nothing here panics on bad bytes.

use half::f16;

/// Element type of an encoded sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Raw 8-bit pixels; the receiver applies the manifest's preprocessing.
    U8,
    /// Model-input values as IEEE half floats (lossy, half the bytes of f32).
    F16,
    /// Model-input values as IEEE single floats.
    F32,
}

impl Encoding {
    /// Bytes per element.
    pub fn element_size(self) -> usize {
        match self {
            Encoding::U8 => 1,
            Encoding::F16 => 2,
            Encoding::F32 => 4,
        }
    }
}

/// Compression applied to the element bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Bytes as they are.
    None,
    /// A single zstd frame.
    Zstd,
}

/// zstd level used for uploads: fast, and most of the gain on images comes at low levels.
pub const ZSTD_LEVEL: i32 = 3;

/// One encoded sample as it travels.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedSample {
    /// Element type.
    pub encoding: Encoding,
    /// Compression of `data`.
    pub compression: Compression,
    /// Dimensions of the one sample, without a batch axis (e.g. `[1, 28, 28]`).
    pub dims: Vec<u64>,
    /// Encoded element bytes (little-endian for floats).
    pub data: Vec<u8>,
}

/// Decoded sample values.
#[derive(Debug, Clone, PartialEq)]
pub enum SampleValues {
    /// Raw 8-bit pixels.
    U8(Vec<u8>),
    /// Model-input values.
    F32(Vec<f32>),
}

impl SampleValues {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            SampleValues::U8(v) => v.len(),
            SampleValues::F32(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Bounds on what a decoder accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest number of elements one sample may declare.
    pub max_elements: usize,
}

impl DecodeLimits {
    /// Limits that accept exactly the element count of a model input (`dims` without batch).
    pub fn for_dims(dims: &[usize]) -> Self {
        Self { max_elements: dims.iter().product() }
    }
}

/// Why bytes could not be decoded into a sample.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    /// The dims declare more elements than allowed (or overflow).
    #[error("sample dims {dims:?} declare more than the allowed {max_elements} elements")]
    TooLarge {
        /// Declared dims.
        dims: Vec<u64>,
        /// The limit.
        max_elements: usize,
    },
    /// Uncompressed data has the wrong length for the dims and encoding.
    #[error("sample data has {actual} bytes, dims and encoding require {expected}")]
    LengthMismatch {
        /// Bytes required.
        expected: usize,
        /// Bytes present.
        actual: usize,
    },
    /// The zstd frame is corrupt, or decompresses to more bytes than the dims allow.
    #[error("zstd payload is invalid or larger than the {expected} bytes its dims allow: {reason}")]
    Zstd {
        /// Bytes the dims allow.
        expected: usize,
        /// The decoder's message.
        reason: String,
    },
    /// The compressor failed (it only does on allocation failure).
    #[error("zstd compression failed: {0}")]
    Compress(String),
    /// A float element is NaN or infinite.
    #[error("sample element {index} is not finite ({value})")]
    NonFinite {
        /// Position of the first bad element.
        index: usize,
        /// The value.
        value: f32,
    },
}

fn compress(bytes: Vec<u8>, compression: Compression) -> Result<Vec<u8>, CodecError> {
    match compression {
        Compression::None => Ok(bytes),
        Compression::Zstd => zstd::bulk::compress(&bytes, ZSTD_LEVEL).map_err(|e| CodecError::Compress(e.to_string())),
    }
}

/// Encodes 8-bit pixels.
pub fn encode_u8(dims: &[u64], values: &[u8], compression: Compression) -> Result<EncodedSample, CodecError> {
    Ok(EncodedSample {
        encoding: Encoding::U8,
        compression,
        dims: dims.to_vec(),
        data: compress(values.to_vec(), compression)?,
    })
}

/// Encodes model-input floats as f16 or f32.
///
/// # Panics
/// If `encoding` is [`Encoding::U8`]; 8-bit samples go through [`encode_u8`].
pub fn encode_f32(
    dims: &[u64],
    values: &[f32],
    encoding: Encoding,
    compression: Compression,
) -> Result<EncodedSample, CodecError> {
    let bytes = match encoding {
        Encoding::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Encoding::F16 => values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect(),
        Encoding::U8 => panic!("encode_f32 called with Encoding::U8; use encode_u8"),
    };
    Ok(EncodedSample { encoding, compression, dims: dims.to_vec(), data: compress(bytes, compression)? })
}

impl EncodedSample {
    /// Number of elements the dims declare, refused above `limits`.
    pub fn element_count(&self, limits: DecodeLimits) -> Result<usize, CodecError> {
        let too_large = || CodecError::TooLarge { dims: self.dims.clone(), max_elements: limits.max_elements };
        let count = self.dims.iter().try_fold(1usize, |acc, &d| {
            usize::try_from(d).ok().and_then(|d| acc.checked_mul(d)).ok_or_else(too_large)
        })?;
        if count > limits.max_elements {
            return Err(too_large());
        }
        Ok(count)
    }

    /// Decodes the sample, enforcing `limits` before any allocation.
    pub fn decode(&self, limits: DecodeLimits) -> Result<SampleValues, CodecError> {
        let count = self.element_count(limits)?;
        let expected = count * self.encoding.element_size();
        let raw = match self.compression {
            Compression::None => {
                if self.data.len() != expected {
                    return Err(CodecError::LengthMismatch { expected, actual: self.data.len() });
                }
                std::borrow::Cow::Borrowed(self.data.as_slice())
            }
            Compression::Zstd => {
                let zstd_error = |reason: String| CodecError::Zstd { expected, reason };
                // A frame that declares its size up front is checked before decompressing.
                if let Ok(Some(declared)) = zstd::zstd_safe::get_frame_content_size(&self.data)
                    && declared != expected as u64
                {
                    return Err(zstd_error(format!("frame declares {declared} bytes")));
                }
                // `decompress` never writes past `expected` bytes: larger output is an error.
                let out = zstd::bulk::decompress(&self.data, expected).map_err(|e| zstd_error(e.to_string()))?;
                if out.len() != expected {
                    return Err(CodecError::LengthMismatch { expected, actual: out.len() });
                }
                std::borrow::Cow::Owned(out)
            }
        };
        let values = match self.encoding {
            Encoding::U8 => return Ok(SampleValues::U8(raw.into_owned())),
            Encoding::F32 => {
                raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect::<Vec<_>>()
            }
            Encoding::F16 => raw.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect::<Vec<_>>(),
        };
        if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(CodecError::NonFinite { index, value });
        }
        Ok(SampleValues::F32(values))
    }
}
