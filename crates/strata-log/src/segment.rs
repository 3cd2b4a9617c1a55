//! One segment: a file of Kafka v2 record batches back to back, named after the offset of
//! its first batch (`00000000000000001234.log`), with its two sparse indexes and, once
//! sealed, a snapshot of the partition's producer state as of its end (`.producers`).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_protocol::batch::{self, BatchHeader, ControlType, HEADER_LEN, HeaderIter};
use strata_protocol::records;

use tracing::warn;

use crate::error::{LogError, Result};
use crate::index::{self, OffsetIndex, TimeIndex};
use crate::producers::ProducerState;

/// How many bytes recovery reads at a time.
const SCAN_CHUNK: usize = 1 << 20;

pub(crate) fn file_stem(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}"))
}

pub(crate) struct Segment {
    pub(crate) base_offset: i64,
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<File>,
    /// Bytes of complete batches in the file.
    pub(crate) size: u64,
    /// Offset after the last batch.
    pub(crate) next_offset: i64,
    /// Largest batch max timestamp, or -1 while empty.
    pub(crate) max_timestamp: i64,
    pub(crate) offsets: OffsetIndex,
    pub(crate) times: TimeIndex,
    bytes_since_index: u64,
    index_interval: u64,
    /// Wall-clock time the segment was created or recovered, for `segment.ms`.
    pub(crate) created_ms: i64,
    /// Whether every batch's CRC is known to be good: written by this process, read in
    /// full by recovery, or checked since. Reads check the batches of unverified segments.
    pub(crate) verified: bool,
    /// Where and how the segment is damaged, once found (a batch failing its CRC, or
    /// data missing before the next segment): nothing from there on is served. Never
    /// cleared: the segment is replaced by the object store's copy, or removed with the
    /// log start.
    pub(crate) damage: Option<Damage>,
}

/// Damage in a segment file: from byte `position` on, its data cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damage {
    pub(crate) position: u64,
    pub(crate) reason: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at byte {}: {}", self.position, self.reason)
    }
}

impl Damage {
    pub(crate) fn at(position: u64, reason: impl Into<String>) -> Self {
        Self {
            position,
            reason: reason.into(),
        }
    }
}

/// What recovery found in a segment file.
pub(crate) struct Recovered {
    pub(crate) segment: Segment,
    /// Bytes cut off the end because they were torn or corrupt.
    pub(crate) truncated: u64,
    /// Whether every batch was read (and passed to the caller's `replay`); `false` when
    /// the segment was trusted through its index files.
    pub(crate) scanned: bool,
}

