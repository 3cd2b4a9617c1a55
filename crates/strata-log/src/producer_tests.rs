//! Idempotent-producer checks of the partition log: sequences, epochs, duplicates, the
//! snapshot and rebuild at start-up, and expiry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use strata_protocol::batch::test_util::simple_batch;
use strata_protocol::batch::{self, HeaderIter};

use crate::tests::{metrics, open, small, sync};
use crate::{
    AppendInfo, LogConfig, LogError, Partition, ProducerError, ProducerInfo, Result, TailCache,
};

/// A batch of `n` records from producer `pid` (epoch `epoch`) starting at sequence `seq`,
/// with record timestamps from `ts`.
fn idem_at(pid: i64, epoch: i16, seq: i32, n: usize, ts: i64) -> Vec<u8> {
    let mut b = simple_batch(n, ts);
    b[43..51].copy_from_slice(&pid.to_be_bytes());
    b[51..53].copy_from_slice(&epoch.to_be_bytes());
    b[53..57].copy_from_slice(&seq.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

fn idem(pid: i64, epoch: i16, seq: i32, n: usize) -> Vec<u8> {
    idem_at(pid, epoch, seq, n, 1000)
}

fn produce_at(p: &Partition, records: &[u8], now: i64) -> Result<AppendInfo> {
    let headers = batch::validate_all(records).unwrap();
    p.append(records, &headers, 0, now)
}

fn produce(p: &Partition, records: &[u8]) -> Result<AppendInfo> {
    produce_at(p, records, 1000)
}

/// Offsets of an append that must have been written.
fn written(info: Result<AppendInfo>) -> (i64, i64) {
    let info = info.unwrap();
    assert!(
        !info.duplicate,
        "expected a write, got a duplicate: {info:?}"
    );
    (info.base_offset, info.last_offset)
}

/// Offsets of an append that must have been recognised as a retry.
fn duplicate(info: Result<AppendInfo>) -> (i64, i64) {
    let info = info.unwrap();
    assert!(
        info.duplicate,
        "expected a duplicate, got a write: {info:?}"
    );
    (info.base_offset, info.last_offset)
}

fn producer_error(info: Result<AppendInfo>) -> ProducerError {
    match info {
        Err(LogError::Producer(e)) => e,
        other => panic!("expected a producer error, got {other:?}"),
    }
}

fn open_at(dir: &Path, config: LogConfig, now: i64) -> Partition {
    Partition::open(
        dir.to_path_buf(),
        "t".into(),
        0,
        config,
        metrics(),
        TailCache::new(0),
        now,
    )
    .unwrap()
}

#[tokio::test]
async fn in_sequence_batches_append_and_a_retry_returns_the_original_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), LogConfig::default());
    assert_eq!(written(produce(&p, &idem(7, 0, 0, 3))), (0, 2));
    assert_eq!(written(produce(&p, &idem(8, 0, 0, 1))), (3, 3));
    assert_eq!(written(produce(&p, &idem(7, 0, 3, 2))), (4, 5));

    // Retries of either batch: nothing written, the original offsets come back.
    assert_eq!(duplicate(produce(&p, &idem(7, 0, 0, 3))), (0, 2));
    assert_eq!(duplicate(produce(&p, &idem(7, 0, 3, 2))), (4, 5));
    assert_eq!(duplicate(produce(&p, &idem(8, 0, 0, 1))), (3, 3));
    assert_eq!(p.offsets().log_end, 6);
    sync(&p).await;
    let stored: Vec<i64> = HeaderIter::new(&p.read(0, 1 << 20, true).unwrap().records)
        .map(|(_, h)| h.base_offset)
        .collect();
    assert_eq!(stored, vec![0, 3, 4]);

    // The sequence goes on after the retries.
    assert_eq!(written(produce(&p, &idem(7, 0, 5, 1))), (6, 6));
    assert_eq!(
        p.producers(),
        vec![
            ProducerInfo {
                producer_id: 7,
                epoch: 0,
                last_sequence: 5,
                last_timestamp: 1000,
                txn_start_offset: -1,
            },
            ProducerInfo {
                producer_id: 8,
                epoch: 0,
                last_sequence: 0,
                last_timestamp: 1000,
                txn_start_offset: -1,
            },
        ]
    );
}

