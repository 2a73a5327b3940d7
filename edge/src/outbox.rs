//! The durable outbox: selected samples and batch-end markers, with device sequence numbers,
//! written to sled (and flushed) before they count as selected; removed only when the cloud
//! acknowledges them as durable. Bounded by bytes and entries with an explicit policy when full.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use cema_proto::v1;
use prost::Message;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

/// What happens when a new batch's samples do not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Drop the oldest samples to make room (fresh data matters most under shift).
    DropOldest,
    /// Drop the new samples that do not fit.
    DropNewest,
    /// Refuse the batch; the caller waits for uploads to make room.
    Block,
}

/// Outbox bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Largest total encoded size of the held entries.
    pub max_bytes: u64,
    /// Most entries held.
    pub max_entries: u64,
    /// Policy when full.
    pub policy: FullPolicy,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        Self { max_bytes: 256 << 20, max_entries: 1_000_000, policy: FullPolicy::DropOldest }
    }
}

/// One outbox entry.
#[derive(Clone, PartialEq, Message)]
pub struct OutboxEntry {
    /// A selected sample.
    #[prost(message, optional, tag = "1")]
    pub sample: Option<v1::Sample>,
    /// A batch-end marker.
    #[prost(message, optional, tag = "2")]
    pub batch_end: Option<v1::BatchEnd>,
}

impl OutboxEntry {
    /// The entry's seq.
    pub fn seq(&self) -> u64 {
        self.sample.as_ref().map(|s| s.seq).or(self.batch_end.as_ref().map(|b| b.seq)).unwrap_or(0)
    }
}

/// Why the outbox refused.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// sled failed.
    #[error("outbox: {0}")]
    Sled(#[from] sled::Error),
    /// The outbox is full and the policy is `block`.
    #[error("outbox full ({entries} entries, {bytes} bytes) and the policy is `block`")]
    Full {
        /// Entries held.
        entries: u64,
        /// Bytes held.
        bytes: u64,
    },
    /// A stored record could not be read.
    #[error("outbox: corrupt record: {0}")]
    Corrupt(String),
}

impl From<TransactionError<OutboxError>> for OutboxError {
    fn from(e: TransactionError<OutboxError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => OutboxError::Sled(e),
        }
    }
}

/// What appending a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Appended {
    /// Seqs of the stored samples, in input order (`None` for a sample dropped as newest).
    pub sample_seqs: Vec<Option<u64>>,
    /// Seq of the batch-end marker.
    pub batch_end_seq: u64,
    /// Samples dropped to make room (oldest or newest).
    pub dropped: u64,
}

const NEXT_SEQ: &[u8] = b"next_seq";

/// What a batch's append keeps of its samples and evicts of the held ones.
struct Room {
    /// Per new sample, whether it is stored.
    keep_new: Vec<bool>,
    /// Held samples evicted (key, stored size).
    evict: Vec<(Vec<u8>, u64)>,
}

/// The outbox, in trees `outbox` and `agent` of the agent's sled database.
#[derive(Debug)]
pub struct Outbox {
    db: sled::Db,
    entries: sled::Tree,
    meta: sled::Tree,
    limits: OutboxLimits,
    usage: Mutex<(u64, u64)>,
    drops: AtomicU64,
}

