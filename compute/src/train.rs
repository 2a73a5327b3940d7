//! SGD with momentum over a graph's trainable leaves, with PyTorch's update rule
//! (`g ← g + wd·p` when weight decay is set; `v ← μ·v + g`, the first step taking `v = g`;
//! `p ← p − lr·v`; no dampening).

use std::collections::HashMap;

use burn::Tensor;
use burn::tensor::{Gradients, TensorData};

use crate::error::GraphError;
use crate::graph::Graph;

/// Stochastic gradient descent with momentum.
#[derive(Debug, Clone)]
pub struct Sgd {
    /// Learning rate (may be changed between steps, for a schedule).
    pub lr: f64,
    /// Momentum μ.
    pub momentum: f64,
    /// L2 weight decay added to the gradient (0 for adaptation, as CEMA uses none).
    pub weight_decay: f64,
    velocity: HashMap<usize, Tensor<4>>,
}

impl Sgd {
    /// A fresh optimiser (no velocity yet, no weight decay).
    pub fn new(lr: f64, momentum: f64) -> Self {
        Self { lr, momentum, weight_decay: 0.0, velocity: HashMap::new() }
    }

    /// The same optimiser with L2 weight decay.
    pub fn with_weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// Updates every trainable leaf that received a gradient; returns how many did.
    pub fn step(&mut self, graph: &mut Graph, grads: &Gradients) -> usize {
        let updates: Vec<(usize, Tensor<4>)> = graph
            .trainable_leaves()
            .filter_map(|(slot, leaf)| leaf.grad(grads).map(|g| (slot, leaf.clone().inner(), g)))
            .map(|(slot, value, grad)| {
                let grad =
                    if self.weight_decay != 0.0 { grad.add(value.clone().mul_scalar(self.weight_decay)) } else { grad };
                let velocity = match self.velocity.remove(&slot) {
                    Some(v) => v.mul_scalar(self.momentum).add(grad),
                    None => grad,
                };
                let updated = value.sub(velocity.clone().mul_scalar(self.lr));
                self.velocity.insert(slot, velocity);
                (slot, Tensor::from_inner(updated).require_grad())
            })
            .collect();
        let count = updates.len();
        for (slot, tensor) in updates {
            graph.set_leaf(slot, tensor);
        }
        count
    }

    /// The momentum buffers by tensor name, for a checkpoint.
    pub fn velocity(&self, graph: &Graph) -> Vec<(String, Vec<f32>)> {
        let mut state: Vec<(String, Vec<f32>)> = self
            .velocity
            .iter()
            .filter_map(|(&slot, v)| {
                let name = graph.slot_name(slot)?;
                Some((name.to_owned(), v.clone().into_data().try_to_vec::<f32>().ok()?))
            })
            .collect();
        state.sort_by(|a, b| a.0.cmp(&b.0));
        state
    }

    /// Restores momentum buffers saved by [`Sgd::velocity`] for the same graph. A name that is
    /// not a trainable tensor, or values of the wrong length, are refused and nothing changes.
    pub fn restore_velocity(&mut self, graph: &Graph, state: &[(String, Vec<f32>)]) -> Result<(), GraphError> {
        let mut restored = HashMap::new();
        for (name, values) in state {
            let (slot, leaf) = graph
                .trainable_leaves()
                .find(|(slot, _)| graph.slot_name(*slot) == Some(name.as_str()))
                .ok_or_else(|| GraphError::Graph(format!("optimiser state names `{name}`, not a trainable tensor")))?;
            let dims = leaf.dims();
            if dims.iter().product::<usize>() != values.len() {
                return Err(GraphError::Graph(format!(
                    "optimiser state for `{name}` has {} values, the tensor {}",
                    values.len(),
                    dims.iter().product::<usize>()
                )));
            }
            let tensor = Tensor::<4>::from_data(TensorData::new(values.clone(), dims), graph.device()).inner();
            restored.insert(slot, tensor);
        }
        self.velocity = restored;
        Ok(())
    }
}