impl Segment {
    pub(crate) fn create(
        dir: &Path,
        base_offset: i64,
        index_interval: u64,
        now_ms: i64,
    ) -> Result<Self> {
        let path = file_stem(dir, base_offset).with_extension("log");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| LogError::io("create", &path, e))?;
        Ok(Self::empty(path, file, base_offset, index_interval, now_ms))
    }

    /// The in-memory state of a segment with no batches yet.
    fn empty(
        path: PathBuf,
        file: File,
        base_offset: i64,
        index_interval: u64,
        now_ms: i64,
    ) -> Self {
        Self {
            base_offset,
            path,
            file: Arc::new(file),
            size: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            offsets: OffsetIndex::default(),
            times: TimeIndex::default(),
            bytes_since_index: 0,
            index_interval,
            created_ms: now_ms,
            verified: true,
            damage: None,
        }
    }

    /// Opens an existing segment. If it has a successor (`next_base`, that segment's base
    /// offset) and valid index files beside it, the indexes are loaded and `next_offset` is
    /// `next_base`; otherwise every batch is read and CRC-checked, the indexes are
    /// rebuilt, and anything after the last good batch is cut off. When the batches are
    /// read, `replay` sees the header of each one that is kept, in order.
    pub(crate) fn open(
        path: PathBuf,
        base_offset: i64,
        index_interval: u64,
        next_base: Option<i64>,
        now_ms: i64,
        replay: &mut dyn FnMut(&BatchHeader, Option<ControlType>),
    ) -> Result<Recovered> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| LogError::io("open", &path, e))?;
        let len = file
            .metadata()
            .map_err(|e| LogError::io("stat", &path, e))?
            .len();
        let mut seg = Self::empty(path, file, base_offset, index_interval, now_ms);
        if let Some(next_base) = next_base {
            let stem = file_stem(seg.dir(), base_offset);
            if let Some((offsets, times)) = index::load(&stem, len) {
                seg.size = len;
                seg.next_offset = next_base;
                seg.max_timestamp = times.max_timestamp().unwrap_or(-1);
                seg.offsets = offsets;
                seg.times = times;
                // Trusted through its indexes, but its CRCs are checked before it is
                // served or uploaded; its end is checked now, cheaply.
                seg.verified = false;
                if seg.tail_is_whole(next_base)? {
                    return Ok(Recovered {
                        segment: seg,
                        truncated: 0,
                        scanned: false,
                    });
                }
                warn!(path = %seg.path.display(), "sealed segment does not end where its successor begins: reading it in full");
                seg.size = 0;
                seg.next_offset = base_offset;
                seg.max_timestamp = -1;
                seg.offsets = OffsetIndex::default();
                seg.times = TimeIndex::default();
                seg.verified = true;
            }
        }
        seg.scan(len, replay)?;
        if let Some(next_base) = next_base
            && seg.next_offset < next_base
        {
            // A sealed segment is whole by construction: data missing before its
            // successor is damage (a truncated file), not a torn tail. Nothing is cut.
            seg.damage = Some(Damage::at(
                seg.size,
                format!(
                    "offsets {} to {} are missing (the file has {len} bytes)",
                    seg.next_offset,
                    next_base - 1,
                ),
            ));
            seg.next_offset = next_base;
            return Ok(Recovered {
                segment: seg,
                truncated: 0,
                scanned: true,
            });
        }
        let truncated = len - seg.size;
        if truncated > 0 {
            seg.file
                .set_len(seg.size)
                .map_err(|e| LogError::io("truncate", &seg.path, e))?;
            seg.file
                .sync_all()
                .map_err(|e| LogError::io("fsync", &seg.path, e))?;
        }
        Ok(Recovered {
            segment: seg,
            truncated,
            scanned: true,
        })
    }

    /// Whether the batches after the last offset index entry chain up to exactly the end
    /// of the file and to `next_base`: what a truncated (or extended) file fails.
    fn tail_is_whole(&self, next_base: i64) -> Result<bool> {
        let len = self.size;
        let mut pos = self.offsets.last().map_or(0, |(_, p)| u64::from(p));
        let mut next = None;
        while pos < len {
            let Ok(Some(h)) = Self::header_at(&self.file, &self.path, pos, len) else {
                return Ok(false);
            };
            pos += h.total_len() as u64;
            next = Some(h.next_offset());
        }
        Ok(pos == len && next.is_none_or(|n| n == next_base))
    }

    /// `old` cut back to the batches that end at or before `offset` (read and checked
    /// from the start), as the active segment: the file is shortened and synced, and its
    /// sealed-segment files (indexes, producer snapshot) are removed.
    pub(crate) fn truncated_at(old: &Segment, offset: i64, now_ms: i64) -> Result<Segment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&old.path)
            .map_err(|e| LogError::io("open", &old.path, e))?;
        let mut seg = Self::empty(
            old.path.clone(),
            file,
            old.base_offset,
            old.index_interval,
            now_ms,
        );
        seg.scan_until(old.size, offset, &mut |_, _| {})?;
        seg.file
            .set_len(seg.size)
            .and_then(|()| seg.file.sync_all())
            .map_err(|e| LogError::io("truncate", &seg.path, e))?;
        let stem = file_stem(seg.dir(), seg.base_offset);
        for ext in ["index", "timeindex", "producers"] {
            match std::fs::remove_file(stem.with_extension(ext)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::io("delete", stem.with_extension(ext), e)),
            }
        }
        Ok(seg)
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Reads the file from the start, keeping every complete, CRC-valid batch whose base
    /// offset continues the sequence; stops at the first one that is not. `replay` sees
    /// every batch that is kept.
    fn scan(
        &mut self,
        len: u64,
        replay: &mut dyn FnMut(&BatchHeader, Option<ControlType>),
    ) -> Result<()> {
        self.scan_until(len, i64::MAX, replay)
    }

    /// [`Segment::scan`], keeping only batches that end at or before `limit`.
    fn scan_until(
        &mut self,
        len: u64,
        limit: i64,
        replay: &mut dyn FnMut(&BatchHeader, Option<ControlType>),
    ) -> Result<()> {
        let mut buf = Vec::new();
        let mut pos: u64 = 0;
        loop {
            let remaining = len - pos;
            if remaining < HEADER_LEN as u64 {
                return Ok(());
            }
            let mut n = remaining.min(SCAN_CHUNK as u64) as usize;
            self.read_into(&mut buf, n, pos)?;
            // A batch larger than the chunk is read whole.
            if let Ok(h) = BatchHeader::parse(&buf)
                && h.total_len() > n
                && h.total_len() as u64 <= remaining
            {
                n = h.total_len();
                self.read_into(&mut buf, n, pos)?;
            }
            let mut off = 0;
            while off < n {
                let rest = &buf[off..n];
                let header = match BatchHeader::parse(rest) {
                    Ok(h) => h,
                    // The next header continues in the next chunk.
                    Err(batch::BatchError::Truncated { .. }) if off > 0 => break,
                    Err(_) => return Ok(()),
                };
                let total = header.total_len();
                if total > rest.len() {
                    if off > 0 && pos + (off + total) as u64 <= len {
                        break;
                    }
                    return Ok(());
                }
                let continues = header.base_offset >= self.next_offset
                    && header.base_offset >= self.base_offset
                    && header.next_offset() <= limit
                    && self.fits_offset(header.last_offset());
                if !continues || batch::check_crc(&rest[..total]).is_err() {
                    return Ok(());
                }
                self.track(&header, pos + off as u64);
                replay(&header, marker_type(&header, &rest[..total]));
                off += total;
            }
            pos += off as u64;
        }
    }

    fn read_into(&self, buf: &mut Vec<u8>, n: usize, pos: u64) -> Result<()> {
        buf.resize(n, 0);
        self.file
            .read_exact_at(&mut buf[..n], pos)
            .map_err(|e| LogError::io("read", &self.path, e))
    }

    /// Records a batch written at `position` in the in-memory state and indexes.
    pub(crate) fn track(&mut self, header: &BatchHeader, position: u64) {
        let rel = (header.base_offset - self.base_offset) as u32;
        if position > 0 && self.bytes_since_index >= self.index_interval {
            self.offsets.push(rel, position as u32);
            self.times
                .maybe_push(self.max_timestamp.max(header.max_timestamp), rel);
            self.bytes_since_index = 0;
        }
        let total = header.total_len() as u64;
        self.bytes_since_index += total;
        self.size = position + total;
        self.next_offset = header.next_offset();
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
    }

    /// Whether a batch spanning up to `last_offset` still fits the relative-offset range.
    pub(crate) fn fits_offset(&self, last_offset: i64) -> bool {
        last_offset - self.base_offset <= i64::from(u32::MAX)
    }

    /// Writes `data` (whole batches, offsets already assigned) at the end of the file. On
    /// failure the file is cut back to its previous size, so no partial batch stays behind.
    pub(crate) fn write(&mut self, data: &[u8]) -> Result<()> {
        if let Err(e) = self.file.write_all_at(data, self.size) {
            let _ = self.file.set_len(self.size);
            return Err(LogError::io("write", &self.path, e));
        }
        Ok(())
    }

    /// Passes the header of every batch in the segment to `f`, in order, reading the file
    /// in large chunks. For segments that recovery trusted without reading them; stops with
    /// `Corrupt` at a header that does not parse.
    /// A marker's type is read from its record (markers are small: one more read when
    /// one straddles the end of a chunk).
    pub(crate) fn walk_headers(
        &self,
        f: &mut dyn FnMut(&BatchHeader, Option<ControlType>),
    ) -> Result<()> {
        let mut buf = Vec::new();
        let mut buf_start: u64 = 0;
        let mut pos: u64 = 0;
        while pos + HEADER_LEN as u64 <= self.size {
            if pos + HEADER_LEN as u64 > buf_start + buf.len() as u64 {
                let n = (self.size - pos).min(SCAN_CHUNK as u64) as usize;
                self.read_into(&mut buf, n, pos)?;
                buf_start = pos;
            }
            let at = (pos - buf_start) as usize;
            let header = BatchHeader::parse(&buf[at..]).map_err(|e| LogError::Corrupt {
                path: self.path.clone(),
                position: pos,
                reason: e.to_string(),
            })?;
            let total = header.total_len() as u64;
            if pos + total > self.size {
                return Ok(());
            }
            let control = if !header.is_control() {
                None
            } else if let Some(whole) = buf.get(at..at + total as usize) {
                marker_type(&header, whole)
            } else if total <= MAX_MARKER_LEN {
                let mut whole = Vec::new();
                self.read_into(&mut whole, total as usize, pos)?;
                marker_type(&header, &whole)
            } else {
                None
            };
            f(&header, control);
            pos += total;
        }
        Ok(())
    }

    /// Fsyncs the segment's data (the first half of sealing it).
    pub(crate) fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| LogError::io("fsync", &self.path, e))
    }

    /// Finishes sealing a [synced](Segment::sync) segment: both indexes are written
    /// beside it, and so is `producers` (the partition's producer state, which must be as
    /// of this segment's end) as `<base>.producers`, so that start-up need not re-read
    /// this segment for it. Safe to call again after a failure (a full disk): each file
    /// is replaced atomically.
    pub(crate) fn write_seal_files(&mut self, producers: &ProducerState) -> Result<()> {
        if self.size > 0 {
            let last_rel = self.offsets.last().map_or(0, |(rel, _)| rel).max(
                (self.next_offset - 1 - self.base_offset).clamp(0, i64::from(u32::MAX)) as u32,
            );
            self.times.maybe_push(self.max_timestamp, last_rel);
        }
        let stem = file_stem(self.dir(), self.base_offset);
        index::save(&stem, &self.offsets, &self.times)?;
        index::write_atomically(
            &stem.with_extension("producers"),
            &producers.encode_snapshot(self.next_offset),
        )
    }

    /// Deletes the segment's files.
    pub(crate) fn delete_files(&self) -> Result<()> {
        let stem = file_stem(self.dir(), self.base_offset);
        for ext in ["log", "index", "timeindex", "producers"] {
            let p = stem.with_extension(ext);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::io("delete", p, e)),
            }
        }
        Ok(())
    }

    /// Reads the header of the batch at `position`, if a whole header fits before `end`.
    pub(crate) fn header_at(
        file: &File,
        path: &Path,
        position: u64,
        end: u64,
    ) -> Result<Option<BatchHeader>> {
        if position + HEADER_LEN as u64 > end {
            return Ok(None);
        }
        let mut head = [0u8; HEADER_LEN];
        file.read_exact_at(&mut head, position)
            .map_err(|e| LogError::io("read", path, e))?;
        BatchHeader::parse(&head)
            .map(Some)
            .map_err(|e| LogError::Corrupt {
                path: path.to_path_buf(),
                position,
                reason: e.to_string(),
            })
    }
}

