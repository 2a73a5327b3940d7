//! Runs ONNX CNN classifiers under burn, with autodiff, so the cloud can train the
//! normalisation parameters of whatever model a user deploys (and of their foundation model).
//!
//! A [`Graph`] is planned from an `OnnxModel` at run time (no build-time code generation): every
//! node becomes a typed operation, and an operator or attribute the executor does not implement
//! is refused at load time with the node named — never computed wrongly. Forward passes run in
//! one of three normalisation modes ([`NormMode`]: inference, CEMA's TBR, Tent's batch mode);
//! gradients reach the [`Trainable`] set (normalisation γ/β for adaptation, everything for
//! pretraining) and nothing else, so frozen weights stay bit-identical; [`Sgd`] applies
//! PyTorch's momentum rule; [`Graph::norm_params`] exports the state the edge needs.
//!
//! [`adapt`] holds CEMA's cloud step built on these: the two models of a model id, the single
//! steps, and the order a round runs them in, over a scope's state.
//!
//! Not here: queues, storage and publishing (the cloud service), and inference on the edge
//! (ONNX Runtime in `cema-edge`).

pub mod adapt;
mod error;
mod graph;
pub mod loss;
mod norm;
mod ops;
mod plan;
mod shifted;
mod train;
mod trained;
pub mod zoo;

use burn::Tensor;
use burn::tensor::{Device, TensorData};

pub use error::{GraphError, ShapeError};
pub use graph::{Forward, Graph, Trainable};
pub use norm::{BatchStats, NormMode};
pub use plan::SUPPORTED_OPS;
pub use train::Sgd;

/// burn's pure-Rust CPU backend (`flex`), without autodiff: for inference.
pub fn cpu() -> Device {
    Device::flex()
}

/// burn's `flex` CPU backend with autodiff: for training.
pub fn cpu_autodiff() -> Device {
    Device::flex().autodiff()
}

/// A batch tensor `[N, C, H, W]` from row-major values.
///
/// # Panics
/// If `values.len()` differs from the product of `dims`.
pub fn batch(values: &[f32], dims: [usize; 4], device: &Device) -> Tensor<4> {
    assert_eq!(values.len(), dims.iter().product::<usize>(), "batch of {dims:?}");
    Tensor::from_data(TensorData::new(values.to_vec(), dims), device)
}

/// The values of a tensor as a row-major vector.
pub fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor.into_data().try_to_vec::<f32>().unwrap_or_default()
}
