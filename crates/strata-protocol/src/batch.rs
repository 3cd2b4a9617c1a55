//! The Kafka v2 record batch ("magic 2"), as clients send it and as the log stores it.
//!
//! Layout of the 61-byte header (all integers big-endian):
//!
//! | bytes  | field                   | covered by CRC |
//! |--------|-------------------------|----------------|
//! | 0..8   | base offset             | no             |
//! | 8..12  | batch length (from 12)  | no             |
//! | 12..16 | partition leader epoch  | no             |
//! | 16     | magic (2)               | no             |
//! | 17..21 | CRC-32C of bytes 21..   | -              |
//! | 21..23 | attributes              | yes            |
//! | 23..27 | last offset delta       | yes            |
//! | 27..35 | base timestamp          | yes            |
//! | 35..43 | max timestamp           | yes            |
//! | 43..51 | producer id             | yes            |
//! | 51..53 | producer epoch          | yes            |
//! | 53..57 | base sequence           | yes            |
//! | 57..61 | record count            | yes            |
//!
//! Because the base offset and leader epoch sit outside the CRC, the broker can assign
//! offsets by rewriting them without touching the records or recomputing the checksum.

/// Size of the fixed batch header.
pub const HEADER_LEN: usize = 61;
/// Bytes before the `batch length` field's coverage starts (base offset + length).
pub const LOG_OVERHEAD: usize = 12;
/// The only record-batch format this broker accepts.
pub const MAGIC_V2: i8 = 2;
const MAGIC_POS: usize = 16;
const CRC_POS: usize = 17;
const CRC_START: usize = 21;

/// Why a batch was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record batch is truncated: {available} bytes available, {needed} needed")]
    Truncated { available: usize, needed: usize },
    #[error("record batch length {0} is outside the valid range")]
    BadLength(i32),
    #[error("record batch magic {0} is not supported (only magic 2)")]
    UnsupportedMagic(i8),
    #[error("record batch CRC mismatch: header says {expected:#010x}, data gives {actual:#010x}")]
    CrcMismatch { expected: u32, actual: u32 },
    #[error("record batch has {count} records but its offset range spans {span}")]
    CountMismatch { count: i32, span: i64 },
    #[error("record batch uses unknown compression codec {0}")]
    UnknownCompression(i16),
    #[error("control batches may not be produced by clients")]
    ControlBatch,
}

/// Compression codec from the low three bits of the batch attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// The codec by Kafka's `compression.type` name (`uncompressed` for none).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "uncompressed" | "none" => Self::None,
            "gzip" => Self::Gzip,
            "snappy" => Self::Snappy,
            "lz4" => Self::Lz4,
            "zstd" => Self::Zstd,
            _ => return None,
        })
    }

    /// The codec's value in the low three bits of the batch attributes.
    pub fn attribute_bits(self) -> i16 {
        match self {
            Self::None => 0,
            Self::Gzip => 1,
            Self::Snappy => 2,
            Self::Lz4 => 3,
            Self::Zstd => 4,
        }
    }

    fn from_attributes(attributes: i16) -> Result<Self, BatchError> {
        match attributes & 0x07 {
            0 => Ok(Self::None),
            1 => Ok(Self::Gzip),
            2 => Ok(Self::Snappy),
            3 => Ok(Self::Lz4),
            4 => Ok(Self::Zstd),
            other => Err(BatchError::UnknownCompression(other)),
        }
    }
}

/// The decoded fixed header of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(x)
}