fn seq_of(key: &[u8]) -> u64 {
    key.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

impl Outbox {
    /// Opens the outbox in `db`, counting what a previous run left.
    pub fn open(db: &sled::Db, limits: OutboxLimits) -> Result<Self, OutboxError> {
        let entries = db.open_tree("outbox")?;
        let meta = db.open_tree("agent")?;
        let mut usage = (0u64, 0u64);
        for item in entries.iter() {
            let (_, v) = item?;
            usage.0 += 1;
            usage.1 += v.len() as u64;
        }
        Ok(Self { db: db.clone(), entries, meta, limits, usage: Mutex::new(usage), drops: AtomicU64::new(0) })
    }

    /// (entries, bytes) held.
    pub fn usage(&self) -> (u64, u64) {
        *self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Samples dropped by the full policy since start.
    pub fn drops(&self) -> u64 {
        self.drops.load(Ordering::Relaxed)
    }

    /// The highest seq ever assigned.
    pub fn last_seq(&self) -> Result<u64, OutboxError> {
        Ok(self.meta.get(NEXT_SEQ)?.map(|v| seq_of(&v)).unwrap_or(1) - 1)
    }

    /// Stores one batch's selected samples (seqs assigned here) and its batch-end marker `end`
    /// (its seq assigned here too), plus `extra` agent-state records, in one transaction. When
    /// samples or first-batch statistics were stored, returns after they are on disk.
    pub fn append_batch(
        &self,
        samples: Vec<v1::Sample>,
        end: v1::BatchEnd,
        extra: &[(&[u8], Vec<u8>)],
    ) -> Result<Appended, OutboxError> {
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let sizes: Vec<u64> = samples.iter().map(|s| s.encoded_len() as u64 + 16).collect();
        let Room { keep_new, evict } = self.make_room(*usage, &sizes)?;
        let dropped = evict.len() as u64 + keep_new.iter().filter(|k| !**k).count() as u64;
        let outcome = (&self.entries, &self.meta).transaction(|(entries, meta)| {
            let mut next = meta.get(NEXT_SEQ)?.map(|v| seq_of(&v)).unwrap_or(1);
            let mut appended = Appended { dropped, ..Appended::default() };
            let mut added_bytes = 0u64;
            for (key, _) in &evict {
                entries.remove(key.as_slice())?;
            }
            for (sample, keep) in samples.iter().zip(&keep_new) {
                if !keep {
                    appended.sample_seqs.push(None);
                    continue;
                }
                let mut sample = sample.clone();
                sample.seq = next;
                let bytes = OutboxEntry { sample: Some(sample), batch_end: None }.encode_to_vec();
                added_bytes += bytes.len() as u64;
                entries.insert(&next.to_be_bytes(), bytes)?;
                appended.sample_seqs.push(Some(next));
                next += 1;
            }
            let end = v1::BatchEnd { seq: next, ..end.clone() };
            let bytes = OutboxEntry { sample: None, batch_end: Some(end) }.encode_to_vec();
            added_bytes += bytes.len() as u64;
            entries.insert(&next.to_be_bytes(), bytes)?;
            appended.batch_end_seq = next;
            next += 1;
            meta.insert(NEXT_SEQ, &next.to_be_bytes())?;
            for (key, value) in extra {
                meta.insert(*key, value.as_slice())?;
            }
            Ok::<_, ConflictableTransactionError<OutboxError>>((appended, added_bytes))
        })?;
        let (appended, added_bytes) = outcome;
        // Selected samples (and first-batch statistics, which the agent serves with) are on
        // disk before they count. A batch that selected nothing is left to sled's periodic flush: losing its marker to a crash only merges
        // that batch into the next one at the cloud.
        if appended.sample_seqs.iter().any(Option::is_some) || !evict.is_empty() || end.initial_statistics.is_some() {
            self.db.flush()?;
        }
        let kept = keep_new.iter().filter(|k| **k).count() as u64 + 1;
        usage.0 = usage.0 + kept - evict.len() as u64;
        usage.1 = usage.1 + added_bytes - evict.iter().map(|(_, n)| n).sum::<u64>();
        self.drops.fetch_add(dropped, Ordering::Relaxed);
        Ok(appended)
    }

    /// Which of the new samples (`sizes`, encoded) to keep and which held samples to evict,
    /// so that the outbox stays within its bounds under its full policy. `held` is
    /// (entries, bytes) held now.
    fn make_room(&self, held: (u64, u64), sizes: &[u64]) -> Result<Room, OutboxError> {
        let (held_entries, held_bytes) = held;
        let incoming_bytes: u64 = sizes.iter().sum();
        // `entries` excludes the batch-end marker every batch adds.
        let fits = |entries: u64, bytes: u64| entries < self.limits.max_entries && bytes <= self.limits.max_bytes;
        let mut room = Room { keep_new: vec![true; sizes.len()], evict: Vec::new() };
        if fits(held_entries + sizes.len() as u64, held_bytes + incoming_bytes) {
            return Ok(room);
        }
        match self.limits.policy {
            FullPolicy::Block => return Err(OutboxError::Full { entries: held_entries, bytes: held_bytes }),
            FullPolicy::DropNewest => {
                let (mut entries, mut bytes) = (held_entries, held_bytes);
                for (i, size) in sizes.iter().enumerate() {
                    if fits(entries + 1, bytes + size) {
                        entries += 1;
                        bytes += size;
                    } else {
                        room.keep_new[i] = false;
                    }
                }
            }
            FullPolicy::DropOldest => {
                let (mut entries, mut bytes) = (held_entries + sizes.len() as u64, held_bytes + incoming_bytes);
                for item in self.entries.iter() {
                    if fits(entries, bytes) {
                        break;
                    }
                    let (k, v) = item?;
                    let entry = OutboxEntry::decode(v.as_ref()).map_err(|e| OutboxError::Corrupt(e.to_string()))?;
                    if entry.sample.is_some() {
                        entries -= 1;
                        bytes -= v.len() as u64;
                        room.evict.push((k.to_vec(), v.len() as u64));
                    }
                }
                // Still too big: the batch alone exceeds the bounds; keep what fits.
                for (i, size) in sizes.iter().enumerate().rev() {
                    if fits(entries, bytes) {
                        break;
                    }
                    room.keep_new[i] = false;
                    entries -= 1;
                    bytes -= size;
                }
            }
        }
        Ok(room)
    }

    /// Entries with seq > `after`, in seq order, up to about `max_bytes` (at least one).
    pub fn pending(&self, after: u64, max_bytes: usize) -> Result<Vec<OutboxEntry>, OutboxError> {
        let mut out = Vec::new();
        let mut size = 0usize;
        for item in self.entries.range((after + 1).to_be_bytes()..) {
            let (_, v) = item?;
            if !out.is_empty() && size + v.len() > max_bytes {
                break;
            }
            size += v.len();
            out.push(OutboxEntry::decode(v.as_ref()).map_err(|e| OutboxError::Corrupt(e.to_string()))?);
        }
        Ok(out)
    }

    /// Removes acknowledged entries. Not flushed: losing a removal only causes a resend,
    /// which the cloud recognises as a duplicate.
    pub fn remove(&self, seqs: &[u64]) -> Result<(), OutboxError> {
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        for seq in seqs {
            if let Some(v) = self.entries.remove(seq.to_be_bytes())? {
                usage.0 = usage.0.saturating_sub(1);
                usage.1 = usage.1.saturating_sub(v.len() as u64);
            }
        }
        Ok(())
    }

    /// Removes every entry at or below `seq` (the cloud already holds them).
    pub fn remove_through(&self, seq: u64) -> Result<u64, OutboxError> {
        let keys: Vec<u64> =
            self.entries.range(..=seq.to_be_bytes()).keys().map(|k| k.map(|k| seq_of(&k))).collect::<Result<_, _>>()?;
        self.remove(&keys)?;
        Ok(keys.len() as u64)
    }
}
