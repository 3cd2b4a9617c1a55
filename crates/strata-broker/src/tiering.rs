//! Tiered storage as the broker runs it: uploading sealed segments and recording them in
//! the manifest, reading old offsets back from the object store, deleting remote data
//! (retention, DeleteRecords, topic deletion, orphans), and holding produce back when too
//! much data is not yet uploaded.
//!
//! [`Tier`] works from narrow handles, never the [`crate::broker::Broker`]: the object
//! store and its cache, the metadata node (manifests, topics), the partition logs, the
//! broker's static config, its clock and the tier metrics. It does not touch groups,
//! transactions, replication or the request handlers, which call it.
//!
//! The order that keeps data safe: an upload is recorded in the manifest (Raft) only after
//! both objects are written, and a local segment is deleted only after the manifest names
//! it; remote data is removed from the manifest first and its objects deleted afterwards,
//! so a crash in between leaves orphans (collected later), never dangling entries.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::ResponseError;
use parking_lot::Mutex;
use strata_log::{LogManager, Partition, PartitionKey, SealedSegment, SegmentInfo, plan_retention};
use strata_meta::{
    Command, CommandResult, MetaNode, PartitionMeta, RemoteAbortedTxn, RemoteSegmentMeta, TopicMeta,
};
use strata_protocol::batch::HeaderIter;
use strata_telemetry::TierMetrics;
use strata_tier::layout::{Kind, ObjectName};
use strata_tier::{BlockCache, RemoteSegment, Store, TierError, layout};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, debug, info, warn};
use uuid::Uuid;

use crate::clock::Clock;
use crate::config::{BrokerConfig, TopicConfig};

/// How often the uploader looks for sealed segments.
const UPLOAD_TICK: Duration = Duration::from_secs(1);
/// Longest wait between failed upload attempts of a partition.
const MAX_BACKOFF_MS: i64 = 30_000;

/// Upload bookkeeping of one partition.
#[derive(Default)]
struct UploadState {
    in_flight: bool,
    failures: u32,
    next_attempt_ms: i64,
}

/// What tiering works with besides the store and its cache: the rest of the broker it
/// may see.
pub(crate) struct TierHandles {
    pub(crate) node_id: i32,
    pub(crate) meta: MetaNode,
    pub(crate) logs: Arc<LogManager>,
    pub(crate) config: BrokerConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: TierMetrics,
    /// The block cache's disk tier: its directory and size (see [`cache_disk_bytes`]).
    pub(crate) cache_dir: std::path::PathBuf,
    pub(crate) cache_bytes: u64,
}