#[test]
fn a_gap_in_the_sequence_is_out_of_order_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), LogConfig::default());
    written(produce(&p, &idem(7, 0, 0, 2)));
    assert_eq!(
        producer_error(produce(&p, &idem(7, 0, 3, 1))),
        ProducerError::OutOfOrderSequence {
            producer_id: 7,
            epoch: 0,
            first_sequence: 3,
            expected_sequence: 2,
        }
    );
    // A batch overlapping the last one without matching it is out of order too.
    assert!(matches!(
        producer_error(produce(&p, &idem(7, 0, 1, 2))),
        ProducerError::OutOfOrderSequence { .. }
    ));
    assert_eq!(p.offsets().log_end, 2);
    assert_eq!(written(produce(&p, &idem(7, 0, 2, 1))), (2, 2));
}

#[test]
fn a_lower_epoch_is_fenced_and_a_new_epoch_starts_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), LogConfig::default());
    written(produce(&p, &idem(7, 1, 0, 2)));
    assert_eq!(
        producer_error(produce(&p, &idem(7, 0, 2, 1))),
        ProducerError::InvalidProducerEpoch {
            producer_id: 7,
            epoch: 0,
            current_epoch: 1,
        }
    );
    // A bumped epoch must restart the sequence.
    assert_eq!(
        producer_error(produce(&p, &idem(7, 2, 2, 1))),
        ProducerError::OutOfOrderSequence {
            producer_id: 7,
            epoch: 2,
            first_sequence: 2,
            expected_sequence: 0,
        }
    );
    assert_eq!(p.offsets().log_end, 2);
    assert_eq!(written(produce(&p, &idem(7, 2, 0, 1))), (2, 2));
    // The old epoch is now fenced, and its batches are no longer duplicates.
    assert!(matches!(
        producer_error(produce(&p, &idem(7, 1, 0, 2))),
        ProducerError::InvalidProducerEpoch {
            current_epoch: 2,
            ..
        }
    ));
    assert_eq!(p.producers()[0].epoch, 2);
}

#[test]
fn an_unknown_producer_is_accepted_at_any_sequence() {
    // Current Kafka (since KIP-360) accepts the first batch of a producer it has no state
    // for at any sequence; it no longer answers UNKNOWN_PRODUCER_ID.
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), LogConfig::default());
    assert_eq!(written(produce(&p, &idem(9, 3, 42, 2))), (0, 1));
    assert_eq!(written(produce(&p, &idem(9, 3, 44, 1))), (2, 2));
    assert!(matches!(
        producer_error(produce(&p, &idem(9, 3, 50, 1))),
        ProducerError::OutOfOrderSequence {
            expected_sequence: 45,
            ..
        }
    ));
}

#[test]
fn non_idempotent_batches_are_never_checked() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), LogConfig::default());
    let plain = simple_batch(2, 0);
    assert_eq!(written(produce(&p, &plain)), (0, 1));
    assert_eq!(written(produce(&p, &plain)), (2, 3));
    // Sequence fields are ignored without a producer id.
    let mut odd = idem(-1, 5, 77, 1);
    assert_eq!(written(produce(&p, &odd)), (4, 4));
    odd = idem(-1, 0, -1, 1);
    assert_eq!(written(produce(&p, &odd)), (5, 5));
    assert!(p.producers().is_empty());
}

#[test]
fn an_idempotent_batch_needs_a_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), LogConfig::default());
    assert_eq!(
        producer_error(produce(&p, &idem(4, 0, -1, 1))),
        ProducerError::InvalidSequence {
            producer_id: 4,
            base_sequence: -1,
        }
    );
    assert_eq!(p.offsets().log_end, 0);
}

