//! Walking the records inside one v2 batch, for the few paths that need per-record
//! fields (ListOffsets by timestamp). The fetch path never comes here: it serves
//! batches as stored.
//!
//! Compressed batches are decompressed with a hard output limit, so a small batch that
//! expands to gigabytes (a "decompression bomb") is rejected instead of exhausting memory.

use std::io::Read;

use crate::batch::{
    self, BatchError, BatchHeader, Compression, ControlType, HEADER_LEN, LOG_OVERHEAD,
};

/// Upper bound on the decompressed size of one batch's records.
pub const MAX_DECOMPRESSED_BYTES: u64 = 256 * 1024 * 1024;

/// Why the records of a batch could not be walked.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("{codec:?} records do not decompress: {reason}")]
    Decompress { codec: Compression, reason: String },
    #[error("records expand beyond the decompression limit")]
    TooLarge,
    #[error("record {index} is malformed")]
    Malformed { index: usize },
}

/// The per-record fields that offset and time lookups need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPosition {
    pub offset: i64,
    pub timestamp: i64,
}

/// Returns the offset and timestamp of every record in `batch` (a whole batch, header
/// included), in order. With log-append-time batches every record carries the batch's
/// max timestamp, as Kafka defines it.
pub fn record_positions(batch: &[u8]) -> Result<Vec<RecordPosition>, RecordsError> {
    let header = BatchHeader::parse(batch)?;
    let end = header.total_len().min(batch.len());
    let raw = &batch[HEADER_LEN.min(end)..end];
    let codec = header.compression()?;
    let data = decompress(codec, raw, MAX_DECOMPRESSED_BYTES)?;
    let mut out = Vec::with_capacity((header.record_count.max(0) as usize).min(data.len()));
    let mut cur = data.as_slice();
    for index in 0..header.record_count.max(0) as usize {
        let malformed = || RecordsError::Malformed { index };
        let len = read_varint(&mut cur).ok_or_else(malformed)?;
        let len = usize::try_from(len).map_err(|_| malformed())?;
        if len > cur.len() {
            return Err(malformed());
        }
        let (mut rec, rest) = cur.split_at(len);
        cur = rest;
        let (_attributes, tail) = rec.split_first().ok_or_else(malformed)?;
        rec = tail;
        let ts_delta = read_varint(&mut rec).ok_or_else(malformed)?;
        let offset_delta = read_varint(&mut rec).ok_or_else(malformed)?;
        let timestamp = if header.is_log_append_time() {
            header.max_timestamp
        } else {
            header.base_timestamp.wrapping_add(ts_delta)
        };
        out.push(RecordPosition {
            offset: header.base_offset.wrapping_add(offset_delta),
            timestamp,
        });
    }
    Ok(out)
}

