//! Remote objects read through a `foyer` hybrid cache (memory plus a local-disk tier) of
//! fixed-size blocks. Concurrent readers of the same block share one GET (foyer's
//! single-flight fetch), so many consumer groups replaying the same range cost one GET per
//! block; a reader moving forward has the next blocks fetched ahead of it.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use foyer::{
    BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    HybridCachePolicy, HybridCacheProperties, Location, RecoverMode,
};
use foyer_memory::FetchTarget;
use futures::future::try_join_all;
use prometheus::IntGauge;
use strata_telemetry::TierMetrics;

use crate::cache_drops::DroppedWrites;
use crate::error::{Result, TierError};
use crate::store::Store;

/// Sizes of the block cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Directory of the disk tier.
    pub dir: PathBuf,
    pub memory_bytes: usize,
    pub disk_bytes: usize,
    /// Size of one cached block (and of one ranged GET).
    pub block_bytes: u64,
    /// Blocks fetched ahead of a reader.
    pub readahead_blocks: u64,
}

#[derive(Clone)]
pub struct BlockCache {
    cache: HybridCache<String, Bytes>,
    store: Store,
    block: u64,
    readahead: u64,
    /// Blocks fetched from the store whose bytes have not all been served yet, with
    /// how many are left: served bytes count as `object_store` while a block has fresh
    /// bytes left (its GET was made for them), as `cache` after that.
    fresh: Arc<Mutex<HashMap<String, u64>>>,
    metrics: TierMetrics,
}

/// Most blocks remembered as not fully served (blocks evicted unread would otherwise
/// accumulate); past it the map starts over and a few reads count as cache.
const MAX_FRESH: usize = 16_384;

/// The cache key of block `index` of object `key`, `block` bytes long. The block size is
/// part of it because the disk tier outlives the process: after a restart with another
/// `strata.tier.cache.block-bytes`, blocks cached at the old size must not be found.
fn block_key(key: &str, block: u64, index: u64) -> String {
    format!("{key}#{block}#{index}")
}

/// The disk tier's unit of allocation and eviction (foyer's block, one file each).
const REGION_BYTES: usize = 16 << 20;

/// The largest cache block: foyer's disk tier never writes an entry larger than one of
/// its regions ([`REGION_BYTES`]; 16 MiB blocks were fetched again after every
/// restart), so bigger blocks would only ever be cached in memory. Half a region leaves
/// room for the entry's key and header.
pub const MAX_BLOCK_BYTES: u64 = REGION_BYTES as u64 / 2;

/// How foyer names the file of each region of the disk tier, before its 8-digit index.
const REGION_FILE_PREFIX: &str = "foyer-storage-direct-fs-";

/// Deletes the region files of a disk tier that held more than `regions` regions: after
/// it shrank (a smaller `disk_bytes` than last time) foyer never opens them again, and
/// they would keep their disk space for good.
fn drop_regions_beyond(dir: &Path, regions: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let index = name
            .to_str()
            .and_then(|n| n.strip_prefix(REGION_FILE_PREFIX))
            .and_then(|i| i.parse::<usize>().ok());
        if index.is_some_and(|i| i >= regions) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %entry.path().display(), "removed a region file the smaller disk tier no longer uses")
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "could not remove a region file the disk tier no longer uses")
                }
            }
        }
    }
}

/// How many times (about 10 ms apart, after a flush each) a fetched entry is looked for
/// in the disk tier's index before it counts as not written (foyer drops disk writes
/// when its queues overflow).
const DISK_WRITE_POLLS: u32 = 300;

/// What follows a fetch from the store to the disk tier: it counts as pending from the
/// moment it starts until the disk tier's index has the entry.
struct DiskWrite {
    cache: HybridCache<String, Bytes>,
    pending: IntGauge,
}

/// One count in the pending gauge, taken back when dropped: a fetch that failed or was
/// abandoned, or once the entry is on disk.
struct Pending(IntGauge);

