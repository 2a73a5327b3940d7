//! Reading and writing f32 tensors stored as ONNX `TensorProto`s, with the size checks that
//! keep a hostile or damaged file from being misread.

use super::pb::{TensorProto, tensor_proto::DataLocation, tensor_proto::DataType};

/// Why a tensor's stored bytes cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorError {
    /// The tensor's data lives in a separate file, which this project does not load.
    #[error("tensor `{name}` stores its data in an external file; save the model with the weights inside it")]
    ExternalData {
        /// Tensor name.
        name: String,
    },
    /// A dimension is negative or the element count overflows.
    #[error("tensor `{name}` has invalid dims {dims:?}")]
    InvalidDims {
        /// Tensor name.
        name: String,
        /// The dims as stored.
        dims: Vec<i64>,
    },
    /// The stored data holds a different number of bytes or elements than the dims declare.
    #[error("tensor `{name}` declares dims {dims:?} ({expected} {unit}) but stores {actual} {unit}")]
    LengthMismatch {
        /// Tensor name.
        name: String,
        /// The dims as stored.
        dims: Vec<i64>,
        /// What the dims call for.
        expected: usize,
        /// What the file holds.
        actual: usize,
        /// `bytes` for raw data, `elements` for typed fields.
        unit: &'static str,
    },
    /// The tensor is not of element type FLOAT where f32 values were required.
    #[error("tensor `{name}` has element type {data_type}, expected FLOAT (f32)")]
    NotF32 {
        /// Tensor name.
        name: String,
        /// The ONNX data type name.
        data_type: String,
    },
}

/// Number of elements the dims declare, with overflow and negative dims refused.
pub(crate) fn element_count(tensor: &TensorProto) -> Result<usize, TensorError> {
    let invalid = || TensorError::InvalidDims { name: tensor.name().to_owned(), dims: tensor.dims.clone() };
    tensor.dims.iter().try_fold(1usize, |count, &dim| {
        let dim = usize::try_from(dim).map_err(|_| invalid())?;
        count.checked_mul(dim).ok_or_else(invalid)
    })
}

/// Bytes per element for the fixed-size ONNX element types; `None` for strings and the rest.
fn element_size(data_type: i32) -> Option<usize> {
    use DataType as D;
    Some(match DataType::try_from(data_type).ok()? {
        D::Float | D::Int32 | D::Uint32 => 4,
        D::Uint8 | D::Int8 | D::Bool | D::Float8e4m3fn | D::Float8e4m3fnuz | D::Float8e5m2 | D::Float8e5m2fnuz => 1,
        D::Uint16 | D::Int16 | D::Float16 | D::Bfloat16 => 2,
        D::Int64 | D::Uint64 | D::Double | D::Complex64 => 8,
        D::Complex128 => 16,
        _ => return None,
    })
}

/// Number of entries the typed (non-raw) field of this element type holds.
fn typed_len(tensor: &TensorProto) -> usize {
    use DataType as D;
    match DataType::try_from(tensor.data_type()).unwrap_or(D::Undefined) {
        D::Float => tensor.float_data.len(),
        D::Complex64 => tensor.float_data.len() / 2,
        D::Int64 => tensor.int64_data.len(),
        D::Double => tensor.double_data.len(),
        D::Complex128 => tensor.double_data.len() / 2,
        D::Uint32 | D::Uint64 => tensor.uint64_data.len(),
        D::String => tensor.string_data.len(),
        _ => tensor.int32_data.len(),
    }
}

/// Checks that a tensor's data is stored inside the model and agrees with its dims.
pub(crate) fn check_storage(tensor: &TensorProto) -> Result<(), TensorError> {
    let name = tensor.name().to_owned();
    if tensor.data_location() == DataLocation::External || !tensor.external_data.is_empty() {
        return Err(TensorError::ExternalData { name });
    }
    let count = element_count(tensor)?;
    let mismatch = |expected, actual, unit| TensorError::LengthMismatch {
        name: name.clone(),
        dims: tensor.dims.clone(),
        expected,
        actual,
        unit,
    };
    if let Some(raw) = tensor.raw_data.as_deref() {
        if let Some(size) = element_size(tensor.data_type()) {
            let expected = count
                .checked_mul(size)
                .ok_or_else(|| TensorError::InvalidDims { name: name.clone(), dims: tensor.dims.clone() })?;
            if raw.len() != expected {
                return Err(mismatch(expected, raw.len(), "bytes"));
            }
        }
        return Ok(());
    }
    let actual = typed_len(tensor);
    // Sub-byte and 16-bit types pack several values into one int32 entry in some writers;
    // only the types with one entry per element are checked strictly.
    let one_per_element = matches!(
        DataType::try_from(tensor.data_type()),
        Ok(DataType::Float
            | DataType::Double
            | DataType::Int64
            | DataType::Int32
            | DataType::Uint64
            | DataType::String)
    );
    if one_per_element && actual != count {
        return Err(mismatch(count, actual, "elements"));
    }
    Ok(())
}

/// The values of an f32 tensor, read from `raw_data` (little-endian) or `float_data`.
pub fn read_f32(tensor: &TensorProto) -> Result<Vec<f32>, TensorError> {
    if tensor.data_type() != DataType::Float as i32 {
        let data_type = DataType::try_from(tensor.data_type())
            .map(|t| t.as_str_name().to_owned())
            .unwrap_or_else(|_| tensor.data_type().to_string());
        return Err(TensorError::NotF32 { name: tensor.name().to_owned(), data_type });
    }
    check_storage(tensor)?;
    Ok(match tensor.raw_data.as_deref() {
        Some(raw) => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        None => tensor.float_data.clone(),
    })
}

/// An f32 `TensorProto` with the given name, dims and values, stored as little-endian raw data.
///
/// # Panics
/// If `values.len()` disagrees with the product of `dims` (a programming error).
pub fn f32_tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    assert_eq!(dims.iter().product::<usize>(), values.len(), "dims {dims:?} vs {} values", values.len());
    TensorProto {
        name: Some(name.to_owned()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Float as i32),
        raw_data: Some(f32_le_bytes(values)),
        ..TensorProto::default()
    }
}

/// Little-endian bytes of f32 values, as ONNX raw data and the gRPC contract store them.
pub fn f32_le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
