//! Fuzz targets: one function per decoder that reads bytes from outside the broker.
//!
//! Each target takes arbitrary bytes, runs them through the code the broker runs on the
//! same kind of input, and must return without panicking (a panic, an abort, a hang or an
//! allocation past libFuzzer's limit is a finding). `fuzz_targets/` wraps each one for
//! libFuzzer; `scripts/fuzz.sh` builds them with coverage instrumentation on stable Rust
//! and runs each for a bounded time over its committed corpus in `corpus/<target>/`
//! (seeded from real client traffic by `scripts/fuzz-corpus.sh`). Inputs that once
//! crashed are kept in the corpus, so every run replays them first.
//!
//! This crate only drives other crates' public decoders; it must not reimplement them.
//! It runs them on the broker's own allocator (the same source file), since that is
//! where an absurd length read off the wire meets the machine.

#[path = "../../crates/strata/src/alloc.rs"]
#[allow(dead_code)]
mod alloc;

#[global_allocator]
static GLOBAL: alloc::Allocator = alloc::Allocator;

use std::path::Path;
use std::sync::OnceLock;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::Decodable;
use strata_log::{LogManager, TailCache};
use strata_protocol::batch::{self, HEADER_LEN, HeaderIter};
use strata_protocol::frame::{self, RequestPrefix};
use strata_protocol::{Compression, records};

/// A request frame as a client sends it (without the size prefix): the prefix check,
/// the version check and the decode the connection does, then the record batches of a
/// Produce request through the produce path's validation.
pub fn request_frame(data: &[u8]) {
    let Ok(prefix) = RequestPrefix::parse(data) else {
        return;
    };
    let Ok(api) = prefix.api() else { return };
    let Some((min, max)) = frame::supported(api) else {
        return;
    };
    if !(min..=max).contains(&prefix.api_version) {
        return;
    }
    let Ok((_, body)) =
        frame::decode_request(Bytes::copy_from_slice(data), api, prefix.api_version)
    else {
        return;
    };
    if let RequestKind::Produce(produce) = body {
        for topic in &produce.topic_data {
            for partition in &topic.partition_data {
                if let Some(r) = &partition.records {
                    batches(r);
                }
            }
        }
    }
}

/// A response frame as a follower reads it from its leader: the first byte picks
/// Fetch v12 or OffsetForLeaderEpoch v4 (what `strata-replication` asks), the rest is
/// the frame; fetched records go through the validation a follower's append does.
pub fn response_frame(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (api, version) = if pick & 1 == 0 {
        (ApiKey::Fetch, 12)
    } else {
        (ApiKey::OffsetForLeaderEpoch, 4)
    };
    let mut frame = Bytes::copy_from_slice(rest);
    if ResponseHeader::decode(&mut frame, api.response_header_version(version)).is_err() {
        return;
    }
    if let Ok(ResponseKind::Fetch(fetch)) = ResponseKind::decode(api, &mut frame, version) {
        for topic in &fetch.responses {
            for partition in &topic.partitions {
                if let Some(r) = &partition.records {
                    batches(r);
                }
            }
        }
    }
}

/// Record batches as a producer or a leader sends them. The first byte's low bit says
/// whether to fix up each batch's CRC first, so that mutations reach the record and
/// decompression code behind the CRC check.
pub fn record_batch(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut buf = rest.to_vec();
    if flags & 1 == 1 {
        fix_crcs(&mut buf);
    }
    batches(&buf);
}

/// What the broker does with incoming batches: validation, then, per valid batch, the
/// per-record walks (decompressing with the broker's bound) and a recompression.
fn batches(buf: &[u8]) {
    let Ok(headers) = batch::validate_all(buf) else {
        return;
    };
    let mut pos = 0;
    for h in headers {
        let end = pos + h.total_len();
        let Some(one) = buf.get(pos..end) else { return };
        pos = end;
        let _ = records::min_timestamp(one);
        let _ = records::first_at_or_after(one, h.base_timestamp);
        let _ = records::recompress(one, Compression::None, None);
    }
}

/// Sets the CRC of every whole batch in `buf` to match its contents.
fn fix_crcs(buf: &mut [u8]) {
    let spans: Vec<(usize, usize)> = HeaderIter::new(buf)
        .map(|(pos, h)| (pos, h.total_len()))
        .collect();
    for (pos, len) in spans {
        if let Some(b) = buf.get_mut(pos..pos + len)
            && b.len() >= HEADER_LEN
        {
            batch::update_crc(b);
        }
    }
}

