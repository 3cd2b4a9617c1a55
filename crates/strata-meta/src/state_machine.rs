//! The Raft state machine: applies committed [`Command`](crate::Command)s to the in-memory [`ClusterState`]
//! and persists it through snapshots.
//!
//! `apply` does not touch the disk. Durability comes from the log (every applied entry was
//! fsynced there first) plus periodic snapshots: on open the latest snapshot is loaded and
//! openraft re-applies the committed log entries after it.
//!
//! # File format (`<dir>/state.snapshot`)
//!
//! An 8-byte magic `SMSNAP01`, then exactly two framed records (see [`crate::codec`]):
//! the `serde_json` of openraft's `SnapshotMeta` (last included log id, membership, snapshot
//! id), then the `serde_json` of [`ClusterState`]. The second payload is also the snapshot
//! data openraft streams to followers. The file is only ever replaced atomically, so any
//! damage is reported as an error instead of being repaired.

use std::io;
use std::io::Cursor;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use openraft::BasicNode;
use openraft::EntryPayload;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::LogId;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::Snapshot;
use openraft::SnapshotMeta;
use openraft::StorageError;
use openraft::StoredMembership;
use openraft::storage::RaftStateMachine;
use tokio::sync::watch;

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
use crate::sync;
use crate::types::ClusterState;
use crate::types::CommandResult;
use crate::types::NodeId;

/// File name of the snapshot inside the node directory.
pub(crate) const SNAPSHOT_FILE: &str = "state.snapshot";

/// Magic + format version at the start of the snapshot file.
const SNAPSHOT_MAGIC: &[u8; 8] = b"SMSNAP01";

type Meta = SnapshotMeta<NodeId, BasicNode>;

/// A persisted snapshot: its meta and the serialized [`ClusterState`].
#[derive(Debug, Clone)]
struct StoredSnapshot {
    meta: Meta,
    data: Vec<u8>,
}

impl StoredSnapshot {
    fn to_snapshot(&self) -> Snapshot<TypeConfig> {
        Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(self.data.clone())),
        }
    }

    fn encode(&self, path: &Path) -> Result<Vec<u8>, MetaError> {
        let meta = serde_json::to_vec(&self.meta)
            .map_err(|e| corrupt(path, format_args!("serialize snapshot meta: {e}")))?;
        let mut buf = SNAPSHOT_MAGIC.to_vec();
        encode_record(&meta, &mut buf).map_err(|e| corrupt(path, e))?;
        encode_record(&self.data, &mut buf).map_err(|e| corrupt(path, e))?;
        Ok(buf)
    }

    fn decode(path: &Path, bytes: &[u8]) -> Result<(StoredSnapshot, ClusterState), MetaError> {
        if !bytes.starts_with(SNAPSHOT_MAGIC) {
            return Err(corrupt(
                path,
                "not a strata-meta snapshot (unexpected file header)",
            ));
        }
        let scan = scan_records(bytes, SNAPSHOT_MAGIC.len());
        if let Some(c) = scan.corruption {
            return Err(corrupt(path, format_args!("snapshot is damaged: {c}")));
        }
        let [meta, data] = scan.records.as_slice() else {
            return Err(corrupt(
                path,
                format_args!("snapshot has {} records, expected 2", scan.records.len()),
            ));
        };
        let meta: Meta = serde_json::from_slice(meta.payload)
            .map_err(|e| corrupt(path, format_args!("undecodable snapshot meta: {e}")))?;
        let state: ClusterState = serde_json::from_slice(data.payload)
            .map_err(|e| corrupt(path, format_args!("undecodable snapshot state: {e}")))?;
        Ok((
            StoredSnapshot {
                meta,
                data: data.payload.to_vec(),
            },
            state,
        ))
    }
}

/// The current snapshot and its file; shared by the state machine and snapshot builders.
#[derive(Debug)]
struct SnapshotStore {
    dir: PathBuf,
    path: PathBuf,
    current: tokio::sync::Mutex<Option<StoredSnapshot>>,
    space: Arc<DiskSpace>,
}

