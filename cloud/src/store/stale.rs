//! Newest data first: when the engine falls behind a scope's uploads, the oldest queued
//! entries leave the queue for the replay buffer alone (`docs/algorithm.md`, "Real time").

use prost::Message;
use sled::transaction::Transactional;

use super::{QueueEntry, ScopeMeta, Store, StoreError, abort, decode, id_of, key, prefix, write_guard};
use crate::scope::ScopeId;

impl Store {
    /// Newest data first: when `scope`'s queue holds more than one batch end and more than
    /// `keep` samples, its oldest entries leave the queue (their samples stay in the replay
    /// buffer, so nothing acknowledged is lost) until `keep` samples are left. Batch ends that
    /// leave with them count as processed for their device; one that carries first-batch
    /// statistics or a drift report is never skipped. In lockstep a queue holds one batch end
    /// at most, so this never fires there. Returns the samples skipped.
    pub fn skip_stale(&self, scope: &ScopeId, keep: u64) -> Result<u64, StoreError> {
        let scope = scope.to_string();
        let scope = scope.as_str();
        let meta: ScopeMeta = match self.scopes.get(scope)? {
            Some(bytes) => decode("scopes", &bytes)?,
            None => return Ok(0),
        };
        if meta.queued_samples <= keep {
            return Ok(0);
        }
        let mut markers = 0usize;
        let mut entries = Vec::new();
        for item in self.queue.scan_prefix(prefix(scope)) {
            let (k, v) = item?;
            let entry: QueueEntry = decode("queue", &v)?;
            markers += entry.sample.is_none() as usize;
            entries.push((id_of(&k), entry));
        }
        if markers < 2 {
            return Ok(0);
        }
        let mut excess = meta.queued_samples - keep;
        let mut leave = Vec::new();
        for (id, entry) in &entries {
            // A batch end with first-batch statistics or a drift report is never skipped: what it
            // asks of the scope must still happen.
            if excess == 0 || entry.statistics.is_some() || entry.drift() {
                break;
            }
            if entry.sample.is_some() {
                excess -= 1;
            }
            leave.push((*id, entry));
        }
        self.leave_queue(scope, &leave)
    }

    /// An edge that detected drift asks for a reset: every entry queued before the batch that
    /// detected it (up to and including the batch end before that one) leaves the queue for
    /// the replay buffer alone, batch ends counting as processed. Returns the samples skipped.
    pub fn skip_before_drift(&self, scope: &ScopeId) -> Result<u64, StoreError> {
        if self.meta(scope)?.drift_requests == 0 {
            return Ok(0);
        }
        let scope = scope.to_string();
        let scope = scope.as_str();
        let mut entries = Vec::new();
        for item in self.queue.scan_prefix(prefix(scope)) {
            let (k, v) = item?;
            entries.push((id_of(&k), decode::<QueueEntry>("queue", &v)?));
        }
        let Some(drift) = entries.iter().rposition(|(_, e)| e.drift()) else { return Ok(0) };
        let Some(previous_end) = entries[..drift].iter().rposition(|(_, e)| e.sample.is_none()) else { return Ok(0) };
        let leave: Vec<(u64, &QueueEntry)> = entries[..=previous_end].iter().map(|(id, e)| (*id, e)).collect();
        self.leave_queue(scope, &leave)
    }

    /// Removes `leave` from the queue in one transaction: samples stay in the replay buffer,
    /// batch ends count as processed for their device. Returns the samples removed.
    fn leave_queue(&self, scope: &str, leave: &[(u64, &QueueEntry)]) -> Result<u64, StoreError> {
        let _writes = write_guard();
        let skipped = (&self.queue, &self.scopes).transaction(|(queue, scopes)| {
            let mut meta: ScopeMeta = match scopes.get(scope)? {
                Some(bytes) => decode("scopes", &bytes).map_err(abort)?,
                None => ScopeMeta::default(),
            };
            let mut skipped = 0;
            for (id, entry) in leave {
                queue.remove(key(scope, *id))?;
                if entry.drift() {
                    // Superseded by a later report, which the reset answers.
                    meta.drift_requests = meta.drift_requests.saturating_sub(1);
                }
                match entry.sample {
                    Some(_) => skipped += 1,
                    None => {
                        meta.through.insert(entry.device.clone(), entry.batch);
                    }
                }
            }
            meta.queued_samples = meta.queued_samples.saturating_sub(skipped);
            scopes.insert(scope, meta.encode_to_vec())?;
            Ok(skipped)
        })?;
        self.seal()?;
        Ok(skipped)
    }
}
