//! The highest offset a partition ever made durable (`<partition>/acked`): recovery may
//! cut a damaged tail of the active segment, and this mark keeps the offsets that tail
//! held from being handed out again, so a consumer that had read (or committed) past
//! them does not skip the records that would otherwise reuse them.
//!
//! Format: the offset (i64, big-endian) and a CRC-32C of those 8 bytes. The mark is
//! rewritten in place after every successful `fdatasync` of the log (one `pwrite` into
//! the page cache, no extra sync on the produce path) and synced when a segment rolls
//! and at shutdown. A missing or unreadable mark means "no mark".

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{LogError, Result};

const FILE: &str = "acked";
const LEN: usize = 12;

/// The open mark file of one partition.
pub(crate) struct AckedMark {
    path: PathBuf,
    file: File,
}

impl AckedMark {
    /// Opens (or creates) the mark in `dir`; returns it with the offset it holds.
    pub(crate) fn open(dir: &Path) -> Result<(Self, Option<i64>)> {
        let path = dir.join(FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| LogError::io("open", &path, e))?;
        let mut buf = [0u8; LEN];
        let held = match file.read_exact_at(&mut buf, 0) {
            Ok(()) => {
                let crc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
                (crc32c::crc32c(&buf[..8]) == crc).then(|| {
                    let mut x = [0u8; 8];
                    x.copy_from_slice(&buf[..8]);
                    i64::from_be_bytes(x)
                })
            }
            Err(_) => None,
        };
        Ok((Self { path, file }, held))
    }

    /// Records `offset` (in the page cache).
    pub(crate) fn set(&self, offset: i64) -> Result<()> {
        let mut buf = [0u8; LEN];
        buf[..8].copy_from_slice(&offset.to_be_bytes());
        let crc = crc32c::crc32c(&buf[..8]);
        buf[8..].copy_from_slice(&crc.to_be_bytes());
        self.file
            .write_all_at(&buf, 0)
            .map_err(|e| LogError::io("write", &self.path, e))
    }

    pub(crate) fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| LogError::io("fsync", &self.path, e))
    }
}
