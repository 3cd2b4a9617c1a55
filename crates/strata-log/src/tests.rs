//! Unit tests of the partition log against a real directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use strata_protocol::batch::test_util::simple_batch;
use strata_protocol::batch::{self, HeaderIter};
use strata_telemetry::Metrics;

use crate::{
    LogConfig, LogError, LogManager, Partition, PartitionKey, TailCache, wait_durable_all,
};

pub(crate) fn metrics() -> strata_telemetry::LogMetrics {
    Metrics::new().unwrap().log
}

/// A partition without an in-memory tail: every read goes to the segment files.
pub(crate) fn open(dir: &Path, config: LogConfig) -> Partition {
    open_with_tail(dir, config, TailCache::new(0))
}

fn open_with_tail(dir: &Path, config: LogConfig, tail: TailCache) -> Partition {
    Partition::open(dir.to_path_buf(), "t".into(), 0, config, metrics(), tail, 0).unwrap()
}

pub(crate) fn small(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        segment_ms: i64::MAX,
        index_interval_bytes: 128,
    }
}

/// Appends one batch of `n` records with timestamps from `ts` and returns its base offset.
fn append(p: &Partition, n: usize, ts: i64, now: i64) -> i64 {
    let b = simple_batch(n, ts);
    let headers = batch::validate_all(&b).unwrap();
    p.append(&b, &headers, 0, now).unwrap().base_offset
}

pub(crate) async fn sync(p: &Partition) {
    let end = p.offsets().log_end;
    p.wait_durable(end).await.unwrap();
}

/// (base offset, record count) of each batch in `records`.
fn batches(records: &[u8]) -> Vec<(i64, i32)> {
    HeaderIter::new(records)
        .map(|(_, h)| (h.base_offset, h.record_count))
        .collect()
}

