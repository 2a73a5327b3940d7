//! The cloud's durable state in one sled database: per device the highest stored seq; per
//! adaptation scope the work queue (samples and batch-end markers, FIFO), the replay buffer
//! (FIFO, bounded), the adaptation state of both models, and the last parameter versions.
//!
//! Every change is one sled transaction, and the service flushes before it acknowledges, so a
//! crash at any point leaves either the state before a request or after it. An adaptation step
//! commits the consumed queue entries, the new state and the new version together: after a
//! crash the same step runs again from the same inputs, and the version continues from the
//! last committed one.

use std::collections::{BTreeMap, HashMap};

use cema_proto::v1;
use prost::Message;
use sha2::{Digest, Sha256};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::adapt::ScopeState;

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
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

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
    /// Device of a marker.
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
}

#[derive(Clone, PartialEq, Message)]
struct StateRecord {
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

/// One entry of an upload, as ingest stores it.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A validated sample.
    Sample {
        /// Device seq.
        seq: u64,
        /// The encoded input.
        input: v1::EncodedTensor,
    },
    /// A batch-end marker.
    BatchEnd {
        /// Device seq.
        seq: u64,
        /// Edge batch index.
        batch: u64,
        /// First-batch statistics the edge initialised from (validated at ingest).
        statistics: Option<v1::NormStatistics>,
        /// The batch's statistics over every sample (validated at ingest).
        batch_statistics: Option<v1::NormStatistics>,
    },
}

impl Incoming {
    /// The device seq.
    pub fn seq(&self) -> u64 {
        match self {
            Incoming::Sample { seq, .. } | Incoming::BatchEnd { seq, .. } => *seq,
        }
    }
}

/// What ingest did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IngestOutcome {
    /// Samples stored.
    pub samples: u64,
    /// Batch-end markers stored.
    pub batch_ends: u64,
    /// Entries already stored before (not stored again).
    pub duplicates: u64,
    /// Samples dropped from the replay buffer's old end.
    pub replay_evicted: u64,
}

/// What one adaptation round commits.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    /// Queue keys consumed.
    pub consumed: Vec<u64>,
    /// A processed marker: its queue key, device and batch index.
    pub marker: Option<(u64, String, u64)>,
    /// The new state, if it changed. With `new_version` its `student.version` is a new
    /// version, stored for watchers; without, only the state is stored (first-batch statistics
    /// adopted).
    pub state: Option<ScopeState>,
    /// Whether a step ran (counted in the scope's meta).
    pub stepped: bool,
    /// Whether `state` is a new version for watchers (a step, or statistics from the edge).
    pub new_version: bool,
}

/// One acknowledged ingest, as the write-ahead log holds it.
#[derive(Clone, PartialEq, Message)]
struct WalRecord {
    #[prost(string, tag = "1")]
    device: String,
    #[prost(string, tag = "2")]
    scope: String,
    #[prost(uint64, tag = "3")]
    replay_capacity: u64,
    #[prost(message, repeated, tag = "4")]
    entries: Vec<WalEntry>,
}

#[derive(Clone, PartialEq, Message)]
struct WalEntry {
    #[prost(uint64, tag = "1")]
    seq: u64,
    #[prost(message, optional, tag = "2")]
    sample: Option<v1::EncodedTensor>,
    #[prost(uint64, tag = "3")]
    batch: u64,
    #[prost(message, optional, tag = "4")]
    statistics: Option<v1::NormStatistics>,
    #[prost(message, optional, tag = "5")]
    batch_statistics: Option<v1::NormStatistics>,
}

impl From<WalEntry> for Incoming {
    fn from(e: WalEntry) -> Self {
        match e.sample {
            Some(input) => Incoming::Sample { seq: e.seq, input },
            None => Incoming::BatchEnd {
                seq: e.seq,
                batch: e.batch,
                statistics: e.statistics,
                batch_statistics: e.batch_statistics,
            },
        }
    }
}