#[test]
fn sequences_wrap_at_i32_max() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), LogConfig::default());
    let max = i32::MAX;
    written(produce(&p, &idem(1, 0, max - 4, 3))); // max-4 ..= max-2
    assert_eq!(written(produce(&p, &idem(1, 0, max - 1, 3))), (3, 5)); // max-1, max, 0
    assert_eq!(p.producers()[0].last_sequence, 0);
    assert_eq!(duplicate(produce(&p, &idem(1, 0, max - 1, 3))), (3, 5));
    assert_eq!(written(produce(&p, &idem(1, 0, 1, 2))), (6, 7));

    // A batch ending exactly at i32::MAX is followed by 0.
    written(produce(&p, &idem(2, 0, max, 1)));
    assert!(matches!(
        producer_error(produce(&p, &idem(2, 0, max.wrapping_add(1), 1))),
        ProducerError::InvalidSequence { .. }
    ));
    assert_eq!(written(produce(&p, &idem(2, 0, 0, 1))), (9, 9));
}

#[test]
fn only_the_last_five_batches_are_recognised_as_retries() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), LogConfig::default());
    for seq in 0..6 {
        written(produce(&p, &idem(7, 0, seq, 1)));
    }
    // The 6th-last batch has left the window: its retry is out of order, as in Kafka.
    assert_eq!(
        producer_error(produce(&p, &idem(7, 0, 0, 1))),
        ProducerError::OutOfOrderSequence {
            producer_id: 7,
            epoch: 0,
            first_sequence: 0,
            expected_sequence: 6,
        }
    );
    for seq in 1..6 {
        assert_eq!(
            duplicate(produce(&p, &idem(7, 0, seq, 1))),
            (i64::from(seq), i64::from(seq))
        );
    }
    assert_eq!(p.offsets().log_end, 6);
}

#[test]
fn batches_of_one_append_are_checked_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), LogConfig::default());
    let mut two = idem(7, 0, 0, 2);
    two.extend(idem(7, 0, 2, 3));
    assert_eq!(written(produce(&p, &two)), (0, 4));
    assert_eq!(duplicate(produce(&p, &idem(7, 0, 2, 3))), (2, 4));
    assert_eq!(duplicate(produce(&p, &idem(7, 0, 0, 2))), (0, 1));

    // A gap inside one append refuses all of it.
    let mut gap = idem(7, 0, 5, 1);
    gap.extend(idem(7, 0, 7, 1));
    assert!(matches!(
        producer_error(produce(&p, &gap)),
        ProducerError::OutOfOrderSequence {
            first_sequence: 7,
            expected_sequence: 6,
            ..
        }
    ));
    assert_eq!(p.offsets().log_end, 5);
    assert_eq!(p.producers()[0].last_sequence, 4);
}

/// How a test damages the producer snapshots before reopening.
#[derive(Debug, Clone, Copy)]
enum Damage {
    None,
    DeleteNewest,
    DeleteAll,
    CorruptNewest,
    CorruptAll,
    TruncateAll,
}

fn snapshot_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "producers"))
        .collect();
    files.sort();
    files
}