/// The object store, its cache and the uploader's state.
pub(crate) struct Tier {
    pub(crate) store: Store,
    pub(crate) cache: BlockCache,
    node_id: i32,
    meta: MetaNode,
    logs: Arc<LogManager>,
    config: BrokerConfig,
    clock: Arc<dyn Clock>,
    metrics: TierMetrics,
    uploads: Mutex<HashMap<PartitionKey, UploadState>>,
    slots: Semaphore,
    part_bytes: usize,
    /// Bytes not yet uploaded across all partitions: recounted every upload tick and
    /// raised by every append in between, so admission sees a burst at once.
    unuploaded: AtomicU64,
    /// The unuploaded-bytes cap in force: the configured one, or less when the data
    /// directory's file system has less room (see [`Tier::disk_cap`]).
    cap: AtomicU64,
    /// The cap and its reason as last logged.
    cap_logged: Mutex<Option<(u64, &'static str)>>,
    /// The block cache's disk tier: its directory and size.
    cache_dir: std::path::PathBuf,
    cache_bytes: u64,
}

/// The smallest disk tier the block cache is cut down to: four of its 16 MiB regions
/// (fewer leave it next to nothing to evict between), unless configured smaller.
const MIN_CACHE_DISK_BYTES: u64 = 64 << 20;

/// The size of the block cache's disk tier: `strata.tier.cache.disk-bytes`, but at most
/// half of the room its file system has for it (the free space plus what the cache
/// already holds there) when it shares that file system with the log. The
/// unuploaded-bytes cap keeps what the cache may still grow by free (see
/// [`Tier::disk_cap`]), so a cache sized beyond the free space would leave producers none
/// on a small disk; half leaves the other half to the log. What the cache holds counts
/// as room, so the size stays put across restarts while the log's size does. The
/// configured size if the file system cannot be asked.
pub(crate) fn cache_disk_bytes(configured: u64, cache_dir: &Path, log_dir: &Path) -> u64 {
    let asked =
        std::fs::create_dir_all(cache_dir).and_then(|()| Ok(rustix::fs::statvfs(cache_dir)?));
    let Ok(fs) = asked else {
        return configured;
    };
    let room = fs
        .f_bavail
        .saturating_mul(fs.f_frsize)
        .saturating_add(disk_usage(cache_dir));
    let size = cache_share(configured, room, same_fs(cache_dir, log_dir));
    if size < configured {
        info!(
            size_bytes = size,
            configured_bytes = configured,
            room_bytes = room,
            "the block cache's disk tier is limited to half the room its file system has (it shares it with the log)"
        );
    }
    size
}

/// [`cache_disk_bytes`] for a file system with `room` bytes for the cache.
fn cache_share(configured: u64, room: u64, shared_with_log: bool) -> u64 {
    match shared_with_log {
        true => configured.min((room / 2).max(MIN_CACHE_DISK_BYTES)),
        false => configured,
    }
}

/// Whether `a` and `b` exist on one file system.
fn same_fs(a: &Path, b: &Path) -> bool {
    let dev = |p: &Path| rustix::fs::stat(p).ok().map(|s| s.st_dev);
    dev(a).is_some() && dev(a) == dev(b)
}

/// Bytes the files directly in `dir` take on disk (allocated blocks: sparse files count
/// what they hold). 0 if it cannot be read.
fn disk_usage(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| rustix::fs::stat(e.path()).ok())
                .map(|st| (st.st_blocks as u64) * 512)
                .sum()
        })
        .unwrap_or(0)
}

impl Tier {
    pub(crate) fn new(store: Store, cache: BlockCache, h: TierHandles) -> Self {
        Self {
            store,
            cache,
            slots: Semaphore::new(h.config.upload_concurrency()),
            part_bytes: h.config.multipart_part_bytes(),
            cache_bytes: h.cache_bytes,
            node_id: h.node_id,
            meta: h.meta,
            logs: h.logs,
            config: h.config,
            clock: h.clock,
            metrics: h.metrics,
            uploads: Mutex::new(HashMap::new()),
            unuploaded: AtomicU64::new(0),
            cap: AtomicU64::new(u64::MAX),
            cap_logged: Mutex::new(None),
            cache_dir: h.cache_dir,
        }
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn topic_by_id(&self, id: Uuid) -> Option<TopicMeta> {
        self.meta.read(|s| s.topic_by_id(id).cloned())
    }

    fn topic_config(&self, topic: &TopicMeta) -> TopicConfig {
        TopicConfig::resolve(&topic.configs, &self.config)
    }
}

/// The end of a partition's uploaded data, from its manifest.
pub(crate) fn remote_end(pm: &PartitionMeta) -> Option<i64> {
    pm.remote_segments.last().map(|s| s.next_offset)
}

fn to_remote(s: &RemoteSegmentMeta) -> RemoteSegment {
    RemoteSegment {
        key: s.key.clone(),
        index_key: s.index_key.clone(),
        base_offset: s.base_offset,
        next_offset: s.next_offset,
        size: s.size,
        max_timestamp: s.max_timestamp,
    }
}

fn jitter(ms: i64) -> i64 {
    ms / 2 + rand::random_range(0..=ms / 2)
}

impl Tier {
    /// The aborted transactions the manifest's segments record that overlap offsets
    /// `from..to`: (producer id, first offset).
    pub(crate) fn remote_aborted(&self, key: PartitionKey, from: i64, to: i64) -> Vec<(i64, i64)> {
        self.with_partition_meta(key.topic_id, key.partition, |pm| {
            pm.remote_segments
                .iter()
                .filter(|s| s.next_offset > from)
                .flat_map(|s| s.aborted.iter())
                .filter(|a| a.last_offset >= from && a.first_offset < to)
                .map(|a| (a.producer_id, a.first_offset))
                .collect()
        })
        .unwrap_or_default()
    }

