//! Response frames written with vectored I/O: the protocol fields are encoded into one
//! small buffer, and the record bytes of a Fetch response are written from where they
//! already are (segment reads, the tail cache, cache blocks), never copied into the
//! response buffer. Record bytes may also stay in their segment files ([`FileRange`]),
//! for the connection to send with `sendfile`.
//!
//! The Fetch response is still encoded by `kafka-protocol`: each partition's records are
//! first replaced by a 16-byte placeholder that names the partition, the response is
//! encoded (a few hundred bytes), and each placeholder with its length prefix is then
//! cut out and replaced by the real length prefix and the real records as a chunk of
//! their own. The frame is byte for byte what encoding the whole response would give.

use std::collections::VecDeque;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::IoSlice;
use std::sync::{Arc, OnceLock};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, FetchResponse, ResponseKind};

use crate::frame::{FrameError, encode_response};

/// `len` bytes of an open file from `pos`: record bytes left in a segment file. The
/// open file keeps them readable even if the segment is deleted meanwhile; a file cut
/// shorter meanwhile (a follower truncating its log) ends the connection, as the frame
/// cannot be completed.
#[derive(Debug, Clone)]
pub struct FileRange {
    pub file: Arc<File>,
    pub pos: u64,
    pub len: usize,
}

#[derive(Debug)]
enum Chunk {
    Memory(Bytes),
    File(FileRange),
}

impl Chunk {
    fn len(&self) -> usize {
        match self {
            Chunk::Memory(b) => b.len(),
            Chunk::File(f) => f.len,
        }
    }
}

/// A response frame as chunks, written in order: runs of bytes in memory (vectored
/// writes) and ranges of files (`sendfile`).
#[derive(Debug, Default)]
pub struct Frame {
    chunks: VecDeque<Chunk>,
    remaining: usize,
}

impl Frame {
    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.remaining += b.len();
            self.chunks.push_back(Chunk::Memory(b));
        }
    }

    fn push_file(&mut self, f: FileRange) {
        if f.len > 0 {
            self.remaining += f.len;
            self.chunks.push_back(Chunk::File(f));
        }
    }

    /// Bytes left to write.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// The file range to write next, if the next bytes are in a file.
    pub fn front_file(&self) -> Option<&FileRange> {
        match self.chunks.front() {
            Some(Chunk::File(f)) => Some(f),
            _ => None,
        }
    }

    /// Fills `dst` with the bytes in memory up to the next file range (or the end), and
    /// says how many slices it filled.
    pub fn memory_slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, c) in dst.iter_mut().zip(&self.chunks) {
            let Chunk::Memory(b) = c else { break };
            *slot = IoSlice::new(b);
            n += 1;
        }
        n
    }

    /// Marks `cnt` bytes as written.
    pub fn advance(&mut self, mut cnt: usize) {
        self.remaining = self.remaining.saturating_sub(cnt);
        while cnt > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            if cnt < front.len() {
                match front {
                    Chunk::Memory(b) => b.advance(cnt),
                    Chunk::File(f) => {
                        f.pos += cnt as u64;
                        f.len -= cnt;
                    }
                }
                return;
            }
            cnt -= front.len();
            self.chunks.pop_front();
        }
    }

    /// The frame's bytes in one buffer (the copying path's equivalent), file ranges read.
    #[cfg(test)]
    #[allow(clippy::unwrap_used)]
    fn to_bytes(&self) -> Bytes {
        use std::os::unix::fs::FileExt;
        let mut out = BytesMut::with_capacity(self.remaining);
        for c in &self.chunks {
            match c {
                Chunk::Memory(b) => out.extend_from_slice(b),
                Chunk::File(f) => {
                    let mut buf = vec![0u8; f.len];
                    f.file.read_exact_at(&mut buf, f.pos).unwrap();
                    out.extend_from_slice(&buf);
                }
            }
        }
        out.freeze()
    }
}

impl From<Bytes> for Frame {
    fn from(b: Bytes) -> Self {
        let mut f = Frame::default();
        f.push(b);
        f
    }
}

/// Record bytes of a Fetch response that stay in files: each entry stands in the
/// response for the partition whose records are its marker ([`FileRecords::add`]).
#[derive(Debug, Default)]
pub struct FileRecords {
    ranges: Vec<Vec<FileRange>>,
}

