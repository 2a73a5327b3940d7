//! The agent's durable state in its sled database (`--data-dir`): the [`Outbox`] and, in tree
//! `agent`, the records a restart resumes from — the selector's state, the batch index and the
//! parameters being served. Records that belong to a batch are written in the transaction
//! that stores the batch's selection, so a crash leaves the state before the batch or after it.

use std::sync::Arc;

use cema_core::NormParams;
use cema_proto::v1;
use prost::Message;

use crate::outbox::{Appended, Outbox, OutboxError, OutboxLimits};
use crate::selector::SelectorState;

const SELECTOR_KEY: &[u8] = b"selector_state";
const APPLIED_KEY: &[u8] = b"applied_params";
const BATCH_KEY: &[u8] = b"batch_index";

/// Why the agent's state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum EdgeStoreError {
    /// sled failed.
    #[error("agent state: {0}")]
    Sled(#[from] sled::Error),
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// A stored record does not decode.
    #[error("agent state: corrupt `{record}` record: {detail}")]
    Corrupt {
        /// Which record.
        record: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// The agent records stored with one batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchRecords<'a> {
    /// The batch's index (1 for the first batch ever pushed).
    pub batch: u64,
    /// The selector's state after the batch.
    pub selector: &'a SelectorState,
    /// Parameters served from the next batch on, when the batch changed them on the edge
    /// (first-batch statistics, edge-local adaptation).
    pub applied: Option<&'a NormParams>,
}

/// The outbox and the agent's records.
#[derive(Debug, Clone)]
pub struct EdgeStore {
    outbox: Arc<Outbox>,
    agent: sled::Tree,
}

impl EdgeStore {
    /// Opens the state in `db`, counting what a previous run left in the outbox.
    pub fn open(db: &sled::Db, limits: OutboxLimits) -> Result<Self, EdgeStoreError> {
        Ok(Self { outbox: Arc::new(Outbox::open(db, limits)?), agent: db.open_tree("agent")? })
    }

    /// The outbox.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// The selector's state (a fresh one before the first batch).
    pub fn selector_state(&self) -> Result<SelectorState, EdgeStoreError> {
        match self.agent.get(SELECTOR_KEY)? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| EdgeStoreError::Corrupt { record: "selector_state", detail: e.to_string() }),
            None => Ok(SelectorState::default()),
        }
    }

    /// Batches pushed so far, over restarts.
    pub fn batch_index(&self) -> Result<u64, EdgeStoreError> {
        Ok(self.agent.get(BATCH_KEY)?.and_then(|v| v.as_ref().try_into().ok()).map(u64::from_be_bytes).unwrap_or(0))
    }

    /// The parameters to serve instead of the model's own, if any were applied.
    pub fn applied_params(&self) -> Result<Option<NormParams>, EdgeStoreError> {
        let Some(bytes) = self.agent.get(APPLIED_KEY)? else { return Ok(None) };
        let corrupt = |detail: String| EdgeStoreError::Corrupt { record: "applied_params", detail };
        let wire = v1::NormParams::decode(bytes.as_ref()).map_err(|e| corrupt(e.to_string()))?;
        cema_proto::norm_params_from_wire(wire).map(Some).map_err(|e| corrupt(e.to_string()))
    }

    /// Records an update from the cloud as the parameters served from now on.
    pub fn save_applied(&self, wire: &v1::NormParams) -> Result<(), EdgeStoreError> {
        self.agent.insert(APPLIED_KEY, wire.encode_to_vec())?;
        Ok(())
    }

    /// Forgets applied parameters: the next start serves the model's own.
    pub fn forget_applied(&self) -> Result<(), EdgeStoreError> {
        self.agent.remove(APPLIED_KEY)?;
        Ok(())
    }

    /// Stores one batch's selected samples and batch end in the outbox, with `records`, in one
    /// transaction (see [`Outbox::append_batch`] for seqs, bounds and durability).
    pub fn append_batch(
        &self,
        samples: Vec<v1::Sample>,
        end: v1::BatchEnd,
        records: &BatchRecords<'_>,
    ) -> Result<Appended, EdgeStoreError> {
        let selector = serde_json::to_vec(records.selector)
            .map_err(|e| EdgeStoreError::Corrupt { record: "selector_state", detail: e.to_string() })?;
        let mut extra = vec![(SELECTOR_KEY, selector), (BATCH_KEY, records.batch.to_be_bytes().to_vec())];
        if let Some(params) = records.applied {
            extra.push((APPLIED_KEY, cema_proto::norm_params_to_wire(params, "").encode_to_vec()));
        }
        Ok(self.outbox.append_batch(samples, end, &extra)?)
    }
}