/// Larger than any transaction marker (one record of a few bytes).
const MAX_MARKER_LEN: u64 = 4096;

/// What the batch `bytes` (with header `h`) says as a transaction marker, if it is one.
pub(crate) fn marker_type(h: &BatchHeader, bytes: &[u8]) -> Option<ControlType> {
    if h.is_control() {
        records::control_type(bytes)
    } else {
        None
    }
}

/// Trims `buf` to the complete batches at its start; returns how many bytes remain.
pub(crate) fn whole_batches_len(buf: &[u8]) -> usize {
    let mut it = HeaderIter::new(buf);
    for _ in it.by_ref() {}
    it.position()
}

/// Reads the first `size` bytes of segment file `file` and checks every batch's CRC, and
/// that the batches chain up to exactly `size`. Returns the damage (`None`: the segment is
/// good). Blocking.
pub(crate) fn check_batches(file: &File, path: &Path, size: u64) -> Result<Option<Damage>> {
    let mut buf = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        let header = match Segment::header_at(file, path, pos, size) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(Some(Damage::at(pos, "the file ends inside a batch header"))),
            Err(LogError::Corrupt { reason, .. }) => return Ok(Some(Damage::at(pos, reason))),
            Err(e) => return Err(e),
        };
        let total = header.total_len();
        if pos + total as u64 > size {
            return Ok(Some(Damage::at(pos, "the file ends inside this batch")));
        }
        buf.resize(total, 0);
        file.read_exact_at(&mut buf, pos)
            .map_err(|e| LogError::io("read", path, e))?;
        if let Err(e) = batch::check_crc(&buf) {
            return Ok(Some(Damage::at(
                pos,
                format!("the batch at offset {}: {e}", header.base_offset),
            )));
        }
        pos += total as u64;
    }
    Ok(None)
}