impl BatchHeader {
    /// Reads the header at the start of `buf`. Checks only that the header is present, the
    /// magic is 2 and the length is plausible; use [`validate`] for a full check.
    pub fn parse(buf: &[u8]) -> Result<Self, BatchError> {
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Truncated {
                available: buf.len(),
                needed: HEADER_LEN,
            });
        }
        let magic = buf[MAGIC_POS] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        let batch_length = be_i32(buf, 8);
        if (batch_length as i64) < (HEADER_LEN - LOG_OVERHEAD) as i64 {
            return Err(BatchError::BadLength(batch_length));
        }
        Ok(Self {
            base_offset: be_i64(buf, 0),
            batch_length,
            partition_leader_epoch: be_i32(buf, 12),
            magic,
            crc: be_i32(buf, CRC_POS) as u32,
            attributes: be_i16(buf, 21),
            last_offset_delta: be_i32(buf, 23),
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, 35),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            record_count: be_i32(buf, 57),
        })
    }

    /// Bytes the whole batch occupies, header included.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    /// Offset the next batch will start at.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    pub fn compression(&self) -> Result<Compression, BatchError> {
        Compression::from_attributes(self.attributes)
    }

    /// Whether timestamps are the broker's append time rather than the producer's.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & 0x08 != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL != 0
    }
}

/// Fully validates the batch at the start of `buf` as a produce request would need it:
/// header, length within `buf`, CRC-32C, compression codec, and that the record count
/// matches the offset range. Returns the header; the batch is `buf[..header.total_len()]`.
pub fn validate(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = check_crc(buf)?;
    header.compression()?;
    let span = header.last_offset_delta as i64 + 1;
    if header.record_count <= 0 || span != header.record_count as i64 {
        return Err(BatchError::CountMismatch {
            count: header.record_count,
            span,
        });
    }
    Ok(header)
}

/// Checks the header, that the whole batch is present, and its CRC-32C. This is what log
/// recovery uses to decide where a torn or corrupt tail begins.
pub fn check_crc(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(buf)?;
    let total = header.total_len();
    if buf.len() < total {
        return Err(BatchError::Truncated {
            available: buf.len(),
            needed: total,
        });
    }
    let actual = crc32c::crc32c(&buf[CRC_START..total]);
    if actual != header.crc {
        return Err(BatchError::CrcMismatch {
            expected: header.crc,
            actual,
        });
    }
    Ok(header)
}

/// Splits `buf` into validated batches, as a produce request's records field must be:
/// no control batches (only partition leaders write those). Fails on the first invalid
/// batch or trailing partial bytes.
pub fn validate_all(buf: &[u8]) -> Result<Vec<BatchHeader>, BatchError> {
    let headers = validate_log(buf)?;
    if headers.iter().any(BatchHeader::is_control) {
        return Err(BatchError::ControlBatch);
    }
    Ok(headers)
}

/// Splits `buf` into validated batches as a log holds them, transaction markers
/// included: what a follower copies from its leader.
pub fn validate_log(buf: &[u8]) -> Result<Vec<BatchHeader>, BatchError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let header = validate(&buf[pos..])?;
        pos += header.total_len();
        out.push(header);
    }
    Ok(out)
}

/// Recomputes the CRC-32C of the whole batch in `batch` after a field it covers changed.
pub fn update_crc(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[CRC_POS..CRC_START].copy_from_slice(&crc.to_be_bytes());
}

/// Marks the whole batch in `batch` as stamped with the broker's append time `now_ms`
/// (Kafka's `message.timestamp.type=LogAppendTime`): the timestamp-type attribute is set
/// and the max timestamp becomes `now_ms`, which consumers then see for every record.
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    let attributes = be_i16(batch, 21) | 0x08;
    batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    batch[35..43].copy_from_slice(&now_ms.to_be_bytes());
    update_crc(batch);
}

/// Rewrites the base offset of the batch at the start of `batch` (outside the CRC).
pub fn set_base_offset(batch: &mut [u8], offset: i64) {
    batch[0..8].copy_from_slice(&offset.to_be_bytes());
}

/// Rewrites the partition leader epoch of the batch at the start of `batch` (outside the CRC).
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[12..16].copy_from_slice(&epoch.to_be_bytes());
}

/// Iterates over the complete batches in `buf` by their headers only (no CRC check),
/// stopping silently before a partial batch at the end. Used on the read path, where
/// batches were validated when they were written.
pub struct HeaderIter<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> HeaderIter<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Byte position (within the buffer) just past the last batch returned.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl Iterator for HeaderIter<'_> {
    /// The batch's start position in the buffer and its header.
    type Item = (usize, BatchHeader);

    fn next(&mut self) -> Option<Self::Item> {
        let header = BatchHeader::parse(&self.buf[self.pos..]).ok()?;
        if self.buf.len() - self.pos < header.total_len() {
            return None;
        }
        let at = self.pos;
        self.pos += header.total_len();
        Some((at, header))
    }
}