#[tokio::test]
async fn append_assigns_offsets_and_read_returns_whole_batches() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), LogConfig::default());
    assert_eq!(append(&p, 3, 100, 0), 0);
    assert_eq!(append(&p, 2, 200, 0), 3);
    assert_eq!(append(&p, 5, 300, 0), 5);

    // Not yet synced: invisible to readers, but offsets up to the log end are valid.
    assert_eq!(p.offsets().high_watermark, 0);
    for offset in [0, 4, 10] {
        assert!(p.read(offset, 1 << 20, true).unwrap().records.is_empty());
    }

    sync(&p).await;
    let o = p.offsets();
    assert_eq!((o.log_start, o.high_watermark, o.log_end), (0, 10, 10));
    let all = p.read(0, 1 << 20, true).unwrap();
    assert_eq!(batches(&all.records), vec![(0, 3), (3, 2), (5, 5)]);
    for (pos, _) in HeaderIter::new(&all.records) {
        let h = batch::validate(&all.records[pos..]).unwrap();
        assert!(
            h.max_timestamp >= 100,
            "stored batches keep their timestamps and CRC"
        );
    }

    // An offset inside a batch returns that whole batch.
    assert_eq!(
        batches(&p.read(4, 1 << 20, true).unwrap().records),
        vec![(3, 2), (5, 5)]
    );
    // max_bytes is honoured in whole batches, but at least one batch comes back.
    assert_eq!(batches(&p.read(0, 1, true).unwrap().records), vec![(0, 3)]);
    let two = p.read(0, 1, true).unwrap().records.len() + 1;
    assert_eq!(
        batches(&p.read(0, two, true).unwrap().records),
        vec![(0, 3)]
    );
    // Without min_one, a budget smaller than the first batch returns nothing.
    assert!(p.read(0, 1, false).unwrap().records.is_empty());
    // At the high watermark (here also the log end): empty. Past the log end or before
    // the start: out of range.
    assert!(p.read(10, 1 << 20, true).unwrap().records.is_empty());
    assert!(matches!(
        p.read(11, 100, true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert!(matches!(
        p.read(-1, 100, true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
}

#[tokio::test]
async fn concurrent_waiters_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let m = metrics();
    let p = Partition::open(
        dir.path().to_path_buf(),
        "t".into(),
        0,
        LogConfig::default(),
        m.clone(),
        TailCache::new(0),
        0,
    )
    .unwrap();
    let p = std::sync::Arc::new(p);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            append(&p, 1, i, 0);
            let end = p.offsets().log_end;
            p.wait_durable(end).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(p.offsets().high_watermark, 50);
    assert_eq!(
        batches(&p.read(0, 1 << 20, true).unwrap().records).len(),
        50
    );
    let syncs = m.syncs_total.get();
    assert!(syncs <= 50, "{syncs} syncs for 50 waiters");

    // Group commit: 50 requests appended while no sync ran are all answered by one.
    let offsets: Vec<i64> = (0..50).map(|i| append(&p, 1, i, 0) + 1).collect();
    let waiters: Vec<_> = offsets
        .into_iter()
        .map(|end| {
            let p = p.clone();
            tokio::spawn(async move { p.wait_durable(end).await.unwrap() })
        })
        .collect();
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(p.offsets().high_watermark, 100);
    assert_eq!(
        m.syncs_total.get() - syncs,
        1,
        "one fdatasync for all of them"
    );
}

#[tokio::test]
async fn sparse_index_finds_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), small(1 << 30));
    for i in 0..200 {
        append(&p, 1 + i % 3, i as i64, 0);
    }
    sync(&p).await;
    let end = p.offsets().log_end;
    for offset in 0..end {
        let r = p.read(offset, 1, true).unwrap();
        let (_, h) = HeaderIter::new(&r.records).next().unwrap();
        assert!(
            h.base_offset <= offset && offset <= h.last_offset(),
            "offset {offset}"
        );
    }
}

#[tokio::test]
async fn rolls_by_size_and_age_and_reads_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let batch_len = simple_batch(2, 0).len() as u64;
    let p = open(dir.path(), small(batch_len * 3));
    for i in 0..10 {
        append(&p, 2, i, 0);
    }
    sync(&p).await;
    let segs = p.segments();
    assert_eq!(segs.len(), 4, "3 + 3 + 3 + 1 batches");
    assert_eq!(
        segs.iter().map(|s| s.base_offset).collect::<Vec<_>>(),
        vec![0, 6, 12, 18]
    );
    // Sealed segments have their indexes beside them.
    for s in &segs[..3] {
        let stem = dir.path().join(format!("{:020}", s.base_offset));
        assert!(stem.with_extension("index").exists());
        assert!(stem.with_extension("timeindex").exists());
    }
    let all = p.read(0, 1 << 20, true).unwrap();
    assert_eq!(batches(&all.records).len(), 10);

    // Age: the next append after segment.ms rolls even a small segment.
    p.set_config(LogConfig {
        segment_ms: 1000,
        ..small(1 << 30)
    });
    append(&p, 1, 0, 500);
    assert_eq!(p.segments().len(), 4);
    append(&p, 1, 0, 1000);
    assert_eq!(p.segments().len(), 5);

    // Without an append: a quiet active segment rolls once it is old enough, or when
    // forced, but never while it is empty.
    assert!(!p.roll_active(1500, false).unwrap(), "not old enough yet");
    assert!(p.roll_active(2000, false).unwrap());
    assert_eq!(p.segments().len(), 6);
    assert!(
        !p.roll_active(10_000, true).unwrap(),
        "the new active segment is empty"
    );
    append(&p, 1, 0, 2100);
    assert!(p.roll_active(2100, true).unwrap());
    assert_eq!(p.segments().len(), 7);
    assert_eq!(
        p.upload_candidates(usize::MAX).len(),
        6,
        "every segment but the active one is sealed"
    );
}

#[tokio::test]
async fn reopen_uses_sealed_indexes_and_recovers_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let batch_len = simple_batch(2, 0).len() as u64;
    let before = {
        let p = open(dir.path(), small(batch_len * 4));
        for i in 0..13 {
            append(&p, 2, i * 10, 0);
        }
        sync(&p).await;
        p.read(0, 1 << 20, true).unwrap().records
    };
    let p = open(dir.path(), small(batch_len * 4));
    let o = p.offsets();
    assert_eq!((o.log_start, o.high_watermark, o.log_end), (0, 26, 26));
    assert_eq!(p.read(0, 1 << 20, true).unwrap().records, before);
    assert_eq!(append(&p, 1, 0, 0), 26);
}

