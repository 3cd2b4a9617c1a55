//! Damage to sealed segment files (a truncated file, a flipped byte) is found, logged,
//! counted, and never served: the object store's copy is served instead when there is
//! one, otherwise the client gets the retriable KAFKA_STORAGE_ERROR rather than bad bytes
//! or empty answers forever.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use strata_e2e::{Options, RawClient, Strata, now_ms};
use strata_protocol::batch::HeaderIter;
use strata_protocol::batch::test_util::{TestRecord, build_batch};

/// Every batch readable from offset 0, as (base offset, bytes).
fn read_all(c: &mut RawClient, topic: &str) -> Vec<(i64, Vec<u8>)> {
    read_from(c, topic, 0)
}

/// Every batch readable from `offset` on.
fn read_from(c: &mut RawClient, topic: &str, mut offset: i64) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let p = c.fetch(topic, 0, offset, 1 << 20);
        assert_eq!(p.error_code, 0, "fetch at {offset}");
        let records = p.records.unwrap_or_default();
        if records.is_empty() {
            return out;
        }
        let mut pos = 0;
        for (_, h) in HeaderIter::new(&records) {
            out.push((h.base_offset, records[pos..pos + h.total_len()].to_vec()));
            pos += h.total_len();
            offset = h.next_offset();
        }
    }
}

/// The partition's segment files, oldest first.
fn segment_files(data_dir: &Path, topic: &str) -> Vec<PathBuf> {
    let log = data_dir.join("log");
    let dir = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|d| std::fs::read_to_string(d.join("topic.name")).is_ok_and(|n| n.trim() == topic))
        .unwrap()
        .join("0");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