/// Producer 1 writes four batches, two per segment, then producer 2 two more, so the
/// layout is: [1:s0 1:s1] [1:s2 1:s3] [2:s0 2:s1 (active)]. The newest snapshot (of the
/// second segment) holds producer 1's whole window; producer 2 lives only in the active
/// segment. After the damage the partition is reopened much later.
async fn reopen_after(damage: Damage) {
    let dir = tempfile::tempdir().unwrap();
    let config = small(idem(1, 0, 0, 2).len() as u64 * 2);
    {
        let p = open_at(dir.path(), config.clone(), 0);
        for seq in 0..4 {
            written(produce_at(&p, &idem_at(1, 0, seq * 2, 2, 1000), 1000));
        }
        written(produce_at(&p, &idem_at(2, 0, 0, 1, 1000), 1000));
        written(produce_at(&p, &idem_at(2, 0, 1, 1, 1000), 1000));
        sync(&p).await;
        assert_eq!(p.segments().len(), 3);
    }
    let snapshots = snapshot_files(dir.path());
    assert_eq!(snapshots.len(), 2, "one snapshot per sealed segment");
    match damage {
        Damage::None => {}
        Damage::DeleteNewest => std::fs::remove_file(&snapshots[1]).unwrap(),
        Damage::DeleteAll => snapshots
            .iter()
            .for_each(|s| std::fs::remove_file(s).unwrap()),
        Damage::CorruptNewest | Damage::CorruptAll => {
            let which = if matches!(damage, Damage::CorruptAll) {
                &snapshots[..]
            } else {
                &snapshots[1..]
            };
            for s in which {
                let mut data = std::fs::read(s).unwrap();
                let mid = data.len() / 2;
                data[mid] ^= 0x40;
                std::fs::write(s, data).unwrap();
            }
        }
        Damage::TruncateAll => {
            for s in &snapshots {
                let data = std::fs::read(s).unwrap();
                std::fs::write(s, &data[..data.len() - 3]).unwrap();
            }
        }
    }

    let later = 100_000_000;
    let p = open_at(dir.path(), config, later);
    assert_eq!(p.offsets().log_end, 10, "{damage:?}");
    // Retries of each producer's last batch, and of an older one in the window, are
    // recognised with their original offsets.
    assert_eq!(
        duplicate(produce_at(&p, &idem(1, 0, 6, 2), later)),
        (6, 7),
        "{damage:?}"
    );
    assert_eq!(duplicate(produce_at(&p, &idem(1, 0, 2, 2), later)), (2, 3));
    assert_eq!(duplicate(produce_at(&p, &idem(2, 0, 1, 1), later)), (9, 9));
    assert_eq!(p.offsets().log_end, 10);
    assert!(matches!(
        producer_error(produce_at(&p, &idem(1, 0, 9, 1), later)),
        ProducerError::OutOfOrderSequence {
            expected_sequence: 8,
            ..
        }
    ));
    let producers = p.producers();
    assert_eq!(
        producers
            .iter()
            .map(|i| (i.producer_id, i.last_sequence))
            .collect::<Vec<_>>(),
        vec![(1, 7), (2, 1)],
        "{damage:?}"
    );

    // Idleness: the snapshot remembers when producer 1 was really last seen (t=1000), so
    // it is already idle; state replayed from the log counts as seen at the reopen.
    let expired = p.expire_producers(later, 1_000_000);
    let expected = usize::from(matches!(damage, Damage::None));
    assert_eq!(expired, expected, "{damage:?}");

    // Both producers go on with their next sequence (producer 1 if still known).
    if expired == 0 {
        assert_eq!(written(produce_at(&p, &idem(1, 0, 8, 1), later)), (10, 10));
    }
    written(produce_at(&p, &idem(2, 0, 2, 1), later));
}

#[tokio::test]
async fn reopen_with_snapshots_still_recognises_retries() {
    reopen_after(Damage::None).await;
}

#[tokio::test]
async fn reopen_falls_back_to_an_older_snapshot_and_walks_the_segments_after_it() {
    // The second segment is trusted through its index files, so it is not scanned by
    // recovery; its batches must still reach the producer state.
    reopen_after(Damage::DeleteNewest).await;
    reopen_after(Damage::CorruptNewest).await;
}

#[tokio::test]
async fn reopen_without_a_usable_snapshot_rebuilds_from_the_log() {
    reopen_after(Damage::DeleteAll).await;
    reopen_after(Damage::CorruptAll).await;
    reopen_after(Damage::TruncateAll).await;
}

#[tokio::test]
async fn unusable_and_stray_snapshots_are_removed_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(idem(1, 0, 0, 1).len() as u64 * 2);
    {
        let p = open(dir.path(), config.clone());
        for seq in 0..5 {
            written(produce(&p, &idem(1, 0, seq, 1)));
        }
        sync(&p).await;
    }
    let snapshots = snapshot_files(dir.path());
    assert_eq!(snapshots.len(), 2);
    std::fs::write(&snapshots[1], b"garbage").unwrap();
    let stray = dir.path().join(format!("{:020}.producers", 999));
    std::fs::copy(&snapshots[0], &stray).unwrap();
    let p = open(dir.path(), config);
    assert_eq!(snapshot_files(dir.path()), vec![snapshots[0].clone()]);
    assert_eq!(duplicate(produce(&p, &idem(1, 0, 4, 1))), (4, 4));
}

