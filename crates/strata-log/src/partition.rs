//! One partition's log: an ordered set of segments, the last one active.
//!
//! Writes append to the active segment under a short lock; durability comes from a group
//! commit: the first producer waiting for a sync becomes the flusher, everything appended
//! before its `fdatasync` is covered by it, and producers that arrive meanwhile share the
//! next one. The high watermark is the end of what has been synced: consumers never see
//! data that a crash could still take back.
//!
//! The partition also keeps its idempotent producers' state (see the `producers` module):
//! appends are checked against it under the same lock before anything is written, so a
//! retried batch is answered with its original offsets instead of being stored twice.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use prometheus::IntGauge;
use strata_protocol::batch::{self, BatchHeader, ControlType, HeaderIter};
use strata_protocol::records;
pub use strata_protocol::vectored::FileRange;
use strata_telemetry::LogMetrics;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::acked::AckedMark;
use crate::epochs::LeaderEpochs;
use crate::error::{LogError, Result};
use crate::index::SegmentIndex;
use crate::producers::{AbortedTxn, Checked, ProducerInfo, ProducerState};
use crate::segment::{self, Damage, Segment};
use crate::tail::{Tail, TailCache};

/// Per-partition settings that shape the files (the topic's `segment.*` configs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`: roll the active segment before it grows past this.
    pub segment_bytes: u64,
    /// `segment.ms`: roll the active segment once it is this old.
    pub segment_ms: i64,
    /// `index.interval.bytes`: bytes of log between offset-index entries.
    pub index_interval_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
        }
    }
}

/// Where a partition's log begins and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    /// First offset still readable (locally or from the object store).
    pub log_start: i64,
    /// First offset on local disk; below it, data is only in the object store.
    pub local_start: i64,
    /// Offsets below this are in the object store (tiered partitions).
    pub remote_end: i64,
    /// End of what consumers may read: the durable log end, or less for a replicated
    /// partition (where it is the end of what every in-sync replica has made durable).
    pub high_watermark: i64,
    /// End of what read_committed consumers may read: the high watermark, or the first
    /// offset of the oldest open transaction if that is lower (Kafka's last stable offset).
    pub last_stable: i64,
    /// End of the synced (durable) local log: what replicas may copy.
    pub durable_end: i64,
    /// Next offset to be assigned.
    pub log_end: i64,
}

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    pub log_start: i64,
    /// The append was a retry of a batch an idempotent producer had already written:
    /// nothing was written, and the offsets are those of the original, which is what the
    /// producer must be told (Kafka acknowledges such a retry as a success).
    pub duplicate: bool,
}

/// The result of a read: whole batches as stored, and the offsets at the time of reading.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// The batches, in memory; empty when they were left in `files`.
    pub records: Bytes,
    /// The batches as ranges of segment files, in order (a read that asked for files and
    /// met batches fit for them; see [`Partition::read_with`]).
    pub files: Vec<FileRange>,
    pub offsets: Offsets,
    /// Served from the in-memory tail, without reading a segment file.
    pub from_memory: bool,
    /// The offset after the last batch in `files`.
    files_end: Option<i64>,
}

impl ReadResult {
    /// Batches read into memory (`from_memory`: from the in-memory tail).
    pub fn in_memory(records: Bytes, offsets: Offsets, from_memory: bool) -> Self {
        Self {
            records,
            files: Vec::new(),
            offsets,
            from_memory,
            files_end: None,
        }
    }

    /// Bytes of batches read, in memory or in files.
    pub fn size(&self) -> usize {
        self.records.len() + self.files.iter().map(|f| f.len).sum::<usize>()
    }

    /// The offset after the last batch read, if any was.
    pub fn next_offset(&self) -> Option<i64> {
        self.files_end.or_else(|| {
            HeaderIter::new(&self.records)
                .last()
                .map(|(_, h)| h.next_offset())
        })
    }
}

/// A read whose first batch is smaller than this is read into memory even when it may
/// be left in files: finding whole-batch boundaries costs a header read per batch, and
/// for small batches a copy costs less.
const MIN_FILE_BATCH: usize = 16 << 10;

/// Most batch headers read to find where a read left in files ends (it ends there).
const MAX_FILE_BATCHES: usize = 256;

/// A sealed local segment, as the uploader sees it.
#[derive(Debug, Clone)]
pub struct SealedSegment {
    pub base_offset: i64,
    pub next_offset: i64,
    pub size: u64,
    pub max_timestamp: i64,
    /// The segment file; its `.index`/`.timeindex` files sit beside it.
    pub path: PathBuf,
    /// An open handle, so the data stays readable even if retention unlinks the file.
    pub file: Arc<File>,
    /// Its offset and time indexes.
    pub index: SegmentIndex,
}

/// The longest prefix of `segments` (oldest first, the last one active) that retention
/// may delete, as the offset the log would then start at: every segment older than
/// `retention_ms`, or pushing the total over `retention_bytes` (-1 disables either). The
/// active segment counts only for time. Segments ending after `eligible_upto` are never
/// due (unsynced data, or local data not yet in the object store).
pub fn plan_retention(
    segments: &[SegmentInfo],
    now_ms: i64,
    retention_ms: i64,
    retention_bytes: i64,
    eligible_upto: i64,
) -> Option<i64> {
    let total: u64 = segments.iter().map(|s| s.size).sum();
    let mut excess = if retention_bytes >= 0 {
        total as i64 - retention_bytes
    } else {
        0
    };
    let last = segments.len().saturating_sub(1);
    let mut target = None;
    for (i, s) in segments.iter().enumerate() {
        if s.size == 0 {
            continue;
        }
        let expired = retention_ms >= 0 && s.max_timestamp < now_ms - retention_ms;
        let over_size = i != last && excess > 0 && excess >= s.size as i64;
        if !(expired || over_size) || s.next_offset > eligible_upto {
            break;
        }
        excess -= s.size as i64;
        target = Some(s.next_offset);
    }
    target
}

fn segment_infos(inner: &Inner) -> Vec<SegmentInfo> {
    inner.segments.values().map(SegmentInfo::of).collect()
}

/// Size and age of one segment, for retention decisions and the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base_offset: i64,
    pub next_offset: i64,
    pub size: u64,
    pub max_timestamp: i64,
}

impl SegmentInfo {
    fn of(s: &Segment) -> Self {
        Self {
            base_offset: s.base_offset,
            next_offset: s.next_offset,
            size: s.size,
            max_timestamp: s.max_timestamp,
        }
    }
}

struct Inner {
    segments: BTreeMap<i64, Segment>,
    log_start: i64,
    /// Synced position: everything before `hw_position` in segment `hw_segment` (and all of
    /// every earlier segment) is durable, up to offset `hw`.
    hw: i64,
    hw_segment: i64,
    hw_position: u64,
    config: LogConfig,
    /// Idempotent producers' sequence and epoch state, as of the end of the log.
    producers: ProducerState,
    /// Everything below this offset is in the object store (the end of the last
    /// uploaded segment); local segments below it may be deleted.
    remote_end: i64,
    /// Set after an fsync failure: the page cache may have dropped data, so the log takes
    /// no more writes until a restart recovers it from disk.
    failed: Option<String>,
    /// The newest appends, in memory.
    tail: Tail,
    /// For a replicated partition, how far every in-sync replica has the log (set by
    /// replication); consumers see up to the smaller of it and the durable end.
    replicated: Option<i64>,
    /// The leader-epoch history.
    epochs: LeaderEpochs,
    /// How many times the log was cut back ([`Partition::truncate_to`]): a sync prepared
    /// before a cut synced bytes that are gone, and must not count for what replaced them.
    cuts: u64,
}

impl Inner {
    fn active(&self) -> Option<&Segment> {
        self.segments.values().next_back()
    }

    fn log_end(&self) -> i64 {
        self.active().map_or(self.log_start, |s| s.next_offset)
    }

    fn offsets(&self) -> Offsets {
        Offsets {
            log_start: self.log_start,
            local_start: self.local_start(),
            remote_end: self.remote_end,
            high_watermark: self.consumer_hw(),
            // An open transaction whose start retention already deleted holds the LSO at
            // the log start, never below it (Kafka's first unstable offset does the same).
            last_stable: self
                .producers
                .first_unstable()
                .map_or(self.consumer_hw(), |o| {
                    o.max(self.log_start).min(self.consumer_hw())
                }),
            durable_end: self.hw,
            log_end: self.log_end(),
        }
    }

