//! Remote objects read through a `foyer` hybrid cache (memory plus a local-disk tier) of
//! fixed-size blocks. Concurrent readers of the same block share one GET (foyer's
//! single-flight fetch), so many consumer groups replaying the same range cost one GET per
//! block; a reader moving forward has the next blocks fetched ahead of it.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use foyer::{BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder};
use futures::future::try_join_all;
use strata_telemetry::TierMetrics;

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
    metrics: TierMetrics,
}

fn block_key(key: &str, index: u64) -> String {
    format!("{key}#{index}")
}

impl BlockCache {
    pub async fn open(cfg: CacheConfig, store: Store, metrics: TierMetrics) -> Result<Self> {
        std::fs::create_dir_all(&cfg.dir).map_err(|e| TierError::Io {
            op: "create",
            path: cfg.dir.clone(),
            source: e,
        })?;
        let device = FsDeviceBuilder::new(&cfg.dir)
            .with_capacity(cfg.disk_bytes)
            .build()
            .map_err(|e| TierError::Cache(format!("disk tier at {}: {e}", cfg.dir.display())))?;
        let cache = HybridCacheBuilder::new()
            .with_name("strata-blocks")
            .memory(cfg.memory_bytes)
            .with_weighter(|key: &String, value: &Bytes| key.len() + value.len())
            .storage()
            .with_engine_config(BlockEngineConfig::new(device))
            .build()
            .await
            .map_err(|e| TierError::Cache(e.to_string()))?;
        Ok(Self {
            cache,
            store,
            block: cfg.block_bytes.max(4096),
            readahead: cfg.readahead_blocks,
            metrics,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// One block of object `key` (of `size` bytes), from the cache or one ranged GET.
    /// Reader requests (`counted`) are counted as cache hits or misses; read-ahead is not.
    async fn block(&self, key: &str, size: u64, index: u64, counted: bool) -> Result<Bytes> {
        let range = index * self.block..((index + 1) * self.block).min(size);
        let store = self.store.clone();
        let object = key.to_string();
        let fetched = Arc::new(AtomicBool::new(false));
        let flag = fetched.clone();
        let entry = self
            .cache
            .get_or_fetch(&block_key(key, index), move || async move {
                flag.store(true, Ordering::Relaxed);
                store.get_range(&object, range).await
            })
            .await
            .map_err(|e| TierError::Cache(format!("{key} block {index}: {e}")))?;
        let data = entry.value().clone();
        let missed = fetched.load(Ordering::Relaxed);
        if missed {
            self.metrics
                .read_bytes_total
                .with_label_values(&["object_store"])
                .inc_by(data.len() as u64);
        }
        if counted {
            let (result, source) = if missed {
                ("miss", "object_store")
            } else {
                ("hit", "cache")
            };
            self.metrics
                .cache_requests_total
                .with_label_values(&[result])
                .inc();
            if !missed {
                self.metrics
                    .read_bytes_total
                    .with_label_values(&[source])
                    .inc_by(data.len() as u64);
            }
        }
        Ok(data)
    }

    /// Bytes `range` of object `key` (which has `size` bytes), and the next blocks
    /// fetched in the background.
    pub async fn read(&self, key: &str, size: u64, range: Range<u64>) -> Result<Bytes> {
        let end = range.end.min(size);
        if range.start >= end {
            return Ok(Bytes::new());
        }
        let first = range.start / self.block;
        let last = (end - 1) / self.block;
        let blocks = try_join_all((first..=last).map(|i| self.block(key, size, i, true))).await?;
        let mut out = BytesMut::with_capacity((end - range.start) as usize);
        for (n, b) in blocks.iter().enumerate() {
            let at = (first + n as u64) * self.block;
            let from = range.start.saturating_sub(at) as usize;
            let to = ((end - at) as usize).min(b.len());
            if from < to {
                out.extend_from_slice(&b[from..to]);
            }
        }
        let total_blocks = size.div_ceil(self.block);
        for i in last + 1..(last + 1 + self.readahead).min(total_blocks) {
            let this = self.clone();
            let key = key.to_string();
            tokio::spawn(async move {
                let _ = this.block(&key, size, i, false).await;
            });
        }
        Ok(out.freeze())
    }

    /// A small whole object (an index), cached as block 0 of its own.
    pub async fn whole(&self, key: &str) -> Result<Bytes> {
        let store = self.store.clone();
        let object = key.to_string();
        let entry = self
            .cache
            .get_or_fetch(&format!("{key}#all"), move || async move {
                store.get(&object).await
            })
            .await
            .map_err(|e| TierError::Cache(format!("{key}: {e}")))?;
        Ok(entry.value().clone())
    }

    /// Drops the cached blocks of a deleted object (best effort: unknown blocks are just
    /// never read again).
    pub fn forget(&self, key: &str, size: u64) {
        self.cache.remove(&format!("{key}#all"));
        for i in 0..size.div_ceil(self.block) {
            self.cache.remove(&block_key(key, i));
        }
    }

    pub async fn close(&self) {
        let _ = self.cache.close().await;
    }
}