#[tokio::test]
async fn recovery_keeps_exactly_the_complete_batches_at_every_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (file, lens) = {
        let p = open(dir.path(), small(1 << 30));
        let mut lens = Vec::new();
        for i in 0..6 {
            append(&p, 1 + i, i as i64, 0);
            lens.push(simple_batch(1 + i, 0).len() as u64);
        }
        sync(&p).await;
        (dir.path().join(format!("{:020}.log", 0)), lens)
    };
    let original = std::fs::read(&file).unwrap();
    for cut in 0..=original.len() {
        std::fs::write(&file, &original[..cut]).unwrap();
        // A torn tail is data that was never synced, so the durable-offset mark never
        // covered it (see the next tests for a cut below the mark).
        let _ = std::fs::remove_file(dir.path().join("acked"));
        let p = open(dir.path(), small(1 << 30));
        // Complete batches below the cut.
        let mut kept_bytes = 0u64;
        let mut kept_records = 0i64;
        for (i, len) in lens.iter().enumerate() {
            if kept_bytes + len <= cut as u64 {
                kept_bytes += len;
                kept_records += 1 + i as i64;
            }
        }
        let o = p.offsets();
        assert_eq!(o.log_end, kept_records, "cut at {cut}");
        assert_eq!(o.high_watermark, kept_records, "cut at {cut}");
        assert_eq!(
            std::fs::metadata(&file).unwrap().len(),
            kept_bytes,
            "cut at {cut}"
        );
        let read = p.read(0, 1 << 20, true).unwrap().records;
        assert_eq!(&read[..], &original[..kept_bytes as usize], "cut at {cut}");
        drop(p);
    }
}

#[tokio::test]
async fn recovery_stops_at_a_corrupt_batch() {
    let dir = tempfile::tempdir().unwrap();
    let first_len = simple_batch(2, 0).len();
    {
        let p = open(dir.path(), small(1 << 30));
        for _ in 0..3 {
            append(&p, 2, 0, 0);
        }
        sync(&p).await;
    }
    let file = dir.path().join(format!("{:020}.log", 0));
    let mut data = std::fs::read(&file).unwrap();
    data[first_len + 40] ^= 0xff; // inside the second batch's CRC-covered bytes
    std::fs::write(&file, &data).unwrap();
    let p = open(dir.path(), small(1 << 30));
    // Only the good prefix is kept, but offsets 2 to 5 were made durable before: they
    // are not handed out again.
    let r = p.read(0, 1 << 20, true).unwrap();
    assert_eq!(batches(&r.records), vec![(0, 2)]);
    assert_eq!(p.offsets().log_end, 6);
    assert_eq!(
        append(&p, 1, 0, 0),
        6,
        "new writes continue after the offsets that were cut"
    );
}

#[tokio::test]
async fn retention_by_time_and_size_moves_the_start_and_deletes_segments() {
    let dir = tempfile::tempdir().unwrap();
    let batch_len = simple_batch(1, 0).len() as u64;
    let p = open(dir.path(), small(batch_len * 2));
    // Ten batches, timestamps 0..10 seconds; segments of two batches each.
    for i in 0..10 {
        append(&p, 1, i * 1000, 0);
    }
    sync(&p).await;
    assert_eq!(p.segments().len(), 5);

    // Nothing is older than 100 s at t=50 s.
    assert_eq!(p.retention_target(50_000, 100_000, -1), None);
    // At t=13.5 s with 10 s retention, batches with timestamps <3.5 s are expired: the
    // first segment (0 s, 1 s) wholly; the second (2 s, 3 s) too.
    assert_eq!(p.retention_target(13_500, 10_000, -1), Some(4));
    // Size: keep at most 5 batches' worth. The excess is 5 batches, and only whole
    // segments go, so the two oldest segments (4 batches) are due.
    assert_eq!(p.retention_target(0, -1, 5 * batch_len as i64), Some(4));

    assert_eq!(p.advance_log_start(4, 0).unwrap(), 2);
    assert_eq!(p.offsets().log_start, 4);
    assert_eq!(p.segments().len(), 3);
    assert!(!dir.path().join(format!("{:020}.log", 0)).exists());
    assert!(matches!(
        p.read(3, 100, true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(
        batches(&p.read(4, 1 << 20, true).unwrap().records)[0],
        (4, 1)
    );

    // Everything expired, the active segment included: the log ends up empty at its end.
    let target = p.retention_target(1_000_000, 1, -1).unwrap();
    assert_eq!(target, 10);
    p.advance_log_start(target, 0).unwrap();
    let o = p.offsets();
    assert_eq!((o.log_start, o.high_watermark, o.log_end), (10, 10, 10));
    assert_eq!(append(&p, 1, 0, 0), 10);
    sync(&p).await;
    drop(p);
    let p = open(dir.path(), small(batch_len * 2));
    assert_eq!(p.offsets().log_start, 10, "start survives a reopen");
}

#[tokio::test]
async fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), small(400));
    // Batches of 4 records at 1000, 1001, ...: record timestamps are 1000+10*i+j.
    for i in 0..20 {
        append(&p, 4, 1000 + 10 * i, 0);
    }
    sync(&p).await;
    assert!(p.segments().len() > 2);
    assert_eq!(p.offset_for_timestamp(0).unwrap(), Some((0, 1000)));
    assert_eq!(p.offset_for_timestamp(1002).unwrap(), Some((2, 1002)));
    assert_eq!(p.offset_for_timestamp(1004).unwrap(), Some((4, 1010)));
    assert_eq!(p.offset_for_timestamp(1153).unwrap(), Some((63, 1153)));
    assert_eq!(p.offset_for_timestamp(1193).unwrap(), Some((79, 1193)));
    assert_eq!(p.offset_for_timestamp(1194).unwrap(), None);
}