    /// What consumers may read up to.
    fn consumer_hw(&self) -> i64 {
        self.replicated.map_or(self.hw, |r| r.min(self.hw))
    }

    fn local_start(&self) -> i64 {
        self.segments
            .keys()
            .next()
            .copied()
            .unwrap_or(self.log_start)
            .max(self.log_start)
    }

    /// Bytes of segment `base` that readers may see.
    fn visible_end(&self, seg: &Segment) -> u64 {
        use std::cmp::Ordering::*;
        match seg.base_offset.cmp(&self.hw_segment) {
            Less => seg.size,
            Equal => self.hw_position.min(seg.size),
            Greater => 0,
        }
    }

    fn advance_hw(&mut self, segment: i64, position: u64, offset: i64) {
        if (segment, position) > (self.hw_segment, self.hw_position) {
            self.hw_segment = segment;
            self.hw_position = position;
        }
        self.hw = self.hw.max(offset);
    }

    fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }
}

/// One fdatasync of a partition's active segment, as prepared under its flush lock.
pub(crate) struct SyncJob {
    file: Arc<File>,
    path: PathBuf,
    base: i64,
    size: u64,
    next: i64,
    /// [`Inner::cuts`] when it was prepared.
    cuts: u64,
}

impl SyncJob {
    /// Blocking: the sync, with how long it took.
    pub(crate) fn run(&self) -> (std::io::Result<()>, Duration) {
        let started = Instant::now();
        let synced = self.file.sync_data();
        (synced, started.elapsed())
    }
}

/// Syncs one blocking-pool task of [`wait_durable_all`] makes, one after another: a few
/// share a hand-off, and many partitions still sync side by side (on a disk, syncs of
/// different files in flight together cost little more than one).
const SYNCS_PER_TASK: usize = 4;

/// [`Partition::wait_durable`] for several partitions at once (a follower's fetch
/// response): the syncs they need share blocking-pool tasks ([`SYNCS_PER_TASK`] each)
/// instead of a hand-off each. A partition another task is syncing already rides on that
/// sync, as `wait_durable` would. One result per wait, in order.
pub async fn wait_durable_all(waits: &[(&Partition, i64)]) -> Vec<Result<()>> {
    let mut results: Vec<Result<()>> = waits.iter().map(|_| Ok(())).collect();
    let mut locks = Vec::new();
    let mut jobs: Vec<(usize, Arc<SyncJob>)> = Vec::new();
    for (i, (p, offset)) in waits.iter().enumerate() {
        if p.is_durable(*offset) {
            continue;
        }
        let Ok(lock) = p.flush.try_lock() else {
            continue;
        };
        match p.sync_job() {
            Ok(Some(job)) => {
                jobs.push((i, job));
                locks.push(lock);
            }
            Ok(None) => {}
            Err(e) => results[i] = Err(e),
        }
    }
    let tasks = jobs.chunks(SYNCS_PER_TASK).map(|chunk| {
        let run: Vec<Arc<SyncJob>> = chunk.iter().map(|(_, job)| job.clone()).collect();
        tokio::task::spawn_blocking(move || run.iter().map(|job| job.run()).collect::<Vec<_>>())
    });
    let done = futures::future::join_all(tasks).await;
    for (chunk, outcome) in jobs.chunks(SYNCS_PER_TASK).zip(done) {
        let outcomes = match outcome {
            Ok(all) => all,
            Err(e) => chunk
                .iter()
                .map(|_| (Err(std::io::Error::other(e.to_string())), Duration::ZERO))
                .collect(),
        };
        for ((i, job), (synced, took)) in chunk.iter().zip(outcomes) {
            if let Err(e) = waits[*i].0.finish_sync(job, synced, took) {
                results[*i] = Err(e);
            }
        }
    }
    drop(locks);
    // What is left (synced by another task, or written since) waits as usual.
    let rest = futures::future::join_all(waits.iter().zip(&results).map(
        |((p, offset), r)| async move {
            match r {
                Ok(()) => p.wait_durable(*offset).await,
                Err(_) => Ok(()),
            }
        },
    ))
    .await;
    results
        .into_iter()
        .zip(rest)
        .map(|(first, then)| first.and(then))
        .collect()
}

/// How far a read may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upto {
    /// The durable end: a follower copying the log.
    Durable,
    /// The high watermark: a read_uncommitted consumer.
    HighWatermark,
    /// The last stable offset: a read_committed consumer.
    LastStable,
}

/// A partition's log on local disk.
pub struct Partition {
    topic: String,
    partition: i32,
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Serialises flushers; see the module docs.
    flush: tokio::sync::Mutex<()>,
    /// The consumer high watermark, for long polls and acks=all.
    hw_tx: watch::Sender<i64>,
    /// The durable log end, for acks=1 and replicas' long polls.
    durable_tx: watch::Sender<i64>,
    metrics: LogMetrics,
    gauges: Gauges,
    /// The highest offset ever made durable, kept beside the segments.
    acked: AckedMark,
}

/// This partition's series of the per-partition gauges, resolved once.
struct Gauges {
    end_offset: IntGauge,
    start_offset: IntGauge,
    size_bytes: IntGauge,
}

/// The base offset in a segment file's name (`<base>.<ext>`).
fn offset_of_file(path: &Path) -> Option<i64> {
    path.file_stem()?.to_str()?.parse().ok()
}

