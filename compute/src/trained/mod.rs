//! Operations of training forwards with their own backward inside burn's autodiff, where
//! burn's composition of general operations costs several passes over the activations each.
//!
//! - `conv.rs`: stride-1 convolutions whose weights learn nothing (CEMA trains only
//!   normalisation γ/β), forward and input gradient as shifted-view products.
//! - `norm.rs`: a normalisation layer over batch statistics (TBR, first-batch TBR, batch mode),
//!   forward in two passes and backward in two.
//! - `clamp.rs`: ReLU and Clip, one pass each way.
//!
//! Each applies to `cpu_autodiff()` tensors only and returns `None` otherwise, so the caller
//! falls back to burn's operations.

mod clamp;
mod conv;
mod norm;

pub(crate) use clamp::{Clamp, clamp_trained};
pub(crate) use conv::conv_frozen_weight;
pub(crate) use norm::{Variance, normalise_trained};

use burn::Tensor;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, BackendTypes, Flex};
use burn::tensor::{DType, TensorData};

/// The backend of `cpu_autodiff()` tensors.
type Trained = Autodiff<Flex, NoCheckpointing>;

/// A `cpu_autodiff()` tensor as burn's autodiff sees it: a flex tensor and its graph node.
type Primitive = <Trained as BackendTypes>::FloatTensorPrimitive;

/// f32 values in row-major order, read in place from the flex tensor that holds them (copied
/// only when its layout is not plain).
#[derive(Debug, Clone)]
struct Values(FlexTensor);

impl Values {
    fn of(t: &FlexTensor) -> Option<Self> {
        if t.dtype() != DType::F32 {
            return None;
        }
        let plain = t.is_contiguous() && t.layout().start_offset() == 0;
        Some(Self(if plain { t.clone() } else { FlexTensor::from_data(t.clone().into_data()) }))
    }

    fn as_slice(&self) -> &[f32] {
        &self.0.storage::<f32>()[..self.0.layout().num_elements()]
    }
}

/// A flex tensor of `dims` holding `values`.
fn flex_tensor(values: Vec<f32>, dims: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, dims))
}

/// A tensor's autodiff primitive (to register an operation on) and its values, or `None` if it
/// is not a `cpu_autodiff()` f32 tensor.
fn trained_values(t: &Tensor<4>) -> Option<(Primitive, Values)> {
    let primitive = t.clone().try_into_primitive::<Trained>().ok()?;
    let values = Values::of(primitive.primitive())?;
    Some((primitive, values))
}