#[tokio::test]
async fn manager_creates_reopens_and_deletes_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let topic_id = uuid::Uuid::new_v4();
    let key = PartitionKey {
        topic_id,
        partition: 3,
    };
    {
        let m = LogManager::open(dir.path(), metrics(), TailCache::new(1 << 20), 0).unwrap();
        let p = m
            .get_or_create(key, "orders", LogConfig::default(), 0)
            .unwrap();
        append(&p, 2, 0, 0);
        sync(&p).await;
    }
    let m = LogManager::open(dir.path(), metrics(), TailCache::new(1 << 20), 0).unwrap();
    let p = m.get(key).unwrap();
    assert_eq!(p.topic(), "orders");
    assert_eq!(p.offsets().log_end, 2);
    assert_eq!(
        m.topic_ids().into_iter().collect::<Vec<_>>(),
        vec![topic_id]
    );
    m.remove_topic(topic_id).unwrap();
    assert!(m.get(key).is_none());
    assert!(!dir.path().join(topic_id.to_string()).exists());
}

/// Every read a fetch can make, on a partition served from memory and on one that reads
/// its files, gives the same bytes.
fn assert_reads_agree(mem: &Partition, disk: &Partition, budgets: &[usize]) {
    let o = disk.offsets();
    assert_eq!(mem.offsets().high_watermark, o.high_watermark);
    for offset in o.local_start..=o.high_watermark {
        for &max in budgets {
            for min_one in [true, false] {
                let want = disk.read(offset, max, min_one).unwrap();
                let got = mem.read(offset, max, min_one).unwrap();
                assert_eq!(
                    got.records, want.records,
                    "offset {offset}, max_bytes {max}, min_one {min_one}"
                );
            }
        }
    }
}

/// The bytes of a read's file ranges, in order.
fn file_bytes(r: &crate::ReadResult) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut out = Vec::new();
    for f in &r.files {
        let mut buf = vec![0u8; f.len];
        f.file.read_exact_at(&mut buf, f.pos).unwrap();
        out.extend_from_slice(&buf);
    }
    out
}

/// A read that may leave batches in the segment files gives, as file ranges, exactly the
/// bytes a read into memory returns, at every offset, budget and bound; it reads into
/// memory when its first batch is small, and from segments not verified yet.
#[tokio::test]
async fn reads_left_in_files_hold_the_bytes_a_copying_read_returns() {
    use crate::Upto;
    let dir = tempfile::tempdir().unwrap();
    let config = small(200 << 10);
    let p = open(dir.path(), config.clone());
    for i in 0..30 {
        let n = if i % 5 == 3 { 4 } else { 1000 + 150 * (i % 7) };
        append(&p, n, i as i64, 0);
        // Each sync seals the segments rolled before it.
        sync(&p).await;
    }
    // Written, not durable: beyond what any read may return.
    append(&p, 1500, 99, 0);
    assert!(p.segments().len() > 3, "the run spans several segments");
    let big = simple_batch(1000, 0).len();
    assert!(big >= 16 << 10, "{big}");
    let budgets = [0, 1, big - 1, big, big + 1, 3 * big, 1 << 20];
    let compare = |p: &Partition| {
        let o = p.offsets();
        let mut in_files = Vec::new();
        for offset in (o.local_start..o.high_watermark).step_by(97) {
            for &max in &budgets {
                for min_one in [true, false] {
                    for upto in [Upto::HighWatermark, Upto::LastStable, Upto::Durable] {
                        let copied = p.read_with(offset, max, min_one, upto, false).unwrap();
                        let got = p.read_with(offset, max, min_one, upto, true).unwrap();
                        assert!(copied.files.is_empty());
                        let bytes = if got.files.is_empty() {
                            got.records.to_vec()
                        } else {
                            in_files.push(offset);
                            assert!(got.records.is_empty());
                            file_bytes(&got)
                        };
                        assert!(
                            bytes == copied.records,
                            "offset {offset}, max_bytes {max}, min_one {min_one}, {upto:?}"
                        );
                        assert_eq!(got.size(), copied.records.len());
                        assert_eq!(got.next_offset(), copied.next_offset());
                    }
                }
            }
        }
        in_files
    };
    let in_files = compare(&p).len();
    assert!(in_files > 100, "only {in_files} reads were left in files");
    drop(p);
    // Reopened, the sealed segments are not verified: reads from them are copied (and
    // their CRCs checked); only the active segment's are left in files.
    let p = open(dir.path(), config);
    let segments = p.segments();
    assert_eq!(p.unverified_segments().len(), segments.len() - 1);
    let active = segments.last().unwrap().base_offset;
    let unverified = compare(&p);
    assert!(unverified.iter().all(|&o| o >= active), "{unverified:?}");
    for s in &segments {
        p.verify_segment(s.base_offset).unwrap();
    }
    // (The batch that was not durable came back with the reopen: more to read.)
    assert!(compare(&p).len() >= in_files);
}

