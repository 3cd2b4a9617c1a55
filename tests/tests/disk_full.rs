//! A full disk is a produce error, not a crash, and nothing acknowledged is lost.
//!
//! The data directory lives on a 4 MiB tmpfs mounted for the test (the suite runs as
//! root, as CI does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kafka_protocol::ResponseError;
use strata_e2e::{Options, RawClient, Strata, assert_serving, now_ms};
use strata_protocol::batch::HeaderIter;
use strata_protocol::batch::test_util::{TestRecord, build_batch};

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting a tmpfs needs root (CI runs the suite as root)"
        );
        Self(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Base offsets of every batch readable from offset 0.
fn read_all(c: &mut RawClient) -> Vec<i64> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let p = c.fetch("full", 0, offset, 8 << 20);
        assert_eq!(p.error_code, 0);
        let records = p.records.unwrap_or_default();
        if records.is_empty() {
            return out;
        }
        for (_, h) in HeaderIter::new(&records) {
            out.push(h.base_offset);
            offset = h.next_offset();
        }
    }
}

/// A broker whose data directory is on a 4 MiB tmpfs (fields drop in order: the broker
/// stops before the file system is unmounted).
struct SmallDisk {
    s: Strata,
    c: RawClient,
    mnt: Tmpfs,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Starts the broker and creates topic "full" with `configs`.
    fn start(configs: &[(&str, &str)]) -> Self {
        Self::start_with(&[], configs)
    }

    /// [`SmallDisk::start`] with extra environment for the broker.
    fn start_with(env: &[(&str, &str)], configs: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mnt = Tmpfs::mount(&dir.path().join("disk"), "4m");
        let s = Strata::with(Options {
            data_dir: Some(mnt.0.join("data")),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Options::default()
        });
        let mut c = RawClient::connect(s.kafka);
        assert_eq!(c.create_topic("full", 1, 1, configs), 0);
        Self {
            s,
            c,
            mnt,
            _dir: dir,
        }
    }
}

/// A batch of one record with a `kib` KiB value.
fn batch_of(kib: usize) -> Vec<u8> {
    let value = vec![b'v'; kib * 1024];
    build_batch(&[TestRecord {
        key: Some(b"k"),
        value: Some(&value),
        timestamp: now_ms(),
    }])
}

/// (A local-only topic: a tiered one is held back before the disk fills, by the
/// unuploaded-bytes cap, which follows the free space; see test_tiered.py.)
#[test]
fn full_disk_is_a_produce_error_not_a_crash() {
    let mut d = SmallDisk::start(&[("remote.storage.enable", "false")]);

    // Leave well under a megabyte free.
    let filler = d.mnt.0.join("filler");
    std::fs::write(&filler, vec![7u8; 3 << 20]).unwrap();

    let batch = batch_of(100);
    let mut acked = Vec::new();
    let mut refused = None;
    for _ in 0..40 {
        match d.c.produce("full", 0, batch.clone()) {
            (0, offset) => acked.push(offset),
            (code, _) => {
                refused = Some(code);
                break;
            }
        }
    }
    assert_eq!(
        refused,
        Some(ResponseError::KafkaStorageError.code()),
        "the disk filled up"
    );
    assert!(!acked.is_empty());
    assert!(
        d.s.is_running(),
        "a full disk must not crash the broker:\n{}",
        d.s.log_tail()
    );
    assert_serving(d.s.kafka);
    // The same connection still works, and exactly the acknowledged batches are there.
    assert_eq!(read_all(&mut d.c), acked);
    assert!(
        d.s.log().contains("No space left on device"),
        "the failure is logged"
    );

    // Space comes back: produce continues right after the last acknowledged batch.
    std::fs::remove_file(&filler).unwrap();
    let (code, offset) = d.c.produce("full", 0, batch);
    assert_eq!(code, 0);
    assert_eq!(offset, acked.last().unwrap() + 1);
    acked.push(offset);
    assert!(d.s.stop().success());
    d.s.restart();
    d.c = RawClient::connect(d.s.kafka);
    assert_eq!(
        read_all(&mut d.c),
        acked,
        "everything acknowledged survives a restart"
    );
    d.s.kill();
}

