//! The set of partition logs on this broker's disk, under `<data-dir>/log/`:
//!
//! ```text
//! log/<topic-id>/topic.name              the topic's name, for operators and metrics
//! log/<topic-id>/<partition>/<base>.log  segments (see the segment module)
//! ```
//!
//! Directories are keyed by topic id, not name, so a topic deleted and recreated under the
//! same name never meets the old one's files.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use strata_telemetry::LogMetrics;
use tracing::{info, warn};
use uuid::Uuid;

use crate::error::{LogError, Result};
use crate::index::write_atomically;
use crate::partition::{LogConfig, Partition, sync_dir};
use crate::tail::TailCache;

/// Identifies a partition on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey {
    pub topic_id: Uuid,
    pub partition: i32,
}

const TOPIC_NAME_FILE: &str = "topic.name";

pub struct LogManager {
    root: PathBuf,
    partitions: RwLock<HashMap<PartitionKey, Arc<Partition>>>,
    metrics: LogMetrics,
    tail: TailCache,
}

impl LogManager {
    /// Opens every partition found under `root`, recovering each one. Their newest
    /// appends share the in-memory budget `tail`.
    pub fn open(
        root: impl Into<PathBuf>,
        metrics: LogMetrics,
        tail: TailCache,
        now_ms: i64,
    ) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|e| LogError::io("create", &root, e))?;
        let mut partitions = HashMap::new();
        for topic_dir in list_dirs(&root)? {
            let Some(topic_id) = dir_name(&topic_dir).and_then(|n| Uuid::parse_str(n).ok()) else {
                warn!(path = %topic_dir.display(), "ignoring a directory that is not a topic id");
                continue;
            };
            let name = std::fs::read_to_string(topic_dir.join(TOPIC_NAME_FILE))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| topic_id.to_string());
            for part_dir in list_dirs(&topic_dir)? {
                let Some(partition) = dir_name(&part_dir).and_then(|n| n.parse::<i32>().ok())
                else {
                    warn!(path = %part_dir.display(), "ignoring a directory that is not a partition");
                    continue;
                };
                let p = Partition::open(
                    part_dir,
                    name.clone(),
                    partition,
                    LogConfig::default(),
                    metrics.clone(),
                    tail.clone(),
                    now_ms,
                )?;
                partitions.insert(
                    PartitionKey {
                        topic_id,
                        partition,
                    },
                    Arc::new(p),
                );
            }
        }
        info!(root = %root.display(), partitions = partitions.len(), "opened partition logs");
        Ok(Self {
            root,
            partitions: RwLock::new(partitions),
            metrics,
            tail,
        })
    }

    /// The directory the partition logs live in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn get(&self, key: PartitionKey) -> Option<Arc<Partition>> {
        self.partitions.read().get(&key).cloned()
    }

    /// Returns the partition, creating its directory and first segment if it is new.
    pub fn get_or_create(
        &self,
        key: PartitionKey,
        topic: &str,
        config: LogConfig,
        now_ms: i64,
    ) -> Result<Arc<Partition>> {
        if let Some(p) = self.get(key) {
            return Ok(p);
        }
        let mut parts = self.partitions.write();
        if let Some(p) = parts.get(&key) {
            return Ok(p.clone());
        }
        let topic_dir = self.root.join(key.topic_id.to_string());
        let fresh_topic = !topic_dir.exists();
        std::fs::create_dir_all(&topic_dir).map_err(|e| LogError::io("create", &topic_dir, e))?;
        if fresh_topic {
            write_atomically(&topic_dir.join(TOPIC_NAME_FILE), topic.as_bytes())?;
            sync_dir(&self.root)?;
        }
        let dir = topic_dir.join(key.partition.to_string());
        let p = Arc::new(Partition::open(
            dir,
            topic.to_string(),
            key.partition,
            config,
            self.metrics.clone(),
            self.tail.clone(),
            now_ms,
        )?);
        sync_dir(&topic_dir)?;
        parts.insert(key, p.clone());
        Ok(p)
    }

    /// Forgets every partition of the topic and deletes its files.
    pub fn remove_topic(&self, topic_id: Uuid) -> Result<()> {
        let removed: Vec<Arc<Partition>> = {
            let mut parts = self.partitions.write();
            let keys: Vec<PartitionKey> = parts
                .keys()
                .filter(|k| k.topic_id == topic_id)
                .copied()
                .collect();
            keys.iter().filter_map(|k| parts.remove(k)).collect()
        };
        for p in &removed {
            p.forget_metrics();
        }
        let dir = self.root.join(topic_id.to_string());
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::io("delete", dir, e)),
        }
        sync_dir(&self.root)?;
        info!(%topic_id, partitions = removed.len(), "deleted topic data");
        Ok(())
    }

    pub fn partitions(&self) -> Vec<(PartitionKey, Arc<Partition>)> {
        self.partitions
            .read()
            .iter()
            .map(|(k, p)| (*k, p.clone()))
            .collect()
    }

    pub fn topic_ids(&self) -> BTreeSet<Uuid> {
        self.partitions.read().keys().map(|k| k.topic_id).collect()
    }

    /// Syncs every partition's active segment (orderly shutdown).
    pub fn sync_all(&self) -> Result<()> {
        for (_, p) in self.partitions() {
            p.sync()?;
        }
        Ok(())
    }
}

fn list_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| LogError::io("list", dir, e))? {
        let entry = entry.map_err(|e| LogError::io("list", dir, e))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn dir_name(path: &Path) -> Option<&str> {
    path.file_name()?.to_str()
}