#[test]
fn reads_append_exactly_the_bytes_asked_for() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&data)
        .unwrap();
    let file = std::fs::File::open(&path).unwrap();
    // Onto an empty Vec, onto one with data, and onto one with more room than asked for.
    let mut out = Vec::new();
    crate::partition::read_append(&file, 1000, 5, &mut out).unwrap();
    assert_eq!(out, data[5..1005]);
    crate::partition::read_append(&file, 50_000, 40_000, &mut out).unwrap();
    assert_eq!(out[1000..], data[40_000..90_000]);
    let mut roomy = Vec::with_capacity(1 << 20);
    roomy.extend_from_slice(b"head");
    crate::partition::read_append(&file, 10, 99_990, &mut roomy).unwrap();
    assert_eq!(&roomy[..4], b"head");
    assert_eq!(roomy[4..], data[99_990..]);
    // Past the end of the file: an error (the caller drops the read).
    let mut short = Vec::new();
    let err = crate::partition::read_append(&file, 20, 99_990, &mut short).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn several_partitions_are_made_durable_together() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let parts: Vec<Partition> = dirs
        .iter()
        .map(|d| open_with_tail(d.path(), small(1 << 20), TailCache::new(1 << 20)))
        .collect();
    for (n, p) in parts.iter().enumerate() {
        for i in 0..=n {
            append(p, 2, i as i64, 0);
        }
        assert!(p.offsets().durable_end < p.offsets().log_end);
    }
    // One of them is being synced by another task meanwhile: the batch rides on it.
    let (first, rest) = parts.split_first().unwrap();
    let other = first.wait_durable(first.offsets().log_end);
    let waits: Vec<(&Partition, i64)> = parts.iter().map(|p| (p, p.offsets().log_end)).collect();
    let (alone, together) = tokio::join!(other, wait_durable_all(&waits));
    alone.unwrap();
    assert_eq!(together.len(), 3);
    for (r, p) in together.into_iter().zip(&parts) {
        r.unwrap();
        let o = p.offsets();
        assert_eq!(o.durable_end, o.log_end);
    }
    // Already durable: nothing to do, still one answer each.
    let again = wait_durable_all(&[(&rest[0], 2), (&rest[1], 6)]).await;
    assert!(again.iter().all(|r| r.is_ok()));
}

#[tokio::test]
async fn a_follower_reading_above_the_high_watermark_is_served_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let p = open_with_tail(dir.path(), small(1 << 20), TailCache::new(1 << 20));
    p.expect_replication();
    for i in 0..4 {
        append(&p, 2, i, 0);
    }
    sync(&p).await;
    p.set_replicated_hw(Some(2));
    let o = p.offsets();
    assert_eq!((o.high_watermark, o.durable_end), (2, 8));
    // Consumers may not see offset 4 yet; a follower copies it, from memory.
    assert!(!p.reads_from_memory(4));
    assert!(p.replica_reads_from_memory(4));
    assert!(
        p.replica_reads_from_memory(8),
        "at the durable end: nothing to read"
    );
    assert!(!p.replica_reads_from_memory(9));
    let r = p
        .read_with(4, 1 << 20, true, crate::Upto::Durable, false)
        .unwrap();
    assert!(r.from_memory);
    assert_eq!(batches(&r.records), vec![(4, 2), (6, 2)]);
}

