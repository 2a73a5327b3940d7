//! A scope's stored replay buffer as the adaptation round draws from it: uniform draws without
//! replacement, deterministic per scope, version and step, so a round redone after a crash
//! draws the same samples.

use cema_compute::adapt::{AdaptError, Replay};
use cema_core::SampleValues;
use cema_core::rng::Rng;

use crate::model::ModelEntry;
use crate::scope::ScopeId;
use crate::store::{ScopeMeta, Store};

/// The replay buffer of one scope as it stood when a round began.
pub(crate) struct StoredReplay<'a> {
    /// The store holding the buffer.
    pub(crate) store: &'a Store,
    /// The scope.
    pub(crate) scope: &'a ScopeId,
    /// The scope's bookkeeping at the start of the round (the buffer's bounds).
    pub(crate) meta: &'a ScopeMeta,
    /// The model the samples are checked against.
    pub(crate) model: &'a ModelEntry,
}

impl Replay for StoredReplay<'_> {
    fn held(&self) -> u64 {
        self.meta.replay_len()
    }

    fn draw(
        &mut self,
        count: usize,
        version: u64,
        step: u64,
        window: Option<usize>,
    ) -> Result<Vec<SampleValues>, AdaptError> {
        let head = window.map_or(self.meta.replay_head, |w| {
            self.meta.replay_head.max(self.meta.replay_next.saturating_sub(w as u64))
        });
        let scope = self.scope.to_string();
        let ids = draw_without_replacement(head, self.meta.replay_next, count, &scope, version, step);
        self.decoded(&ids)
    }

    fn recent(&mut self, count: usize) -> Result<Vec<SampleValues>, AdaptError> {
        // Samples enter the buffer as they arrive and leave the queue oldest first, so the
        // queued ones are the buffer's newest `queued_samples`.
        let end = self.meta.replay_next.saturating_sub(self.meta.queued_samples).max(self.meta.replay_head);
        let start = end.saturating_sub(count as u64).max(self.meta.replay_head);
        self.decoded(&(start..end).collect::<Vec<_>>())
    }
}

impl StoredReplay<'_> {
    fn decoded(&self, ids: &[u64]) -> Result<Vec<SampleValues>, AdaptError> {
        let boxed = |e: Box<dyn std::error::Error + Send + Sync>| AdaptError::Replay(e);
        let tensors = self.store.replay_samples(self.scope, ids).map_err(|e| boxed(e.into()))?;
        tensors.iter().map(|t| self.model.decode_sample(t).map_err(|e| boxed(e.into()))).collect()
    }
}

/// `count` distinct ids from `[head, next)` (all of them if fewer), uniformly: a partial
/// Fisher–Yates shuffle seeded by the scope, the version and the step within the version's
/// round (0 for the round's regular step; idle replay steps count from 1).
pub fn draw_without_replacement(head: u64, next: u64, count: usize, scope: &str, version: u64, step: u64) -> Vec<u64> {
    let mut ids: Vec<u64> = (head..next).collect();
    let take = count.min(ids.len());
    let scope_key = scope.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    const SALT: u64 = 0x7265_706c_6179;
    // Step 0 keeps the key it always had, so earlier draws (and the eval figures) stay the same.
    let mut rng = if step == 0 {
        Rng::for_stream(&[scope_key, version, SALT])
    } else {
        Rng::for_stream(&[scope_key, version, SALT, step])
    };
    for i in 0..take {
        let j = rng.int_inclusive(i as i64, ids.len() as i64 - 1) as usize;
        ids.swap(i, j);
    }
    ids.truncate(take);
    ids
}
