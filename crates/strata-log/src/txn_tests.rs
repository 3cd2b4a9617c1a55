//! Transactions in the partition log: open transactions bound the last stable offset,
//! markers end them, aborted ones are listed for read_committed fetches, and all of it is
//! rebuilt after a restart (from the segments, and from the sealed segments' snapshots).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use strata_protocol::batch::test_util::{simple_batch, txn_batch};
use strata_protocol::batch::{self, ControlType, HeaderIter};

use crate::tests::{open, small, sync};
use crate::{AbortedTxn, LogConfig, LogError, Partition, ProducerError};

fn append(p: &Partition, records: &[u8]) -> i64 {
    let headers = batch::validate_all(records).unwrap();
    p.append(records, &headers, 0, 1000).unwrap().base_offset
}

fn marker(p: &Partition, pid: i64, epoch: i16, control: ControlType) -> i64 {
    p.append_marker(pid, epoch, control, 0, 0, 1000)
        .unwrap()
        .base_offset
}

/// (base offset, record count, is a marker) of each batch a read_committed read returns.
fn committed_read(p: &Partition, from: i64) -> Vec<(i64, i32, bool)> {
    let r = p
        .read_with(from, 1 << 20, true, crate::Upto::LastStable, false)
        .unwrap();
    HeaderIter::new(&r.records)
        .map(|(_, h)| (h.base_offset, h.record_count, h.is_control()))
        .collect()
}

/// Two producers interleave: 1 commits, 2 aborts. Returns the partition after it all.
async fn two_transactions(p: &Partition) {
    assert_eq!(append(p, &simple_batch(2, 0)), 0); // 0-1, not transactional
    assert_eq!(append(p, &txn_batch(1, 0, 0, 3)), 2); // 2-4, txn of 1
    assert_eq!(append(p, &txn_batch(2, 5, 0, 2)), 5); // 5-6, txn of 2
    sync(p).await;
    let o = p.offsets();
    assert_eq!((o.high_watermark, o.last_stable), (7, 2));
    // read_committed stops before the first open transaction.
    assert_eq!(committed_read(p, 0), vec![(0, 2, false)]);
    assert_eq!(p.producers()[0].txn_start_offset, 2);

    assert_eq!(marker(p, 1, 0, ControlType::Commit), 7);
    assert_eq!(append(p, &txn_batch(2, 5, 2, 1)), 8); // 8, still 2's txn
    sync(p).await;
    assert_eq!(p.offsets().last_stable, 5, "2's transaction is still open");

    assert_eq!(marker(p, 2, 5, ControlType::Abort), 9);
    sync(p).await;
    let o = p.offsets();
    assert_eq!((o.high_watermark, o.last_stable), (10, 10));
}

const ABORTED: AbortedTxn = AbortedTxn {
    producer_id: 2,
    first_offset: 5,
    last_offset: 9,
};

#[tokio::test]
async fn open_transactions_bound_the_last_stable_offset_and_aborts_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), LogConfig::default());
    two_transactions(&p).await;

    assert_eq!(
        committed_read(&p, 0),
        vec![
            (0, 2, false),
            (2, 3, false),
            (5, 2, false),
            (7, 1, true),
            (8, 1, false),
            (9, 1, true)
        ]
    );
    assert_eq!(p.aborted_transactions(0, 10), vec![ABORTED]);
    assert_eq!(p.aborted_transactions(9, 10), vec![ABORTED]);
    assert_eq!(
        p.aborted_transactions(10, 20),
        vec![],
        "marker before the range"
    );
    assert_eq!(
        p.aborted_transactions(0, 5),
        vec![],
        "first record after the range"
    );
    assert!(p.producers().iter().all(|i| i.txn_start_offset == -1));
}

#[tokio::test]
async fn transactions_are_rebuilt_after_a_restart() {
    for roll in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let config = if roll {
            small(150)
        } else {
            LogConfig::default()
        };
        {
            let p = open(dir.path(), config.clone());
            two_transactions(&p).await;
            // A third transaction stays open across the restart.
            assert_eq!(append(&p, &txn_batch(3, 0, 0, 1)), 10);
            sync(&p).await;
            if roll {
                assert!(
                    p.segments().len() > 2,
                    "small segments: snapshots are written"
                );
            }
        }
        let p = open(dir.path(), config);
        assert_eq!(p.aborted_transactions(0, 11), vec![ABORTED], "roll={roll}");
        let o = p.offsets();
        assert_eq!((o.log_end, o.last_stable), (11, 10), "roll={roll}");
        // The producer of the open transaction can still end it.
        assert_eq!(marker(&p, 3, 0, ControlType::Abort), 11);
        sync(&p).await;
        assert_eq!(p.offsets().last_stable, 12);
        assert_eq!(p.aborted_transactions(10, 12).len(), 1);
    }
}

#[tokio::test]
async fn a_marker_from_an_older_epoch_is_refused_and_a_newer_one_restarts_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), LogConfig::default());
    append(&p, &txn_batch(1, 3, 0, 2));
    let err = p
        .append_marker(1, 2, ControlType::Commit, 0, 0, 1000)
        .unwrap_err();
    assert!(
        matches!(
            err,
            LogError::Producer(ProducerError::InvalidProducerEpoch {
                epoch: 2,
                current_epoch: 3,
                ..
            })
        ),
        "{err:?}"
    );
    // The coordinator fences the producer: abort with a bumped epoch.
    assert_eq!(marker(&p, 1, 4, ControlType::Abort), 2);
    // The new instance starts its sequence over at the new epoch; the old one is fenced.
    append(&p, &txn_batch(1, 4, 0, 1));
    let old = txn_batch(1, 3, 2, 1);
    let headers = batch::validate_all(&old).unwrap();
    assert!(p.append(&old, &headers, 0, 1000).is_err());
    // A marker for a producer the partition never saw is written and changes nothing.
    assert_eq!(marker(&p, 99, 0, ControlType::Commit), 4);
    sync(&p).await;
    assert_eq!(p.offsets().last_stable, 3, "1's new transaction is open");
}

#[tokio::test]
async fn the_last_stable_offset_never_falls_below_the_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), small(150));
    append(&p, &txn_batch(1, 0, 0, 3)); // 0-2, left open
    append(&p, &simple_batch(4, 0)); // 3-6
    sync(&p).await;
    assert_eq!(p.offsets().last_stable, 0);
    p.advance_log_start(5, 1000).unwrap();
    assert_eq!(p.offsets().last_stable, 5);
}

#[tokio::test]
async fn aborted_transactions_below_the_log_start_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), small(150));
    two_transactions(&p).await;
    p.advance_log_start(9, 1000).unwrap();
    assert_eq!(
        p.aborted_transactions(0, 10),
        vec![ABORTED],
        "its marker is at 9"
    );
    p.advance_log_start(10, 1000).unwrap();
    assert_eq!(p.aborted_transactions(0, 10), vec![]);
}