#[tokio::test]
async fn the_tail_in_memory_reads_exactly_like_the_files() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = small(1024);
    let mem = open_with_tail(d1.path(), config.clone(), TailCache::new(1 << 20));
    let disk = open(d2.path(), config);
    let mut sizes = Vec::new();
    for i in 0..40 {
        let n = 1 + (i * 7) % 11;
        for p in [&mem, &disk] {
            append(p, n, i as i64, 0);
        }
        sizes.push(simple_batch(n, 0).len());
    }
    let one = sizes[0];
    let budgets = [0, 1, one - 1, one, one + 1, 3 * one, 4096, 1 << 20];
    // The active segment is not synced yet: memory hides it just as the files do.
    let o = mem.offsets();
    assert!(o.high_watermark < o.log_end, "{o:?}");
    assert!(
        !mem.reads_from_memory(o.log_end),
        "above the high watermark"
    );
    assert_reads_agree(&mem, &disk, &budgets);
    sync(&mem).await;
    sync(&disk).await;
    assert!(disk.segments().len() > 3, "the run spans several segments");
    assert_reads_agree(&mem, &disk, &budgets);
    assert!(mem.reads_from_memory(0));
    assert!(mem.reads_from_memory(mem.offsets().high_watermark));
    assert!(mem.read(5, 1 << 20, true).unwrap().from_memory);
    assert!(!disk.read(5, 1 << 20, true).unwrap().from_memory);

    // A partly synced tail: memory serves only what is durable.
    for p in [&mem, &disk] {
        append(p, 3, 99, 0);
    }
    assert_reads_agree(&mem, &disk, &budgets);
}

#[tokio::test]
async fn the_tail_budget_is_shared_and_evicts_the_oldest() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let batch_len = simple_batch(4, 0).len();
    let budget = TailCache::new(10 * batch_len as u64);
    let a = open_with_tail(dirs[0].path(), small(1 << 20), budget.clone());
    let b = open_with_tail(dirs[1].path(), small(1 << 20), budget.clone());
    let disk = open(dirs[2].path(), small(1 << 20));
    for i in 0..8 {
        append(&a, 4, i, 0);
        append(&disk, 4, i, 0);
    }
    for i in 0..8 {
        append(&b, 4, i, 0);
    }
    for p in [&a, &b, &disk] {
        sync(p).await;
    }
    assert_eq!(budget.used(), 10 * batch_len as u64);
    // b's appends pushed past the budget and evicted the oldest batches broker-wide:
    // six of a's, which had stopped appending; b keeps all of its own.
    assert!(b.reads_from_memory(0));
    assert!(!a.reads_from_memory(0));
    assert!(!a.reads_from_memory(4 * 5));
    assert!(a.reads_from_memory(4 * 6));
    let old = a.read(0, 1 << 20, true).unwrap();
    assert!(!old.from_memory, "evicted offsets are read from the files");
    assert_eq!(batches(&old.records).len(), 8);
    assert_reads_agree(&a, &disk, &[1, 1 << 20]);
    // A deleted partition gives its share back.
    drop(a);
    assert_eq!(budget.used(), 8 * batch_len as u64);
    // And a partition that appends again after the others takes the oldest of theirs.
    let dc = tempfile::tempdir().unwrap();
    let c = open_with_tail(dc.path(), small(1 << 20), budget.clone());
    for i in 0..6 {
        append(&c, 4, i, 0);
    }
    sync(&c).await;
    assert_eq!(budget.used(), 10 * batch_len as u64);
    assert!(c.reads_from_memory(0));
    assert!(!b.reads_from_memory(4 * 3));
    assert!(b.reads_from_memory(4 * 4));
}

#[test]
fn the_tail_budget_forgets_chunks_of_dropped_partitions() {
    // Many partitions come and go; the budget's bookkeeping of who holds what stays
    // bounded by what is held.
    let budget = TailCache::new(1 << 30);
    let batch = bytes::Bytes::from(simple_batch(1, 0));
    for round in 0..50 {
        let mut t = crate::tail::Tail::new(budget.clone());
        for i in 0..100 {
            t.push(i, i + 1, batch.clone());
        }
        assert_eq!(budget.used(), 100 * batch.len() as u64, "round {round}");
        drop(t);
        assert_eq!(budget.used(), 0);
    }
    assert!(budget.bookkept() <= 2 * 100 + 1024, "{}", budget.bookkept());
}