impl Partition {
    /// Opens the partition in `dir` (creating it if needed), recovering every segment.
    pub(crate) fn open(
        dir: PathBuf,
        topic: String,
        partition: i32,
        config: LogConfig,
        metrics: LogMetrics,
        tail: TailCache,
        now_ms: i64,
    ) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(|e| LogError::io("create", &dir, e))?;
        let mut bases = Vec::new();
        let mut snapshots = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| LogError::io("list", &dir, e))? {
            let entry = entry.map_err(|e| LogError::io("list", &dir, e))?;
            let path = entry.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("log") => match offset_of_file(&path) {
                    Some(base) => bases.push(base),
                    None => warn!(path = %path.display(), "ignoring file with an unexpected name"),
                },
                Some("producers") => match offset_of_file(&path) {
                    Some(base) => snapshots.push(base),
                    None => warn!(path = %path.display(), "ignoring file with an unexpected name"),
                },
                Some("tmp") => {
                    let _ = std::fs::remove_file(&path);
                }
                _ => {}
            }
        }
        bases.sort_unstable();
        let (mut producers, snapshot) = load_producer_snapshot(&dir, &bases, &snapshots);
        let mut segments = BTreeMap::new();
        for (i, &base) in bases.iter().enumerate() {
            let path = segment::file_stem(&dir, base).with_extension("log");
            let next_base = bases.get(i + 1).copied();
            // Segments after the snapshot (all of them without one) feed the producer state.
            let replays = snapshot.is_none_or(|(at, _)| base > at);
            let mut replay = |h: &BatchHeader, control: Option<ControlType>| {
                if replays {
                    producers.replay(h, control, now_ms);
                }
            };
            let recovered = Segment::open(
                path.clone(),
                base,
                config.index_interval_bytes,
                next_base,
                now_ms,
                &mut replay,
            )?;
            if replays && !recovered.scanned {
                replay_headers(&recovered.segment, &mut producers, now_ms)?;
            }
            if recovered.truncated > 0 {
                warn!(
                    path = %path.display(),
                    truncated_bytes = recovered.truncated,
                    kept_bytes = recovered.segment.size,
                    "cut a torn or corrupt tail off a segment during recovery"
                );
                metrics
                    .recovery_truncated_bytes_total
                    .inc_by(recovered.truncated);
            }
            if let Some(damage) = &recovered.segment.damage {
                error!(path = %path.display(), damage = %damage, "sealed segment is damaged: its data will not be served from this file");
                metrics.damaged_segments_total.inc();
            }
            segments.insert(base, recovered.segment);
        }
        let damaged = segments.values().any(|s| s.damage.is_some());
        if let Some((at, end)) = snapshot
            && (damaged || segments.get(&at).is_some_and(|s| s.next_offset != end))
        {
            // Recovery cut the snapshot's own segment short, or found a sealed segment
            // damaged, so the snapshot may remember batches the log cannot serve: rebuild
            // from what the log really has.
            warn!(
                path = %segment::file_stem(&dir, at).with_extension("producers").display(),
                "producer snapshot is ahead of its recovered segment; rebuilding producer state from the log"
            );
            producers = ProducerState::default();
            for seg in segments.values() {
                replay_headers(seg, &mut producers, now_ms)?;
            }
        }
        let log_start = bases.first().copied().unwrap_or(0);
        if segments.is_empty() {
            let seg = Segment::create(&dir, 0, config.index_interval_bytes, now_ms)?;
            sync_dir(&dir)?;
            segments.insert(0, seg);
        }
        let mut inner = Inner {
            segments,
            log_start,
            hw: log_start,
            hw_segment: log_start,
            hw_position: 0,
            config,
            producers,
            remote_end: log_start,
            failed: None,
            tail: Tail::new(tail),
            replicated: None,
            epochs: LeaderEpochs::open(&dir),
            cuts: 0,
        };
        // Offsets once made durable are never handed out again, even if recovery cut
        // them off (a damaged tail): the log goes on after a gap, as Kafka's does after
        // an unclean recovery.
        let (acked, mark) = AckedMark::open(&dir)?;
        if let Some(mark) = mark
            && let Some(active) = inner.segments.values_mut().next_back()
            && mark > active.next_offset
            && active.fits_offset(mark)
        {
            error!(
                topic = %topic,
                partition,
                lost_from = active.next_offset,
                lost_to = mark - 1,
                "the log ends before offsets it had made durable (a damaged tail was cut): new records continue after them"
            );
            active.next_offset = mark;
        }
        // Everything that survived recovery is on disk: it is all durable.
        if let Some(active) = inner.active() {
            let (base, size, next) = (active.base_offset, active.size, active.next_offset);
            inner.advance_hw(base, size, next);
        }
        // The epoch history matches the log that survived; a log from before it existed
        // (one broker, so one epoch) gets its first batch's epoch.
        let end = inner.log_end();
        inner.epochs.truncate(end)?;
        if inner.epochs.latest().is_none()
            && end > inner.log_start
            && let Some(first) = inner.segments.values().next()
            && let Ok(Some(h)) = Segment::header_at(&first.file, &first.path, 0, first.size)
        {
            inner
                .epochs
                .begin(h.partition_leader_epoch, inner.log_start)?;
        }
        let hw = inner.hw;
        let part = partition.to_string();
        let labels = [topic.as_str(), part.as_str()];
        let gauges = Gauges {
            end_offset: metrics.end_offset.with_label_values(&labels),
            start_offset: metrics.start_offset.with_label_values(&labels),
            size_bytes: metrics.size_bytes.with_label_values(&labels),
        };
        let p = Self {
            topic,
            partition,
            dir,
            inner: Mutex::new(inner),
            flush: tokio::sync::Mutex::new(()),
            hw_tx: watch::Sender::new(hw),
            durable_tx: watch::Sender::new(hw),
            metrics,
            gauges,
            acked,
        };
        p.publish_metrics(&p.inner.lock());
        Ok(p)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn offsets(&self) -> Offsets {
        self.inner.lock().offsets()
    }

    pub fn size_bytes(&self) -> u64 {
        self.inner.lock().size_bytes()
    }

    pub fn segments(&self) -> Vec<SegmentInfo> {
        segment_infos(&self.inner.lock())
    }

    /// A receiver that changes whenever the high watermark advances (long-polling fetches
    /// wait on it).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.hw_tx.subscribe()
    }

    pub fn set_config(&self, config: LogConfig) {
        self.inner.lock().config = config;
    }

    fn publish_metrics(&self, inner: &Inner) {
        let o = inner.offsets();
        self.gauges.end_offset.set(o.log_end);
        self.gauges.start_offset.set(o.log_start);
        self.gauges.size_bytes.set(inner.size_bytes() as i64);
        self.metrics
            .tail_cache_bytes
            .set(inner.tail.budget().used() as i64);
    }

    /// Removes this partition's metric series (the partition is being deleted).
    pub(crate) fn forget_metrics(&self) {
        let part = self.partition.to_string();
        let labels = [self.topic.as_str(), part.as_str()];
        let _ = self.metrics.end_offset.remove_label_values(&labels);
        let _ = self.metrics.start_offset.remove_label_values(&labels);
        let _ = self.metrics.size_bytes.remove_label_values(&labels);
    }

    fn check_online(&self, inner: &Inner) -> Result<()> {
        match &inner.failed {
            Some(reason) => Err(LogError::Offline {
                path: self.dir.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn fail(&self, inner: &mut Inner, err: &LogError) {
        error!(path = %self.dir.display(), error = %err, "partition log taken offline");
        self.metrics
            .io_errors_total
            .with_label_values(&["fsync"])
            .inc();
        inner.failed = Some(err.to_string());
    }

    /// Appends already-validated batches (`records`, with their headers from
    /// [`strata_protocol::batch::validate_all`]), assigning offsets. The data is written but
    /// not yet durable: call [`Partition::wait_durable`] with `last_offset + 1`.
    ///
    /// Batches of idempotent producers are checked first (see the `producers` module):
    /// a batch that breaks the producer's sequence or epoch fails the whole append with
    /// [`LogError::Producer`] and nothing is written; a retry of one of the producer's
    /// last five batches writes nothing and returns the original's offsets with
    /// `duplicate` set.
    pub fn append(
        &self,
        records: &[u8],
        headers: &[BatchHeader],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo> {
        let mut inner = self.inner.lock();
        self.check_online(&inner)?;
        let count: i64 = headers.iter().map(|h| h.last_offset_delta as i64 + 1).sum();
        let base_offset = inner.log_end();
        let last_offset = base_offset + count - 1;
        let producer_update = match inner.producers.check(headers, base_offset, now_ms)? {
            Checked::Append(update) => update,
            Checked::Duplicate {
                base_offset,
                last_offset,
            } => {
                return Ok(AppendInfo {
                    base_offset,
                    last_offset,
                    log_start: inner.log_start,
                    duplicate: true,
                });
            }
        };
        let mut data = records.to_vec();
        let mut pos = 0usize;
        let mut next = base_offset;
        let mut placed = Vec::with_capacity(headers.len());
        for h in headers {
            batch::set_base_offset(&mut data[pos..], next);
            batch::set_partition_leader_epoch(&mut data[pos..], leader_epoch);
            let mut p = *h;
            p.base_offset = next;
            p.partition_leader_epoch = leader_epoch;
            placed.push(p);
            pos += h.total_len();
            next += h.last_offset_delta as i64 + 1;
        }
        inner.epochs.begin(leader_epoch, base_offset)?;
        self.write_batches(&mut inner, Bytes::from(data), &placed, now_ms)?;
        inner.producers.apply(producer_update);
        let info = AppendInfo {
            base_offset,
            last_offset,
            log_start: inner.log_start,
            duplicate: false,
        };
        self.publish_metrics(&inner);
        Ok(info)
    }

    /// Writes a transaction marker for producer `producer_id`: its open transaction in
    /// this partition ends, committed or aborted (the partition leader's part of Kafka's
    /// WriteTxnMarkers). Durable like any append once [`Partition::wait_durable`] says
    /// so. A marker from an older epoch than the partition knows is refused with
    /// [`LogError::Producer`] (a fenced producer's coordinator).
    pub fn append_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        control: ControlType,
        coordinator_epoch: i32,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo> {
        let mut inner = self.inner.lock();
        self.check_online(&inner)?;
        inner.producers.check_marker(producer_id, producer_epoch)?;
        let offset = inner.log_end();
        let mut data = batch::encode_marker(
            producer_id,
            producer_epoch,
            control,
            coordinator_epoch,
            now_ms,
        );
        batch::set_base_offset(&mut data, offset);
        batch::set_partition_leader_epoch(&mut data, leader_epoch);
        let header = batch::validate(&data).map_err(|e| LogError::Corrupt {
            path: self.dir.clone(),
            position: 0,
            reason: format!("a marker built here does not validate: {e}"),
        })?;
        inner.epochs.begin(leader_epoch, offset)?;
        self.write_batches(&mut inner, Bytes::from(data), &[header], now_ms)?;
        inner
            .producers
            .end_txn(producer_id, producer_epoch, control, offset, now_ms);
        let info = AppendInfo {
            base_offset: offset,
            last_offset: offset,
            log_start: inner.log_start,
            duplicate: false,
        };
        self.publish_metrics(&inner);
        Ok(info)
    }

    /// Aborted transactions that overlap offsets `from..to`, for a read_committed fetch
    /// of that range (Kafka's `aborted_transactions`).
    pub fn aborted_transactions(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        self.inner.lock().producers.aborted_between(from, to)
    }

    /// Appends batches copied from the partition's leader, as they are (offsets and
    /// leader epochs kept): a follower's append. Batches the log already has (from a
    /// retried fetch) are skipped; a batch that does not continue the log is refused.
    /// Idempotent producers' state follows the batches, so it travels with the log.
    pub fn append_replicated(
        &self,
        records: &Bytes,
        headers: &[BatchHeader],
        now_ms: i64,
    ) -> Result<usize> {
        let mut inner = self.inner.lock();
        self.check_online(&inner)?;
        let end = inner.log_end();
        let mut from = 0usize;
        let mut taken = Vec::with_capacity(headers.len());
        for h in headers {
            if h.next_offset() <= end {
                from += h.total_len();
                continue;
            }
            let expected = taken.last().map_or(end, |p: &BatchHeader| p.next_offset());
            if h.base_offset != expected {
                return Err(LogError::Corrupt {
                    path: self.dir.clone(),
                    position: 0,
                    reason: format!(
                        "a replicated batch at offset {} does not continue the log at {expected}",
                        h.base_offset
                    ),
                });
            }
            taken.push(*h);
        }
        if taken.is_empty() {
            return Ok(0);
        }
        // A view of the fetched bytes, not a copy: they are written as they came.
        let data = records.slice(from..from + taken.iter().map(|h| h.total_len()).sum::<usize>());
        for h in &taken {
            inner
                .epochs
                .begin(h.partition_leader_epoch, h.base_offset)?;
        }
        let controls: Vec<Option<ControlType>> = HeaderIter::new(&data)
            .map(|(at, h)| segment::marker_type(&h, &data[at..at + h.total_len()]))
            .collect();
        self.write_batches(&mut inner, data, &taken, now_ms)?;
        for (h, control) in taken.iter().zip(controls) {
            inner.producers.replay(h, control, now_ms);
        }
        self.publish_metrics(&inner);
        Ok(taken.len())
    }

    /// Writes whole batches whose headers (`placed`) carry their final offsets to the
    /// active segment (rolling it first if they do not fit), and keeps them in the tail.
    fn write_batches(
        &self,
        inner: &mut Inner,
        data: Bytes,
        placed: &[BatchHeader],
        now_ms: i64,
    ) -> Result<()> {
        let (Some(first), Some(last)) = (placed.first(), placed.last()) else {
            return Ok(());
        };
        let (base_offset, last_offset) = (first.base_offset, last.last_offset());
        let needs_roll = inner.active().is_none_or(|a| {
            a.size > 0
                && (a.size + data.len() as u64 > inner.config.segment_bytes
                    || now_ms - a.created_ms >= inner.config.segment_ms
                    || !a.fits_offset(last_offset))
        });
        if needs_roll {
            self.roll(inner, now_ms)?;
        }
        let Some(active) = inner.segments.values_mut().next_back() else {
            return Err(LogError::Offline {
                path: self.dir.clone(),
                reason: "no active segment".into(),
            });
        };
        if let Err(e) = active.write(&data) {
            self.metrics
                .io_errors_total
                .with_label_values(&["write"])
                .inc();
            return Err(e);
        }
        let mut pos = active.size;
        for h in placed {
            active.track(h, pos);
            pos += h.total_len() as u64;
        }
        inner.tail.push(base_offset, last_offset + 1, data);
        Ok(())
    }

    /// Cuts the log back to `offset` (everything at or after it goes): what a follower
    /// does with records a former leader wrote that the new leader does not have. Only
    /// data past the high watermark of the leader is ever cut this way.
    pub fn truncate_to(&self, offset: i64, now_ms: i64) -> Result<()> {
        let mut inner = self.inner.lock();
        self.check_online(&inner)?;
        if offset >= inner.log_end() {
            return Ok(());
        }
        let offset = offset.max(inner.log_start);
        // Whole segments from `offset` on go, but the first (the log always has one).
        let first = inner.segments.keys().next().copied();
        let doomed: Vec<i64> = inner
            .segments
            .keys()
            .copied()
            .filter(|b| *b >= offset && Some(*b) != first)
            .collect();
        for base in &doomed {
            if let Some(seg) = inner.segments.remove(base)
                && let Err(e) = seg.delete_files()
            {
                warn!(error = %e, "could not delete a truncated segment's files");
            }
        }
        let Some(last) = inner.segments.values_mut().next_back() else {
            return Ok(());
        };
        // Cut the now-last segment at the first batch that reaches `offset`, reading its
        // headers from the start (it becomes the active segment again).
        let mut cut = Segment::truncated_at(last, offset, now_ms)?;
        std::mem::swap(last, &mut cut);
        let (end, base, size) = (last.next_offset, last.base_offset, last.size);
        inner.epochs.truncate(end)?;
        inner.tail.clear();
        inner.cuts += 1;
        inner.hw = inner.hw.min(end);
        if inner.hw_segment > base {
            inner.hw_segment = base;
            inner.hw_position = size;
        } else if inner.hw_segment == base {
            inner.hw_position = inner.hw_position.min(size);
        }
        // The producer state is rebuilt from what the log still has.
        let mut producers = ProducerState::default();
        for seg in inner.segments.values() {
            replay_headers(seg, &mut producers, now_ms)?;
        }
        inner.producers = producers;
        if let Err(e) = self.acked.set(end).and_then(|()| self.acked.sync()) {
            warn!(topic = %self.topic, partition = self.partition, error = %e, "could not record the durable offset");
        }
        info!(topic = %self.topic, partition = self.partition, offset = end, "truncated the log to the leader's");
        self.publish_metrics(&inner);
        // What is appended at these offsets again is durable only once synced.
        self.durable_tx.send_modify(|d| *d = (*d).min(end));
        drop(inner);
        // Wake acknowledgement waiters: what they wait for may be gone.
        self.hw_tx.send_modify(|_| {});
        Ok(())
    }

    /// The idempotent producers this partition remembers, by producer id (for
    /// DescribeProducers).
    pub fn producers(&self) -> Vec<ProducerInfo> {
        self.inner.lock().producers.describe()
    }

    /// Forgets producers idle for at least `max_idle_ms` (Kafka's
    /// `producer.id.expiration.ms`, one day by default; negative disables expiry) and
    /// returns how many. A producer counts as active at the later of its last batch's
    /// timestamp and the broker time of its last append, so one that writes old
    /// timestamps keeps its duplicate detection for the whole window. A forgotten producer
    /// that comes back is accepted at any sequence, as in Kafka.
    pub fn expire_producers(&self, now_ms: i64, max_idle_ms: i64) -> usize {
        let expired = self.inner.lock().producers.expire(now_ms, max_idle_ms);
        if expired > 0 {
            info!(
                topic = %self.topic,
                partition = self.partition,
                expired,
                "forgot idle producer ids"
            );
        }
        expired
    }

    /// Seals the active segment and starts a new one at the log end offset.
    fn roll(&self, inner: &mut Inner, now_ms: i64) -> Result<()> {
        let next = inner.log_end();
        let Inner {
            segments,
            producers,
            ..
        } = &mut *inner;
        if let Some(active) = segments.values_mut().next_back() {
            // A failed fsync leaves the page cache in an unknown state: the log goes
            // offline. Failing to write the seal files (a full disk) is retried by the
            // next roll; the segment stays active meanwhile.
            if let Err(e) = active.sync() {
                self.fail(inner, &e);
                return Err(e);
            }
            if let Err(e) = active.write_seal_files(producers) {
                self.metrics
                    .io_errors_total
                    .with_label_values(&["write"])
                    .inc();
                return Err(e);
            }
            let (base, size) = (active.base_offset, active.size);
            inner.advance_hw(base, size, next);
            if let Err(e) = self.acked.set(next).and_then(|()| self.acked.sync()) {
                warn!(topic = %self.topic, partition = self.partition, error = %e, "could not record the durable offset");
            }
        }
        let seg = Segment::create(&self.dir, next, inner.config.index_interval_bytes, now_ms)?;
        sync_dir(&self.dir)?;
        inner.segments.insert(next, seg);
        self.metrics.segments_rolled_total.inc();
        self.publish_hw(inner);
        Ok(())
    }

    /// Returns once everything before `offset` is on disk (group commit, see module docs),
    /// or with [`LogError::Truncated`] if the log no longer reaches `offset`.
    pub async fn wait_durable(&self, offset: i64) -> Result<()> {
        loop {
            if self.is_durable(offset) {
                return Ok(());
            }
            let _flusher = self.flush.lock().await;
            if self.is_durable(offset) {
                return Ok(());
            }
            let Some(job) = self.sync_job()? else {
                return Ok(());
            };
            let run = job.clone();
            let (synced, took) = tokio::task::spawn_blocking(move || run.run())
                .await
                .unwrap_or_else(|e| (Err(std::io::Error::other(e)), Duration::ZERO));
            self.finish_sync(&job, synced, took)?;
            // Everything the log has is durable now; syncing again would not bring
            // `offset` closer.
            if job.next < offset {
                return Err(LogError::Truncated {
                    offset,
                    log_end: job.next,
                });
            }
        }
    }

    fn is_durable(&self, offset: i64) -> bool {
        *self.durable_tx.borrow() >= offset
    }

    /// The sync that makes everything written so far durable (`None`: nothing to sync).
    /// Only under the flush lock.
    pub(crate) fn sync_job(&self) -> Result<Option<Arc<SyncJob>>> {
        let inner = self.inner.lock();
        self.check_online(&inner)?;
        Ok(inner.active().map(|a| {
            Arc::new(SyncJob {
                file: a.file.clone(),
                path: a.path.clone(),
                base: a.base_offset,
                size: a.size,
                next: a.next_offset,
                cuts: inner.cuts,
            })
        }))
    }

    /// Records how a sync from [`Partition::sync_job`] went: the durable end moves (unless
    /// the log was cut back meanwhile: then it synced bytes that are gone), or the log
    /// goes offline.
    pub(crate) fn finish_sync(
        &self,
        job: &SyncJob,
        synced: std::io::Result<()>,
        took: Duration,
    ) -> Result<()> {
        self.metrics
            .sync_duration_seconds
            .observe(took.as_secs_f64());
        self.metrics.syncs_total.inc();
        let mut inner = self.inner.lock();
        if let Err(e) = synced {
            let err = LogError::io("fsync", &job.path, e);
            self.fail(&mut inner, &err);
            return Err(err);
        }
        if inner.cuts != job.cuts {
            return Ok(());
        }
        inner.advance_hw(job.base, job.size, job.next);
        // Only the log's sync makes data durable; the mark follows it (see `acked`), and
        // failing to write it is not the produce's failure.
        if let Err(e) = self.acked.set(job.next) {
            warn!(topic = %self.topic, partition = self.partition, error = %e, "could not record the durable offset");
        }
        self.publish_hw(&inner);
        Ok(())
    }

    /// Tells waiters where the durable end and the consumer high watermark are now.
    fn publish_hw(&self, inner: &Inner) {
        let (durable, hw) = (inner.hw, inner.consumer_hw());
        self.durable_tx
            .send_if_modified(|cur| replace_if_greater(cur, durable));
        self.hw_tx
            .send_if_modified(|cur| replace_if_greater(cur, hw));
    }

    /// Returns once consumers may read everything before `offset` (for a replicated
    /// partition: once every in-sync replica has it), or with the log's failure.
    /// `epoch` is the leader epoch the records before `offset` were appended in: if
    /// they are cut away (this replica lost leadership and truncated to the new
    /// leader's log) the wait ends with [`LogError::Superseded`], so records that are
    /// gone are never acknowledged.
    pub async fn wait_high_watermark(&self, offset: i64, epoch: i32) -> Result<()> {
        let mut rx = self.hw_tx.subscribe();
        loop {
            rx.borrow_and_update();
            let reached = {
                let inner = self.inner.lock();
                self.check_online(&inner)?;
                // Still there: the epoch's batches reach `offset` (or, in a log that has
                // no epoch history at all, the log does).
                let kept = match inner.epochs.end_of(epoch, inner.log_end()) {
                    Some((found, end)) => found == epoch && end >= offset,
                    None => inner.epochs.latest().is_none() && inner.log_end() >= offset,
                };
                if !kept {
                    return Err(LogError::Superseded { epoch, offset });
                }
                // The high watermark as it is, not as the watch last published it (which
                // never goes back).
                inner.consumer_hw() >= offset
            };
            if reached {
                return Ok(());
            }
            if rx.changed().await.is_err() {
                return Ok(());
            }
        }
    }

    /// Sets how far every in-sync replica has the log (`None`: the partition is not
    /// replicated, and consumers see the whole durable log). Consumers see up to the
    /// smaller of it and the durable end.
    pub fn set_replicated_hw(&self, hw: Option<i64>) {
        let mut inner = self.inner.lock();
        if inner.replicated == hw {
            return;
        }
        inner.replicated = hw;
        let consumer = inner.consumer_hw();
        drop(inner);
        // A high watermark never goes back for consumers that saw it (the new one can
        // only be lower right after leadership moved, before followers catch up).
        self.hw_tx
            .send_if_modified(|cur| replace_if_greater(cur, consumer));
    }

    /// Declares that this partition has other replicas: until replication sets a high
    /// watermark ([`Partition::set_replicated_hw`]), consumers see only what lies below
    /// the log start (nothing), not the whole durable log, whose tail may be records a
    /// former leader wrote that the others never got.
    pub fn expect_replication(&self) {
        let mut inner = self.inner.lock();
        if inner.replicated.is_none() {
            inner.replicated = Some(inner.log_start);
        }
    }

    /// A watch of the durable log end: what replicas may copy.
    pub fn subscribe_durable(&self) -> watch::Receiver<i64> {
        self.durable_tx.subscribe()
    }

    /// The latest leader epoch this log holds batches of, and where it began.
    pub fn latest_epoch(&self) -> Option<(i32, i64)> {
        self.inner.lock().epochs.latest()
    }

    /// Kafka's OffsetForLeaderEpoch: the largest epoch of this log at or below `epoch`,
    /// and the offset where it ended.
    pub fn epoch_end(&self, epoch: i32) -> Option<(i32, i64)> {
        let inner = self.inner.lock();
        inner.epochs.end_of(epoch, inner.log_end())
    }

    /// Records that leader epoch `epoch` begins at the log end (a new leader's first act).
    pub fn begin_epoch(&self, epoch: i32) -> Result<()> {
        let mut inner = self.inner.lock();
        let end = inner.log_end();
        inner.epochs.begin(epoch, end)
    }

    /// [`Partition::read_with`] up to the high watermark, into memory.
    pub fn read(&self, offset: i64, max_bytes: usize, min_one: bool) -> Result<ReadResult> {
        self.read_with(offset, max_bytes, min_one, Upto::HighWatermark, false)
    }

    /// Reads whole batches starting with the one that holds `offset`, up to `max_bytes`.
    /// With `min_one`, the first batch comes back even if it is larger than `max_bytes`,
    /// so a consumer can make progress past it (Kafka's KIP-74 rule for the first
    /// partition of a fetch). Only synced data is returned, up to `upto`. Blocking file
    /// I/O: call it from a blocking context.
    ///
    /// With `files`, batches of segment files may be left where they are, as file ranges
    /// in [`ReadResult::files`] for the caller to send with `sendfile`, when the first
    /// batch is at least 16 KiB and in a verified segment (otherwise they are read into
    /// memory). Both return the same batches, except that a read left in files stops
    /// after 256 batches, and before a damaged or unverified segment.
    pub fn read_with(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
        upto: Upto,
        files: bool,
    ) -> Result<ReadResult> {
        let (plan, offsets, limit) = {
            let inner = self.inner.lock();
            let offsets = inner.offsets();
            let limit = match upto {
                Upto::Durable => offsets.durable_end,
                Upto::HighWatermark => offsets.high_watermark,
                Upto::LastStable => offsets.last_stable,
            };
            if offset < offsets.log_start || offset > offsets.log_end {
                return Err(LogError::OffsetOutOfRange {
                    offset,
                    log_start: offsets.log_start,
                    log_end: offsets.log_end,
                });
            }
            // At or past the high watermark (up to the log end, as in Kafka): nothing to
            // read yet.
            if offset >= limit {
                return Ok(ReadResult::in_memory(Bytes::new(), offsets, true));
            }
            if offset < offsets.local_start {
                return Err(LogError::NotLocal {
                    offset,
                    local_start: offsets.local_start,
                });
            }
            if let Some(records) = inner.tail.read(offset, limit, max_bytes, min_one) {
                return Ok(ReadResult::in_memory(records, offsets, true));
            }
            let first = inner
                .segments
                .range(..=offset)
                .next_back()
                .map_or(i64::MIN, |(b, _)| *b);
            let mut plan = Vec::new();
            for s in inner.segments.range(first..).map(|(_, s)| s) {
                let visible = inner.visible_end(s);
                plan.push(ReadPlan {
                    base: s.base_offset,
                    file: s.file.clone(),
                    path: s.path.clone(),
                    start: if s.base_offset <= offset {
                        let rel = (offset - s.base_offset).min(i64::from(u32::MAX)) as u32;
                        u64::from(s.offsets.lookup(rel))
                    } else {
                        0
                    },
                    // Nothing at or after a damage is read.
                    end: s
                        .damage
                        .as_ref()
                        .map_or(visible, |d| visible.min(d.position)),
                    verify: !s.verified,
                    damage: s.damage.clone(),
                });
                if s.damage.is_some() {
                    break;
                }
            }
            (plan, offsets, limit)
        };
        if files && let Some((ranges, end)) = file_ranges(&plan, offset, max_bytes, min_one, limit)
        {
            return Ok(ReadResult {
                records: Bytes::new(),
                files: ranges,
                offsets,
                from_memory: false,
                files_end: Some(end),
            });
        }
        let mut out = Vec::new();
        for seg in plan {
            let budget = max_bytes.saturating_sub(out.len());
            if budget == 0 && !out.is_empty() {
                break;
            }
            let filled =
                match read_segment(&seg, offset, budget, min_one && out.is_empty(), &mut out) {
                    Ok(filled) => filled,
                    // Damage past data already read: serve that; the next read meets it.
                    Err(Damaged(_)) if !out.is_empty() => false,
                    Err(Damaged(damage)) => return Err(self.damaged(seg.base, offset, damage)),
                    Err(Failed(e)) => return Err(e),
                };
            if !filled {
                break;
            }
        }
        // The durable end bounds what files hold; a lower high watermark bounds further.
        let visible = HeaderIter::new(&out)
            .take_while(|(_, h)| h.next_offset() <= limit)
            .last()
            .map_or(0, |(at, h)| at + h.total_len());
        out.truncate(visible);
        Ok(ReadResult::in_memory(Bytes::from(out), offsets, false))
    }

    /// Records that sealed segment `base` is damaged (once: logged and counted) and says
    /// what a read at `offset` gets instead of its data: if the object store has the
    /// segment, the local copies up to and including it are dropped and the read goes
    /// there (`NotLocal`); otherwise `Corrupt`, which clients see as the retriable
    /// KAFKA_STORAGE_ERROR, never the damaged bytes.
    fn damaged(&self, base: i64, offset: i64, damage: Damage) -> LogError {
        let mut inner = self.inner.lock();
        let remote_end = inner.remote_end;
        let active = inner.active().map(|a| a.base_offset);
        let Some(seg) = inner.segments.get_mut(&base) else {
            // Removed meanwhile (retention): read again.
            return LogError::NotLocal {
                offset,
                local_start: inner.local_start(),
            };
        };
        if seg.damage.is_none() {
            error!(topic = %self.topic, partition = self.partition, path = %seg.path.display(), damage = %damage, "sealed segment is damaged: its data will not be served from this file");
            self.metrics.damaged_segments_total.inc();
            seg.damage = Some(damage.clone());
        }
        let (path, end) = (seg.path.clone(), seg.next_offset);
        if end <= remote_end && Some(base) != active {
            let n = self.remove_segments(&mut inner, |s| {
                s.next_offset <= end && Some(s.base_offset) != active
            });
            warn!(topic = %self.topic, partition = self.partition, path = %path.display(), deleted_segments = n, "the object store has the damaged segment: local copies up to it dropped, reads go there");
            self.publish_metrics(&inner);
            return LogError::NotLocal {
                offset,
                local_start: inner.local_start(),
            };
        }
        LogError::Corrupt {
            path,
            position: damage.position,
            reason: damage.reason,
        }
    }

    /// Checks every batch of sealed segment `base` (if not done before): `Ok` if it is
    /// good (it is then trusted by reads), the damage error otherwise (see
    /// [`Partition::damaged`]). Blocking file I/O: before an upload, and for the scrubber.
    pub fn verify_segment(&self, base: i64) -> Result<()> {
        let (file, path, size) = {
            let inner = self.inner.lock();
            let Some(s) = inner.segments.get(&base) else {
                return Ok(());
            };
            if let Some(damage) = s.damage.clone() {
                drop(inner);
                return Err(self.damaged(base, base, damage));
            }
            if s.verified {
                return Ok(());
            }
            (s.file.clone(), s.path.clone(), s.size)
        };
        match segment::check_batches(&file, &path, size)? {
            None => {
                self.metrics.verified_bytes_total.inc_by(size);
                if let Some(s) = self.inner.lock().segments.get_mut(&base) {
                    s.verified = true;
                }
                Ok(())
            }
            Some(damage) => Err(self.damaged(base, base, damage)),
        }
    }

    /// Base offsets and sizes of sealed segments whose batches are not checked yet
    /// (found on disk at start-up), oldest first: the scrubber's work list.
    pub fn unverified_segments(&self) -> Vec<(i64, u64)> {
        let inner = self.inner.lock();
        let active = inner.active().map(|a| a.base_offset);
        inner
            .segments
            .values()
            .filter(|s| !s.verified && s.damage.is_none() && Some(s.base_offset) != active)
            .map(|s| (s.base_offset, s.size))
            .collect()
    }

    /// Whether [`Partition::read`] at `offset` would be answered from memory right now
    /// (no file I/O, so no need for a blocking thread).
    pub fn reads_from_memory(&self, offset: i64) -> bool {
        self.in_memory(offset, Upto::HighWatermark)
    }

    /// [`Partition::reads_from_memory`] for [`Partition::read_replica`], which reads up
    /// to the durable end: a follower fetches above the high watermark (the watermark
    /// moves only once every follower has fetched past it).
    pub fn replica_reads_from_memory(&self, offset: i64) -> bool {
        self.in_memory(offset, Upto::Durable)
    }

    fn in_memory(&self, offset: i64, upto: Upto) -> bool {
        let inner = self.inner.lock();
        let o = inner.offsets();
        let limit = match upto {
            Upto::Durable => o.durable_end,
            Upto::HighWatermark | Upto::LastStable => o.high_watermark,
        };
        offset >= o.local_start && offset <= limit && (offset == limit || inner.tail.covers(offset))
    }

    /// The first record at or after `timestamp` (its offset and timestamp), or `None` if
    /// every record is older. Blocking file I/O.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>> {
        let (plans, log_start) = {
            let inner = self.inner.lock();
            let plans: Vec<(ReadPlan, i64)> = inner
                .segments
                .values()
                .filter(|s| s.max_timestamp >= timestamp && s.damage.is_none())
                .map(|s| {
                    let rel = s.times.lookup(timestamp);
                    (
                        ReadPlan {
                            base: s.base_offset,
                            file: s.file.clone(),
                            path: s.path.clone(),
                            start: u64::from(s.offsets.lookup(rel)),
                            end: inner.visible_end(s),
                            verify: false,
                            damage: None,
                        },
                        s.base_offset + i64::from(rel),
                    )
                })
                .collect();
            (plans, inner.log_start)
        };
        for (plan, from_offset) in plans {
            let mut pos = plan.start;
            while let Some(h) = Segment::header_at(&plan.file, &plan.path, pos, plan.end)? {
                let total = h.total_len() as u64;
                if pos + total > plan.end {
                    break;
                }
                if h.max_timestamp >= timestamp && h.last_offset() >= log_start.max(from_offset) {
                    let mut whole = vec![0u8; total as usize];
                    plan.file
                        .read_exact_at(&mut whole, pos)
                        .map_err(|e| LogError::io("read", &plan.path, e))?;
                    let found = records::record_positions(&whole)
                        .map_err(|e| LogError::Corrupt {
                            path: plan.path.clone(),
                            position: pos,
                            reason: e.to_string(),
                        })?
                        .into_iter()
                        .find(|r| r.timestamp >= timestamp && r.offset >= log_start);
                    if let Some(r) = found {
                        return Ok(Some((r.offset, r.timestamp)));
                    }
                }
                pos += total;
            }
        }
        Ok(None)
    }

    /// The log start offset retention would move to: the end of the longest prefix of
    /// segments that are all older than `retention_ms` or that push the log over
    /// `retention_bytes` (-1 disables either). The active segment counts only for time
    /// (it is rolled first). `None` if nothing is due.
    pub fn retention_target(
        &self,
        now_ms: i64,
        retention_ms: i64,
        retention_bytes: i64,
    ) -> Option<i64> {
        let inner = self.inner.lock();
        let segs = segment_infos(&inner);
        // Only synced data may be deleted, so the start never passes the high watermark.
        plan_retention(&segs, now_ms, retention_ms, retention_bytes, inner.hw)
            .filter(|&t| t > inner.log_start)
    }

    /// The offset below which local segments may go under `local.retention.ms` /
    /// `local.retention.bytes` (-1 disables either): only segments already in the
    /// object store qualify. `None` if nothing is due.
    pub fn local_retention_target(
        &self,
        now_ms: i64,
        retention_ms: i64,
        retention_bytes: i64,
    ) -> Option<i64> {
        let inner = self.inner.lock();
        let segs = segment_infos(&inner);
        let eligible = inner.remote_end.min(inner.hw);
        plan_retention(&segs, now_ms, retention_ms, retention_bytes, eligible)
            .filter(|&t| t > inner.local_start())
    }

    /// The oldest `limit` sealed segments whose data is not in the object store yet.
    pub fn upload_candidates(&self, limit: usize) -> Vec<SealedSegment> {
        let inner = self.inner.lock();
        let active = inner.active().map(|a| a.base_offset);
        inner
            .segments
            .values()
            .filter(|s| {
                Some(s.base_offset) != active && s.size > 0 && s.next_offset > inner.remote_end
            })
            .take(limit)
            .map(|s| SealedSegment {
                base_offset: s.base_offset,
                next_offset: s.next_offset,
                size: s.size,
                max_timestamp: s.max_timestamp,
                path: s.path.clone(),
                file: s.file.clone(),
                index: SegmentIndex::new(s.offsets.clone(), s.times.clone()),
            })
            .collect()
    }

    /// Records that everything below `offset` is in the object store.
    pub fn set_remote_end(&self, offset: i64) {
        let mut inner = self.inner.lock();
        inner.remote_end = inner.remote_end.max(offset);
    }

    /// Bytes and segments on local disk that are not in the object store yet (the data a
    /// lost disk would take with it), active segment included.
    pub fn unuploaded(&self) -> (u64, usize) {
        let inner = self.inner.lock();
        inner
            .segments
            .values()
            .filter(|s| s.next_offset > inner.remote_end && s.size > 0)
            .fold((0, 0), |(b, n), s| (b + s.size, n + 1))
    }

    /// Deletes local segments that lie wholly below `offset` and are in the object store;
    /// the log start offset does not move (the data stays readable from the store).
    pub fn delete_local_below(&self, offset: i64) -> usize {
        let mut inner = self.inner.lock();
        let limit = offset.min(inner.remote_end);
        let active = inner.active().map(|a| a.base_offset);
        let n = self.remove_segments(&mut inner, |s| {
            s.next_offset <= limit && Some(s.base_offset) != active
        });
        if n > 0 {
            info!(
                topic = %self.topic,
                partition = self.partition,
                local_start = inner.local_start(),
                deleted_segments = n,
                "deleted local segments that are in the object store"
            );
            self.publish_metrics(&inner);
        }
        n
    }

    /// Rolls the active segment if it holds data and is older than `segment.ms` (so that
    /// a quiet partition's data still gets sealed and uploaded), or holds data at all when
    /// `force` is set. `Ok(true)` if it rolled.
    pub fn roll_active(&self, now_ms: i64, force: bool) -> Result<bool> {
        let mut inner = self.inner.lock();
        self.check_online(&inner)?;
        let due = inner.active().is_some_and(|a| {
            a.size > 0 && (force || now_ms - a.created_ms >= inner.config.segment_ms)
        });
        if due {
            self.roll(&mut inner, now_ms)?;
        }
        Ok(due)
    }

    /// Aligns the local log with what metadata and the object store hold: the logical log
    /// start (which may lie below the first local segment when older data is only in the
    /// store) and the end of the uploaded data. A local log that ends before the uploaded
    /// data (a new or wiped disk) restarts empty at `remote_end`, so offsets continue
    /// where the store left off.
    pub fn restore_tiered(&self, log_start: i64, remote_end: i64, now_ms: i64) -> Result<()> {
        {
            let mut inner = self.inner.lock();
            inner.remote_end = inner.remote_end.max(remote_end);
            if remote_end >= inner.local_start() && log_start < inner.log_start {
                inner.log_start = log_start;
            }
        }
        if remote_end > self.offsets().log_end {
            warn!(
                topic = %self.topic,
                partition = self.partition,
                remote_end,
                "local log ends before the object store's data; restarting it there"
            );
            self.advance_log_start(remote_end, now_ms)?;
            self.inner.lock().log_start = log_start.min(remote_end);
        }
        Ok(())
    }

    /// Moves the log start offset forward to `offset` and deletes every segment that lies
    /// wholly below it. If `offset` is beyond the log end (the metadata says data up to
    /// there is gone), the log restarts empty at `offset`.
    pub fn advance_log_start(&self, offset: i64, now_ms: i64) -> Result<usize> {
        let mut inner = self.inner.lock();
        if offset <= inner.log_start {
            return Ok(0);
        }
        if offset >= inner.log_end() {
            // Everything local is below the new start: begin a fresh segment exactly there
            // (the old ones are all deleted below).
            let seg =
                Segment::create(&self.dir, offset, inner.config.index_interval_bytes, now_ms)?;
            sync_dir(&self.dir)?;
            inner.segments.insert(offset, seg);
            inner.advance_hw(offset, 0, offset);
        }
        inner.log_start = offset;
        inner.producers.forget_aborted_below(offset);
        let deleted = self.remove_segments(&mut inner, |s| {
            s.next_offset <= offset && s.base_offset < offset
        });
        if deleted > 0 {
            info!(
                topic = %self.topic,
                partition = self.partition,
                log_start = offset,
                deleted_segments = deleted,
                "advanced log start offset"
            );
        }
        self.publish_metrics(&inner);
        self.publish_hw(&inner);
        Ok(deleted)
    }

    /// Removes the segments `doomed` picks, with their files; returns how many.
    fn remove_segments(&self, inner: &mut Inner, doomed: impl Fn(&Segment) -> bool) -> usize {
        let bases: Vec<i64> = inner
            .segments
            .values()
            .filter(|s| doomed(s))
            .map(|s| s.base_offset)
            .collect();
        for base in &bases {
            if let Some(seg) = inner.segments.remove(base)
                && let Err(e) = seg.delete_files()
            {
                self.metrics
                    .io_errors_total
                    .with_label_values(&["delete"])
                    .inc();
                warn!(error = %e, "could not delete segment files; they will be retried at the next start");
            }
        }
        self.metrics
            .segments_deleted_total
            .inc_by(bases.len() as u64);
        bases.len()
    }

    /// Syncs the active segment (orderly shutdown).
    pub fn sync(&self) -> Result<()> {
        let inner = self.inner.lock();
        if let Some(a) = inner.active() {
            a.file
                .sync_data()
                .map_err(|e| LogError::io("fsync", &a.path, e))?;
            self.acked.set(a.next_offset)?;
            self.acked.sync()?;
        }
        Ok(())
    }
}

/// Loads the producer state from the snapshot of the newest sealed segment that has a
/// usable one, and returns it with that segment's base offset and the offset the snapshot
/// covers up to (the next segment's base). Without one the state is empty and must be
/// rebuilt from every segment. Unusable snapshots are logged and deleted, as are snapshots
/// that belong to no sealed segment (left over from a deletion or a failed roll).
fn load_producer_snapshot(
    dir: &Path,
    bases: &[i64],
    snapshots: &[i64],
) -> (ProducerState, Option<(i64, i64)>) {
    let sealed: Vec<(i64, i64)> = bases.windows(2).map(|w| (w[0], w[1])).collect();
    for &base in snapshots {
        if !sealed.iter().any(|&(b, _)| b == base) {
            let _ = std::fs::remove_file(segment::file_stem(dir, base).with_extension("producers"));
        }
    }
    for &(base, end) in sealed.iter().rev() {
        if !snapshots.contains(&base) {
            continue;
        }
        let path = segment::file_stem(dir, base).with_extension("producers");
        let loaded = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|data| ProducerState::decode_snapshot(&data, end));
        match loaded {
            Ok(state) => return (state, Some((base, end))),
            Err(reason) => {
                warn!(
                    path = %path.display(),
                    %reason,
                    "ignoring an unusable producer snapshot; the state is rebuilt from the log"
                );
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    (ProducerState::default(), None)
}

/// Feeds the batches of a segment that recovery trusted without reading into the
/// producer state. A header that does not parse ends this segment's walk with a warning:
/// the log stays as usable as before, only producer state after that point is missing.
fn replay_headers(seg: &Segment, producers: &mut ProducerState, now_ms: i64) -> Result<()> {
    match seg.walk_headers(&mut |h, control| producers.replay(h, control, now_ms)) {
        Err(LogError::Corrupt {
            path,
            position,
            reason,
        }) => {
            warn!(
                path = %path.display(),
                position,
                %reason,
                "unreadable batch header while rebuilding producer state; skipping the rest of the segment"
            );
            Ok(())
        }
        other => other,
    }
}

fn replace_if_greater(cur: &mut i64, new: i64) -> bool {
    if new > *cur {
        *cur = new;
        true
    } else {
        false
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io("fsync directory", dir, e))
}

struct ReadPlan {
    base: i64,
    file: Arc<File>,
    path: PathBuf,
    start: u64,
    end: u64,
    /// Check each batch's CRC (the segment is not verified yet).
    verify: bool,
    /// The segment's known damage, where `end` stops.
    damage: Option<Damage>,
}

/// Why a segment read failed: its data is damaged (where, and what is wrong), or an
/// error.
enum ReadFailure {
    Damaged(Damage),
    Failed(LogError),
}
use ReadFailure::{Damaged, Failed};

impl From<LogError> for ReadFailure {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Corrupt {
                position, reason, ..
            } => Damaged(Damage::at(position, reason)),
            other => Failed(other),
        }
    }
}

/// Reads `n` bytes of `file` at `pos` onto the end of `out`, into memory that is not
/// zero-filled first: the fill cost as much as the read itself (13% of a replay's CPU).
pub(crate) fn read_append(
    file: &File,
    n: usize,
    pos: u64,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    out.reserve_exact(n);
    let start = out.len();
    let goal = start + n;
    while out.len() < goal {
        let at = pos + (out.len() - start) as u64;
        // pread fills the Vec's spare capacity, which is more than the missing bytes
        // when `out` had room already (a partial batch trimmed off an earlier read): the
        // excess is dropped below.
        match rustix::io::pread(file, rustix::buffer::spare_capacity(out), at) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        out.truncate(goal);
    }
    Ok(())
}

/// The whole batches from the one holding `offset`, within `max_bytes` (at least one with
/// `min_one`) and ending at or before `limit`, as ranges of the segment files of `plan`:
/// as far as they qualify (see [`Partition::read_with`]), and the offset after the last
/// batch; `None` if the first batch does not qualify. Anything unexpected (damage, a cut
/// file, an I/O error) ends the ranges there: a read of what follows, into memory, deals
/// with it.
fn file_ranges(
    plan: &[ReadPlan],
    offset: i64,
    max_bytes: usize,
    min_one: bool,
    limit: i64,
) -> Option<(Vec<FileRange>, i64)> {
    let mut ranges: Vec<FileRange> = Vec::new();
    let mut total = 0usize;
    let mut headers = 0usize;
    let mut end = None;
    for seg in plan {
        if seg.verify || seg.damage.is_some() {
            break;
        }
        let header = |pos| {
            Segment::header_at(&seg.file, &seg.path, pos, seg.end)
                .ok()
                .flatten()
        };
        let mut pos = seg.start;
        // Skip batches that end before `offset`.
        let mut next = loop {
            headers += 1;
            match header(pos) {
                Some(h) if h.last_offset() < offset => pos += h.total_len() as u64,
                other => break other,
            }
        };
        let start = pos;
        while let Some(h) = next.take() {
            let len = h.total_len();
            let first = total == 0 && pos == start;
            let fits = total + (pos - start) as usize + len <= max_bytes || (first && min_one);
            if (first && len < MIN_FILE_BATCH)
                || !fits
                || h.next_offset() > limit
                || pos + len as u64 > seg.end
                || headers > MAX_FILE_BATCHES
            {
                break;
            }
            pos += len as u64;
            end = Some(h.next_offset());
            headers += 1;
            next = header(pos);
        }
        let len = (pos - start) as usize;
        if len > 0 {
            // The kernel starts reading what is not cached yet, so that sending it later
            // (on the connection's thread) waits less for the disk.
            let _ = rustix::fs::fadvise(
                &*seg.file,
                start,
                std::num::NonZeroU64::new(len as u64),
                rustix::fs::Advice::WillNeed,
            );
            ranges.push(FileRange {
                file: seg.file.clone(),
                pos: start,
                len,
            });
            total += len;
        }
        // On to the next segment only if this one was read to its end.
        if pos < seg.end || len == 0 {
            break;
        }
    }
    end.map(|end| (ranges, end))
}

/// Appends to `out` the whole batches of one segment from the one holding `offset`, within
/// `budget` bytes (or one batch if `first` and it is larger). Returns whether the reader
/// should continue with the next segment (this one was exhausted within budget).
fn read_segment(
    seg: &ReadPlan,
    offset: i64,
    budget: usize,
    first: bool,
    out: &mut Vec<u8>,
) -> std::result::Result<bool, ReadFailure> {
    let mut pos = seg.start;
    // Skip batches that end before `offset`.
    let header = loop {
        match Segment::header_at(&seg.file, &seg.path, pos, seg.end)? {
            None if pos < seg.end => {
                return Err(Damaged(Damage::at(
                    pos,
                    "the file ends inside a batch header",
                )));
            }
            // The end of what may be read: the segment's end, or its damage.
            None => return seg.damage.clone().map_or(Ok(true), |d| Err(Damaged(d))),
            Some(h) if h.last_offset() < offset => pos += h.total_len() as u64,
            Some(h) => break h,
        }
    };
    let available = (seg.end - pos) as usize;
    if header.total_len() > available {
        // Visible data ends at batch boundaries: a batch past the end is a cut file.
        return Err(Damaged(Damage::at(
            pos,
            format!(
                "the file ends inside the batch at offset {}",
                header.base_offset
            ),
        )));
    }
    let want = if first {
        budget.max(header.total_len())
    } else {
        budget
    }
    .min(available);
    if want < header.total_len() {
        return Ok(false);
    }
    let at = out.len();
    read_append(&seg.file, want, pos, out).map_err(|e| LogError::io("read", &seg.path, e))?;
    let whole = segment::whole_batches_len(&out[at..]);
    out.truncate(at + whole);
    if seg.verify {
        // Serve only batches whose CRC holds; stop before the first that fails.
        let mut good = 0usize;
        while good < whole {
            match batch::check_crc(&out[at + good..at + whole]) {
                Ok(h) => good += h.total_len(),
                Err(e) => {
                    out.truncate(at + good);
                    return Err(Damaged(Damage::at(pos + good as u64, e.to_string())));
                }
            }
        }
    }
    Ok(want == available && whole == available)
}
