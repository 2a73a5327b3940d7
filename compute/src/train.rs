//! SGD with momentum over a graph's trainable leaves, with PyTorch's update rule
//! (`v ← μ·v + g`, the first step taking `v = g`; `p ← p − lr·v`; no dampening, no weight decay).

use std::collections::HashMap;

use burn::Tensor;
use burn::tensor::Gradients;

use crate::graph::Graph;

/// Stochastic gradient descent with momentum.
#[derive(Debug, Clone)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f64,
    /// Momentum μ.
    pub momentum: f64,
    velocity: HashMap<usize, Tensor<4>>,
}

impl Sgd {
    /// A fresh optimiser (no velocity yet).
    pub fn new(lr: f64, momentum: f64) -> Self {
        Self { lr, momentum, velocity: HashMap::new() }
    }

    /// Updates every trainable leaf that received a gradient; returns how many did.
    pub fn step(&mut self, graph: &mut Graph, grads: &Gradients) -> usize {
        let updates: Vec<(usize, Tensor<4>)> = graph
            .trainable_leaves()
            .filter_map(|(slot, leaf)| leaf.grad(grads).map(|g| (slot, leaf.clone().inner(), g)))
            .map(|(slot, value, grad)| {
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
}
