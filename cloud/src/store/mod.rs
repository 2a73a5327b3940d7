//! The cloud's durable state in one sled database: per device the highest stored seq; per
//! adaptation scope the work queue (samples and batch-end markers, FIFO), the replay buffer
//! (FIFO, bounded), the adaptation state of both models, and the last parameter versions.
//!
//! Every change is one sled transaction, and the service flushes before it acknowledges, so a
//! crash at any point leaves either the state before a request or after it. An adaptation step
//! commits the consumed queue entries, the new state and the new version together: after a
//! crash the same step runs again from the same inputs, and the version continues from the
//! last committed one.

mod commit;
mod ingest;
mod records;
mod stale;

use std::collections::BTreeMap;

use cema_proto::v1;
use prost::Message;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::scope::ScopeId;

pub use commit::Commit;
pub use ingest::{Incoming, IngestOutcome};
pub use records::{DeviceProgress, QueueEntry, ScopeMeta, ScopeSummary};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (I/O, corruption).
    #[error("state store: {0}")]
    Sled(#[from] sled::Error),
    /// A record could not be decoded.
    #[error("state store: corrupt record in `{tree}`: {detail}")]
    Corrupt {
        /// Tree name.
        tree: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A rollback names a version the scope does not keep.
    #[error("scope `{scope}` holds no version {version} (see `cema-cloud params list`)")]
    NoSuchVersion {
        /// The scope.
        scope: String,
        /// The version asked for.
        version: u64,
    },
    /// A rollback names a scope that has never adapted.
    #[error("scope `{0}` has no adaptation state")]
    NoState(String),
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

/// The durable state.
#[derive(Debug, Clone)]
pub struct Store {
    /// Write-ahead log of ingests: appended and fsync'd before an ingest is acknowledged.
    /// sled 0.34's `flush` was seen to leave the last transaction unrecovered after a kill -9
    /// (`tests/tests/cloud_restart.rs`), so acknowledgements rest on this file; sled catches
    /// up from it at start.
    pub(super) wal: Option<std::sync::Arc<std::sync::Mutex<std::fs::File>>>,
    db: sled::Db,
    acked: sled::Tree,
    queue: sled::Tree,
    replay: sled::Tree,
    scopes: sled::Tree,
    states: sled::Tree,
    versions: sled::Tree,
}

/// Held around every sled transaction and flush of the cloud: sled 0.34 can deadlock when a
/// transaction waits for exclusive access while concurrent flushes hold shared access (seen
/// with 10 concurrent uploaders). Ingest is a short transaction plus an fsync, so serialising
/// them costs little (`cema-model bench ingest`).
static SLED_WRITES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The guard of [`SLED_WRITES`].
pub(crate) fn write_guard() -> std::sync::MutexGuard<'static, ()> {
    SLED_WRITES.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn key(scope: &str, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(scope.len() + 9);
    k.extend_from_slice(scope.as_bytes());
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub(super) fn prefix(scope: &str) -> Vec<u8> {
    let mut k = scope.as_bytes().to_vec();
    k.push(0);
    k
}

pub(super) fn id_of(key: &[u8]) -> u64 {
    key.len().checked_sub(8).and_then(|at| key[at..].try_into().ok()).map(u64::from_be_bytes).unwrap_or(0)
}

/// Now, in Unix milliseconds (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A scope id as the `scopes` tree keys it.
fn scope_of(key: &[u8]) -> Result<ScopeId, StoreError> {
    let text = String::from_utf8_lossy(key);
    text.parse().map_err(|e: crate::scope::ScopeIdError| StoreError::Corrupt { tree: "scopes", detail: e.to_string() })
}

pub(super) fn decode<M: Message + Default>(tree: &'static str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt { tree, detail: e.to_string() })
}

pub(super) fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

impl Store {
    /// Opens (or creates) the store's trees in `db`.
    pub fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(Self {
            wal: None,
            db: db.clone(),
            acked: db.open_tree("acked")?,
            queue: db.open_tree("queue")?,
            replay: db.open_tree("replay")?,
            scopes: db.open_tree("scopes")?,
            states: db.open_tree("states")?,
            versions: db.open_tree("versions")?,
        })
    }

    /// The database (shared with the device registry).
    pub fn db(&self) -> sled::Db {
        self.db.clone()
    }

    /// Makes the last transaction durable. sled 0.34 recovers a transaction's batch only if
    /// the log is intact up to the highest LSN reserved when the batch was sealed; a flush
    /// right after the commit was seen to leave the last batch unrecovered after a kill -9
    /// (`tests/tests/cloud_restart.rs`). A plain write after the batch, flushed, moves the
    /// durable tip past it.
    pub(super) fn seal(&self) -> Result<(), StoreError> {
        self.db.insert(b"sealed", &self.db.generate_id()?.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// The highest seq stored from `device` (0 = none).
    pub fn acked_seq(&self, device: &str) -> Result<u64, StoreError> {
        Ok(self.acked.get(device)?.map(|v| id_of(&v)).unwrap_or(0))
    }

    /// A scope's bookkeeping (default for a scope never seen).
    pub fn meta(&self, scope: &ScopeId) -> Result<ScopeMeta, StoreError> {
        let scope = scope.to_string();
        let scope = scope.as_str();
        match self.scopes.get(scope)? {
            Some(bytes) => decode("scopes", &bytes),
            None => Ok(ScopeMeta::default()),
        }
    }

    /// Every scope with stored bookkeeping.
    pub fn scopes(&self) -> Result<Vec<ScopeId>, StoreError> {
        self.scopes.iter().keys().map(|k| scope_of(&k?)).collect()
    }

    /// The bookkeeping of the first `limit` scopes in scope order, and how many scopes there
    /// are in all (what `/metrics` labels by scope without an unbounded label set).
    pub fn first_metas(&self, limit: usize) -> Result<(Vec<(ScopeId, ScopeMeta)>, usize), StoreError> {
        let mut first = Vec::with_capacity(limit.min(1024));
        let mut total = 0;
        for entry in self.scopes.iter() {
            let (key, bytes) = entry?;
            if first.len() < limit {
                first.push((scope_of(&key)?, decode("scopes", &bytes)?));
            }
            total += 1;
        }
        Ok((first, total))
    }

    /// Every scope's summary, in scope order.
    pub fn summaries(&self) -> Result<Vec<ScopeSummary>, StoreError> {
        self.scopes()?
            .into_iter()
            .map(|scope| {
                let meta = self.meta(&scope)?;
                let versions = self.versions(&scope)?;
                let mut devices = BTreeMap::new();
                let own = scope.device_id().map(str::to_owned);
                for device in meta.through.keys().cloned().chain(own) {
                    let progress = DeviceProgress {
                        acked_seq: self.acked_seq(&device)?,
                        through_batch: meta.through.get(&device).copied().unwrap_or(0),
                    };
                    devices.insert(device, progress);
                }
                Ok(ScopeSummary {
                    version: meta.version,
                    steps: meta.steps,
                    replay: meta.replay_len(),
                    queued_samples: meta.queued_samples,
                    stored_versions: versions.first().copied().zip(versions.last().copied()),
                    devices,
                    scope: scope.to_string(),
                })
            })
            .collect()
    }

    /// The queue of `scope` up to and including its first marker (empty if it holds no marker):
    /// what the engine processes next.
    pub fn next_round(&self, scope: &ScopeId) -> Result<Vec<(u64, QueueEntry)>, StoreError> {
        let scope = scope.to_string();
        let scope = scope.as_str();
        let mut round = Vec::new();
        for item in self.queue.scan_prefix(prefix(scope)) {
            let (k, v) = item?;
            let entry: QueueEntry = decode("queue", &v)?;
            let is_marker = entry.sample.is_none();
            round.push((id_of(&k), entry));
            if is_marker {
                return Ok(round);
            }
        }
        Ok(Vec::new())
    }

    /// Replay samples by id.
    pub fn replay_samples(&self, scope: &ScopeId, ids: &[u64]) -> Result<Vec<v1::EncodedTensor>, StoreError> {
        let scope = scope.to_string();
        let scope = scope.as_str();
        ids.iter()
            .map(|&id| {
                let bytes = self.replay.get(key(scope, id))?.ok_or_else(|| StoreError::Corrupt {
                    tree: "replay",
                    detail: format!("scope `{scope}` lacks replay entry {id}"),
                })?;
                decode("replay", &bytes)
            })
            .collect()
    }

    /// A stored parameter version of a scope (the last `keep_versions` are kept).
    pub fn version(&self, scope: &ScopeId, version: u64) -> Result<Option<v1::NormParams>, StoreError> {
        let scope = scope.to_string();
        let scope = scope.as_str();
        self.versions.get(key(scope, version))?.map(|bytes| decode("versions", &bytes)).transpose()
    }

    /// The stored version numbers of a scope, oldest first.
    pub fn versions(&self, scope: &ScopeId) -> Result<Vec<u64>, StoreError> {
        let scope = scope.to_string();
        let scope = scope.as_str();
        self.versions.scan_prefix(prefix(scope)).keys().map(|k| Ok(id_of(&k?))).collect()
    }
}