fn base_of(file: &Path) -> i64 {
    file.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

fn flip_a_byte(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(file, bytes).unwrap();
}

fn cut_in_half(file: &Path) {
    let len = std::fs::metadata(file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
}

fn damaged(s: &Strata) -> f64 {
    s.metric("strata_log_damaged_segments_total").unwrap_or(0.0)
}

/// A broker with topic `t` of 2 KiB segments holding `batches` 500-byte batches.
fn broker_with(
    topic_configs: &[(&str, &str)],
    env: &[(&str, &str)],
    batches: usize,
) -> (Strata, RawClient) {
    let s = Strata::with(Options {
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Options::default()
    });
    let mut c = RawClient::connect(s.kafka);
    let mut configs = vec![("segment.bytes", "2048")];
    configs.extend_from_slice(topic_configs);
    assert_eq!(c.create_topic("t", 1, 1, &configs), 0);
    let value = vec![b'v'; 500];
    for _ in 0..batches {
        let batch = build_batch(&[TestRecord {
            key: Some(b"k"),
            value: Some(&value),
            timestamp: now_ms(),
        }]);
        assert_eq!(c.produce("t", 0, batch).0, 0);
    }
    (s, c)
}

fn wait_for(what: &str, s: &Strata, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            s.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn damaged_uploaded_segments_are_served_from_the_object_store() {
    let no_scrub = [("STRATA_LOG_SCRUB_BYTES_PER_SECOND", "0")];
    let (mut s, mut c) = broker_with(&[], &no_scrub, 24);
    let before = read_all(&mut c, "t");
    assert_eq!(before.len(), 24);
    // Wait until the object store has the first segments (local copies stay: one hour
    // of local retention).
    wait_for("uploads", &s, || {
        let (_, body) = s.http_get("/api/v1/partitions/t/0/remote-segments");
        body.matches("\"base_offset\"").count() >= 4
    });
    assert!(s.stop().success());
    let files = segment_files(&s.data_dir, "t");
    assert!(files.len() >= 5, "{files:?}");
    flip_a_byte(&files[1]);
    cut_in_half(&files[3]);
    s.restart();
    let mut c = RawClient::connect(s.kafka);
    // Reading from each damaged segment's start on: every batch as it was written, the
    // damaged ranges from the object store.
    for f in [&files[1], &files[3]] {
        let from = base_of(f);
        let want: Vec<_> = before.iter().filter(|(o, _)| *o >= from).cloned().collect();
        assert_eq!(
            read_from(&mut c, "t", from),
            want,
            "{}\n{}",
            f.display(),
            s.log_tail()
        );
    }
    assert_eq!(damaged(&s), 2.0);
    assert_eq!(
        read_all(&mut c, "t"),
        before,
        "every batch, the damaged ranges from the object store\n{}",
        s.log_tail()
    );
    let log = s.log();
    for f in [&files[1], &files[3]] {
        assert!(
            log.contains(&f.display().to_string()),
            "names {}",
            f.display()
        );
    }
    assert!(
        log.contains("the object store has the damaged segment"),
        "{}",
        s.log_tail()
    );
}

#[test]
fn damaged_local_only_segments_are_refused_not_served() {
    let no_scrub = [("STRATA_LOG_SCRUB_BYTES_PER_SECOND", "0")];
    let (mut s, mut c) = broker_with(&[("remote.storage.enable", "false")], &no_scrub, 16);
    let before = read_all(&mut c, "t");
    assert!(s.stop().success());
    let files = segment_files(&s.data_dir, "t");
    assert!(files.len() >= 4, "{files:?}");
    flip_a_byte(&files[1]);
    cut_in_half(&files[2]);
    s.restart();
    let mut c = RawClient::connect(s.kafka);
    // Reading on from each damaged segment's start: what is served is what was written
    // (good batches before the damage), then a retriable error, not corrupt bytes or
    // empty answers forever.
    for f in &files[1..3] {
        let mut offset = base_of(f);
        let code = loop {
            let p = c.fetch("t", 0, offset, 1 << 20);
            if p.error_code != 0 {
                break p.error_code;
            }
            let records = p.records.unwrap_or_default();
            assert!(
                !records.is_empty(),
                "{}: nothing served at {offset}",
                f.display()
            );
            let mut pos = 0;
            for (_, h) in HeaderIter::new(&records) {
                let want = &before.iter().find(|(o, _)| *o == h.base_offset).unwrap().1;
                assert_eq!(&records[pos..pos + h.total_len()], &want[..]);
                pos += h.total_len();
                offset = h.next_offset();
            }
            assert!(
                offset < base_of(&files[3]),
                "read past the damage in {}",
                f.display()
            );
        };
        assert_eq!(
            code,
            ResponseError::KafkaStorageError.code(),
            "{}",
            f.display()
        );
    }
    assert_eq!(damaged(&s), 2.0, "{}", s.log_tail());
    // After the damage, data is served again.
    let after = base_of(&files[3]);
    let p = c.fetch("t", 0, after, 1 << 20);
    assert_eq!(p.error_code, 0);
    let got = p.records.unwrap_or_default();
    let want: Vec<&Vec<u8>> = before
        .iter()
        .filter(|(o, _)| *o >= after)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(&got[..want[0].len()], &want[0][..]);
    assert!(s.log().contains(&files[1].display().to_string()));
}

#[test]
fn the_scrubber_finds_damage_nobody_read() {
    let (mut s, _c) = broker_with(&[("remote.storage.enable", "false")], &[], 12);
    assert!(s.stop().success());
    let files = segment_files(&s.data_dir, "t");
    flip_a_byte(&files[1]);
    s.restart();
    // The count and the log line that names the file are not written at the same
    // instant: wait for both.
    let named = files[1].display().to_string();
    wait_for("the scrubber to count and log the damage", &s, || {
        damaged(&s) == 1.0 && s.log().contains(&named)
    });
    assert!(
        s.metric("strata_log_verified_bytes_total").unwrap_or(0.0) > 0.0,
        "the good segments were checked"
    );
}

/// Recovery cuts a damaged tail of the active segment; the offsets it held were
/// acknowledged, so new records continue after them instead of reusing them.
#[test]
fn a_cut_tail_does_not_hand_its_offsets_out_again() {
    let (mut s, _c) = broker_with(&[("remote.storage.enable", "false")], &[], 3);
    assert!(s.stop().success());
    let files = segment_files(&s.data_dir, "t");
    let active = files.last().unwrap();
    let mut bytes = std::fs::read(active).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0xff;
    std::fs::write(active, bytes).unwrap();
    s.restart();
    let mut c = RawClient::connect(s.kafka);
    let batch = build_batch(&[TestRecord {
        key: Some(b"k"),
        value: Some(b"after"),
        timestamp: now_ms(),
    }]);
    assert_eq!(c.produce("t", 0, batch), (0, 3), "{}", s.log_tail());
    assert!(s.log().contains("new records continue after them"));
}