impl SnapshotStore {
    /// Loads `dir/state.snapshot` if present. Blocking. Returns the store and, if a snapshot
    /// was found, its meta and state.
    fn load(
        dir: &Path,
        space: Arc<DiskSpace>,
    ) -> Result<(SnapshotStore, Option<(Meta, ClusterState)>), MetaError> {
        let path = dir.join(SNAPSHOT_FILE);
        remove_stale_tmp(dir, SNAPSHOT_FILE)?;
        let (current, state) = match std::fs::read(&path) {
            Ok(bytes) => {
                let (snap, state) = StoredSnapshot::decode(&path, &bytes)?;
                let meta = snap.meta.clone();
                (Some(snap), Some((meta, state)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (None, None),
            Err(e) => return Err(storage(&path, "read", e)),
        };
        Ok((
            SnapshotStore {
                dir: dir.to_path_buf(),
                path,
                current: tokio::sync::Mutex::new(current),
                space,
            },
            state,
        ))
    }

    /// Persists `snap` and makes it current, unless (and `replace` is false) the current one
    /// already covers at least as much of the log. Returns the snapshot now current.
    async fn save(&self, snap: StoredSnapshot, replace: bool) -> Result<StoredSnapshot, MetaError> {
        let mut current = self.current.lock().await;
        if !replace
            && let Some(cur) = current.as_ref()
            && cur.meta.last_log_id >= snap.meta.last_log_id
        {
            return Ok(cur.clone());
        }
        let bytes = snap.encode(&self.path)?;
        let dir = self.dir.clone();
        let space = self.space.clone();
        // The log is purged behind a snapshot once it is built, so it must be on disk
        // first: a full disk is waited out.
        tokio::task::spawn_blocking(move || {
            space.retry(|| write_atomic(&dir, SNAPSHOT_FILE, &bytes).map(drop))
        })
        .await
        .map_err(|e| {
            storage(
                &self.path,
                "snapshot I/O task",
                io::Error::other(e.to_string()),
            )
        })??;
        *current = Some(snap.clone());
        Ok(snap)
    }
}

/// The state machine handed to openraft.
#[derive(Debug)]
pub(crate) struct StateMachineStore {
    state: Arc<RwLock<ClusterState>>,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, BasicNode>,
    applied_tx: Arc<watch::Sender<u64>>,
    snapshots: Arc<SnapshotStore>,
}

impl StateMachineStore {
    /// Loads the latest snapshot from `dir` (if any). Blocking. Returns the store and the
    /// shared state it applies to.
    pub(crate) fn open(
        dir: &Path,
        applied_tx: Arc<watch::Sender<u64>>,
        space: Arc<DiskSpace>,
    ) -> Result<(StateMachineStore, Arc<RwLock<ClusterState>>), MetaError> {
        let (snapshots, loaded) = SnapshotStore::load(dir, space)?;
        let found = loaded.is_some();
        let (last_applied, last_membership, state) = match loaded {
            Some((meta, state)) => (meta.last_log_id, meta.last_membership, state),
            None => (None, StoredMembership::default(), ClusterState::default()),
        };
        tracing::info!(
            path = %snapshots.path.display(),
            found,
            last_log = ?last_applied.map(|l| l.index),
            "loaded metadata snapshot"
        );
        applied_tx.send_replace(last_applied.map_or(0, |l| l.index));
        let state = Arc::new(RwLock::new(state));
        Ok((
            StateMachineStore {
                state: state.clone(),
                last_applied,
                last_membership,
                applied_tx,
                snapshots: Arc::new(snapshots),
            },
            state,
        ))
    }

    fn notify_applied(&self) {
        if let Some(l) = self.last_applied {
            self.applied_tx.send_replace(l.index);
        }
    }
}

/// Builds a snapshot from a copy of the state taken when the builder was created.
#[derive(Debug)]
pub(crate) struct SnapshotBuilder {
    state: ClusterState,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, BasicNode>,
    snapshots: Arc<SnapshotStore>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let path = self.snapshots.path.clone();
        let data = serde_json::to_vec(&self.state).map_err(|e| {
            to_storage_error(
                ErrorSubject::StateMachine,
                ErrorVerb::Read,
                &corrupt(&path, format_args!("serialize state: {e}")),
            )
        })?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{nanos}", l.leader_id, l.index),
            None => format!("none-{nanos}"),
        };
        let meta = Meta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id,
        };
        let signature = meta.signature();
        let bytes = data.len();
        let stored = self
            .snapshots
            .save(StoredSnapshot { meta, data }, false)
            .await
            .map_err(|e| {
                to_storage_error(
                    ErrorSubject::Snapshot(Some(signature)),
                    ErrorVerb::Write,
                    &e,
                )
            })?;
        tracing::info!(
            path = %path.display(),
            last_log = ?stored.meta.last_log_id.map(|l| l.index),
            bytes,
            "built metadata snapshot"
        );
        Ok(stored.to_snapshot())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        {
            let mut state = sync::write(&self.state);
            for entry in entries {
                self.last_applied = Some(entry.log_id);
                let result = match entry.payload {
                    EntryPayload::Blank => CommandResult::Ok,
                    EntryPayload::Normal(cmd) => {
                        tracing::trace!(
                            index = entry.log_id.index,
                            ?cmd,
                            "applying metadata command"
                        );
                        state.apply(cmd)
                    }
                    EntryPayload::Membership(m) => {
                        self.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        CommandResult::Ok
                    }
                };
                results.push(result);
            }
        }
        self.notify_applied();
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            state: sync::read(&self.state).clone(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let sto_err = |e: &MetaError| {
            to_storage_error(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                e,
            )
        };
        let state: ClusterState = serde_json::from_slice(&data).map_err(|e| {
            sto_err(&corrupt(
                &self.snapshots.path,
                format_args!(
                    "received snapshot {} does not decode: {e}",
                    meta.snapshot_id
                ),
            ))
        })?;
        self.snapshots
            .save(
                StoredSnapshot {
                    meta: meta.clone(),
                    data,
                },
                true,
            )
            .await
            .map_err(|e| sto_err(&e))?;
        *sync::write(&self.state) = state;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        tracing::info!(last_log = ?meta.last_log_id.map(|l| l.index), "installed metadata snapshot");
        self.notify_applied();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self
            .snapshots
            .current
            .lock()
            .await
            .as_ref()
            .map(StoredSnapshot::to_snapshot))
    }
}
