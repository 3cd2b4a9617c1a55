//! The Raft log and vote, persisted in one append-only file.
//!
//! # File format (`<dir>/raft.log`)
//!
//! An 8-byte magic `SMRLOG01`, then framed records (see [`crate::codec`]) whose payload is the
//! `serde_json` encoding of a [`LogRecord`]:
//!
//! - `Entry(entry)`: a Raft log entry (appended, fsynced before openraft is told it is flushed);
//! - `Vote(vote)`: the vote (fsynced before `save_vote` returns);
//! - `Committed(log_id)`: the last committed log id (not fsynced: an optimization that lets a
//!   restarting node re-apply committed entries before it talks to anyone);
//! - `TruncateSince(log_id)`: entries with index `>= log_id.index` are gone;
//! - `PurgeUpto(log_id)`: entries with index `<= log_id.index` are gone (covered by a snapshot).
//!
//! On open the file is replayed in order into memory. A torn or corrupt tail (incomplete
//! record, zero length, checksum mismatch) is what a crash in the middle of a write leaves
//! behind; since nothing after the last successful fsync was ever reported as flushed, the
//! tail is logged and cut off. A record that passes its checksum but does not decode is not
//! a crash artifact and fails the open with an error naming the file and offset.
//!
//! When purged entries and superseded records make up most of the file, it is rewritten
//! atomically (temp file, fsync, rename, directory fsync) with just the live state.
//!
//! All entries since the last purge are also kept in memory: metadata logs are small and are
//! purged behind every snapshot.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs;
use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::io::Seek;
use std::io::SeekFrom;
use std::io::Write;
use std::ops::RangeBounds;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::LogId;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::StorageError;
use openraft::Vote;
use openraft::storage::LogFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogStorage;
use serde::Deserialize;
use serde::Serialize;

use crate::codec::encode_record;
use crate::codec::scan_records;
use crate::error::MetaError;
use crate::error::corrupt;
use crate::error::storage;
use crate::error::to_storage_error;
use crate::fsutil::DiskSpace;
use crate::fsutil::remove_stale_tmp;
use crate::fsutil::write_atomic;
use crate::raft::Entry;
use crate::raft::TypeConfig;
use crate::sync::lock;
use crate::types::NodeId;

/// File name of the Raft log inside the node directory.
pub(crate) const LOG_FILE: &str = "raft.log";

/// Magic + format version at the start of the log file.
pub(crate) const LOG_MAGIC: &[u8; 8] = b"SMRLOG01";

/// One record of the log file. Serialized with an owned entry when reading and a borrowed one
/// when writing; both encode identically.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum LogRecord<E> {
    Entry(E),
    Vote(Vote<NodeId>),
    Committed(Option<LogId<NodeId>>),
    TruncateSince(LogId<NodeId>),
    PurgeUpto(LogId<NodeId>),
}

type RecordRef<'a> = LogRecord<&'a Entry>;

/// Serializes and frames `rec` onto `out`; returns the framed size.
fn encode(rec: &RecordRef<'_>, out: &mut Vec<u8>) -> Result<u64, String> {
    let payload = serde_json::to_vec(rec).map_err(|e| format!("serialize log record: {e}"))?;
    encode_record(&payload, out).map(|n| n as u64)
}

/// The log as seen by readers.
#[derive(Debug, Default, Clone)]
struct LogMem {
    entries: BTreeMap<u64, Entry>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

impl LogMem {
    fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(self.last_purged)
    }

    fn truncate_since(&mut self, index: u64) {
        self.entries.split_off(&index);
    }

    fn purge_upto(&mut self, log_id: LogId<NodeId>) {
        self.entries = match log_id.index.checked_add(1) {
            Some(next) => self.entries.split_off(&next),
            None => BTreeMap::new(),
        };
        if self.last_purged < Some(log_id) {
            self.last_purged = Some(log_id);
        }
    }
}

/// How many bytes of the file are still needed, to decide when to rewrite it.
#[derive(Debug, Default)]
struct Accounting {
    entry_bytes: BTreeMap<u64, u64>,
    live_entry_bytes: u64,
    vote_bytes: u64,
    committed_bytes: u64,
    purge_bytes: u64,
}

impl Accounting {
    fn entry(&mut self, index: u64, bytes: u64) {
        if let Some(old) = self.entry_bytes.insert(index, bytes) {
            self.live_entry_bytes -= old;
        }
        self.live_entry_bytes += bytes;
    }

    fn drop_entries(&mut self, removed: BTreeMap<u64, u64>) {
        self.live_entry_bytes -= removed.values().sum::<u64>();
    }

    fn truncate_since(&mut self, index: u64) {
        let removed = self.entry_bytes.split_off(&index);
        self.drop_entries(removed);
    }