/// Writes `path` until the file system has no byte left.
fn fill_up(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in [64 << 10, 1] {
        let buf = vec![7u8; chunk];
        while f.write_all(&buf).is_ok() {}
    }
}

/// A full disk when a segment rolls (its index files cannot be written) fails those
/// produce requests only: once space is back, the roll completes and the log goes on.
#[test]
fn full_disk_during_a_segment_roll_is_retried_not_fatal() {
    // Every batch rolls the segment before it; a local-only log (no copies uploaded to
    // the object store directory on the same disk).
    let mut d = SmallDisk::start(&[
        ("segment.bytes", "65536"),
        ("remote.storage.enable", "false"),
    ]);
    let batch = batch_of(40);
    let mut acked = Vec::new();
    for _ in 0..3 {
        let (code, offset) = d.c.produce("full", 0, batch.clone());
        assert_eq!(code, 0);
        acked.push(offset);
    }

    let filler = d.mnt.0.join("filler");
    fill_up(&filler);
    assert_eq!(
        d.c.produce("full", 0, batch.clone()).0,
        ResponseError::KafkaStorageError.code(),
        "the roll cannot write its index files"
    );
    assert!(d.s.is_running(), "{}", d.s.log_tail());

    std::fs::remove_file(&filler).unwrap();
    for _ in 0..3 {
        let (code, offset) = d.c.produce("full", 0, batch.clone());
        assert_eq!(
            code,
            0,
            "the partition is back once there is space:\n{}",
            d.s.log_tail()
        );
        assert_eq!(offset, acked.last().unwrap() + 1);
        acked.push(offset);
    }
    assert_eq!(read_all(&mut d.c), acked);
    assert!(d.s.stop().success());
    d.s.restart();
    d.c = RawClient::connect(d.s.kafka);
    assert_eq!(read_all(&mut d.c), acked, "and it all survives a restart");
    d.s.kill();
}

/// The metadata log on a full disk: its writes wait (clients get the retriable
/// REQUEST_TIMED_OUT, readiness is false) instead of stopping the metadata node for good,
/// and once space is free they go through, with no restart.
#[test]
fn a_full_disk_stalls_metadata_writes_until_space_is_free() {
    let mut d = SmallDisk::start_with(&[("STRATA_META_WRITE_TIMEOUT_MS", "1500")], &[]);
    assert_eq!(d.c.commit_offset("g", "full", 0, 1), 0);
    let filler = d.mnt.0.join("filler");
    fill_up(&filler);
    // The raft log's last page may still have room for a record or two.
    let mut stalled = None;
    for i in 0..50 {
        let code = d.c.create_topic(&format!("pad-{i}"), 1, 1, &[]);
        if code != 0 {
            stalled = Some((i, code));
            break;
        }
    }
    let (i, code) = stalled.expect("a metadata write stalls on the full disk");
    assert_eq!(code, ResponseError::RequestTimedOut.code(), "retriable");
    let (status, body) = d.s.http_get("/readyz");
    assert_eq!(status, 503, "not ready while metadata writes fail: {body}");
    assert!(body.contains("metadata writes have failed"), "{body}");
    assert_eq!(
        d.c.commit_offset("g", "full", 0, 2),
        ResponseError::RequestTimedOut.code()
    );
    assert!(d.s.is_running(), "{}", d.s.log_tail());
    assert!(
        d.s.log()
            .contains("metadata write failed for lack of space")
    );

    std::fs::remove_file(&filler).unwrap();
    assert!(
        d.s.wait_ready(std::time::Duration::from_secs(20)),
        "{}",
        d.s.log_tail()
    );
    assert_eq!(d.c.create_topic("after", 1, 1, &[]), 0);
    assert_eq!(d.c.commit_offset("g", "full", 0, 3), 0);
    // The write that timed out went through once there was room: the topic exists.
    assert_eq!(
        d.c.create_topic(&format!("pad-{i}"), 1, 1, &[]),
        ResponseError::TopicAlreadyExists.code()
    );
    assert!(d.s.log().contains("metadata writes succeed again"));
    assert!(d.s.stop().success(), "{}", d.s.log_tail());
}
