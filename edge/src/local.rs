//! Edge-local adaptation: the edge follows its own input statistics, forward-only, with no
//! cloud. Each batch moves the running statistics of every normalisation layer towards the
//! batch's (TBR's momentum rule, each layer's ONNX momentum); every `every` batches the result
//! is swapped in between batches. γ and β stay as they are: training them needs the cloud.
//! It is the zero-upload baseline of `docs/algorithm.md` ("Statistics uplink").

use cema_core::{NormDiscovery, NormParams};

/// The running state of edge-local adaptation.
#[derive(Debug, Clone)]
pub struct LocalAdaptation {
    every: u64,
    params: NormParams,
    batches: u64,
}

impl LocalAdaptation {
    /// Starts from the parameters serving now; applies every `every` batches (at least 1).
    pub fn new(params: NormParams, every: u64) -> Self {
        Self { every: every.max(1), params, batches: 0 }
    }

    /// Restarts from `params` (after a first-batch initialisation or a reset).
    pub fn restart(&mut self, params: NormParams) {
        self.params = params;
        self.batches = 0;
    }

    /// Moves the running statistics towards one batch's; returns the parameters to swap in when
    /// an application is due.
    pub fn observe(&mut self, statistics: &NormParams, discovery: &NormDiscovery) -> Option<&NormParams> {
        self.params.follow_statistics(statistics, &discovery.layers, None);
        self.batches += 1;
        self.batches.is_multiple_of(self.every).then_some(&self.params)
    }
}
