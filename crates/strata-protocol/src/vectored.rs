//! Response frames written with vectored I/O: the protocol fields are encoded into one
//! small buffer, and the record bytes of a Fetch response are written from where they
//! already are (segment reads, the tail cache, cache blocks), never copied into the
//! response buffer.
//!
//! The Fetch response is still encoded by `kafka-protocol`: each partition's records are
//! first replaced by a 16-byte placeholder that names the partition, the response is
//! encoded (a few hundred bytes), and each placeholder with its length prefix is then
//! cut out and replaced by the real length prefix and the real records as a chunk of
//! their own. The frame is byte for byte what encoding the whole response would give.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::io::IoSlice;
use std::sync::OnceLock;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, FetchResponse, ResponseKind};

use crate::frame::{FrameError, encode_response};

/// A response frame as chunks, written in order (`Buf` over all of them).
#[derive(Debug, Default)]
pub struct Frame {
    chunks: VecDeque<Bytes>,
    remaining: usize,
}

impl Frame {
    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.remaining += b.len();
            self.chunks.push_back(b);
        }
    }

    /// The frame's bytes in one buffer (the copying path's equivalent).
    #[cfg(test)]
    fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.remaining);
        for c in &self.chunks {
            out.extend_from_slice(c);
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

impl Buf for Frame {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |c| &c[..])
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, c) in dst.iter_mut().zip(&self.chunks) {
            *slot = IoSlice::new(c);
            n += 1;
        }
        n
    }

    fn advance(&mut self, mut cnt: usize) {
        self.remaining = self.remaining.saturating_sub(cnt);
        while cnt > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.chunks.pop_front();
        }
    }
}

/// 12 bytes, random per process, that start every placeholder.
fn magic() -> &'static [u8; 12] {
    static MAGIC: OnceLock<[u8; 12]> = OnceLock::new();
    MAGIC.get_or_init(|| {
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
    })
}

const PLACEHOLDER: usize = 16;

fn placeholder(index: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(PLACEHOLDER);
    b.extend_from_slice(magic());
    b.put_u32(index);
    b.freeze()
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

/// Encodes a Fetch response with its record bytes as chunks of their own.
pub fn encode_fetch_response(
    correlation_id: i32,
    version: i16,
    mut resp: FetchResponse,
) -> Result<Frame, FrameError> {
    let fail = |reason: String| FrameError::Encode {
        api: ApiKey::Fetch,
        version,
        reason,
    };
    let mut records: Vec<Bytes> = Vec::new();
    for p in resp
        .responses
        .iter_mut()
        .flat_map(|t| t.partitions.iter_mut())
    {
        if let Some(r) = p.records.as_mut().filter(|r| !r.is_empty()) {
            let index = u32::try_from(records.len()).map_err(|e| fail(e.to_string()))?;
            records.push(std::mem::replace(r, placeholder(index)));
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
        frame.push(r);
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
                let frame = encode_fetch_response(9, version, resp).unwrap();
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
        let mut frame = encode_fetch_response(1, 16, resp).unwrap();
        assert!(
            frame
                .chunks
                .iter()
                .any(|c| c.as_ptr() == first.as_ptr() && c.len() == first.len()),
            "the records are a chunk of their own, the same memory"
        );
        let total = frame.remaining();
        let mut slices = [IoSlice::new(&[]); 16];
        let n = frame.chunks_vectored(&mut slices);
        assert_eq!(slices[..n].iter().map(|s| s.len()).sum::<usize>(), total);
        let whole = frame.to_bytes();
        let mut read = Vec::new();
        while frame.has_remaining() {
            let step = frame.chunk().len().min(333);
            read.extend_from_slice(&frame.chunk()[..step]);
            frame.advance(step);
        }
        assert_eq!(read, whole);
    }
}
