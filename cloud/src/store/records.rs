//! The records the store keeps per scope, and the adaptation state's stored form.

use std::collections::{BTreeMap, HashMap};

use cema_compute::adapt::ScopeState;
use cema_proto::v1;
use prost::Message;

use super::{Store, StoreError, decode};
use crate::scope::ScopeId;

/// Bookkeeping of one scope.
#[derive(Clone, PartialEq, Message)]
pub struct ScopeMeta {
    /// Key of the next queue entry.
    #[prost(uint64, tag = "1")]
    pub queue_next: u64,
    /// Oldest replay key still held.
    #[prost(uint64, tag = "2")]
    pub replay_head: u64,
    /// Key of the next replay entry.
    #[prost(uint64, tag = "3")]
    pub replay_next: u64,
    /// Latest parameter version (0 = source parameters).
    #[prost(uint64, tag = "4")]
    pub version: u64,
    /// Per device, the highest batch index whose batch-end has been processed.
    #[prost(map = "string, uint64", tag = "5")]
    pub through: HashMap<String, u64>,
    /// Adaptation steps run so far.
    #[prost(uint64, tag = "6")]
    pub steps: u64,
    /// Queued samples (not markers).
    #[prost(uint64, tag = "7")]
    pub queued_samples: u64,
    /// Batch ends processed in a row whose edge's source guard served the model's own
    /// parameters instead of the scope's: a sign that the adapted state diverged.
    #[prost(uint64, tag = "8")]
    pub consecutive_reverts: u64,
    /// Resets of the scope's adaptation state (drift reported by an edge, or diverged state).
    #[prost(uint64, tag = "9")]
    pub resets: u64,
    /// Queued batch ends that carry a drift report not yet acted on: lets the engine look for
    /// them only when there are some, instead of reading the whole queue every round.
    #[prost(uint64, tag = "10")]
    pub drift_requests: u64,
}

impl ScopeMeta {
    /// Samples in the replay buffer.
    pub fn replay_len(&self) -> u64 {
        self.replay_next - self.replay_head
    }
}

/// What an operator sees of a scope: admin `/scopes`, `cema-cloud params list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScopeSummary {
    /// `device:<id>` or `fleet:<model>`.
    pub scope: String,
    /// Latest parameter version (0 = source parameters).
    pub version: u64,
    /// Adaptation steps run.
    pub steps: u64,
    /// Samples in the replay buffer.
    pub replay: u64,
    /// Samples waiting for a step.
    pub queued_samples: u64,
    /// Oldest and newest stored version (for rollback), if any.
    pub stored_versions: Option<(u64, u64)>,
    /// Devices feeding the scope: highest stored seq and highest batch processed.
    pub devices: BTreeMap<String, DeviceProgress>,
}

/// One device's progress in a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DeviceProgress {
    /// Highest seq stored (everything at or below it is acknowledged and durable).
    pub acked_seq: u64,
    /// Highest batch whose batch end has been processed.
    pub through_batch: u64,
}

/// A queue entry: a sample (its encoded tensor) or a batch-end marker.
#[derive(Clone, PartialEq, Message)]
pub struct QueueEntry {
    /// The sample (absent for a marker).
    #[prost(message, optional, tag = "1")]
    pub sample: Option<v1::EncodedTensor>,
    /// The device that sent the entry (for samples stored before this was recorded: empty).
    #[prost(string, tag = "2")]
    pub device: String,
    /// Batch index of a marker (0 for a sample).
    #[prost(uint64, tag = "3")]
    pub batch: u64,
    /// A marker's first-batch statistics, if the edge initialised from that batch.
    #[prost(message, optional, tag = "4")]
    pub statistics: Option<v1::NormStatistics>,
    /// A marker's batch statistics, if the edge runs the statistics uplink.
    #[prost(message, optional, tag = "5")]
    pub batch_statistics: Option<v1::NormStatistics>,
    /// When ingest stored the entry (Unix milliseconds; 0 for entries stored before this field
    /// existed): what the queue-age figures measure.
    #[prost(uint64, tag = "6")]
    pub received_unix_ms: u64,
    /// The device's seq of the entry (0 for entries stored before this field existed).
    #[prost(uint64, tag = "7")]
    pub seq: u64,
    /// A marker's report of what the edge served, and whether it detected drift.
    #[prost(message, optional, tag = "8")]
    pub outcome: Option<v1::BatchOutcome>,
}

impl QueueEntry {
    /// Whether this is a batch end whose edge detected drift (and asks for a reset).
    pub fn drift(&self) -> bool {
        self.sample.is_none() && self.outcome.is_some_and(|o| o.drift)
    }
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct StateRecord {
    #[prost(message, optional, tag = "1")]
    student: Option<v1::NormParams>,
    #[prost(message, optional, tag = "2")]
    foundation: Option<v1::NormParams>,
    #[prost(message, optional, tag = "3")]
    student_velocity: Option<v1::NormParams>,
    #[prost(message, optional, tag = "4")]
    foundation_velocity: Option<v1::NormParams>,
    #[prost(bool, tag = "5")]
    student_stats_set: bool,
    #[prost(bool, tag = "6")]
    foundation_stats_set: bool,
}

impl Store {
    /// A scope's adaptation state, if it has one.
    pub fn state(&self, scope: &ScopeId) -> Result<Option<ScopeState>, StoreError> {
        let scope = scope.to_string();
        let scope = scope.as_str();
        let Some(bytes) = self.states.get(scope)? else { return Ok(None) };
        let record: StateRecord = decode("states", &bytes)?;
        let params = |p: Option<v1::NormParams>| {
            cema_proto::norm_params_from_wire(p.unwrap_or_default())
                .map_err(|e| StoreError::Corrupt { tree: "states", detail: e.to_string() })
        };
        let velocity = |p: Option<v1::NormParams>| -> Result<Vec<(String, Vec<f32>)>, StoreError> {
            Ok(params(p)?.tensors.into_iter().map(|(name, t)| (name, t.values)).collect())
        };
        Ok(Some(ScopeState {
            student: params(record.student)?,
            foundation: params(record.foundation)?,
            student_velocity: velocity(record.student_velocity)?,
            foundation_velocity: velocity(record.foundation_velocity)?,
            student_stats_set: record.student_stats_set,
            foundation_stats_set: record.foundation_stats_set,
        }))
    }
}

pub(super) fn state_record(state: &ScopeState, scope: &str) -> StateRecord {
    let velocity = |v: &[(String, Vec<f32>)]| {
        let mut params = cema_core::NormParams::default();
        for (name, values) in v {
            params
                .tensors
                .insert(name.clone(), cema_core::NormTensor { dims: vec![values.len()], values: values.clone() });
        }
        cema_proto::norm_params_to_wire(&params, scope)
    };
    StateRecord {
        student: Some(cema_proto::norm_params_to_wire(&state.student, scope)),
        foundation: Some(cema_proto::norm_params_to_wire(&state.foundation, scope)),
        student_velocity: Some(velocity(&state.student_velocity)),
        foundation_velocity: Some(velocity(&state.foundation_velocity)),
        student_stats_set: state.student_stats_set,
        foundation_stats_set: state.foundation_stats_set,
    }
}