impl From<&Incoming> for WalEntry {
    fn from(e: &Incoming) -> Self {
        match e {
            Incoming::Sample { seq, input } => {
                WalEntry { seq: *seq, sample: Some(input.clone()), batch: 0, statistics: None, batch_statistics: None }
            }
            Incoming::BatchEnd { seq, batch, statistics, batch_statistics } => WalEntry {
                seq: *seq,
                sample: None,
                batch: *batch,
                statistics: statistics.clone(),
                batch_statistics: batch_statistics.clone(),
            },
        }
    }
}

/// The WAL is cut back to empty once it grows past this (after sled is flushed).
const WAL_ROTATE_BYTES: u64 = 64 << 20;

/// The durable state.
#[derive(Debug, Clone)]
pub struct Store {
    /// Write-ahead log of ingests: appended and fsync'd before an ingest is acknowledged.
    /// sled 0.34's `flush` was seen to leave the last transaction unrecovered after a kill -9
    /// (`tests/tests/cloud_restart.rs`), so acknowledgements rest on this file; sled catches
    /// up from it at start.
    wal: Option<std::sync::Arc<std::sync::Mutex<std::fs::File>>>,
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

fn key(scope: &str, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(scope.len() + 9);
    k.extend_from_slice(scope.as_bytes());
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn prefix(scope: &str) -> Vec<u8> {
    let mut k = scope.as_bytes().to_vec();
    k.push(0);
    k
}

fn id_of(key: &[u8]) -> u64 {
    key.len().checked_sub(8).and_then(|at| key[at..].try_into().ok()).map(u64::from_be_bytes).unwrap_or(0)
}

fn decode<M: Message + Default>(tree: &'static str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt { tree, detail: e.to_string() })
}

fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
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

    /// Attaches the ingest write-ahead log at `path`: first re-applies every complete record
    /// it holds (idempotent: entries sled already has are duplicates), makes sled durable,
    /// and empties it. A torn last record (a crash mid-append, never acknowledged) is dropped.
    pub fn with_wal(mut self, path: &std::path::Path) -> Result<Self, StoreError> {
        use std::io::{Read, Seek, SeekFrom};
        let io = |e: std::io::Error| StoreError::Corrupt { tree: "wal", detail: format!("{}: {e}", path.display()) };
        let mut file = std::fs::OpenOptions::new().create(true).read(true).append(true).open(path).map_err(io)?;
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.read_to_end(&mut bytes).map_err(io)?;
        let mut rest = bytes.as_slice();
        let mut replayed = 0usize;
        while rest.len() >= 12 {
            let len = u32::from_le_bytes(rest[..4].try_into().unwrap_or_default()) as usize;
            let Some(body) = rest.get(12..12 + len) else { break };
            if Sha256::digest(body)[..8] != rest[4..12] {
                break;
            }
            let record =
                WalRecord::decode(body).map_err(|e| StoreError::Corrupt { tree: "wal", detail: e.to_string() })?;
            let entries: Vec<Incoming> = record.entries.into_iter().map(Incoming::from).collect();
            self.apply(&record.device, &record.scope, &entries, record.replay_capacity)?;
            replayed += 1;
            rest = &rest[12 + len..];
        }
        self.seal()?;
        self.seal()?;
        file.set_len(0).map_err(io)?;
        file.sync_all().map_err(io)?;
        if replayed > 0 {
            tracing::info!(records = replayed, "re-applied acknowledged ingests from the write-ahead log");
        }
        self.wal = Some(std::sync::Arc::new(std::sync::Mutex::new(file)));
        Ok(self)
    }

    fn log(&self, device: &str, scope: &str, entries: &[Incoming], replay_capacity: u64) -> Result<(), StoreError> {
        use std::io::Write;
        let Some(wal) = &self.wal else { return Ok(()) };
        let record = WalRecord {
            device: device.to_owned(),
            scope: scope.to_owned(),
            replay_capacity,
            entries: entries.iter().map(WalEntry::from).collect(),
        };
        let body = record.encode_to_vec();
        let mut frame = Vec::with_capacity(body.len() + 12);
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&Sha256::digest(&body)[..8]);
        frame.extend_from_slice(&body);
        let io = |e: std::io::Error| StoreError::Corrupt { tree: "wal", detail: e.to_string() };
        let mut file = wal.lock().unwrap_or_else(|e| e.into_inner());
        if file.metadata().map_err(io)?.len() > WAL_ROTATE_BYTES {
            // Everything logged so far is in sled; make sled durable past it, then cut.
            self.seal()?;
            self.seal()?;
            file.set_len(0).map_err(io)?;
        }
        file.write_all(&frame).map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(())
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
    fn seal(&self) -> Result<(), StoreError> {
        self.db.insert(b"sealed", &self.db.generate_id()?.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// The highest seq stored from `device` (0 = none).
    pub fn acked_seq(&self, device: &str) -> Result<u64, StoreError> {
        Ok(self.acked.get(device)?.map(|v| id_of(&v)).unwrap_or(0))
    }

    /// A scope's bookkeeping (default for a scope never seen).
    pub fn meta(&self, scope: &str) -> Result<ScopeMeta, StoreError> {
        match self.scopes.get(scope)? {
            Some(bytes) => decode("scopes", &bytes),
            None => Ok(ScopeMeta::default()),
        }
    }

    /// Every scope with stored bookkeeping.
    pub fn scopes(&self) -> Result<Vec<String>, StoreError> {
        self.scopes.iter().keys().map(|k| Ok(String::from_utf8_lossy(&k?).into_owned())).collect()
    }

    /// The bookkeeping of the first `limit` scopes in scope order, and how many scopes there
    /// are in all (what `/metrics` labels by scope without an unbounded label set).
    pub fn first_metas(&self, limit: usize) -> Result<(Vec<(String, ScopeMeta)>, usize), StoreError> {
        let mut first = Vec::with_capacity(limit.min(1024));
        let mut total = 0;
        for entry in self.scopes.iter() {
            let (key, bytes) = entry?;
            if first.len() < limit {
                first.push((String::from_utf8_lossy(&key).into_owned(), decode("scopes", &bytes)?));
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
                let own = scope.strip_prefix("device:").map(str::to_owned);
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
                    scope,
                })
            })
            .collect()
    }

    /// Stores the entries of one request from `device` into `scope`: entries at or below the
    /// device's highest stored seq are duplicates; samples enter the queue and the replay
    /// buffer (evicting its oldest beyond `replay_capacity`), markers the queue. One sled
    /// transaction: all of it or nothing; on return it is on disk (in the write-ahead log when
    /// one is attached, else flushed in sled).
    pub fn ingest(
        &self,
        device: &str,
        scope: &str,
        entries: &[Incoming],
        replay_capacity: u64,
    ) -> Result<IngestOutcome, StoreError> {
        let _writes = write_guard();
        let outcome = self.apply(device, scope, entries, replay_capacity)?;
        if outcome.samples + outcome.batch_ends > 0 {
            self.log(device, scope, entries, replay_capacity)?;
        }
        if self.wal.is_none() {
            self.seal()?;
        }
        Ok(outcome)
    }

    fn apply(
        &self,
        device: &str,
        scope: &str,
        entries: &[Incoming],
        replay_capacity: u64,
    ) -> Result<IngestOutcome, StoreError> {
        let mut sorted: Vec<&Incoming> = entries.iter().collect();
        sorted.sort_by_key(|e| e.seq());
        let outcome =
            (&self.acked, &self.queue, &self.replay, &self.scopes).transaction(|(acked, queue, replay, scopes)| {
                let mut highest = acked.get(device)?.map(|v| id_of(&v)).unwrap_or(0);
                let mut meta: ScopeMeta = match scopes.get(scope)? {
                    Some(bytes) => decode("scopes", &bytes).map_err(abort)?,
                    None => ScopeMeta::default(),
                };
                let mut outcome = IngestOutcome::default();
                for entry in &sorted {
                    if entry.seq() <= highest {
                        outcome.duplicates += 1;
                        continue;
                    }
                    highest = entry.seq();
                    let record = match entry {
                        Incoming::Sample { input, .. } => {
                            replay.insert(key(scope, meta.replay_next), input.encode_to_vec())?;
                            meta.replay_next += 1;
                            while meta.replay_len() > replay_capacity {
                                replay.remove(key(scope, meta.replay_head))?;
                                meta.replay_head += 1;
                                outcome.replay_evicted += 1;
                            }
                            meta.queued_samples += 1;
                            outcome.samples += 1;
                            QueueEntry { sample: Some(input.clone()), ..QueueEntry::default() }
                        }
                        Incoming::BatchEnd { batch, statistics, batch_statistics, .. } => {
                            outcome.batch_ends += 1;
                            QueueEntry {
                                sample: None,
                                device: device.to_owned(),
                                batch: *batch,
                                statistics: statistics.clone(),
                                batch_statistics: batch_statistics.clone(),
                            }
                        }
                    };
                    queue.insert(key(scope, meta.queue_next), record.encode_to_vec())?;
                    meta.queue_next += 1;
                }
                acked.insert(device, &highest.to_be_bytes())?;
                scopes.insert(scope, meta.encode_to_vec())?;
                Ok(outcome)
            })?;
        Ok(outcome)
    }

    /// The queue of `scope` up to and including its first marker (empty if it holds no marker):
    /// what the engine processes next.
    pub fn next_round(&self, scope: &str) -> Result<Vec<(u64, QueueEntry)>, StoreError> {
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
    pub fn replay_samples(&self, scope: &str, ids: &[u64]) -> Result<Vec<v1::EncodedTensor>, StoreError> {
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

    /// A scope's adaptation state, if it has one.
    pub fn state(&self, scope: &str) -> Result<Option<ScopeState>, StoreError> {
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

    /// Commits one adaptation round atomically; returns the scope's meta after it.
    pub fn commit(&self, scope: &str, commit: &Commit, keep_versions: u64) -> Result<ScopeMeta, StoreError> {
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
                if let Some((id, device, batch)) = &commit.marker {
                    queue.remove(key(scope, *id))?;
                    meta.through.insert(device.clone(), *batch);
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

    /// A stored parameter version of a scope (the last `keep_versions` are kept).
    pub fn version(&self, scope: &str, version: u64) -> Result<Option<v1::NormParams>, StoreError> {
        self.versions.get(key(scope, version))?.map(|bytes| decode("versions", &bytes)).transpose()
    }

    /// The stored version numbers of a scope, oldest first.
    pub fn versions(&self, scope: &str) -> Result<Vec<u64>, StoreError> {
        self.versions.scan_prefix(prefix(scope)).keys().map(|k| Ok(id_of(&k?))).collect()
    }
}

impl Store {
    /// Makes a stored version's edge parameters the scope's state again, as a new version
    /// (the edge model's momentum is reset; the foundation model's state is kept). Returns the
    /// new version. Watchers receive it on their next connection.
    pub fn rollback(&self, scope: &str, version: u64) -> Result<u64, StoreError> {
        let meta = self.meta(scope)?;
        let wire = self.version(scope, version)?.ok_or_else(|| StoreError::Corrupt {
            tree: "versions",
            detail: format!("scope `{scope}` holds no version {version} (see `cema-cloud params list`)"),
        })?;
        let mut state = self.state(scope)?.ok_or_else(|| StoreError::Corrupt {
            tree: "states",
            detail: format!("scope `{scope}` has no adaptation state"),
        })?;
        state.student = cema_proto::norm_params_from_wire(wire)
            .map_err(|e| StoreError::Corrupt { tree: "versions", detail: e.to_string() })?;
        state.student.version = meta.version + 1;
        state.student_velocity.clear();
        let new = state.student.version;
        self.commit(scope, &Commit { state: Some(state), ..Commit::default() }, u64::MAX)?;
        Ok(new)
    }
}

fn state_record(state: &ScopeState, scope: &str) -> StateRecord {
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