/// What the transaction marker at the start of `batch` (a control batch) says, or `None`
/// if its first record's key is not a marker's (`[i16 version][i16 type]`, type 0 or 1)
/// or the batch is damaged. Markers are never compressed.
pub fn control_type(batch: &[u8]) -> Option<ControlType> {
    let header = BatchHeader::parse(batch).ok()?;
    if !header.is_control() || header.compression().ok()? != Compression::None {
        return None;
    }
    let mut cur = batch.get(HEADER_LEN..header.total_len().min(batch.len()))?;
    let len = usize::try_from(read_varint(&mut cur)?).ok()?;
    let mut rec = cur.get(..len)?;
    rec = rec.get(1..)?; // attributes
    read_varint(&mut rec)?; // timestamp delta
    read_varint(&mut rec)?; // offset delta
    let key_len = usize::try_from(read_varint(&mut rec)?).ok()?;
    match rec.get(..key_len)? {
        [_, _, hi, lo, ..] => ControlType::from_code(i16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

/// Reads a zig-zag varint (Kafka's `varint`/`varlong`), or `None` if malformed.
fn read_varint(cur: &mut &[u8]) -> Option<i64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = cur.split_first()?;
        *cur = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

fn decompress(codec: Compression, raw: &[u8], limit: u64) -> Result<Vec<u8>, RecordsError> {
    let fail = |reason: String| RecordsError::Decompress { codec, reason };
    match codec {
        Compression::None => Ok(raw.to_vec()),
        Compression::Gzip => read_bounded(flate2::read::GzDecoder::new(raw), limit).map_err(fail),
        Compression::Lz4 => {
            let decoder = lz4::Decoder::new(raw).map_err(|e| fail(e.to_string()))?;
            read_bounded(decoder, limit).map_err(fail)
        }
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(raw).map_err(|e| fail(e.to_string()))?;
            read_bounded(decoder, limit).map_err(fail)
        }
        Compression::Snappy => snappy(raw, limit).map_err(|e| match e {
            SnappyError::TooLarge => RecordsError::TooLarge,
            SnappyError::Bad(reason) => fail(reason),
        }),
    }
    .and_then(|data| {
        if data.len() as u64 > limit {
            Err(RecordsError::TooLarge)
        } else {
            Ok(data)
        }
    })
}

/// Reads at most one byte more than the limit, so the caller can tell "too large".
fn read_bounded(reader: impl Read, limit: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

enum SnappyError {
    TooLarge,
    Bad(String),
}

/// The framing the Java client writes (xerial snappy-java): a 16-byte magic header, then
/// blocks of `[u32 length][raw snappy block]`. Without the magic, the data is one raw block
/// (what librdkafka writes).
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;

fn snappy(raw: &[u8], limit: u64) -> Result<Vec<u8>, SnappyError> {
    if raw.starts_with(XERIAL_MAGIC) && raw.len() >= XERIAL_HEADER_LEN {
        let mut out = Vec::new();
        let mut cur = &raw[XERIAL_HEADER_LEN..];
        while !cur.is_empty() {
            if cur.len() < 4 {
                return Err(SnappyError::Bad("truncated xerial block length".into()));
            }
            let len = u32::from_be_bytes([cur[0], cur[1], cur[2], cur[3]]) as usize;
            cur = &cur[4..];
            if len > cur.len() {
                return Err(SnappyError::Bad("truncated xerial block".into()));
            }
            let (block, rest) = cur.split_at(len);
            cur = rest;
            snappy_block(block, &mut out, limit)?;
        }
        Ok(out)
    } else {
        let mut out = Vec::new();
        snappy_block(raw, &mut out, limit)?;
        Ok(out)
    }
}

fn snappy_block(block: &[u8], out: &mut Vec<u8>, limit: u64) -> Result<(), SnappyError> {
    let len = snap::raw::decompress_len(block).map_err(|e| SnappyError::Bad(e.to_string()))?;
    if (out.len() + len) as u64 > limit {
        return Err(SnappyError::TooLarge);
    }
    let start = out.len();
    out.resize(start + len, 0);
    snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| SnappyError::Bad(e.to_string()))?;
    Ok(())
}

/// The smallest record timestamp in `batch` (its base timestamp is not always: record
/// deltas may be negative).
pub fn min_timestamp(batch: &[u8]) -> Result<i64, RecordsError> {
    Ok(record_positions(batch)?
        .iter()
        .map(|r| r.timestamp)
        .min()
        .unwrap_or(i64::MAX))
}

/// `batch` with its records compressed by `codec` (at `level`, the codec's default if
/// `None`) instead of the codec it arrived with: Kafka's `compression.type` when a topic
/// names a codec. Every other field (producer id, epoch, sequence, timestamps, flags) is
/// kept, and the CRC recomputed. The records are decompressed with the usual bound.
pub fn recompress(
    batch: &[u8],
    codec: Compression,
    level: Option<i32>,
) -> Result<Vec<u8>, RecordsError> {
    let header = BatchHeader::parse(batch)?;
    let end = header.total_len().min(batch.len());
    let raw = &batch[HEADER_LEN.min(end)..end];
    let plain = decompress(header.compression()?, raw, MAX_DECOMPRESSED_BYTES)?;
    let body = compress(codec, &plain, level)?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&batch[..HEADER_LEN]);
    out.extend_from_slice(&body);
    let batch_length =
        i32::try_from(out.len() - LOG_OVERHEAD).map_err(|_| RecordsError::TooLarge)?;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let attributes = (header.attributes & !0x07) | codec.attribute_bits();
    out[21..23].copy_from_slice(&attributes.to_be_bytes());
    batch::update_crc(&mut out);
    Ok(out)
}

/// Bytes of uncompressed records per block of the xerial snappy framing (as the Java
/// client's `SnappyOutputStream` writes).
const XERIAL_BLOCK: usize = 32 * 1024;

fn compress(codec: Compression, data: &[u8], level: Option<i32>) -> Result<Vec<u8>, RecordsError> {
    use std::io::Write;
    let fail = |reason: String| RecordsError::Decompress { codec, reason };
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            let level = match level {
                Some(l @ 1..=9) => flate2::Compression::new(l as u32),
                _ => flate2::Compression::default(),
            };
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), level);
            enc.write_all(data).map_err(|e| fail(e.to_string()))?;
            enc.finish().map_err(|e| fail(e.to_string()))
        }
        Compression::Snappy => {
            // The xerial framing the Java client and broker write: magic, version 1,
            // compatible version 1, then [u32 length][raw snappy block] per block.
            let mut out = Vec::with_capacity(XERIAL_HEADER_LEN + data.len() / 2);
            out.extend_from_slice(XERIAL_MAGIC);
            out.extend_from_slice(&1u32.to_be_bytes());
            out.extend_from_slice(&1u32.to_be_bytes());
            let mut enc = snap::raw::Encoder::new();
            for chunk in data.chunks(XERIAL_BLOCK) {
                let block = enc.compress_vec(chunk).map_err(|e| fail(e.to_string()))?;
                out.extend_from_slice(&(block.len() as u32).to_be_bytes());
                out.extend_from_slice(&block);
            }
            Ok(out)
        }
        Compression::Lz4 => {
            // The LZ4 frame format with 64 KiB independent blocks, as Kafka writes it.
            let mut enc = lz4::EncoderBuilder::new()
                .level(level.map_or(9, |l| l.clamp(1, 17) as u32))
                .block_size(lz4::BlockSize::Max64KB)
                .block_mode(lz4::BlockMode::Independent)
                .checksum(lz4::ContentChecksum::NoChecksum)
                .build(Vec::new())
                .map_err(|e| fail(e.to_string()))?;
            enc.write_all(data).map_err(|e| fail(e.to_string()))?;
            let (out, result) = enc.finish();
            result.map_err(|e| fail(e.to_string()))?;
            Ok(out)
        }
        Compression::Zstd => {
            zstd::bulk::compress(data, level.unwrap_or(3)).map_err(|e| fail(e.to_string()))
        }
    }
}

