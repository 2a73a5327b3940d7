//! The outbox on a real sled database: seqs, durability across reopen, and each full policy.
#![allow(clippy::unwrap_used)] // a failing test should panic where it fails

use cema_core::codec::{self, Compression};
use cema_edge::outbox::{FullPolicy, Outbox, OutboxError, OutboxLimits};
use cema_proto::v1;

fn sample(id: u8) -> v1::Sample {
    let pixels = vec![id; 784];
    let encoded = codec::encode_u8(&[1, 28, 28], &pixels, Compression::None).unwrap();
    v1::Sample {
        seq: 0,
        input: Some(cema_proto::sample_to_wire(&encoded)),
        entropy: 0.1,
        params_version: 0,
        predicted_class: 0,
    }
}

/// The batch-end marker of batch `batch` (64 predictions); the outbox assigns its seq.
fn end(batch: u64) -> v1::BatchEnd {
    v1::BatchEnd { batch, predicted: 64, ..Default::default() }
}

fn held_ids(outbox: &Outbox) -> Vec<u8> {
    outbox
        .pending(0, usize::MAX)
        .unwrap()
        .iter()
        .filter_map(|e| e.sample.as_ref())
        .map(|s| s.input.as_ref().unwrap().data[0])
        .collect()
}

fn limits(policy: FullPolicy) -> OutboxLimits {
    // Room for 6 entries: e.g. five samples and a batch end.
    OutboxLimits { max_bytes: u64::MAX, max_entries: 6, policy }
}

#[test]
fn seqs_are_assigned_in_order_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        let outbox = Outbox::open(&db, OutboxLimits::default()).unwrap();
        let a = outbox.append_batch(vec![sample(1), sample(2)], end(1), &[]).unwrap();
        assert_eq!(a.sample_seqs, [Some(1), Some(2)]);
        assert_eq!(a.batch_end_seq, 3);
        let b = outbox.append_batch(vec![], end(2), &[]).unwrap();
        assert_eq!(b.batch_end_seq, 4);
        outbox.remove(&[1]).unwrap();
        db.flush().unwrap();
    }
    let db = sled::open(dir.path()).unwrap();
    let outbox = Outbox::open(&db, OutboxLimits::default()).unwrap();
    let seqs: Vec<u64> = outbox.pending(0, usize::MAX).unwrap().iter().map(|e| e.seq()).collect();
    assert_eq!(seqs, [2, 3, 4]);
    assert_eq!(outbox.usage().0, 3);
    assert_eq!(outbox.append_batch(vec![sample(9)], end(3), &[]).unwrap().sample_seqs, [Some(5)], "seqs continue");
    assert_eq!(outbox.remove_through(4).unwrap(), 3);
    assert_eq!(outbox.usage().0, 2);
}

#[test]
fn drop_oldest_evicts_the_oldest_samples_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let outbox = Outbox::open(&db, limits(FullPolicy::DropOldest)).unwrap();
    outbox.append_batch(vec![sample(1), sample(2), sample(3)], end(1), &[]).unwrap(); // 4 entries
    let appended = outbox.append_batch(vec![sample(4), sample(5)], end(2), &[]).unwrap(); // needs 3 more
    assert_eq!(appended.dropped, 1);
    assert_eq!(held_ids(&outbox), [2, 3, 4, 5]);
    assert_eq!(outbox.usage().0, 6);
    assert_eq!(outbox.drops(), 1);
}

#[test]
fn drop_newest_keeps_what_is_held_and_drops_what_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let outbox = Outbox::open(&db, limits(FullPolicy::DropNewest)).unwrap();
    outbox.append_batch(vec![sample(1), sample(2), sample(3)], end(1), &[]).unwrap();
    let appended = outbox.append_batch(vec![sample(4), sample(5)], end(2), &[]).unwrap();
    assert_eq!(appended.sample_seqs, [Some(5), None]);
    assert_eq!(appended.dropped, 1);
    assert_eq!(held_ids(&outbox), [1, 2, 3, 4]);
    assert_eq!(outbox.drops(), 1);
}

#[test]
fn block_refuses_the_batch_and_stores_nothing_until_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let outbox = Outbox::open(&db, limits(FullPolicy::Block)).unwrap();
    outbox.append_batch(vec![sample(1), sample(2), sample(3)], end(1), &[]).unwrap();
    let refused = outbox.append_batch(vec![sample(4), sample(5)], end(2), &[]);
    assert!(matches!(refused, Err(OutboxError::Full { entries: 4, .. })), "{refused:?}");
    assert_eq!(held_ids(&outbox), [1, 2, 3]);
    assert_eq!(outbox.last_seq().unwrap(), 4, "no seq consumed by the refused batch");
    outbox.remove(&[1, 2]).unwrap();
    let appended = outbox.append_batch(vec![sample(4), sample(5)], end(2), &[]).unwrap();
    assert_eq!(appended.sample_seqs, [Some(5), Some(6)]);
    assert_eq!(outbox.drops(), 0);
}