#[tokio::test]
async fn a_log_restarted_at_a_new_offset_drops_its_tail() {
    let dir = tempfile::tempdir().unwrap();
    let budget = TailCache::new(1 << 20);
    let p = open_with_tail(dir.path(), small(1 << 20), budget.clone());
    for i in 0..5 {
        append(&p, 2, i, 0);
    }
    sync(&p).await;
    assert!(p.reads_from_memory(0));
    p.advance_log_start(100, 0).unwrap();
    append(&p, 2, 0, 0);
    sync(&p).await;
    assert!(p.reads_from_memory(100));
    assert!(!p.reads_from_memory(0));
    let got = p.read(100, 1 << 20, true).unwrap();
    assert!(got.from_memory);
    assert_eq!(batches(&got.records), vec![(100, 2)]);
    assert_eq!(
        budget.used(),
        simple_batch(2, 0).len() as u64,
        "only the batch after the restart is held"
    );
}

/// Three sealed segments of two batches each (and an active one); returns the segment
/// files, oldest first.
async fn sealed_segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let p = open(dir, small(300));
    for i in 0..8 {
        append(&p, 3, 100 + i, 0);
        sync(&p).await;
    }
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|f| f.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn a_flipped_byte_in_a_trusted_segment_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let files = sealed_segments(dir.path()).await;
    assert!(files.len() >= 3, "{files:?}");
    // The second batch of the second segment.
    let mut bytes = std::fs::read(&files[1]).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 1;
    std::fs::write(&files[1], bytes).unwrap();
    let m = metrics();
    let p = Partition::open(
        dir.path().into(),
        "t".into(),
        0,
        small(300),
        m.clone(),
        TailCache::new(0),
        0,
    )
    .unwrap();
    let second: i64 = files[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // The first batch is good and is served; the read stops before the bad one.
    let r = p.read(second, 1 << 20, true).unwrap();
    assert_eq!(batches(&r.records).len(), 1);
    let next = HeaderIter::new(&r.records).last().unwrap().1.next_offset();
    assert!(matches!(
        p.read(next, 1 << 20, true),
        Err(LogError::Corrupt { .. })
    ));
    assert_eq!(m.damaged_segments_total.get(), 1);
    // Once the object store has it, the local copies go and reads are sent there.
    p.set_remote_end(p.offsets().log_end - 1);
    assert!(matches!(
        p.read(next, 1 << 20, true),
        Err(LogError::NotLocal { .. })
    ));
    assert!(p.offsets().local_start > second);
    assert_eq!(m.damaged_segments_total.get(), 1, "counted once");
}

#[tokio::test]
async fn a_truncated_trusted_segment_is_found_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let files = sealed_segments(dir.path()).await;
    let len = std::fs::metadata(&files[1]).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&files[1])
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let m = metrics();
    let p = Partition::open(
        dir.path().into(),
        "t".into(),
        0,
        small(300),
        m.clone(),
        TailCache::new(0),
        0,
    )
    .unwrap();
    assert_eq!(m.damaged_segments_total.get(), 1);
    let second: i64 = files[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let r = p.read(second, 1 << 20, true).unwrap();
    let next = HeaderIter::new(&r.records).last().unwrap().1.next_offset();
    assert!(matches!(
        p.read(next, 1 << 20, true),
        Err(LogError::Corrupt { .. })
    ));
    let third: i64 = files[2]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        batches(&p.read(third, 1 << 20, true).unwrap().records)[0].0,
        third
    );
}

#[tokio::test]
async fn offsets_made_durable_are_not_reused_after_a_damaged_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    {
        let p = open(dir.path(), LogConfig::default());
        for i in 0..5 {
            append(&p, 3, 100 + i, 0);
            sync(&p).await;
        }
        assert_eq!(p.offsets().log_end, 15);
    }
    // The last (synced, acknowledged) batch of the active segment is damaged.
    let seg = dir.path().join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&seg).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();

    let p = open(dir.path(), LogConfig::default());
    assert_eq!(p.offsets().log_end, 15, "the cut offsets stay taken");
    assert_eq!(append(&p, 2, 200, 0), 15, "new records continue after them");
    sync(&p).await;
    // A reader at the lost offsets moves on to the next records.
    let r = p.read(12, 1 << 20, true).unwrap();
    assert_eq!(batches(&r.records), vec![(15, 2)]);
    let r = p.read(0, 1 << 20, true).unwrap();
    assert_eq!(
        batches(&r.records),
        vec![(0, 3), (3, 3), (6, 3), (9, 3), (15, 2)]
    );
}