impl FileRecords {
    /// Takes `ranges` (a partition's records, in order) and returns the marker to put in
    /// the response as that partition's records. An empty list gives empty records.
    pub fn add(&mut self, ranges: Vec<FileRange>) -> Bytes {
        if ranges.iter().all(|r| r.len == 0) {
            return Bytes::new();
        }
        let index = self.ranges.len() as u32;
        self.ranges.push(ranges);
        marker(file_magic(), index)
    }

    /// Which entry `records` stands for, if it is one of this response's markers.
    fn index_of(&self, records: &Bytes) -> Option<usize> {
        if records.len() != PLACEHOLDER || records[..12] != file_magic()[..] {
            return None;
        }
        let index = u32::from_be_bytes(records[12..].try_into().ok()?) as usize;
        (index < self.ranges.len()).then_some(index)
    }

    /// The ranges `records` stands for, if it is one of this response's markers.
    fn take(&mut self, records: &Bytes) -> Option<Vec<FileRange>> {
        let index = self.index_of(records)?;
        Some(std::mem::take(&mut self.ranges[index]))
    }

    /// How many record bytes `records` holds, or stands for if it is a marker.
    pub fn records_len(&self, records: &Bytes) -> usize {
        self.index_of(records).map_or(records.len(), |i| {
            self.ranges[i].iter().map(|r| r.len).sum()
        })
    }
}

/// 12 random bytes.
fn random_magic() -> [u8; 12] {
    let random = || {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    };
    let (a, b) = (random().to_be_bytes(), random().to_be_bytes());
    let mut m = [0u8; 12];
    m[..8].copy_from_slice(&a);
    m[8..].copy_from_slice(&b[..4]);
    m
}

/// 12 bytes, random per process, that start every placeholder.
fn magic() -> &'static [u8; 12] {
    static MAGIC: OnceLock<[u8; 12]> = OnceLock::new();
    MAGIC.get_or_init(random_magic)
}

/// 12 bytes, random per process, that start every marker of records left in files.
fn file_magic() -> &'static [u8; 12] {
    static MAGIC: OnceLock<[u8; 12]> = OnceLock::new();
    MAGIC.get_or_init(random_magic)
}

const PLACEHOLDER: usize = 16;

fn marker(magic: &[u8; 12], index: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(PLACEHOLDER);
    b.extend_from_slice(magic);
    b.put_u32(index);
    b.freeze()
}

fn placeholder(index: u32) -> Bytes {
    marker(magic(), index)
}

/// A partition's records as they go into the frame.
enum Source {
    Memory(Bytes),
    Files(Vec<FileRange>),
}

impl Source {
    fn len(&self) -> usize {
        match self {
            Source::Memory(b) => b.len(),
            Source::Files(f) => f.iter().map(|r| r.len).sum(),
        }
    }
}