    /// Runs `f` on a partition's metadata, without copying it (a manifest may be long).
    fn with_partition_meta<R>(
        &self,
        topic_id: Uuid,
        partition: i32,
        f: impl FnOnce(&PartitionMeta) -> R,
    ) -> Option<R> {
        self.meta.read(|s| {
            s.topic_by_id(topic_id)
                .and_then(|t| {
                    usize::try_from(partition)
                        .ok()
                        .and_then(|i| t.partitions.get(i))
                })
                .map(f)
        })
    }

    /// The remote segments a read of `max_bytes` from `offset` covers: the one holding
    /// `offset` (across a gap, the next one with data after it), then whole segments
    /// while they fit the budget; and the segment after those, to fetch ahead.
    fn plan_remote_read(
        &self,
        topic_id: Uuid,
        partition: i32,
        offset: i64,
        max_bytes: usize,
    ) -> (Vec<RemoteSegment>, Option<RemoteSegment>) {
        self.with_partition_meta(topic_id, partition, |pm| {
            let segs = &pm.remote_segments;
            let mut rest = segs[segs.partition_point(|s| s.next_offset <= offset)..].iter();
            let Some(first) = rest.next() else {
                return (Vec::new(), None);
            };
            let mut room = max_bytes.saturating_sub(first.size as usize);
            let mut planned = vec![to_remote(first)];
            for seg in rest {
                if seg.size as usize > room {
                    return (planned, Some(to_remote(seg)));
                }
                room -= seg.size as usize;
                planned.push(to_remote(seg));
            }
            (planned, None)
        })
        .unwrap_or_default()
    }

    /// A span for OpenTelemetry export of a tiering operation on one partition
    /// (`segment.upload`, `remote.read`), from `offset`, whose bytes the caller records;
    /// a disabled span while export is off.
    pub(crate) fn tier_span(&self, name: &'static str, key: PartitionKey, offset: i64) -> Span {
        if !strata_telemetry::tracing_enabled() {
            return Span::none();
        }
        let topic = self
            .topic_by_id(key.topic_id)
            .map_or_else(|| key.topic_id.to_string(), |t| t.name);
        // One span definition; `otel.name` names the exported span after the operation.
        tracing::info_span!(
            "tier",
            otel.name = name,
            messaging.destination.name = %topic,
            messaging.destination.partition.id = key.partition,
            strata.offset = offset,
            strata.bytes = tracing::field::Empty,
        )
    }

