//! Small durable-file helpers.

use std::fs;
use std::fs::File;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use crate::error::MetaError;
use crate::error::storage;

/// Name of the lock file that keeps two processes from opening the same directory.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// Marker inside temporary file names; such files are leftovers of interrupted writes and are
/// removed on open.
const TMP_MARKER: &str = ".tmp.";

/// Longest wait between two attempts of a write that found the disk full.
const MAX_SPACE_BACKOFF: Duration = Duration::from_secs(1);

/// How the metadata node rides out a full disk: a write that fails for lack of space
/// (ENOSPC, EDQUOT) is undone and tried again, with backoff, until it succeeds or the node
/// shuts down. The node's Raft task waits meanwhile (as it would for a slow disk) instead
/// of failing for good; clients' writes time out with a retriable error; and the node
/// reports the problem, so readiness turns false until a write succeeds again. Other I/O
/// errors (and every failed fsync: its data may be gone from the page cache) stay fatal.
#[derive(Debug, Default)]
pub(crate) struct DiskSpace {
    /// Since when writes fail, and the last error.
    stalled: Mutex<Option<(Instant, String)>>,
    stop: AtomicBool,
}

impl DiskSpace {
    /// Runs `op` until it succeeds or fails other than for lack of space. Blocking.
    pub(crate) fn retry<T>(
        &self,
        mut op: impl FnMut() -> Result<T, MetaError>,
    ) -> Result<T, MetaError> {
        let mut backoff = Duration::from_millis(50);
        loop {
            match op() {
                Err(e) if e.is_out_of_space() && !self.stop.load(Ordering::SeqCst) => {
                    let mut stalled = crate::sync::lock(&self.stalled);
                    if stalled.is_none() {
                        tracing::error!(error = %e, "metadata write failed for lack of space; retrying until space is free");
                    }
                    let since = stalled.as_ref().map_or_else(Instant::now, |(t, _)| *t);
                    *stalled = Some((since, e.to_string()));
                    drop(stalled);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_SPACE_BACKOFF);
                }
                other => {
                    if other.is_ok()
                        && let Some((since, _)) = crate::sync::lock(&self.stalled).take()
                    {
                        tracing::info!(
                            after_ms = since.elapsed().as_millis() as u64,
                            "metadata writes succeed again"
                        );
                    }
                    return other;
                }
            }
        }
    }

    /// Why metadata cannot be written right now, if it cannot.
    pub(crate) fn problem(&self) -> Option<String> {
        crate::sync::lock(&self.stalled).as_ref().map(|(since, e)| {
            format!(
                "metadata writes have failed for {} s: {e}",
                since.elapsed().as_secs()
            )
        })
    }

    /// Ends the waiting: writes still out of space fail (for shutdown).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Makes a rename or create inside `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), MetaError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| storage(dir, "fsync directory", e))
}

/// Writes `bytes` to `dir/name` atomically: a temporary file is written and fsynced, renamed
/// over the target, and the directory fsynced. Returns the (still open, read-write) handle of
/// the new file, positioned at its end.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<File, MetaError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        "{name}{TMP_MARKER}{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let target = dir.join(name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| storage(&tmp, "create", e))?;
        f.write_all(bytes).map_err(|e| storage(&tmp, "write", e))?;
        f.sync_all().map_err(|e| storage(&tmp, "fsync", e))?;
        fs::rename(&tmp, &target)
            .map_err(|e| storage(&target, format_args!("rename from {}", tmp.display()), e))?;
        Ok(f)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    let f = result?;
    sync_dir(dir)?;
    Ok(f)
}

/// Removes leftovers of interrupted atomic writes of `name`.
pub(crate) fn remove_stale_tmp(dir: &Path, name: &str) -> Result<(), MetaError> {
    let prefix = format!("{name}{TMP_MARKER}");
    let entries = fs::read_dir(dir).map_err(|e| storage(dir, "list directory", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| storage(dir, "list directory", e))?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let path = entry.path();
            tracing::info!(path = %path.display(), "removing leftover temporary file");
            fs::remove_file(&path).map_err(|e| storage(&path, "remove", e))?;
        }
    }
    Ok(())
}

/// Takes an exclusive advisory lock on `dir/LOCK`; held until the returned file is dropped.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, MetaError> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| storage(&path, "open lock file", e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(fs::TryLockError::WouldBlock) => Err(storage(
            &path,
            "lock",
            std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "directory is in use by another metadata node (or one that has not finished shutting down)",
            ),
        )),
        Err(fs::TryLockError::Error(e)) => Err(storage(&path, "lock", e)),
    }
}