    fn purge_upto(&mut self, index: u64, record_bytes: u64) {
        let keep = match index.checked_add(1) {
            Some(next) => self.entry_bytes.split_off(&next),
            None => BTreeMap::new(),
        };
        let removed = std::mem::replace(&mut self.entry_bytes, keep);
        self.drop_entries(removed);
        self.purge_bytes = record_bytes;
    }

    fn live_bytes(&self) -> u64 {
        LOG_MAGIC.len() as u64
            + self.live_entry_bytes
            + self.vote_bytes
            + self.committed_bytes
            + self.purge_bytes
    }
}

/// Applies one decoded record to the in-memory log and the accounting.
fn replay_record(mem: &mut LogMem, acc: &mut Accounting, rec: LogRecord<Entry>, bytes: u64) {
    match rec {
        LogRecord::Entry(e) => {
            acc.entry(e.log_id.index, bytes);
            mem.entries.insert(e.log_id.index, e);
        }
        LogRecord::Vote(v) => {
            mem.vote = Some(v);
            acc.vote_bytes = bytes;
        }
        LogRecord::Committed(c) => {
            mem.committed = c;
            acc.committed_bytes = bytes;
        }
        LogRecord::TruncateSince(l) => {
            mem.truncate_since(l.index);
            acc.truncate_since(l.index);
        }
        LogRecord::PurgeUpto(l) => {
            mem.purge_upto(l);
            acc.purge_upto(l.index, bytes);
        }
    }
}

/// The open log file; only touched from blocking tasks, one at a time.
#[derive(Debug)]
struct LogFile {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    len: u64,
    acc: Accounting,
    /// Exclusive lock on the node directory, released when the log is closed.
    _lock: File,
    space: Arc<DiskSpace>,
}

impl LogFile {
    /// Appends `buf`; a full disk is waited out (see [`DiskSpace`]), with anything a
    /// failed attempt wrote cut off again first, so the file never holds half a record
    /// followed by a whole one.
    fn write(&mut self, buf: &[u8], sync: bool) -> Result<(), MetaError> {
        let space = self.space.clone();
        space.retry(|| {
            self.file.write_all(buf).map_err(|e| {
                let failed = storage(
                    &self.path,
                    format_args!("append {} bytes at offset {}", buf.len(), self.len),
                    e,
                );
                match self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.seek(SeekFrom::Start(self.len)))
                {
                    Ok(_) => failed,
                    // Cannot undo the partial write: not something to retry.
                    Err(undo) => storage(&self.path, "cut a failed append", undo),
                }
            })
        })?;
        self.len += buf.len() as u64;
        if sync {
            self.file
                .sync_data()
                .map_err(|e| storage(&self.path, "fsync", e))?;
        }
        Ok(())
    }

    /// Purged entries and superseded records make up most of the file.
    fn should_compact(&self) -> bool {
        let live = self.acc.live_bytes();
        self.len.saturating_sub(live) > live
    }

    /// Atomically replaces the file with one holding only `mem`.
    fn rewrite(&mut self, mem: &LogMem) -> Result<(), MetaError> {
        let to_err = |e: String| corrupt(&self.path, e);
        let mut buf = LOG_MAGIC.to_vec();
        let mut acc = Accounting::default();
        if let Some(v) = mem.vote {
            acc.vote_bytes = encode(&LogRecord::Vote(v), &mut buf).map_err(to_err)?;
        }
        if let Some(p) = mem.last_purged {
            let n = encode(&LogRecord::PurgeUpto(p), &mut buf).map_err(to_err)?;
            acc.purge_upto(p.index, n);
        }
        for (index, e) in &mem.entries {
            let n = encode(&LogRecord::Entry(e), &mut buf).map_err(to_err)?;
            acc.entry(*index, n);
        }
        if mem.committed.is_some() {
            acc.committed_bytes =
                encode(&LogRecord::Committed(mem.committed), &mut buf).map_err(to_err)?;
        }
        let before = self.len;
        self.file = match write_atomic(&self.dir, LOG_FILE, &buf) {
            Ok(f) => f,
            // Compaction only saves space; without room for the copy, keep the file.
            Err(e) if e.is_out_of_space() => {
                tracing::warn!(path = %self.path.display(), error = %e, "not compacting the raft log: no room for the rewritten copy");
                return self
                    .file
                    .sync_data()
                    .map_err(|e| storage(&self.path, "fsync", e));
            }
            Err(e) => return Err(e),
        };
        self.len = buf.len() as u64;
        self.acc = acc;
        tracing::info!(
            path = %self.path.display(),
            bytes_before = before,
            bytes_after = self.len,
            entries = mem.entries.len(),
            "compacted raft log file"
        );
        Ok(())
    }
}