    /// Whole batches from the object store starting with the one that holds `offset`, up
    /// to `max_bytes` (at least one batch with `min_one`), continuing into the following
    /// segments. The segments the budget covers are read concurrently, and the one after
    /// them is fetched ahead, so a sequential replay keeps many GETs in flight.
    pub(crate) async fn read_remote(
        &self,
        topic_id: Uuid,
        partition: i32,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<Bytes, ResponseError> {
        let (planned, after) = self.plan_remote_read(topic_id, partition, offset, max_bytes);
        if planned.is_empty() {
            return Err(ResponseError::OffsetOutOfRange);
        }
        if let Some(after) = after {
            self.cache
                .prefetch(&after.key, after.size, &after.index_key);
        }
        let reads = planned.iter().enumerate().map(|(i, seg)| {
            let (from, budget) = if i == 0 {
                (offset, max_bytes)
            } else {
                (seg.base_offset, seg.size as usize)
            };
            self.cache
                .read_batches(seg, from, budget, min_one && i == 0)
        });
        let results = futures::future::join_all(reads).await;
        // Keep whole pieces in order within the budget; stop at the first failure or gap.
        let mut pieces: Vec<Bytes> = Vec::new();
        let mut len = 0usize;
        for (i, result) in results.into_iter().enumerate() {
            let data = match result {
                Ok(data) => data,
                Err(e) => {
                    warn!(topic_id = %topic_id, partition, offset, error = %e, "remote read failed");
                    if len == 0 {
                        // Retriable: the client tries again, the store may be back by then.
                        return Err(ResponseError::KafkaStorageError);
                    }
                    break;
                }
            };
            if len > 0 && len + data.len() > max_bytes {
                break;
            }
            len += data.len();
            let ended = HeaderIter::new(&data).last().map(|(_, h)| h.next_offset());
            pieces.push(data);
            if ended.is_none_or(|end| end < planned[i].next_offset) {
                // This segment was not read to its end: the next one must not follow it.
                break;
            }
        }
        Ok(match pieces.len() {
            0 => Bytes::new(),
            1 => pieces.remove(0),
            _ => {
                let mut out = BytesMut::with_capacity(len);
                for p in &pieces {
                    out.extend_from_slice(p);
                }
                out.freeze()
            }
        })
    }

    /// The first record at or after `timestamp` among the remote-only segments (those
    /// below the local log), if any: (offset, timestamp).
    pub(crate) async fn remote_offset_for_timestamp(
        &self,
        topic_id: Uuid,
        partition: i32,
        timestamp: i64,
        log_start: i64,
        local_start: i64,
    ) -> Result<Option<(i64, i64)>, ResponseError> {
        // A segment whose newest record is older than `timestamp` cannot hold the answer:
        // its index is not even read (a long manifest would cost a GET per segment).
        let candidates = self
            .with_partition_meta(topic_id, partition, |pm| {
                pm.remote_segments
                    .iter()
                    .filter(|s| {
                        s.base_offset < local_start
                            && s.next_offset > log_start
                            && s.max_timestamp >= timestamp
                    })
                    .map(to_remote)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        for s in &candidates {
            match self
                .cache
                .offset_for_timestamp(s, timestamp, log_start)
                .await
            {
                Ok(Some(found)) => return Ok(Some(found)),
                Ok(None) => {}
                Err(e) => {
                    warn!(topic_id = %topic_id, partition, error = %e, "remote timestamp lookup failed");
                    return Err(ResponseError::KafkaStorageError);
                }
            }
        }
        Ok(None)
    }

    /// The largest timestamp among the remote-only segments (below `local_start`), or -1.
    pub(crate) fn remote_max_timestamp(&self, key: PartitionKey, local_start: i64) -> i64 {
        self.with_partition_meta(key.topic_id, key.partition, |pm| {
            pm.remote_segments
                .iter()
                .filter(|s| s.base_offset < local_start)
                .map(|s| s.max_timestamp)
                .max()
        })
        .flatten()
        .unwrap_or(-1)
    }

    /// Uploads sealed segments until shutdown, one per partition at a time and at most
    /// `strata.tier.upload-concurrency` at once; also rolls quiet active segments past
    /// `segment.ms` and refreshes the unuploaded-data gauges.
    pub(crate) async fn run_uploads(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(UPLOAD_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = self.now_ms();
            // Over the cap in force (the disk's, when that is lower), active segments are
            // sealed early so that they can be uploaded (otherwise they would hold produce
            // back until `segment.ms`); a partition that still has sealed segments queued
            // is left alone, so an unreachable store does not turn its tail into a stream
            // of tiny segments.
            let over_cap = self.unuploaded.load(Ordering::Relaxed) >= self.cap_in_force();
            let mut total = (0u64, 0usize);
            for (key, log) in self.logs.partitions() {
                let Some(topic) = self.topic_by_id(key.topic_id) else {
                    continue;
                };
                if !self.topic_config(&topic).uploads() {
                    continue;
                }
                let force = over_cap && log.upload_candidates(1).is_empty();
                if let Err(e) = log.roll_active(now, force) {
                    warn!(topic = %topic.name, partition = key.partition, error = %e, "could not roll the active segment");
                }
                let (bytes, segments) = log.unuploaded();
                total = (total.0 + bytes, total.1 + segments);
                self.maybe_upload(key, &topic, log, now);
            }
            self.unuploaded.store(total.0, Ordering::Relaxed);
            self.update_cap(total.0);
            self.metrics.unuploaded_bytes.set(total.0 as i64);
            self.metrics.unuploaded_segments.set(total.1 as i64);
        }
    }

    /// Counts freshly appended bytes of a tiered topic towards the unuploaded total.
    pub(crate) fn note_unuploaded(&self, bytes: u64) {
        self.unuploaded.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Starts uploading the partition's oldest sealed segment that is not in the store, if
    /// the partition is not busy or backing off.
    fn maybe_upload(
        self: &Arc<Self>,
        key: PartitionKey,
        topic: &TopicMeta,
        log: Arc<Partition>,
        now: i64,
    ) {
        let Some(pm) = usize::try_from(key.partition)
            .ok()
            .and_then(|i| topic.partitions.get(i))
        else {
            return;
        };
        if pm.leader != self.node_id {
            return;
        }
        {
            let mut uploads = self.uploads.lock();
            let state = uploads.entry(key).or_default();
            if state.in_flight || state.next_attempt_ms > now {
                return;
            }
            let Some(seg) = log.upload_candidates(1).pop() else {
                return;
            };
            state.in_flight = true;
            let this = self.clone();
            let epoch = pm.leader_epoch;
            let name = topic.name.clone();
            tokio::spawn(async move {
                let span = this.tier_span("segment.upload", key, seg.base_offset);
                span.record("strata.bytes", seg.size as i64);
                let result = this.upload(key, epoch, &seg, &log).instrument(span).await;
                let now = this.now_ms();
                let mut uploads = this.uploads.lock();
                let state = uploads.entry(key).or_default();
                state.in_flight = false;
                match result {
                    Ok(()) => {
                        state.failures = 0;
                        state.next_attempt_ms = 0;
                        drop(uploads);
                        // Go straight on with the next sealed segment rather than waiting
                        // for the tick, so a backlog drains at the store's pace.
                        if let Some(topic) = this.topic_by_id(key.topic_id) {
                            this.maybe_upload(key, &topic, log, now);
                        }
                    }
                    Err(e) => {
                        state.failures += 1;
                        let backoff = (250i64 << state.failures.min(8)).min(MAX_BACKOFF_MS);
                        state.next_attempt_ms = now + jitter(backoff);
                        this.metrics.upload_errors_total.inc();
                        warn!(
                            topic = %name,
                            partition = key.partition,
                            base_offset = seg.base_offset,
                            attempt = state.failures,
                            retry_in_ms = state.next_attempt_ms - now,
                            error = %e,
                            "segment upload failed; will retry"
                        );
                    }
                }
            });
        }
    }

    /// Uploads one sealed segment and its index, then records it in the manifest.
    async fn upload(
        &self,
        key: PartitionKey,
        epoch: i32,
        seg: &SealedSegment,
        log: &Arc<Partition>,
    ) -> Result<(), String> {
        let _slot = self.slots.acquire().await.map_err(|e| e.to_string())?;
        // Never upload a damaged segment: check every batch first (once per segment).
        let (checker, base) = (log.clone(), seg.base_offset);
        tokio::task::spawn_blocking(move || checker.verify_segment(base))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("the local segment is damaged, so it is not uploaded: {e}"))?;
        let started = Instant::now();
        let name = ObjectName::new_upload(key.topic_id, key.partition, seg.base_offset, epoch);
        let seg_key = name.key();
        let idx_key = name.with_kind(Kind::Index).key();
        let store = &self.store;
        let written = async {
            store
                .put_file(
                    &seg_key,
                    seg.file.clone(),
                    &seg.path,
                    seg.size,
                    self.part_bytes,
                    4,
                )
                .await?;
            store.put(&idx_key, Bytes::from(seg.index.to_bytes())).await
        }
        .await;
        // The keys are this attempt's own: objects of a failed attempt are deleted (if the
        // store lets us; otherwise the garbage collector will), a retry writes new ones.
        let discard = || async {
            for k in [&seg_key, &idx_key] {
                if let Err(e) = store.delete(k).await {
                    debug!(key = %k, error = %e, "could not delete the objects of a failed upload");
                }
            }
        };
        if let Err(e) = written {
            discard().await;
            return Err(e.to_string());
        }
        // The transactions this segment's abort markers ended go with its entry.
        let aborted = log
            .aborted_transactions(seg.base_offset, seg.next_offset)
            .into_iter()
            .filter(|a| (seg.base_offset..seg.next_offset).contains(&a.last_offset))
            .map(|a| RemoteAbortedTxn {
                producer_id: a.producer_id,
                first_offset: a.first_offset,
                last_offset: a.last_offset,
            })
            .collect();
        let entry = RemoteSegmentMeta {
            base_offset: seg.base_offset,
            next_offset: seg.next_offset,
            max_timestamp: seg.max_timestamp,
            size: seg.size,
            leader_epoch: epoch,
            key: seg_key.clone(),
            index_key: idx_key.clone(),
            aborted,
        };
        let cmd = Command::AddRemoteSegment {
            topic_id: key.topic_id,
            partition: key.partition,
            segment: entry,
        };
        match self.meta.write(cmd).await {
            Ok(CommandResult::Ok) => {
                let named = self
                    .with_partition_meta(key.topic_id, key.partition, |pm| {
                        pm.remote_segments.iter().any(|r| r.key == seg_key)
                    })
                    .unwrap_or(false);
                if !named {
                    // An earlier attempt, whose commit looked failed, covers this segment.
                    discard().await;
                }
            }
            Ok(other) => {
                discard().await;
                return Err(format!("manifest refused the segment: {other:?}"));
            }
            // The entry may or may not have been committed: its objects stay, and the
            // garbage collector deletes them if no manifest names them.
            Err(e) => return Err(format!("committing the manifest entry: {e}")),
        }
        log.set_remote_end(seg.next_offset);
        let m = &self.metrics;
        m.uploads_total.inc();
        m.uploaded_bytes_total.inc_by(seg.size);
        m.upload_duration_seconds
            .observe(started.elapsed().as_secs_f64());
        debug!(key = %seg_key, bytes = seg.size, "uploaded segment");
        Ok(())
    }

    /// The retention plan of a tiered partition: its remote-only segments followed by its
    /// local ones, as one log.
    pub(crate) fn tiered_retention_target(
        &self,
        key: PartitionKey,
        log: &Partition,
        now: i64,
        retention_ms: i64,
        retention_bytes: i64,
    ) -> Option<i64> {
        let o = log.offsets();
        let mut segs: Vec<SegmentInfo> =
            self.with_partition_meta(key.topic_id, key.partition, |pm| {
                pm.remote_segments
                    .iter()
                    .filter(|s| s.next_offset <= o.local_start && s.next_offset > o.log_start)
                    .map(|s| SegmentInfo {
                        base_offset: s.base_offset,
                        next_offset: s.next_offset,
                        size: s.size,
                        max_timestamp: s.max_timestamp,
                    })
                    .collect()
            })?;
        segs.extend(log.segments());
        plan_retention(&segs, now, retention_ms, retention_bytes, o.high_watermark)
            .filter(|&t| t > o.log_start)
    }

    /// Removes manifest entries wholly below `below`, then their objects.
    pub(crate) async fn remove_remote_below(&self, topic_id: Uuid, partition: i32, below: i64) {
        let cmd = Command::RemoveRemoteSegments {
            topic_id,
            partition,
            below,
        };
        let removed = match self.meta.write(cmd).await {
            Ok(CommandResult::RemoteSegmentsRemoved(r)) => r,
            Ok(_) => return,
            Err(e) => {
                warn!(%topic_id, partition, error = %e, "could not remove remote segments from the manifest");
                return;
            }
        };
        for s in &removed {
            for k in [&s.key, &s.index_key] {
                if let Err(e) = self.store.delete(k).await {
                    warn!(key = %k, error = %e, "could not delete a remote object; the garbage collector will");
                }
            }
            self.cache.forget(&s.key, s.size).await;
            self.metrics.remote_segments_deleted_total.inc();
        }
        if !removed.is_empty() {
            info!(%topic_id, partition, below, segments = removed.len(), "deleted remote segments");
        }
    }

    /// Deletes every object of a deleted topic (its manifest went with it).
    pub(crate) async fn purge_topic_objects(&self, topic_id: Uuid) {
        match self.store.list(&layout::topic_prefix(topic_id)).await {
            Ok(objects) => {
                for o in &objects {
                    match self.store.delete(&o.key).await {
                        Ok(()) => {
                            if ObjectName::parse(&o.key).is_some_and(|p| p.kind == Kind::Segment) {
                                self.metrics.remote_segments_deleted_total.inc();
                            }
                        }
                        Err(e) => {
                            warn!(key = %o.key, error = %e, "could not delete an object of a deleted topic")
                        }
                    }
                }
                if !objects.is_empty() {
                    info!(%topic_id, objects = objects.len(), "deleted the objects of a deleted topic");
                }
            }
            Err(e) => {
                warn!(%topic_id, error = %e, "could not list a deleted topic's objects; the garbage collector will retry")
            }
        }
    }

    /// Deletes objects that no manifest names and that are older than the grace period:
    /// leftovers of a crash between upload and commit, or of a topic deletion.
    pub(crate) async fn collect_garbage(&self) -> Result<usize, TierError> {
        let now = self.now_ms();
        let (known_topics, referenced): (HashSet<Uuid>, HashSet<String>) = self.meta.read(|s| {
            let topics = s.topics.values().map(|t| t.id).collect();
            let keys = s
                .topics
                .values()
                .flat_map(|t| t.partitions.iter())
                .flat_map(|p| p.remote_segments.iter())
                .flat_map(|r| [r.key.clone(), r.index_key.clone()])
                .collect();
            (topics, keys)
        });
        let mut deleted = 0;
        for o in self.store.list("").await? {
            let Some(parsed) = ObjectName::parse(&o.key) else {
                continue;
            };
            let orphan = !known_topics.contains(&parsed.topic_id) || !referenced.contains(&o.key);
            if orphan && now - o.last_modified_ms > self.config.gc_grace_ms() {
                match self.store.delete(&o.key).await {
                    Ok(()) => deleted += 1,
                    Err(e) => {
                        warn!(key = %o.key, error = %e, "could not delete an orphaned object; the next pass will retry")
                    }
                }
            }
        }
        if deleted > 0 {
            info!(objects = deleted, "garbage-collected orphaned objects");
            self.metrics.gc_deleted_objects_total.inc_by(deleted as u64);
        }
        Ok(deleted)
    }

    pub(crate) async fn run_gc(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.gc_interval_ms()));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(e) = self.collect_garbage().await {
                        warn!(error = %e, "object garbage collection failed");
                    }
                }
            }
        }
    }

    /// The unuploaded-bytes cap the disk allows now, with `unuploaded` bytes waiting: what
    /// is waiting plus the room left on the data directory's file system, less the reserve
    /// (`strata.wal.disk-reserve-bytes`, for the metadata log, indexes and segment rolls)
    /// and less what the block cache's disk tier may still grow by when it shares that file
    /// system. `None` if the file system cannot be asked.
    fn disk_cap(&self, unuploaded: u64) -> Option<u64> {
        let root = self.logs.root();
        let fs = rustix::fs::statvfs(root).ok()?;
        let available = fs.f_bavail.saturating_mul(fs.f_frsize);
        let size = fs.f_blocks.saturating_mul(fs.f_frsize);
        let reserve = self.config.disk_reserve_bytes(size);
        let cache_growth = if same_fs(&self.cache_dir, root) {
            self.cache_bytes.saturating_sub(disk_usage(&self.cache_dir))
        } else {
            0
        };
        Some(
            unuploaded.saturating_add(
                available
                    .saturating_sub(reserve)
                    .saturating_sub(cache_growth),
            ),
        )
    }

    /// Recomputes the cap in force and logs it when it or its reason changes noticeably.
    /// When the disk is what limits it, local copies of uploaded segments are deleted
    /// ahead of `local.retention.*` (they are in the object store, and reads fall back
    /// to it): on a tight disk they are a cache, and new data comes first.
    fn update_cap(&self, unuploaded: u64) {
        let configured = self.config.max_unuploaded_bytes();
        let (mut cap, mut why) = match self.disk_cap(unuploaded) {
            Some(disk) if disk < configured => (disk, "the data directory's free space"),
            _ => (configured, "strata.wal.max-unuploaded-bytes"),
        };
        if cap < configured {
            let deleted: usize = self
                .logs
                .partitions()
                .into_iter()
                .map(|(_, log)| log.delete_local_below(log.offsets().remote_end))
                .sum();
            if deleted > 0 {
                info!(
                    deleted_segments = deleted,
                    "disk space is short: deleted local copies of uploaded segments early"
                );
                (cap, why) = match self.disk_cap(unuploaded) {
                    Some(disk) if disk < configured => (disk, "the data directory's free space"),
                    _ => (configured, "strata.wal.max-unuploaded-bytes"),
                };
            }
        }
        self.cap.store(cap, Ordering::Relaxed);
        let mut logged = self.cap_logged.lock();
        let changed = logged
            .is_none_or(|(before, reason)| reason != why || cap.abs_diff(before) > before / 10);
        if changed {
            info!(
                cap_bytes = cap,
                configured_bytes = configured,
                limited_by = why,
                "unuploaded-bytes cap in force"
            );
            *logged = Some((cap, why));
        }
    }

    /// The unuploaded-bytes cap in force: `strata.wal.max-unuploaded-bytes`, or less when
    /// the data directory's free space says so (see [`Tier::update_cap`]).
    fn cap_in_force(&self) -> u64 {
        self.cap
            .load(Ordering::Relaxed)
            .min(self.config.max_unuploaded_bytes())
    }

    /// Holds a produce request back while more bytes are waiting for the object store than
    /// the cap in force allows (`strata.wal.max-unuploaded-bytes`, or less when the disk
    /// has less room), for at most `wait`. `Err` with the reason if the backlog did not
    /// drain.
    pub(crate) async fn admit_produce(&self, wait: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let pending = self.unuploaded.load(Ordering::Relaxed);
            let cap = self.cap_in_force();
            if pending < cap {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                self.metrics.produce_throttled_total.inc();
                let why = match self.cap_logged.lock().as_ref() {
                    Some((_, why)) => *why,
                    None => "strata.wal.max-unuploaded-bytes",
                };
                return Err(format!(
                    "{pending} bytes on local disk are not in the object store yet (the cap is {cap}, set by {why}); retry later"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_cache_takes_at_most_half_the_room_it_shares_with_the_log() {
        // Room to spare: the configured size.
        assert_eq!(cache_share(2048 * MIB, 100_000 * MIB, true), 2048 * MIB);
        // A small disk: half of it, so producers keep the other half.
        assert_eq!(cache_share(2048 * MIB, 3000 * MIB, true), 1500 * MIB);
        // Next to nothing: still a few regions, or what was asked if less.
        assert_eq!(cache_share(2048 * MIB, MIB, true), MIN_CACHE_DISK_BYTES);
        assert_eq!(cache_share(16 * MIB, MIB, true), 16 * MIB);
        // A file system of its own: what was asked for.
        assert_eq!(cache_share(2048 * MIB, 3000 * MIB, false), 2048 * MIB);
    }

    #[test]
    fn the_cache_size_comes_from_its_file_system() {
        let data = tempfile::tempdir().unwrap();
        let cache = data.path().join("cache");
        let fs = rustix::fs::statvfs(data.path()).unwrap();
        let size = cache_disk_bytes(u64::MAX / 4, &cache, data.path());
        assert!(cache.is_dir());
        // Half the free space, give or take what other processes write meanwhile.
        assert!(size <= fs.f_blocks * fs.f_frsize / 2, "{size}");
        assert!(size >= MIN_CACHE_DISK_BYTES);
        assert_eq!(cache_disk_bytes(32 * MIB, &cache, data.path()), 32 * MIB);
    }

    #[test]
    fn disk_usage_counts_allocated_blocks() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(disk_usage(dir.path()), 0);
        std::fs::write(dir.path().join("written"), vec![1u8; 8 << 20]).unwrap();
        // A sparse region file, as the cache creates them, holds nothing yet.
        std::fs::File::create(dir.path().join("sparse"))
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let used = disk_usage(dir.path());
        assert!((8 * MIB..16 * MIB).contains(&used), "{used}");
        assert_eq!(disk_usage(&dir.path().join("missing")), 0);
    }
}