impl Pending {
    fn start(gauge: IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl DiskWrite {
    /// Runs `fetch` of entry `name`; if it succeeds, follows the entry to the disk. The
    /// reader that ran the fetch queues it for the disk once foyer holds it (see
    /// [`BlockCache::entry`]), so what ends the count is the entry showing up in the disk
    /// tier's index, not the end of one reader's wait.
    async fn after<F>(self, name: String, fetch: F) -> Result<Bytes>
    where
        F: std::future::Future<Output = Result<Bytes>>,
    {
        let pending = Pending::start(self.pending);
        let fetched = fetch.await;
        if fetched.is_ok() {
            tokio::spawn(async move {
                let storage = self.cache.storage();
                for _ in 0..DISK_WRITE_POLLS {
                    storage.wait().await;
                    if storage.may_contains(&name) {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                drop(pending);
            });
        }
        fetched
    }
}

impl BlockCache {
    pub async fn open(cfg: CacheConfig, store: Store, metrics: TierMetrics) -> Result<Self> {
        if cfg.block_bytes > MAX_BLOCK_BYTES {
            return Err(TierError::Cache(format!(
                "a cache block of {} bytes is larger than the disk tier stores ({MAX_BLOCK_BYTES})",
                cfg.block_bytes
            )));
        }
        std::fs::create_dir_all(&cfg.dir).map_err(|e| TierError::Io {
            op: "create",
            path: cfg.dir.clone(),
            source: e,
        })?;
        drop_regions_beyond(&cfg.dir, cfg.disk_bytes / REGION_BYTES);
        // Direct I/O keeps cached blocks out of the page cache (they are cached already)
        // and saves a copy per block; file systems without it (tmpfs) get buffered I/O.
        let device = match FsDeviceBuilder::new(&cfg.dir)
            .with_capacity(cfg.disk_bytes)
            .with_direct(true)
            .build()
        {
            Ok(d) => d,
            Err(e) => {
                tracing::info!(dir = %cfg.dir.display(), error = %e, "no direct I/O for the cache's disk tier; using buffered I/O");
                FsDeviceBuilder::new(&cfg.dir)
                    .with_capacity(cfg.disk_bytes)
                    .build()
                    .map_err(|e| {
                        TierError::Cache(format!("disk tier at {}: {e}", cfg.dir.display()))
                    })?
            }
        };
        // Every block goes to the disk tier as it is inserted (not only when the memory
        // tier evicts it), and the disk tier is recovered at start-up: what was read from
        // the object store before a restart or a crash is served from local disk after
        // it. Object keys are never reused for other bytes (the upload id is in them), so
        // a recovered block is the object's; entries whose checksum fails are dropped.
        let cache = HybridCacheBuilder::new()
            .with_name("strata-blocks")
            .with_metrics_registry(Box::new(DroppedWrites::new(
                metrics.cache_disk_dropped_blocks_total.clone(),
            )))
            .with_policy(HybridCachePolicy::WriteOnInsertion)
            .memory(cfg.memory_bytes)
            .with_weighter(|key: &String, value: &Bytes| key.len() + value.len())
            .storage()
            .with_recover_mode(RecoverMode::Quiet)
            .with_engine_config(BlockEngineConfig::new(device).with_block_size(REGION_BYTES))
            .build()
            .await
            .map_err(|e| TierError::Cache(e.to_string()))?;
        Ok(Self {
            cache,
            store,
            block: cfg.block_bytes.max(4096),
            readahead: cfg.readahead_blocks,
            fresh: Arc::default(),
            metrics,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// One block of object `key` (of `size` bytes), from the cache or one ranged GET. A
    /// reader's request (`reader`) is counted as a cache hit or miss; read-ahead is not.
    async fn block(&self, key: &str, size: u64, index: u64, reader: bool) -> Result<Bytes> {
        let range = index * self.block..((index + 1) * self.block).min(size);
        let store = self.store.clone();
        let object = key.to_string();
        let fresh = self.fresh.clone();
        let name = block_key(key, self.block, index);
        let fresh_name = name.clone();
        let (data, missed) = self
            .entry(name, async move {
                let data = store.get_range(&object, range).await?;
                let mut fresh = fresh.lock().unwrap_or_else(|e| e.into_inner());
                if fresh.len() >= MAX_FRESH {
                    fresh.clear();
                }
                fresh.insert(fresh_name, data.len() as u64);
                Ok(data)
            })
            .await
            .map_err(|e| TierError::Cache(format!("{key} block {index}: {e}")))?;
        if reader {
            self.metrics
                .cache_requests_total
                .with_label_values(&[if missed { "miss" } else { "hit" }])
                .inc();
        }
        Ok(data)
    }

    /// Entry `name`: from memory, else from the disk tier, else from `fetch` (one fetch
    /// shared by every reader waiting for it), then written to the disk tier. Also says
    /// whether this call ran the fetch.
    ///
    /// A fetched entry is queued for the disk once, by the reader that fetched it. foyer
    /// would queue it again from every reader that waited on the fetch and on every later
    /// hit through `get_or_fetch`, rewriting blocks already on disk: those rewrites filled
    /// its write queue, and blocks fetched for the first time were dropped for them.
    async fn entry<F>(
        &self,
        name: String,
        fetch: F,
    ) -> std::result::Result<(Bytes, bool), foyer::Error>
    where
        F: std::future::Future<Output = Result<Bytes>> + Send + 'static,
    {
        if let Some(hit) = self.cache.memory().get(&name) {
            return Ok((hit.value().clone(), false));
        }
        let fetched = Arc::new(AtomicBool::new(false));
        let flag = fetched.clone();
        let write = self.disk_write();
        let entry_name = name.clone();
        let entry = self
            .cache
            .get_or_fetch(&name, move || async move {
                flag.store(true, Ordering::Relaxed);
                let value = write.after(entry_name, fetch).await?;
                // In memory only, as far as foyer's own disk writes go (see above).
                let properties = HybridCacheProperties::default().with_location(Location::InMem);
                Ok::<_, TierError>(FetchTarget::Entry { value, properties })
            })
            .await?;
        let missed = fetched.load(Ordering::Relaxed);
        if missed {
            self.cache.storage().enqueue(entry.piece(), false);
        }
        Ok((entry.value().clone(), missed))
    }

    /// Bytes `range` of object `key` (which has `size` bytes), and the next blocks
    /// fetched in the background. Counts nothing in `strata_tier_read_bytes_total`: the
    /// caller knows which bytes it serves (see [`BlockCache::count_served`]).
    pub async fn read(&self, key: &str, size: u64, range: Range<u64>) -> Result<Bytes> {
        let end = range.end.min(size);
        if range.start >= end {
            return Ok(Bytes::new());
        }
        let first = range.start / self.block;
        let last = (end - 1) / self.block;
        let blocks = try_join_all((first..=last).map(|i| self.block(key, size, i, true))).await?;
        self.read_ahead(key, size, last);
        if let [only] = blocks.as_slice() {
            // Within one block: a view of it, no copy.
            let at = first * self.block;
            let to = ((end - at) as usize).min(only.len());
            return Ok(only.slice(((range.start - at) as usize).min(to)..to));
        }
        let mut out = BytesMut::with_capacity((end - range.start) as usize);
        for (n, b) in blocks.iter().enumerate() {
            let at = (first + n as u64) * self.block;
            let from = range.start.saturating_sub(at) as usize;
            let to = ((end - at) as usize).min(b.len());
            if from < to {
                out.extend_from_slice(&b[from..to]);
            }
        }
        Ok(out.freeze())
    }

    /// Counts bytes `range` of object `key` as served to a fetch in
    /// `strata_tier_read_bytes_total`: under `object_store` as far as their blocks have
    /// bytes fetched from the store and not served before, the rest under `cache`.
    pub(crate) fn count_served(&self, key: &str, range: Range<u64>) {
        let (mut from_store, mut from_cache) = (0u64, 0u64);
        let mut fresh = self.fresh.lock().unwrap_or_else(|e| e.into_inner());
        let mut at = range.start;
        while at < range.end {
            let index = at / self.block;
            let to = ((index + 1) * self.block).min(range.end);
            let name = block_key(key, self.block, index);
            let take = fresh.get(&name).map_or(0, |&left| left.min(to - at));
            if take > 0 {
                match fresh.get_mut(&name) {
                    Some(left) if *left > take => *left -= take,
                    _ => {
                        fresh.remove(&name);
                    }
                }
            }
            from_store += take;
            from_cache += to - at - take;
            at = to;
        }
        drop(fresh);
        let bytes = &self.metrics.read_bytes_total;
        bytes
            .with_label_values(&["object_store"])
            .inc_by(from_store);
        bytes.with_label_values(&["cache"]).inc_by(from_cache);
    }

    /// Fetches the blocks after `last` in the background.
    fn read_ahead(&self, key: &str, size: u64, last: u64) {
        let total_blocks = size.div_ceil(self.block);
        for i in last + 1..(last + 1 + self.readahead).min(total_blocks) {
            let this = self.clone();
            let key = key.to_string();
            tokio::spawn(async move {
                let _ = this.block(&key, size, i, false).await;
            });
        }
    }

    /// Starts fetching the first blocks of an object in the background (the next segment
    /// of a sequential replay), plus `extra`, a small object that goes with it.
    pub fn prefetch(&self, key: &str, size: u64, extra: &str) {
        let blocks = size.div_ceil(self.block).min(self.readahead.max(1));
        for i in 0..blocks {
            let this = self.clone();
            let key = key.to_string();
            tokio::spawn(async move {
                let _ = this.block(&key, size, i, false).await;
            });
        }
        let this = self.clone();
        let extra = extra.to_string();
        tokio::spawn(async move {
            let _ = this.whole(&extra).await;
        });
    }

    /// A small whole object (an index), cached as block 0 of its own.
    pub async fn whole(&self, key: &str) -> Result<Bytes> {
        let store = self.store.clone();
        let object = key.to_string();
        let (data, _) = self
            .entry(
                format!("{key}#all"),
                async move { store.get(&object).await },
            )
            .await
            .map_err(|e| TierError::Cache(format!("{key}: {e}")))?;
        Ok(data)
    }

    /// What counts a fetch in `strata_tier_cache_disk_pending_blocks`.
    fn disk_write(&self) -> DiskWrite {
        DiskWrite {
            cache: self.cache.clone(),
            pending: self.metrics.cache_disk_pending_blocks.clone(),
        }
    }

    /// Drops the cached blocks of a deleted object (best effort: unknown blocks are just
    /// never read again). Blocks go to the disk tier as they are inserted, by a
    /// background flusher: its pending writes land first, so none of them brings a
    /// forgotten block back after the delete.
    pub async fn forget(&self, key: &str, size: u64) {
        self.cache.storage().wait().await;
        self.cache.remove(&format!("{key}#all"));
        let mut fresh = self.fresh.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..size.div_ceil(self.block) {
            let name = block_key(key, self.block, i);
            self.cache.remove(&name);
            fresh.remove(&name);
        }
    }

    pub async fn close(&self) {
        let _ = self.cache.close().await;
    }
}
