//! Sparse per-segment indexes, kept in memory and written beside a segment when it is
//! sealed.
//!
//! - Offset index (`.index`): entries of `[u32 relative offset][u32 byte position]`, one
//!   per `index.interval.bytes` of log, keyed by a batch's base offset relative to the
//!   segment's base offset. A lookup gives the position of the last indexed batch at or
//!   before an offset; the reader scans batch headers forward from there.
//! - Time index (`.timeindex`): entries of `[i64 timestamp][u32 relative offset]` with
//!   non-decreasing timestamps. An entry `(T, O)` promises that every record before offset
//!   `O` has a timestamp of at most `T`, so a search for the first record at or after time
//!   `t` may start at the `O` of the last entry with `T < t`.
//!
//! All integers are big-endian, as in Kafka's own index files.

use std::io::Write;
use std::path::Path;

use crate::error::{LogError, Result};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct OffsetIndex {
    entries: Vec<(u32, u32)>,
}

impl OffsetIndex {
    pub(crate) fn push(&mut self, rel_offset: u32, position: u32) {
        self.entries.push((rel_offset, position));
    }

    /// Position of the last indexed batch whose base offset is at or below `rel_offset`.
    pub(crate) fn lookup(&self, rel_offset: u32) -> u32 {
        let i = self.entries.partition_point(|&(o, _)| o <= rel_offset);
        if i == 0 { 0 } else { self.entries[i - 1].1 }
    }

    pub(crate) fn last(&self) -> Option<(u32, u32)> {
        self.entries.last().copied()
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 8);
        for &(o, p) in &self.entries {
            out.extend_from_slice(&o.to_be_bytes());
            out.extend_from_slice(&p.to_be_bytes());
        }
        out
    }

    /// Decodes an index file, or `None` if its size or entries are not plausible for a
    /// segment of `segment_size` bytes (the caller then rebuilds it from the log).
    fn decode(data: &[u8], segment_size: u64) -> Option<Self> {
        if !data.len().is_multiple_of(8) {
            return None;
        }
        let mut entries = Vec::with_capacity(data.len() / 8);
        for chunk in data.chunks_exact(8) {
            let o = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let p = u32::from_be_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
            if u64::from(p) >= segment_size {
                return None;
            }
            if let Some(&(lo, lp)) = entries.last()
                && (o <= lo || p <= lp)
            {
                return None;
            }
            entries.push((o, p));
        }
        Some(Self { entries })
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct TimeIndex {
    entries: Vec<(i64, u32)>,
}

impl TimeIndex {
    /// Appends `(timestamp, rel_offset)` if it raises the indexed maximum timestamp.
    pub(crate) fn maybe_push(&mut self, timestamp: i64, rel_offset: u32) {
        if self.entries.last().is_none_or(|&(t, _)| timestamp > t) {
            self.entries.push((timestamp, rel_offset));
        }
    }

    /// Relative offset from which a search for the first record with a timestamp at or
    /// after `timestamp` may start.
    pub(crate) fn lookup(&self, timestamp: i64) -> u32 {
        let i = self.entries.partition_point(|&(t, _)| t < timestamp);
        if i == 0 { 0 } else { self.entries[i - 1].1 }
    }

    pub(crate) fn max_timestamp(&self) -> Option<i64> {
        self.entries.last().map(|&(t, _)| t)
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 12);
        for &(t, o) in &self.entries {
            out.extend_from_slice(&t.to_be_bytes());
            out.extend_from_slice(&o.to_be_bytes());
        }
        out
    }

    fn decode(data: &[u8]) -> Option<Self> {
        if !data.len().is_multiple_of(12) {
            return None;
        }
        let mut entries: Vec<(i64, u32)> = Vec::with_capacity(data.len() / 12);
        for chunk in data.chunks_exact(12) {
            let mut t = [0u8; 8];
            t.copy_from_slice(&chunk[..8]);
            let t = i64::from_be_bytes(t);
            let o = u32::from_be_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]);
            if entries.last().is_some_and(|&(lt, lo)| t <= lt || o < lo) {
                return None;
            }
            entries.push((t, o));
        }
        Some(Self { entries })
    }
}

/// Both indexes of one sealed segment, as shipped to the object store beside it: the
/// `.idx` object is `[u32 offset-index length][offset index][time index]`, each in the
/// file format above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentIndex {
    offsets: OffsetIndex,
    times: TimeIndex,
}