#[tokio::test]
async fn deleting_segments_deletes_their_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(idem(1, 0, 0, 1).len() as u64 * 2);
    let p = open(dir.path(), config.clone());
    for seq in 0..7 {
        written(produce(&p, &idem(1, 0, seq, 1)));
    }
    sync(&p).await;
    let bases: Vec<i64> = p.segments().iter().map(|s| s.base_offset).collect();
    assert_eq!(bases, vec![0, 2, 4, 6]);
    assert_eq!(snapshot_files(dir.path()).len(), 3);
    assert_eq!(p.advance_log_start(4, 0).unwrap(), 2);
    assert_eq!(
        snapshot_files(dir.path()),
        vec![dir.path().join(format!("{:020}.producers", 4))]
    );
    // The state in memory is untouched, and so is the snapshot-based one after a restart.
    assert_eq!(duplicate(produce(&p, &idem(1, 0, 6, 1))), (6, 6));
    drop(p);
    let p = open(dir.path(), config);
    assert_eq!(duplicate(produce(&p, &idem(1, 0, 6, 1))), (6, 6));
    assert_eq!(written(produce(&p, &idem(1, 0, 7, 1))), (7, 7));
}

#[test]
fn expiry_forgets_idle_producers_only() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), LogConfig::default());
    let idle = 60_000;
    written(produce_at(&p, &idem_at(1, 0, 0, 1, 1_000), 1_000));
    written(produce_at(&p, &idem_at(2, 0, 0, 1, 30_000), 30_000));
    // Producer 3 writes old timestamps: its broker-side activity keeps it.
    written(produce_at(&p, &idem_at(3, 0, 0, 1, 0), 50_000));

    assert_eq!(p.expire_producers(1_000 + idle - 1, idle), 0);
    assert_eq!(p.expire_producers(1_000 + idle, idle), 1);
    let ids: Vec<i64> = p.producers().iter().map(|i| i.producer_id).collect();
    assert_eq!(ids, vec![2, 3]);
    // The survivors keep their duplicate detection.
    assert_eq!(
        duplicate(produce_at(&p, &idem_at(2, 0, 0, 1, 30_000), 61_000)),
        (1, 1)
    );
    assert_eq!(
        duplicate(produce_at(&p, &idem_at(3, 0, 0, 1, 0), 61_000)),
        (2, 2)
    );
    // A forgotten producer is new again: accepted at whatever sequence it continues with.
    assert_eq!(
        written(produce_at(&p, &idem_at(1, 0, 1, 1, 61_000), 61_000)),
        (3, 3)
    );
    // Negative disables expiry.
    assert_eq!(p.expire_producers(i64::MAX, -1), 0);
    assert_eq!(p.expire_producers(i64::MAX, idle), 3);
    assert!(p.producers().is_empty());
}

#[tokio::test]
async fn a_snapshot_ahead_of_its_damaged_segment_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let batch_len = idem(1, 0, 0, 2).len();
    let config = small(batch_len as u64 * 2);
    {
        let p = open(dir.path(), config.clone());
        for seq in 0..4 {
            written(produce(&p, &idem(1, 0, seq * 2, 2)));
        }
        written(produce(&p, &idem(2, 0, 0, 1)));
        sync(&p).await;
    }
    // The second segment loses its indexes and its last batch (producer 1's seq 6..7) is
    // damaged, so recovery scans it and finds the damage (offsets 6 and 7 stay taken:
    // they are not handed out again). Its snapshot still remembers the batch.
    let stem = dir.path().join(format!("{:020}", 4));
    std::fs::remove_file(stem.with_extension("index")).unwrap();
    std::fs::remove_file(stem.with_extension("timeindex")).unwrap();
    let mut data = std::fs::read(stem.with_extension("log")).unwrap();
    data[batch_len + 40] ^= 0xff;
    std::fs::write(stem.with_extension("log"), data).unwrap();

    let p = open(dir.path(), config);
    assert_eq!(p.segments()[1].next_offset, 8);
    assert!(matches!(
        p.read(6, 1 << 20, true),
        Err(crate::LogError::Corrupt { .. })
    ));
    // The lost batch is not answered as a duplicate at offsets that no longer hold it:
    // the producer's state was rebuilt from what the log really has.
    assert_eq!(written(produce(&p, &idem(1, 0, 6, 2))), (9, 10));
    assert_eq!(duplicate(produce(&p, &idem(1, 0, 4, 2))), (4, 5));
    assert_eq!(duplicate(produce(&p, &idem(2, 0, 0, 1))), (8, 8));
}