/// The Raft log store handed to openraft.
#[derive(Debug)]
pub(crate) struct LogStore {
    path: PathBuf,
    mem: Arc<Mutex<LogMem>>,
    file: Arc<Mutex<LogFile>>,
}

/// Read-only view used by openraft's replication tasks.
#[derive(Debug, Clone)]
pub(crate) struct LogReader {
    mem: Arc<Mutex<LogMem>>,
}

impl LogStore {
    /// Opens or creates `dir/raft.log` and replays it. Blocking. `lock` is the directory lock,
    /// kept for as long as the log is open.
    pub(crate) fn open(
        dir: &Path,
        lock: File,
        space: Arc<DiskSpace>,
    ) -> Result<LogStore, MetaError> {
        let path = dir.join(LOG_FILE);
        remove_stale_tmp(dir, LOG_FILE)?;
        let bytes = match fs::read(&path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(storage(&path, "read", e)),
        };
        let mut mem = LogMem::default();
        let mut acc = Accounting::default();
        let (file, len) = match bytes {
            Some(b) if b.len() >= LOG_MAGIC.len() => {
                if !b.starts_with(LOG_MAGIC) {
                    return Err(corrupt(
                        &path,
                        "not a strata-meta raft log (unexpected file header)",
                    ));
                }
                let scan = scan_records(&b, LOG_MAGIC.len());
                for rec in &scan.records {
                    let decoded: LogRecord<Entry> =
                        serde_json::from_slice(rec.payload).map_err(|e| {
                            corrupt(
                                &path,
                                format_args!(
                                    "record at offset {} passed its checksum but does not decode \
                                     (written by a newer version?): {e}",
                                    rec.offset
                                ),
                            )
                        })?;
                    replay_record(&mut mem, &mut acc, decoded, rec.framed_len());
                }
                let mut file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| storage(&path, "open", e))?;
                if let Some(c) = &scan.corruption {
                    tracing::warn!(
                        path = %path.display(),
                        valid_len = scan.valid_len,
                        dropped_bytes = b.len() as u64 - scan.valid_len,
                        reason = %c,
                        "discarding torn tail of raft log (expected after a crash mid-write; \
                         it was never reported as flushed)"
                    );
                    file.set_len(scan.valid_len)
                        .and_then(|()| file.sync_all())
                        .map_err(|e| storage(&path, "truncate torn tail", e))?;
                }
                file.seek(SeekFrom::Start(scan.valid_len))
                    .map_err(|e| storage(&path, "seek", e))?;
                (file, scan.valid_len)
            }
            Some(b) if !LOG_MAGIC.starts_with(&b) => {
                return Err(corrupt(
                    &path,
                    "not a strata-meta raft log (unexpected file header)",
                ));
            }
            partial => {
                if partial.is_some() {
                    tracing::warn!(path = %path.display(), "raft log has an incomplete header; starting an empty log");
                }
                let file = write_atomic(dir, LOG_FILE, LOG_MAGIC)?;
                (file, LOG_MAGIC.len() as u64)
            }
        };

        check_contiguous(&path, &mem)?;
        // `Committed` is written without fsync and after the entries it names, so it cannot
        // be ahead of the log; clamp defensively so a damaged file cannot make openraft look
        // for entries that are not there.
        if mem.committed > mem.last_log_id() {
            tracing::warn!(path = %path.display(), committed = ?mem.committed, last = ?mem.last_log_id(), "committed log id ahead of the log; clamping");
            mem.committed = mem.last_log_id();
        }
        tracing::info!(
            path = %path.display(),
            bytes = len,
            entries = mem.entries.len(),
            last_purged = ?mem.last_purged.map(|l| l.index),
            last_log = ?mem.last_log_id().map(|l| l.index),
            committed = ?mem.committed.map(|l| l.index),
            "opened raft log"
        );

        let mut log_file = LogFile {
            dir: dir.to_path_buf(),
            path: path.clone(),
            file,
            len,
            acc,
            _lock: lock,
            space,
        };
        if log_file.should_compact() {
            log_file.rewrite(&mem)?;
        }
        Ok(LogStore {
            path,
            mem: Arc::new(Mutex::new(mem)),
            file: Arc::new(Mutex::new(log_file)),
        })
    }

    /// Runs `f` on the file in a blocking task. openraft serializes all log I/O, so this never
    /// contends except with itself.
    async fn with_file<T, F>(&self, f: F) -> Result<T, MetaError>
    where
        T: Send + 'static,
        F: FnOnce(&mut LogFile) -> Result<T, MetaError> + Send + 'static,
    {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&file)))
            .await
            .map_err(|e| storage(&self.path, "log I/O task", io::Error::other(e.to_string())))?
    }

    /// Appends one non-entry record, optionally fsyncing, and updates the accounting.
    async fn write_record(
        &self,
        rec: RecordRef<'_>,
        sync: bool,
        account: impl FnOnce(&mut Accounting, u64) + Send + 'static,
    ) -> Result<(), MetaError> {
        let mut buf = Vec::new();
        let n = encode(&rec, &mut buf).map_err(|e| corrupt(&self.path, e))?;
        self.with_file(move |f| {
            f.write(&buf, sync)?;
            account(&mut f.acc, n);
            Ok(())
        })
        .await
    }
}