/// The length prefix of `len` record bytes: an `i32` before Fetch v12, an unsigned
/// varint of `len + 1` (compact nullable bytes) from v12.
fn length_prefix(len: usize, flexible: bool) -> Result<Bytes, String> {
    let mut b = BytesMut::with_capacity(5);
    if flexible {
        let mut v = u32::try_from(len + 1).map_err(|_| format!("{len} record bytes"))?;
        while v >= 0x80 {
            b.put_u8((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        b.put_u8(v as u8);
    } else {
        b.put_i32(i32::try_from(len).map_err(|_| format!("{len} record bytes"))?);
    }
    Ok(b.freeze())
}

/// Encodes a Fetch response with its record bytes as chunks of their own; records that
/// are markers of `files` are written from those files.
pub fn encode_fetch_response(
    correlation_id: i32,
    version: i16,
    mut resp: FetchResponse,
    mut files: FileRecords,
) -> Result<Frame, FrameError> {
    let fail = |reason: String| FrameError::Encode {
        api: ApiKey::Fetch,
        version,
        reason,
    };
    let mut records: Vec<Source> = Vec::new();
    for p in resp
        .responses
        .iter_mut()
        .flat_map(|t| t.partitions.iter_mut())
    {
        if let Some(r) = p.records.as_mut().filter(|r| !r.is_empty()) {
            let index = u32::try_from(records.len()).map_err(|e| fail(e.to_string()))?;
            let r = std::mem::replace(r, placeholder(index));
            records.push(match files.take(&r) {
                Some(ranges) => Source::Files(ranges),
                None => Source::Memory(r),
            });
        }
    }
    let encoded = encode_response(
        correlation_id,
        ApiKey::Fetch,
        version,
        &ResponseKind::Fetch(resp),
    )?;
    if records.is_empty() {
        return Ok(Frame::from(encoded));
    }
    let flexible = version >= 12;
    let old_prefix = length_prefix(PLACEHOLDER, flexible).map_err(fail)?;
    let mut frame = Frame::default();
    // The frame's size prefix, for the real sizes.
    let mut size = encoded.len() - 4;
    let mut prefixes = Vec::with_capacity(records.len());
    for r in &records {
        let prefix = length_prefix(r.len(), flexible).map_err(fail)?;
        size = size - PLACEHOLDER - old_prefix.len() + prefix.len() + r.len();
        prefixes.push(prefix);
    }
    let size = i32::try_from(size).map_err(|_| fail(format!("{size} bytes do not fit a frame")))?;
    frame.push(Bytes::copy_from_slice(&size.to_be_bytes()));
    let mut at = 4;
    for (i, (r, prefix)) in records.into_iter().zip(prefixes).enumerate() {
        let marker = placeholder(i as u32);
        let found = encoded[at..]
            .windows(PLACEHOLDER)
            .position(|w| w == &marker[..])
            .map(|p| p + at)
            .ok_or_else(|| fail(format!("placeholder {i} not found in the encoded response")))?;
        let start = found
            .checked_sub(old_prefix.len())
            .filter(|s| *s >= at && encoded[*s..found] == old_prefix[..])
            .ok_or_else(|| fail(format!("placeholder {i} without its length prefix")))?;
        frame.push(encoded.slice(at..start));
        frame.push(prefix);
        match r {
            Source::Memory(b) => frame.push(b),
            Source::Files(ranges) => ranges.into_iter().for_each(|f| frame.push_file(f)),
        }
        at = found + PLACEHOLDER;
    }
    frame.push(encoded.slice(at..));
    Ok(frame)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::protocol::StrBytes;

    use super::*;
    use crate::batch::Compression;
    use crate::batch::test_util::simple_batch;
    use crate::records::recompress;

    /// `n` bytes of batches of varied sizes, compressed with each codec in turn (the last
    /// one cut at `n`: the encoder must not care).
    fn records(n: usize, seed: usize) -> Bytes {
        let codecs = [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ];
        let mut b = BytesMut::new();
        let mut k = seed;
        while b.len() < n {
            let batch = simple_batch(k % 40 + 1, k as i64);
            b.extend_from_slice(&recompress(&batch, codecs[k % codecs.len()], None).unwrap());
            k += 1;
        }
        b.truncate(n);
        b.freeze()
    }

    /// A response with the fields `version` has.
    fn response(version: i16, sizes: &[Option<usize>]) -> FetchResponse {
        let partitions = sizes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                PartitionData::default()
                    .with_partition_index(i as i32)
                    .with_high_watermark(1_000 + i as i64)
                    .with_records(s.map(|n| records(n, i)))
            })
            .collect();
        let topic = FetchableTopicResponse::default().with_partitions(partitions);
        let topic = if version >= 13 {
            topic.with_topic_id(uuid::Uuid::from_u128(42))
        } else {
            topic.with_topic(TopicName(StrBytes::from_static_str("topic-a")))
        };
        let resp = FetchResponse::default().with_responses(vec![topic]);
        if version >= 7 {
            resp.with_session_id(7)
        } else {
            resp
        }
    }

    #[test]
    fn the_vectored_frame_equals_the_copied_one() {
        let cases: Vec<Vec<Option<usize>>> = vec![
            vec![],
            vec![None],
            vec![Some(0)],
            vec![Some(1)],
            vec![Some(15), Some(16), Some(17)],
            vec![Some(126), Some(127), Some(128), Some(16_383), Some(16_384)],
            vec![None, Some(3000), Some(0), Some(1 << 20), None, Some(70_000)],
        ];
        for version in 4..=16 {
            for sizes in &cases {
                let resp = response(version, sizes);
                let copied = encode_response(
                    9,
                    ApiKey::Fetch,
                    version,
                    &ResponseKind::Fetch(resp.clone()),
                )
                .unwrap();
                let frame =
                    encode_fetch_response(9, version, resp, FileRecords::default()).unwrap();
                assert_eq!(frame.remaining(), copied.len(), "v{version} {sizes:?}");
                assert!(
                    frame.to_bytes() == copied,
                    "v{version} {sizes:?}: the frames differ"
                );
            }
        }
    }

    #[test]
    fn records_are_not_copied_and_advance_walks_the_chunks() {
        let resp = response(16, &[Some(5000), Some(10)]);
        let first = resp.responses[0].partitions[0].records.clone().unwrap();
        let mut frame = encode_fetch_response(1, 16, resp, FileRecords::default()).unwrap();
        assert!(
            frame.chunks.iter().any(|c| matches!(c, Chunk::Memory(b)
                if b.as_ptr() == first.as_ptr() && b.len() == first.len())),
            "the records are a chunk of their own, the same memory"
        );
        let total = frame.remaining();
        let mut slices = [IoSlice::new(&[]); 16];
        let n = frame.memory_slices(&mut slices);
        assert_eq!(slices[..n].iter().map(|s| s.len()).sum::<usize>(), total);
        let whole = frame.to_bytes();
        let mut read = Vec::new();
        while frame.remaining() > 0 {
            let mut slices = [IoSlice::new(&[]); 16];
            frame.memory_slices(&mut slices);
            let step = slices[0].len().min(333);
            read.extend_from_slice(&slices[0][..step]);
            frame.advance(step);
        }
        assert_eq!(read, whole);
    }

    /// Records left in files (several ranges per partition, beside partitions whose
    /// records are in memory) give the frame that encoding the records themselves gives,
    /// for every Fetch version and a mix of batch sizes and codecs; writing stops before
    /// each file range, and advancing walks into and through it.
    #[test]
    fn records_in_files_give_the_same_frame() {
        use std::io::Write;
        let sizes = [
            Some(70_000),
            Some(0),
            Some(5_000),
            None,
            Some(1 << 20),
            Some(1),
        ];
        let mut file = tempfile::tempfile().unwrap();
        let mut at = 0u64;
        let mut placed = Vec::new();
        for (i, s) in sizes.iter().enumerate() {
            let r = s.map(|n| records(n, i)).unwrap_or_default();
            // 100 bytes of something else first: ranges start anywhere in the file.
            file.write_all(&[0xee; 100]).unwrap();
            file.write_all(&r).unwrap();
            placed.push(at + 100);
            at += 100 + r.len() as u64;
        }
        let file = Arc::new(file);
        for version in 4..=16 {
            let mut resp = response(version, &sizes);
            let copied = encode_response(
                5,
                ApiKey::Fetch,
                version,
                &ResponseKind::Fetch(resp.clone()),
            )
            .unwrap();
            let mut files = FileRecords::default();
            for (i, p) in resp.responses[0].partitions.iter_mut().enumerate() {
                let Some(r) = p.records.as_mut() else {
                    continue;
                };
                // Every other partition from the file, in ranges of at most 40,000 bytes.
                if i % 2 == 0 {
                    let mut ranges = Vec::new();
                    let mut off = 0;
                    while off < r.len() {
                        let len = (r.len() - off).min(40_000);
                        ranges.push(FileRange {
                            file: file.clone(),
                            pos: placed[i] + off as u64,
                            len,
                        });
                        off += len;
                    }
                    *r = files.add(ranges);
                }
            }
            let mut frame = encode_fetch_response(5, version, resp, files).unwrap();
            assert_eq!(frame.remaining(), copied.len(), "v{version}");
            assert!(frame.to_bytes() == copied, "v{version}: the frames differ");
            assert!(frame.front_file().is_none(), "a frame starts with its size");
            let mut written = Vec::new();
            while frame.remaining() > 0 {
                if let Some(f) = frame.front_file() {
                    use std::os::unix::fs::FileExt;
                    let step = f.len.min(30_000);
                    let mut buf = vec![0u8; step];
                    f.file.read_exact_at(&mut buf, f.pos).unwrap();
                    written.extend_from_slice(&buf);
                    frame.advance(step);
                    continue;
                }
                let mut slices = [IoSlice::new(&[]); 64];
                let n = frame.memory_slices(&mut slices);
                let bytes: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
                written.extend_from_slice(&bytes);
                frame.advance(bytes.len());
            }
            assert!(
                written == copied,
                "v{version}: written in steps, the frames differ"
            );
        }
    }
}
