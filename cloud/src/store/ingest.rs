//! Ingest: one request's entries into a scope's queue and replay buffer, and the write-ahead
//! log that makes them durable before the acknowledgement
//! (`docs/decisions/wal-over-sled-flush.md`).

use cema_proto::v1;
use prost::Message;
use sha2::{Digest, Sha256};
use sled::transaction::Transactional;

use super::{QueueEntry, ScopeMeta, Store, StoreError, abort, decode, id_of, key, write_guard};
use crate::scope::ScopeId;

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
        /// What the edge served for the batch, and whether it detected drift.
        outcome: Option<v1::BatchOutcome>,
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
    #[prost(message, optional, tag = "6")]
    outcome: Option<v1::BatchOutcome>,
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
                outcome: e.outcome,
            },
        }
    }
}

impl From<&Incoming> for WalEntry {
    fn from(e: &Incoming) -> Self {
        match e {
            Incoming::Sample { seq, input } => {
                WalEntry { seq: *seq, sample: Some(input.clone()), ..WalEntry::default() }
            }
            Incoming::BatchEnd { seq, batch, statistics, batch_statistics, outcome } => WalEntry {
                seq: *seq,
                sample: None,
                batch: *batch,
                statistics: statistics.clone(),
                batch_statistics: batch_statistics.clone(),
                outcome: *outcome,
            },
        }
    }
}

/// The WAL is cut back to empty once it grows past this (after sled is flushed).
const WAL_ROTATE_BYTES: u64 = 64 << 20;

impl Store {
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

    /// Stores the entries of one request from `device` into `scope`: entries at or below the
    /// device's highest stored seq are duplicates; samples enter the queue and the replay
    /// buffer (evicting its oldest beyond `replay_capacity`), markers the queue. One sled
    /// transaction: all of it or nothing; on return it is on disk (in the write-ahead log when
    /// one is attached, else flushed in sled).
    pub fn ingest(
        &self,
        device: &str,
        scope: &ScopeId,
        entries: &[Incoming],
        replay_capacity: u64,
    ) -> Result<IngestOutcome, StoreError> {
        let scope = scope.to_string();
        let scope = scope.as_str();
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
        let received_unix_ms = super::unix_ms();
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
                            QueueEntry {
                                sample: Some(input.clone()),
                                device: device.to_owned(),
                                seq: entry.seq(),
                                received_unix_ms,
                                ..QueueEntry::default()
                            }
                        }
                        Incoming::BatchEnd { batch, statistics, batch_statistics, outcome: batch_outcome, .. } => {
                            outcome.batch_ends += 1;
                            if batch_outcome.is_some_and(|o| o.drift) {
                                meta.drift_requests += 1;
                            }
                            QueueEntry {
                                sample: None,
                                device: device.to_owned(),
                                batch: *batch,
                                statistics: statistics.clone(),
                                batch_statistics: batch_statistics.clone(),
                                received_unix_ms,
                                seq: entry.seq(),
                                outcome: *batch_outcome,
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
}
