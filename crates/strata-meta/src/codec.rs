//! Record framing shared by the Raft log file and the snapshot file.
//!
//! A file starts with an 8-byte magic naming its kind and format version, followed by
//! records:
//!
//! ```text
//! +-------------+---------------+------------------------+
//! | len: u32 LE | crc: u32 LE   | payload: `len` bytes   |
//! +-------------+---------------+------------------------+
//! crc = crc32c(len as 4 LE bytes ++ payload)
//! ```
//!
//! The checksum covers the length too, so a zero-filled region (what a filesystem may leave
//! after a crash) never parses as a record. `len == 0` is invalid.
//!
//! [`scan_records`] walks the records and stops at the first one that is incomplete or fails
//! its checksum; everything before it is intact, everything from it on is the "torn tail".
//! Deciding what to do with a torn tail (truncate for the log, refuse for a snapshot) is up to
//! the caller. This module never panics on any input.

use std::fmt;

/// Bytes in a record header (`len` + `crc`).
pub(crate) const RECORD_HEADER_LEN: usize = 8;

/// Largest payload accepted when writing. Metadata records are small; this only guards
/// against nonsense.
pub(crate) const MAX_PAYLOAD_LEN: usize = 256 << 20;

fn record_crc(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload)
}

/// Appends one framed record to `out`. Returns the number of bytes appended.
pub(crate) fn encode_record(payload: &[u8], out: &mut Vec<u8>) -> Result<usize, String> {
    if payload.is_empty() || payload.len() > MAX_PAYLOAD_LEN {
        return Err(format!(
            "record payload of {} bytes is outside 1..={MAX_PAYLOAD_LEN}",
            payload.len()
        ));
    }
    let len = u32::try_from(payload.len()).map_err(|e| e.to_string())?;
    let len_bytes = len.to_le_bytes();
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&record_crc(len_bytes, payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(RECORD_HEADER_LEN + payload.len())
}

/// Why a scan stopped before the end of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Damage {
    /// Fewer bytes remain than the record header or its declared length needs.
    Incomplete { needed: u64, available: u64 },
    /// The record declares an empty payload, which is never written.
    ZeroLength,
    /// The checksum does not match.
    CrcMismatch { stored: u32, computed: u32 },
}

/// Where and why a scan stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Corruption {
    /// Byte offset (from the start of the file) of the first bad record.
    pub offset: u64,
    pub damage: Damage,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.damage {
            Damage::Incomplete { needed, available } => write!(
                f,
                "incomplete record at offset {}: needs {needed} bytes, {available} present",
                self.offset
            ),
            Damage::ZeroLength => {
                write!(f, "record at offset {} has zero length", self.offset)
            }
            Damage::CrcMismatch { stored, computed } => write!(
                f,
                "checksum mismatch in record at offset {}: stored {stored:#010x}, computed {computed:#010x}",
                self.offset
            ),
        }
    }
}

/// One intact record found by [`scan_records`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawRecord<'a> {
    /// Offset of the record header in the file.
    pub offset: u64,
    pub payload: &'a [u8],
}

impl RawRecord<'_> {
    /// Bytes the record occupies on disk, header included.
    pub(crate) fn framed_len(&self) -> u64 {
        (RECORD_HEADER_LEN + self.payload.len()) as u64
    }
}

/// The result of scanning a buffer of records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scan<'a> {
    pub records: Vec<RawRecord<'a>>,
    /// Length of the intact prefix (file offset just past the last intact record).
    pub valid_len: u64,
    /// Set when the scan stopped before the end of the buffer.
    pub corruption: Option<Corruption>,
}