impl SegmentIndex {
    pub(crate) fn new(offsets: OffsetIndex, times: TimeIndex) -> Self {
        Self { offsets, times }
    }

    /// The indexes written beside a sealed segment file (`<base>.log`).
    pub fn load_beside(segment: &Path, segment_size: u64) -> Option<Self> {
        let (offsets, times) = load(&segment.with_extension(""), segment_size)?;
        Some(Self { offsets, times })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let offsets = self.offsets.encode();
        let mut out = Vec::with_capacity(4 + offsets.len() + self.times.entries.len() * 12);
        out.extend_from_slice(&(offsets.len() as u32).to_be_bytes());
        out.extend_from_slice(&offsets);
        out.extend_from_slice(&self.times.encode());
        out
    }

    /// Decodes an `.idx` object, or `None` if it is not plausible for a segment of
    /// `segment_size` bytes.
    pub fn from_bytes(data: &[u8], segment_size: u64) -> Option<Self> {
        let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
        let offsets = data.get(4..4 + len)?;
        let times = data.get(4 + len..)?;
        Some(Self {
            offsets: OffsetIndex::decode(offsets, segment_size)?,
            times: TimeIndex::decode(times)?,
        })
    }

    /// Byte position from which to scan for the batch holding `rel_offset`.
    pub fn position_for(&self, rel_offset: u32) -> u32 {
        self.offsets.lookup(rel_offset)
    }

    /// Relative offset from which to search for the first record at or after `timestamp`.
    pub fn offset_for_time(&self, timestamp: i64) -> u32 {
        self.times.lookup(timestamp)
    }
}

/// Writes `data` to `path` atomically: a temporary file, fsync, rename.
pub(crate) fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| LogError::io("create", &tmp, e))?;
    f.write_all(data)
        .map_err(|e| LogError::io("write", &tmp, e))?;
    f.sync_data().map_err(|e| LogError::io("fsync", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| LogError::io("rename", path, e))
}

pub(crate) fn save(dir_base: &Path, offsets: &OffsetIndex, times: &TimeIndex) -> Result<()> {
    write_atomically(&dir_base.with_extension("index"), &offsets.encode())?;
    write_atomically(&dir_base.with_extension("timeindex"), &times.encode())
}

/// Loads both indexes of a sealed segment, or `None` if either is missing or implausible.
pub(crate) fn load(dir_base: &Path, segment_size: u64) -> Option<(OffsetIndex, TimeIndex)> {
    let offsets = std::fs::read(dir_base.with_extension("index")).ok()?;
    let times = std::fs::read(dir_base.with_extension("timeindex")).ok()?;
    Some((
        OffsetIndex::decode(&offsets, segment_size)?,
        TimeIndex::decode(&times)?,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn offset_lookup_finds_floor_entry() {
        let mut idx = OffsetIndex::default();
        idx.push(10, 4096);
        idx.push(20, 8192);
        assert_eq!(idx.lookup(0), 0);
        assert_eq!(idx.lookup(9), 0);
        assert_eq!(idx.lookup(10), 4096);
        assert_eq!(idx.lookup(19), 4096);
        assert_eq!(idx.lookup(25), 8192);
        let round = OffsetIndex::decode(&idx.encode(), 10_000).unwrap();
        assert_eq!(round, idx);
        assert!(
            OffsetIndex::decode(&idx.encode(), 8000).is_none(),
            "position past the segment"
        );
        assert!(OffsetIndex::decode(&idx.encode()[..7], 10_000).is_none());
    }

    #[test]
    fn time_lookup_starts_before_first_possible_match() {
        let mut idx = TimeIndex::default();
        idx.maybe_push(100, 0);
        idx.maybe_push(100, 5); // not an increase: ignored
        idx.maybe_push(200, 10);
        idx.maybe_push(300, 20);
        assert_eq!(idx.lookup(50), 0);
        assert_eq!(idx.lookup(100), 0);
        assert_eq!(idx.lookup(150), 0);
        assert_eq!(idx.lookup(200), 0);
        assert_eq!(idx.lookup(201), 10);
        assert_eq!(idx.lookup(1000), 20);
        assert_eq!(idx.max_timestamp(), Some(300));
        assert_eq!(TimeIndex::decode(&idx.encode()).unwrap(), idx);
        let mut bad = idx.encode();
        bad[..8].copy_from_slice(&999i64.to_be_bytes());
        assert!(TimeIndex::decode(&bad).is_none(), "decreasing timestamps");
    }
}