/// The files of a partition directory as recovery finds them after a crash or on a
/// damaged disk: the input is split into files (`[u8 kind][u16 length][bytes]`...),
/// the directory is opened as the broker opens its logs at start-up, and whatever
/// survived is read back, checked and appended to.
pub fn partition_dir(data: &[u8]) {
    let Ok(root) = tempfile::tempdir() else {
        return;
    };
    let dir = root
        .path()
        .join("4f2a1c3e-0000-4000-8000-000000000001")
        .join("0");
    if std::fs::create_dir_all(&dir).is_err() || write_files(&dir, data).is_err() {
        return;
    }
    let Ok(logs) = LogManager::open(root.path(), metrics(), TailCache::new(1 << 20), 0) else {
        return;
    };
    for (_, p) in logs.partitions() {
        for (base, _) in p.unverified_segments() {
            let _ = p.verify_segment(base);
        }
        let mut offset = p.offsets().log_start;
        while let Ok(read) = p.read(offset, 64 * 1024, true) {
            let Ok(headers) = batch::validate_all(&read.records) else {
                break;
            };
            match headers.last() {
                Some(last) if last.next_offset() > offset => offset = last.next_offset(),
                _ => break,
            }
        }
        let _ = p.offset_for_timestamp(0);
        let _ = p.producers();
        let _ = p.latest_epoch();
        let one = batch::encode(&[batch::Record {
            key: None,
            value: Some(b"after recovery"),
            timestamp: 0,
        }]);
        if let Ok(h) = batch::validate_all(&one)
            && p.append(&one, &h, 0, 0).is_ok()
        {
            let _ = p.sync();
        }
    }
}

/// File names a partition directory holds, by the kind byte of [`partition_dir`].
const FILES: &[&str] = &[
    "00000000000000000000.log",
    "00000000000000000000.index",
    "00000000000000000000.timeindex",
    "00000000000000000000.producers",
    "00000000000000000100.log",
    "00000000000000000100.index",
    "leader-epochs",
    "acked",
];

/// A metadata node's directory as start-up finds it (same input format as
/// [`partition_dir`]): the Raft log, the state snapshot and the incarnation file are
/// opened and replayed as a node does before it joins the quorum.
/// The first byte's low bit says whether to fix up the records' CRCs once written, so
/// that mutations reach the JSON behind them.
pub fn meta_dir(data: &[u8]) {
    let Some((&flags, files)) = data.split_first() else {
        return;
    };
    let Ok(dir) = tempfile::tempdir() else { return };
    if write_named(dir.path(), files, META_FILES).is_err() {
        return;
    }
    if flags & 1 == 1 {
        for name in &META_FILES[..2] {
            let path = dir.path().join(name);
            if let Ok(mut bytes) = std::fs::read(&path) {
                fix_meta_crcs(&mut bytes);
                let _ = std::fs::write(&path, bytes);
            }
        }
    }
    let _ = strata_meta::fuzzing::open_dir(dir.path());
}

/// Sets the CRC of every whole record of a metadata file (an 8-byte magic, then
/// `[u32 length][u32 CRC-32C of length and payload][payload]`, little-endian).
fn fix_meta_crcs(buf: &mut [u8]) {
    let mut pos = 8;
    while let Some(head) = buf.get(pos..pos + 8) {
        let len_bytes = [head[0], head[1], head[2], head[3]];
        let end = pos + 8 + u32::from_le_bytes(len_bytes) as usize;
        let Some(payload) = buf.get(pos + 8..end) else {
            return;
        };
        let crc = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload);
        buf[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
        pos = end;
    }
}

/// File names of a metadata directory, by kind byte.
const META_FILES: &[&str] = &["raft.log", "state.snapshot", "incarnation"];

/// The body of a metadata RPC frame from a peer (JSON), as a request and as a response.
pub fn meta_rpc(data: &[u8]) {
    strata_meta::fuzzing::decode_rpc(data);
}

fn write_files(dir: &Path, data: &[u8]) -> std::io::Result<()> {
    write_named(dir, data, FILES)
}

/// Writes the files of an input made of `[u8 kind][u16 length][bytes]` records, the kind
/// picking a name from `names`.
fn write_named(dir: &Path, mut data: &[u8], names: &[&str]) -> std::io::Result<()> {
    while let [kind, hi, lo, rest @ ..] = data {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
        let name = names[usize::from(*kind) % names.len()];
        std::fs::write(dir.join(name), &rest[..len])?;
        data = &rest[len..];
    }
    Ok(())
}

fn metrics() -> strata_telemetry::LogMetrics {
    static METRICS: OnceLock<strata_telemetry::Metrics> = OnceLock::new();
    METRICS
        .get_or_init(|| match strata_telemetry::Metrics::new() {
            Ok(m) => m,
            Err(e) => panic!("metrics registry: {e}"),
        })
        .log
        .clone()
}