/// Entries must be consecutive and start right after the purge point.
fn check_contiguous(path: &Path, mem: &LogMem) -> Result<(), MetaError> {
    let mut expected = mem.last_purged.map(|l| l.index.checked_add(1));
    for &index in mem.entries.keys() {
        if let Some(want) = expected
            && want != Some(index)
        {
            return Err(corrupt(
                path,
                format_args!(
                    "hole in raft log: expected entry {}, found {index}",
                    want.map_or_else(|| "past u64::MAX".to_string(), |w| w.to_string())
                ),
            ));
        }
        expected = Some(index.checked_add(1));
    }
    Ok(())
}

fn read_entries<RB: RangeBounds<u64>>(mem: &Mutex<LogMem>, range: RB) -> Vec<Entry> {
    lock(mem)
        .entries
        .range(range)
        .map(|(_, e)| e.clone())
        .collect()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        Ok(read_entries(&self.mem, range))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        Ok(read_entries(&self.mem, range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let mem = lock(&self.mem);
        Ok(LogState {
            last_purged_log_id: mem.last_purged,
            last_log_id: mem.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            mem: self.mem.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_record(LogRecord::Vote(*vote), true, |acc, n| acc.vote_bytes = n)
            .await
            .map_err(|e| to_storage_error(ErrorSubject::Vote, ErrorVerb::Write, &e))?;
        lock(&self.mem).vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(lock(&self.mem).vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not fsynced: losing it only means re-applying from the snapshot after a power loss.
        self.write_record(LogRecord::Committed(committed), false, |acc, n| {
            acc.committed_bytes = n
        })
        .await
        .map_err(|e| to_storage_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        lock(&self.mem).committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(lock(&self.mem).committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut buf = Vec::new();
        let mut sizes = Vec::with_capacity(entries.len());
        for e in &entries {
            let n = encode(&LogRecord::Entry(e), &mut buf).map_err(|msg| {
                to_storage_error(
                    ErrorSubject::Log(e.log_id),
                    ErrorVerb::Write,
                    &corrupt(&self.path, msg),
                )
            })?;
            sizes.push((e.log_id.index, n));
        }
        // Readable as soon as this returns; durable once the callback fires.
        {
            let mut mem = lock(&self.mem);
            for e in entries {
                mem.entries.insert(e.log_id.index, e);
            }
        }
        let res = self
            .with_file(move |f| {
                f.write(&buf, true)?;
                for (index, n) in sizes {
                    f.acc.entry(index, n);
                }
                Ok(())
            })
            .await;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(to_storage_error(ErrorSubject::Logs, ErrorVerb::Write, &e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::info!(since = log_id.index, "truncating raft log");
        lock(&self.mem).truncate_since(log_id.index);
        let index = log_id.index;
        self.write_record(LogRecord::TruncateSince(log_id), true, move |acc, _| {
            acc.truncate_since(index)
        })
        .await
        .map_err(|e| to_storage_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(upto = log_id.index, "purging raft log");
        lock(&self.mem).purge_upto(log_id);
        let index = log_id.index;
        let mem = self.mem.clone();
        self.write_record(LogRecord::PurgeUpto(log_id), false, move |acc, n| {
            acc.purge_upto(index, n)
        })
        .await
        .map_err(|e| to_storage_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
        self.with_file(move |f| {
            if f.should_compact() {
                let snapshot = lock(&mem).clone();
                f.rewrite(&snapshot)
            } else {
                f.file.sync_data().map_err(|e| storage(&f.path, "fsync", e))
            }
        })
        .await
        .map_err(|e| to_storage_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Arc;

    use openraft::StorageError;
    use openraft::testing::StoreBuilder;
    use openraft::testing::Suite;

    use super::*;
    use crate::fsutil::lock_dir;
    use crate::state_machine::StateMachineStore;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<NodeId>>
        {
            let dir = tempfile::tempdir().unwrap();
            let space = Arc::new(DiskSpace::default());
            let log =
                LogStore::open(dir.path(), lock_dir(dir.path()).unwrap(), space.clone()).unwrap();
            let applied = Arc::new(tokio::sync::watch::channel(0).0);
            let (sm, _state) = StateMachineStore::open(dir.path(), applied, space).unwrap();
            Ok((dir, log, sm))
        }
    }

    /// openraft's own conformance suite for storage implementations.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }
}