/// One record for [`encode`].
pub struct Record<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub timestamp: i64,
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let byte = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// Encodes records as one uncompressed v2 batch with base offset 0, no producer id and a
/// correct CRC: what a plain (non-idempotent) producer sends.
pub fn encode(records: &[Record<'_>]) -> Vec<u8> {
    encode_with(records, 0, -1, -1)
}

/// What a transaction marker says: the transaction's records are committed or aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlType {
    Abort,
    Commit,
}

impl ControlType {
    /// The type in a control record's key (Kafka's `ControlRecordType`).
    pub fn code(self) -> i16 {
        match self {
            Self::Abort => 0,
            Self::Commit => 1,
        }
    }

    pub fn from_code(code: i16) -> Option<Self> {
        match code {
            0 => Some(Self::Abort),
            1 => Some(Self::Commit),
            _ => None,
        }
    }
}

/// Attribute bits of a transactional batch and of a control batch.
pub const TRANSACTIONAL: i16 = 0x10;
pub const CONTROL: i16 = 0x20;

/// A transaction marker as the partition leader writes it for the transaction
/// coordinator (Kafka's end-transaction marker): a transactional control batch of the
/// producer, with one record whose key is `[i16 version 0][i16 type]` and whose value is
/// `[i16 version 0][i32 coordinator epoch]`. Base offset 0, CRC set.
pub fn encode_marker(
    producer_id: i64,
    producer_epoch: i16,
    control: ControlType,
    coordinator_epoch: i32,
    timestamp: i64,
) -> Vec<u8> {
    let mut key = 0i16.to_be_bytes().to_vec();
    key.extend_from_slice(&control.code().to_be_bytes());
    let mut value = 0i16.to_be_bytes().to_vec();
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    let record = Record {
        key: Some(&key),
        value: Some(&value),
        timestamp,
    };
    encode_with(
        &[record],
        TRANSACTIONAL | CONTROL,
        producer_id,
        producer_epoch,
    )
}

/// One uncompressed batch of `records` with the given attributes and producer, no
/// sequence (an idempotent producer's batches come from the client, never from here).
fn encode_with(records: &[Record<'_>], attributes: i16, producer_id: i64, epoch: i16) -> Vec<u8> {
    let base_ts = records.first().map_or(0, |r| r.timestamp);
    let max_ts = records.iter().map(|r| r.timestamp).max().unwrap_or(0);
    let mut body = Vec::new();
    let mut rec = Vec::new();
    for (i, r) in records.iter().enumerate() {
        rec.clear();
        rec.push(0u8); // attributes
        put_varint(&mut rec, r.timestamp - base_ts);
        put_varint(&mut rec, i as i64);
        put_bytes(&mut rec, r.key);
        put_bytes(&mut rec, r.value);
        put_varint(&mut rec, 0); // headers
        put_varint(&mut body, rec.len() as i64);
        body.extend_from_slice(&rec);
    }
    let mut b = Vec::with_capacity(HEADER_LEN + body.len());
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&((HEADER_LEN - LOG_OVERHEAD + body.len()) as i32).to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.push(MAGIC_V2 as u8);
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&attributes.to_be_bytes());
    b.extend_from_slice(&(records.len() as i32 - 1).to_be_bytes());
    b.extend_from_slice(&base_ts.to_be_bytes());
    b.extend_from_slice(&max_ts.to_be_bytes());
    b.extend_from_slice(&producer_id.to_be_bytes());
    b.extend_from_slice(&epoch.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&(records.len() as i32).to_be_bytes());
    b.extend_from_slice(&body);
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[CRC_POS..CRC_START].copy_from_slice(&crc.to_be_bytes());
    b
}

#[cfg(any(test, feature = "test-util"))]
pub mod test_util {
    //! Builds valid batches for tests without a Kafka client.
    pub use super::{Record as TestRecord, encode as build_batch};