#[tokio::test]
async fn a_replicated_partition_shows_consumers_nothing_until_its_high_watermark_is_known() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), LogConfig::default());
    append(&p, 3, 100, 0);
    append(&p, 2, 200, 0);
    sync(&p).await;
    // Reopened as a replica of a replicated partition: the durable tail may be records
    // a former leader wrote that the others never got.
    p.expect_replication();
    assert_eq!(p.offsets().high_watermark, 0);
    assert!(p.read(0, 1 << 20, true).unwrap().records.is_empty());
    assert!(
        !p.read_with(0, 1 << 20, true, crate::Upto::Durable, false)
            .unwrap()
            .records
            .is_empty(),
        "replicas still copy it"
    );
    // The leader's word moves it, never past the durable end.
    p.set_replicated_hw(Some(3));
    assert_eq!(
        batches(&p.read(0, 1 << 20, true).unwrap().records),
        vec![(0, 3)]
    );
    p.set_replicated_hw(Some(100));
    assert_eq!(p.offsets().high_watermark, 5);
    // Once declared, it stays: a later declaration does not reset what was set.
    p.expect_replication();
    assert_eq!(p.offsets().high_watermark, 5);
}

#[tokio::test]
async fn a_durability_wait_fails_when_its_records_are_cut_away() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), LogConfig::default());
    p.expect_replication();
    append(&p, 2, 100, 0);
    sync(&p).await;
    append(&p, 3, 100, 0);
    // Cut back before the wait for the second batch starts syncing: it must end, not
    // sync over and over for records the log no longer has.
    p.truncate_to(2, 0).unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(30), p.wait_durable(5)).await;
    let err = waited.expect("the wait ended").unwrap_err();
    assert!(
        matches!(
            err,
            LogError::Truncated {
                offset: 5,
                log_end: 2
            }
        ),
        "{err}"
    );
    // What the log has is still waited for as before.
    p.wait_durable(2).await.unwrap();
}

#[tokio::test]
async fn a_sync_from_before_a_cut_does_not_make_what_replaced_it_durable() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), LogConfig::default());
    append(&p, 2, 100, 0);
    sync(&p).await;
    append(&p, 3, 100, 0);
    // A sync of offsets 2..5 is prepared; the log is cut back to 2 and 2..5 written
    // again before it finishes.
    let stale = p.sync_job().unwrap().unwrap();
    p.truncate_to(2, 0).unwrap();
    append(&p, 3, 200, 0);
    let (synced, took) = stale.run();
    p.finish_sync(&stale, synced, took).unwrap();
    assert_eq!(p.offsets().durable_end, 2, "the new 2..5 were never synced");
    p.wait_durable(5).await.unwrap();
    assert_eq!(p.offsets().durable_end, 5);
}

#[tokio::test]
async fn records_written_again_after_a_cut_are_synced_before_they_count_as_durable() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), LogConfig::default());
    append(&p, 2, 100, 0);
    append(&p, 3, 100, 0);
    sync(&p).await;
    p.truncate_to(2, 0).unwrap();
    assert_eq!(p.offsets().durable_end, 2);
    append(&p, 3, 200, 0);
    // Offsets 2..5 were durable once, but these records are new: the wait syncs them.
    p.wait_durable(5).await.unwrap();
    assert_eq!(p.offsets().durable_end, 5);
}

#[tokio::test]
async fn an_acknowledgement_wait_fails_when_its_records_are_cut_away() {
    let dir = tempfile::tempdir().unwrap();
    let p = open(dir.path(), LogConfig::default());
    let b = simple_batch(2, 100);
    let headers = batch::validate_all(&b).unwrap();
    p.append(&b, &headers, 4, 0).unwrap();
    sync(&p).await;
    p.expect_replication();
    let p = std::sync::Arc::new(p);
    let w = p.clone();
    let task = tokio::spawn(async move { w.wait_high_watermark(2, 4).await });
    tokio::task::yield_now().await;
    assert!(!task.is_finished(), "nothing is replicated yet");
    // This replica lost leadership and truncates to the new leader's log.
    p.truncate_to(0, 0).unwrap();
    let err = task.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            LogError::Superseded {
                epoch: 4,
                offset: 2
            }
        ),
        "{err}"
    );
}