/// Scans `buf[start..]` for records. `buf` is the whole file, so offsets are file offsets.
pub(crate) fn scan_records(buf: &[u8], start: usize) -> Scan<'_> {
    let mut records = Vec::new();
    let mut pos = start.min(buf.len());
    let corruption = loop {
        let rest = &buf[pos..];
        if rest.is_empty() {
            break None;
        }
        let damaged = |damage| {
            Some(Corruption {
                offset: pos as u64,
                damage,
            })
        };
        let (Some(len_bytes), Some(crc_bytes)) = (
            rest.get(0..4).and_then(|b| <[u8; 4]>::try_from(b).ok()),
            rest.get(4..8).and_then(|b| <[u8; 4]>::try_from(b).ok()),
        ) else {
            break damaged(Damage::Incomplete {
                needed: RECORD_HEADER_LEN as u64,
                available: rest.len() as u64,
            });
        };
        let len = u32::from_le_bytes(len_bytes) as usize;
        if len == 0 {
            break damaged(Damage::ZeroLength);
        }
        let Some(payload) = rest
            .get(RECORD_HEADER_LEN..)
            .and_then(|body| body.get(..len))
        else {
            break damaged(Damage::Incomplete {
                needed: (RECORD_HEADER_LEN + len) as u64,
                available: rest.len() as u64,
            });
        };
        let stored = u32::from_le_bytes(crc_bytes);
        let computed = record_crc(len_bytes, payload);
        if stored != computed {
            break damaged(Damage::CrcMismatch { stored, computed });
        }
        records.push(RawRecord {
            offset: pos as u64,
            payload,
        });
        pos += RECORD_HEADER_LEN + len;
    };
    Scan {
        records,
        valid_len: pos as u64,
        corruption,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const MAGIC: &[u8; 8] = b"TESTMAG1";

    fn file_with(payloads: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
        let mut buf = MAGIC.to_vec();
        let mut starts = Vec::new();
        for p in payloads {
            starts.push(buf.len());
            encode_record(p, &mut buf).unwrap();
        }
        (buf, starts)
    }

    #[test]
    fn round_trip() {
        let (buf, starts) = file_with(&[b"{\"a\":1}", b"xyz", b"last record"]);
        let scan = scan_records(&buf, MAGIC.len());
        assert_eq!(scan.corruption, None);
        assert_eq!(scan.valid_len, buf.len() as u64);
        let got: Vec<&[u8]> = scan.records.iter().map(|r| r.payload).collect();
        assert_eq!(got, vec![&b"{\"a\":1}"[..], b"xyz", b"last record"]);
        let offsets: Vec<u64> = scan.records.iter().map(|r| r.offset).collect();
        assert_eq!(
            offsets,
            starts.iter().map(|&s| s as u64).collect::<Vec<_>>()
        );
    }

    #[test]
    fn empty_and_oversized_payloads_are_refused() {
        let mut buf = Vec::new();
        assert!(encode_record(b"", &mut buf).is_err());
        assert!(buf.is_empty());
    }

    #[test]
    fn corrupt_middle_record_stops_the_scan_there() {
        let (clean, starts) = file_with(&[b"first", b"middle record", b"third"]);
        // Flip every byte of the middle record in turn (header and payload): the scan must
        // keep the first record, stop exactly at the middle one, and never panic.
        for i in starts[1]..starts[2] {
            let mut buf = clean.clone();
            buf[i] ^= 0x5a;
            let scan = scan_records(&buf, MAGIC.len());
            assert_eq!(scan.records.len(), 1, "flipped byte {i}");
            assert_eq!(scan.records[0].payload, b"first");
            assert_eq!(scan.valid_len, starts[1] as u64);
            let corruption = scan.corruption.expect("corruption reported");
            assert_eq!(corruption.offset, starts[1] as u64);
            // A damaged length field shows up as an incomplete record (it now claims more
            // bytes than remain) or as a checksum mismatch; damaged payload or checksum bytes
            // always as a checksum mismatch.
            if i >= starts[1] + 4 {
                assert!(
                    matches!(corruption.damage, Damage::CrcMismatch { .. }),
                    "byte {i}: {corruption}"
                );
            }
            assert!(!corruption.to_string().is_empty());
        }
    }

    #[test]
    fn torn_tail_at_every_position() {
        let (clean, starts) = file_with(&[b"one", b"two", b"three three three"]);
        for cut in starts[2]..clean.len() {
            let scan = scan_records(&clean[..cut], MAGIC.len());
            assert_eq!(scan.records.len(), 2, "cut at {cut}");
            assert_eq!(scan.valid_len, starts[2] as u64);
            let expect_corruption = cut > starts[2];
            assert_eq!(scan.corruption.is_some(), expect_corruption, "cut at {cut}");
        }
    }

    #[test]
    fn zero_filled_tail_is_not_a_record() {
        let (mut buf, starts) = file_with(&[b"one"]);
        let end = buf.len();
        buf.extend_from_slice(&[0u8; 64]);
        let scan = scan_records(&buf, MAGIC.len());
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.valid_len, end as u64);
        assert_eq!(
            scan.corruption,
            Some(Corruption {
                offset: end as u64,
                damage: Damage::ZeroLength
            })
        );
        assert_eq!(starts, vec![MAGIC.len()]);
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic fuzz: pseudo-random buffers of many sizes.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for size in 0..300 {
            let buf: Vec<u8> = (0..size)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let scan = scan_records(&buf, 0);
            assert!(scan.valid_len <= buf.len() as u64);
            let _ = scan_records(&buf, size + 10);
        }
    }
}