    /// A transactional batch of `n` records (as [`simple_batch`] at timestamp 1000) from
    /// producer `pid` at `epoch`, starting at sequence `seq`.
    pub fn txn_batch(pid: i64, epoch: i16, seq: i32, n: usize) -> Vec<u8> {
        let mut b = simple_batch(n, 1000);
        b[21..23].copy_from_slice(&super::TRANSACTIONAL.to_be_bytes());
        b[43..51].copy_from_slice(&pid.to_be_bytes());
        b[51..53].copy_from_slice(&epoch.to_be_bytes());
        b[53..57].copy_from_slice(&seq.to_be_bytes());
        super::update_crc(&mut b);
        b
    }

    /// A batch of `n` records with values `value-<i>` and timestamps `ts + i`.
    pub fn simple_batch(n: usize, ts: i64) -> Vec<u8> {
        let values: Vec<Vec<u8>> = (0..n).map(|i| format!("value-{i}").into_bytes()).collect();
        let records: Vec<TestRecord<'_>> = values
            .iter()
            .enumerate()
            .map(|(i, v)| TestRecord {
                key: None,
                value: Some(v),
                timestamp: ts + i as i64,
            })
            .collect();
        build_batch(&records)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::test_util::*;
    use super::*;

    #[test]
    fn valid_batch_round_trips() {
        let b = simple_batch(3, 1000);
        let h = validate(&b).unwrap();
        assert_eq!(h.record_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.base_timestamp, 1000);
        assert_eq!(h.max_timestamp, 1002);
        assert_eq!(h.total_len(), b.len());
        assert_eq!(h.compression().unwrap(), Compression::None);
    }

    #[test]
    fn base_offset_rewrite_keeps_crc_valid() {
        let mut b = simple_batch(2, 0);
        set_base_offset(&mut b, 4242);
        set_partition_leader_epoch(&mut b, 7);
        let h = validate(&b).unwrap();
        assert_eq!(h.base_offset, 4242);
        assert_eq!(h.last_offset(), 4243);
        assert_eq!(h.partition_leader_epoch, 7);
    }

    #[test]
    fn any_flipped_byte_under_the_crc_is_detected() {
        let b = simple_batch(4, 5);
        for i in CRC_START..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x01;
            assert!(validate(&c).is_err(), "flip at {i} not detected");
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let b = simple_batch(4, 5);
        for len in 0..b.len() {
            assert!(matches!(
                check_crc(&b[..len]),
                Err(BatchError::Truncated { .. }) | Err(BatchError::UnsupportedMagic(_))
            ));
        }
    }

    #[test]
    fn wrong_magic_and_length_and_count_are_rejected() {
        let mut b = simple_batch(1, 0);
        b[MAGIC_POS] = 1;
        assert_eq!(validate(&b), Err(BatchError::UnsupportedMagic(1)));

        let mut b = simple_batch(1, 0);
        b[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(validate(&b), Err(BatchError::BadLength(-5)));

        // Claim 2 records while the offset range spans 1: fix up the CRC so only the count is wrong.
        let mut b = simple_batch(1, 0);
        b[57..61].copy_from_slice(&2i32.to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[CRC_POS..CRC_START].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate(&b),
            Err(BatchError::CountMismatch { .. })
        ));
    }

    #[test]
    fn validate_all_and_header_iter_walk_several_batches() {
        let mut buf = simple_batch(2, 0);
        buf.extend(simple_batch(3, 10));
        let all = validate_all(&buf).unwrap();
        assert_eq!(all.len(), 2);
        let walked: Vec<_> = HeaderIter::new(&buf)
            .map(|(pos, h)| (pos, h.record_count))
            .collect();
        assert_eq!(walked, vec![(0, 2), (all[0].total_len(), 3)]);
        // A partial trailing batch stops the iterator, and fails validation.
        let cut = &buf[..buf.len() - 1];
        assert_eq!(HeaderIter::new(cut).count(), 1);
        assert!(validate_all(cut).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = validate_all(&data);
            let _ = HeaderIter::new(&data).count();
        }
    }
}