/// Finds the first record in `batch` whose timestamp is at least `target`.
pub fn first_at_or_after(
    batch: &[u8],
    target: i64,
) -> Result<Option<RecordPosition>, RecordsError> {
    Ok(record_positions(batch)?
        .into_iter()
        .find(|r| r.timestamp >= target))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::batch::set_base_offset;
    use crate::batch::test_util::simple_batch;

    #[test]
    fn walks_uncompressed_records() {
        let mut b = simple_batch(4, 100);
        set_base_offset(&mut b, 50);
        let pos = record_positions(&b).unwrap();
        assert_eq!(
            pos,
            (0..4)
                .map(|i| RecordPosition {
                    offset: 50 + i,
                    timestamp: 100 + i
                })
                .collect::<Vec<_>>()
        );
        assert_eq!(
            first_at_or_after(&b, 102).unwrap(),
            Some(RecordPosition {
                offset: 52,
                timestamp: 102
            })
        );
        assert_eq!(first_at_or_after(&b, 1000).unwrap(), None);
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        let b = simple_batch(3, 0);
        for cut in HEADER_LEN..b.len() {
            // Shorten the records while keeping the header's count: must fail cleanly.
            let mut c = b[..cut].to_vec();
            let len = (cut - 12) as i32;
            c[8..12].copy_from_slice(&len.to_be_bytes());
            assert!(record_positions(&c).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn snappy_bomb_is_rejected_by_declared_length() {
        // A raw snappy block whose header declares 1 GiB of output.
        let mut block = Vec::new();
        let mut n: u32 = 1 << 30;
        while n >= 0x80 {
            block.push((n as u8) | 0x80);
            n >>= 7;
        }
        block.push(n as u8);
        assert!(matches!(
            snappy(&block, MAX_DECOMPRESSED_BYTES),
            Err(SnappyError::TooLarge)
        ));
    }

    /// A batch of records with keys, values and varied timestamps, in `codec`, encoded by
    /// the kafka-protocol crate (an implementation independent of ours).
    fn foreign_batch(codec: kafka_protocol::records::Compression) -> Vec<u8> {
        use kafka_protocol::records::{
            Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let records: Vec<Record> = (0..50)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: 77,
                producer_epoch: 3,
                timestamp_type: TimestampType::Creation,
                offset: i,
                sequence: 10 + i as i32,
                timestamp: 1_000 + (i * 7) % 13,
                key: Some(bytes::Bytes::from(format!("k{i}"))),
                value: Some(bytes::Bytes::from(vec![b'v'; 100 + i as usize])),
                headers: Default::default(),
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: codec,
            },
        )
        .unwrap();
        buf.to_vec()
    }

    #[test]
    fn recompressed_batches_keep_every_record_and_field() {
        use kafka_protocol::records::{Compression as K, RecordBatchDecoder};
        let codecs = [
            (K::None, Compression::None),
            (K::Gzip, Compression::Gzip),
            (K::Snappy, Compression::Snappy),
            (K::Lz4, Compression::Lz4),
            (K::Zstd, Compression::Zstd),
        ];
        for (from_k, _) in codecs {
            let original = foreign_batch(from_k);
            let want = RecordBatchDecoder::decode(&mut bytes::Bytes::from(original.clone()))
                .unwrap()
                .records;
            let h0 = BatchHeader::parse(&original).unwrap();
            for (to_k, to) in codecs {
                for level in [None, Some(1)] {
                    let out = recompress(&original, to, level).unwrap();
                    // Valid by our checks (length, CRC, count) and by the other decoder.
                    let h = batch::validate(&out).unwrap();
                    assert_eq!(h.compression().unwrap(), to);
                    assert_eq!(h.total_len(), out.len());
                    for (a, b) in [
                        (h.producer_id, h0.producer_id),
                        (h.base_timestamp, h0.base_timestamp),
                        (h.max_timestamp, h0.max_timestamp),
                        (h.base_sequence as i64, h0.base_sequence as i64),
                        (h.record_count as i64, h0.record_count as i64),
                        (h.producer_epoch as i64, h0.producer_epoch as i64),
                    ] {
                        assert_eq!(a, b, "{from_k:?} -> {to:?}");
                    }
                    let got =
                        RecordBatchDecoder::decode(&mut bytes::Bytes::from(out.clone())).unwrap();
                    assert_eq!(got.compression, to_k, "{from_k:?} -> {to:?}");
                    assert_eq!(got.records, want, "{from_k:?} -> {to:?}");
                    assert_eq!(
                        record_positions(&out).unwrap(),
                        record_positions(&original).unwrap()
                    );
                }
            }
        }
    }

    #[test]
    fn log_append_time_stamps_the_batch() {
        let mut b = foreign_batch(kafka_protocol::records::Compression::Lz4);
        batch::set_log_append_time(&mut b, 5_000);
        let h = batch::validate(&b).unwrap();
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp, 5_000);
        assert!(
            record_positions(&b)
                .unwrap()
                .iter()
                .all(|r| r.timestamp == 5_000)
        );
    }

    #[test]
    fn min_timestamp_sees_negative_deltas() {
        let b = foreign_batch(kafka_protocol::records::Compression::None);
        // Timestamps are 1000 + (i*7)%13: the first is 1000, the smallest too; the
        // largest is 1012.
        assert_eq!(min_timestamp(&b).unwrap(), 1000);
        assert_eq!(BatchHeader::parse(&b).unwrap().max_timestamp, 1012);
    }

    #[test]
    fn gzip_output_is_bounded() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 1 << 20]).unwrap();
        let gz = enc.finish().unwrap();
        assert!(
            gz.len() < 4096,
            "a megabyte of zeros compresses to a few bytes"
        );
        assert!(matches!(
            decompress(Compression::Gzip, &gz, 64 * 1024),
            Err(RecordsError::TooLarge)
        ));
        assert_eq!(
            decompress(Compression::Gzip, &gz, 1 << 20).unwrap().len(),
            1 << 20
        );
    }

    #[test]
    fn markers_say_what_they_are_and_other_batches_do_not() {
        for control in [ControlType::Commit, ControlType::Abort] {
            let marker = batch::encode_marker(42, 3, control, 7, 1_000);
            let h = batch::validate(&marker).unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.record_count),
                (42, 3, 1)
            );
            assert_eq!(control_type(&marker), Some(control));
            // Cut anywhere, it says nothing rather than something wrong.
            for cut in 0..marker.len() {
                assert_eq!(control_type(&marker[..cut]), None, "cut at {cut}");
            }
        }
        assert_eq!(control_type(&simple_batch(2, 0)), None);
        // Producers may not send markers; a follower copies them with the rest.
        let mut log = simple_batch(2, 0);
        log.extend(batch::encode_marker(42, 3, ControlType::Commit, 7, 0));
        assert!(matches!(
            batch::validate_all(&log),
            Err(BatchError::ControlBatch)
        ));
        assert_eq!(batch::validate_log(&log).unwrap().len(), 2);
        let mut unknown = batch::encode_marker(1, 0, ControlType::Commit, 0, 0);
        let key_type_at = HEADER_LEN + 1 + 1 + 1 + 1 + 1 + 2;
        unknown[key_type_at] = 9;
        assert_eq!(control_type(&unknown), None);
    }
}
