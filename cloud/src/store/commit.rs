//! Committing an adaptation round, and rolling a scope back to a stored version.

use prost::Message;
use sled::transaction::Transactional;

use super::records::state_record;
use super::{QueueEntry, ScopeMeta, Store, StoreError, abort, decode, key, write_guard};
use crate::scope::ScopeId;
use cema_compute::adapt::ScopeState;
use cema_proto::v1;

/// What one adaptation round commits.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    /// Queue keys consumed.
    pub consumed: Vec<u64>,
    /// A processed marker: its queue key, device and batch index.
    pub marker: Option<(u64, String, u64)>,
    /// The processed marker's source-guard outcome: `Source` counts a revert in a row,
    /// `Adapted` ends the run.
    pub guard: Option<v1::GuardOutcome>,
    /// The round reset the scope (the reverts in a row start again): the marker's key and,
    /// when the marker stays queued for another round, its record without the request.
    pub reset: Option<(u64, Option<QueueEntry>)>,
    /// The reset answered the marker's drift report.
    pub drift_answered: bool,
    /// The new state, if it changed. With `new_version` its `student.version` is a new
    /// version, stored for watchers; without, only the state is stored (first-batch statistics
    /// adopted).
    pub state: Option<ScopeState>,
    /// Whether a step ran (counted in the scope's meta).
    pub stepped: bool,
    /// Whether `state` is a new version for watchers (a step, or statistics from the edge).
    pub new_version: bool,
}

impl Store {
    /// Commits one adaptation round atomically; returns the scope's meta after it.
    pub fn commit(&self, scope: &ScopeId, commit: &Commit, keep_versions: u64) -> Result<ScopeMeta, StoreError> {
        let scope = scope.to_string();
        let scope = scope.as_str();
        let state_bytes = commit.state.as_ref().map(|s| state_record(s, scope).encode_to_vec());
        let version_bytes = commit
            .state
            .as_ref()
            .map(|s| (s.student.version, cema_proto::norm_params_to_wire(&s.student, scope).encode_to_vec()));
        let _writes = write_guard();
        let meta = (&self.queue, &self.scopes, &self.states, &self.versions).transaction(
            |(queue, scopes, states, versions)| {
                let mut meta: ScopeMeta = match scopes.get(scope)? {
                    Some(bytes) => decode("scopes", &bytes).map_err(abort)?,
                    None => ScopeMeta::default(),
                };
                for &id in &commit.consumed {
                    if queue.remove(key(scope, id))?.is_some() {
                        meta.queued_samples = meta.queued_samples.saturating_sub(1);
                    }
                }
                if let Some((id, rewritten)) = &commit.reset {
                    meta.consecutive_reverts = 0;
                    meta.resets += 1;
                    if commit.drift_answered {
                        meta.drift_requests = meta.drift_requests.saturating_sub(1);
                    }
                    if let Some(entry) = rewritten {
                        queue.insert(key(scope, *id), entry.encode_to_vec())?;
                    }
                }
                if let Some((id, device, batch)) = &commit.marker {
                    queue.remove(key(scope, *id))?;
                    meta.through.insert(device.clone(), *batch);
                }
                match commit.guard {
                    Some(v1::GuardOutcome::Source) => meta.consecutive_reverts += 1,
                    Some(v1::GuardOutcome::Adapted) => meta.consecutive_reverts = 0,
                    _ => {}
                }
                if let Some(state) = &state_bytes {
                    states.insert(scope, state.as_slice())?;
                }
                if let (true, Some((version, params))) = (commit.new_version, &version_bytes) {
                    versions.insert(key(scope, *version), params.as_slice())?;
                    if *version > keep_versions {
                        versions.remove(key(scope, version - keep_versions))?;
                    }
                    meta.version = *version;
                }
                if commit.stepped {
                    meta.steps += 1;
                }
                scopes.insert(scope, meta.encode_to_vec())?;
                Ok(meta)
            },
        )?;
        self.seal()?;
        Ok(meta)
    }
}

impl Store {
    /// Makes a stored version's edge parameters the scope's state again, as a new version
    /// (the edge model's momentum is reset; the foundation model's state is kept). Returns the
    /// new version. Watchers receive it on their next connection.
    pub fn rollback(&self, scope: &ScopeId, version: u64) -> Result<u64, StoreError> {
        let meta = self.meta(scope)?;
        let wire = self
            .version(scope, version)?
            .ok_or_else(|| StoreError::NoSuchVersion { scope: scope.to_string(), version })?;
        let mut state = self.state(scope)?.ok_or_else(|| StoreError::NoState(scope.to_string()))?;
        state.student = cema_proto::norm_params_from_wire(wire)
            .map_err(|e| StoreError::Corrupt { tree: "versions", detail: e.to_string() })?;
        state.student.version = meta.version + 1;
        state.student_velocity.clear();
        let new = state.student.version;
        let commit = Commit { state: Some(state), new_version: true, ..Commit::default() };
        self.commit(scope, &commit, u64::MAX)?;
        Ok(new)
    }
}
