//! The client API: [`MetaNode`].

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;

use openraft::ServerState;
use openraft::error::ClientWriteError;
use openraft::error::Fatal;
use openraft::error::InitializeError;
use openraft::error::RaftError;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::MetaError;
use crate::error::storage;
use crate::fsutil::DiskSpace;
use crate::fsutil::lock_dir;
use crate::log_store::LogStore;
use crate::network::NetworkFactory;
use crate::raft;
use crate::raft::Raft;
use crate::state_machine::StateMachineStore;
use crate::sync;
use crate::types::ClusterState;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::NodeId;

/// How long [`MetaNode::open`] waits for leadership and catch-up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Configuration of one metadata node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaConfig {
    /// Raft node id; must be stable across restarts of the same directory.
    pub node_id: NodeId,
    /// Directory holding the node's log, snapshot and lock file. Created if missing.
    pub dir: PathBuf,
    /// Build a snapshot (and purge the log behind it) every this many applied entries.
    pub snapshot_every: u64,
    /// Longest a write waits to be committed before [`MetaError::Timeout`].
    pub write_timeout: Duration,
}

impl MetaConfig {
    /// Default for [`MetaConfig::snapshot_every`].
    pub const DEFAULT_SNAPSHOT_EVERY: u64 = 10_000;
    /// Default for [`MetaConfig::write_timeout`].
    pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

    /// A config with the default snapshot interval.
    pub fn new(node_id: NodeId, dir: impl Into<PathBuf>) -> MetaConfig {
        MetaConfig {
            node_id,
            dir: dir.into(),
            snapshot_every: Self::DEFAULT_SNAPSHOT_EVERY,
            write_timeout: Self::DEFAULT_WRITE_TIMEOUT,
        }
    }
}

/// A running metadata node. Cheap to clone; all clones share one Raft node.
///
/// Call [`MetaNode::shutdown`] before dropping the last clone: the Raft task otherwise keeps
/// running (and keeps the directory locked) until the tokio runtime stops.
#[derive(Clone)]
pub struct MetaNode {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    dir: PathBuf,
    raft: Raft,
    state: Arc<RwLock<ClusterState>>,
    applied_tx: Arc<watch::Sender<u64>>,
    space: Arc<DiskSpace>,
    write_timeout: Duration,
}

impl fmt::Debug for MetaNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetaNode")
            .field("node_id", &self.inner.node_id)
            .field("dir", &self.inner.dir)
            .field("applied_index", &*self.inner.applied_tx.borrow())
            .finish()
    }
}

impl MetaNode {
    /// Opens (or creates) the node's storage under cfg.dir, starts openraft, initializes a
    /// single-voter cluster on first start, and returns once this node is leader and has
    /// applied everything committed (so reads after open see all earlier writes).
    pub async fn open(cfg: MetaConfig) -> Result<MetaNode, MetaError> {
        let raft_config = Arc::new(raft::config(cfg.snapshot_every)?);
        let applied_tx = Arc::new(watch::channel(0u64).0);

        let dir = cfg.dir.clone();
        let tx = applied_tx.clone();
        let space = Arc::new(DiskSpace::default());
        let disk = space.clone();
        let (log_store, state_machine, state) = tokio::task::spawn_blocking(move || {
            fs::create_dir_all(&dir).map_err(|e| storage(&dir, "create directory", e))?;
            let lock = lock_dir(&dir)?;
            let log_store = LogStore::open(&dir, lock, disk.clone())?;
            let (state_machine, state) = StateMachineStore::open(&dir, tx, disk)?;
            Ok::<_, MetaError>((log_store, state_machine, state))
        })
        .await
        .map_err(|e| storage(&cfg.dir, "open task", io::Error::other(e.to_string())))??;

        let raft = Raft::new(
            cfg.node_id,
            raft_config,
            NetworkFactory,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| fatal(cfg.node_id, e))?;

        let node = MetaNode {
            inner: Arc::new(Inner {
                node_id: cfg.node_id,
                dir: cfg.dir,
                raft,
                state,
                applied_tx,
                space,
                write_timeout: cfg.write_timeout,
            }),
        };
        if let Err(e) = node.start().await {
            if let Err(shutdown_err) = node.inner.raft.shutdown().await {
                tracing::warn!(error = %shutdown_err, "shutting down after a failed open");
            }
            return Err(e);
        }
        Ok(node)
    }

    /// Initializes a fresh node, waits for leadership and for everything committed to apply.
    async fn start(&self) -> Result<(), MetaError> {
        let id = self.inner.node_id;
        let raft = &self.inner.raft;
        let started = Instant::now();

        if !raft.is_initialized().await.map_err(|e| fatal(id, e))? {
            tracing::info!(node_id = id, dir = %self.inner.dir.display(), "initializing single-voter metadata cluster");
            match raft.initialize(raft::initial_members(id)).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(RaftError::APIError(e)) => {
                    return Err(MetaError::Config(format!(
                        "cannot initialize the metadata cluster: {e}"
                    )));
                }
                Err(RaftError::Fatal(f)) => return Err(fatal(id, f)),
            }
        }

        let sole_voter = self.wait_for_leadership(started + READY_TIMEOUT).await?;

        // Everything committed before this leader's term is applied once the state machine
        // reaches the read log id. With a single voter every entry in the local log was
        // fsynced, so it is (or is about to be) committed too: wait for all of it.
        let read_log_id = raft
            .ensure_linearizable()
            .await
            .map_err(|e| self.not_ready(started, e.to_string()))?;
        let mut want = read_log_id.map(|l| l.index);
        if sole_voter {
            want = want.max(raft.metrics().borrow().last_log_index);
        }
        let metrics = raft
            .wait(Some(READY_TIMEOUT.saturating_sub(started.elapsed())))
            .applied_index_at_least(want, "metadata node catching up")
            .await
            .map_err(|e| self.not_ready(started, e.to_string()))?;
        tracing::info!(
            node_id = id,
            dir = %self.inner.dir.display(),
            term = metrics.current_term,
            applied = ?metrics.last_applied.map(|l| l.index),
            snapshot = ?metrics.snapshot.map(|l| l.index),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "metadata node ready"
        );
        Ok(())
    }

    /// Waits until this node leads. Returns whether it is the only voter.
    async fn wait_for_leadership(&self, deadline: Instant) -> Result<bool, MetaError> {
        let id = self.inner.node_id;
        let raft = &self.inner.raft;
        let started = Instant::now();
        let mut rx = raft.metrics();
        let mut elect_requested = false;
        loop {
            let (leading, sole_voter, state) = {
                let m = rx.borrow_and_update();
                if let Err(f) = &m.running_state {
                    return Err(fatal(id, f.clone()));
                }
                let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
                (
                    m.state == ServerState::Leader && m.current_leader == Some(id),
                    voters == [id],
                    m.state,
                )
            };
            if leading {
                return Ok(sole_voter);
            }
            // A single voter that restarts with an uncommitted vote would otherwise wait a
            // whole election timeout before electing itself.
            if sole_voter && !elect_requested && state == ServerState::Follower {
                elect_requested = true;
                raft.trigger().elect().await.map_err(|e| fatal(id, e))?;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(MetaError::ShutDown { node_id: id }),
                Err(_) => {
                    let m = rx.borrow().clone();
                    return Err(self.not_ready(
                        started,
                        format!(
                            "no leadership: state {:?}, leader {:?}, term {}, voters {:?}",
                            m.state,
                            m.current_leader,
                            m.current_term,
                            m.membership_config
                                .membership()
                                .voter_ids()
                                .collect::<Vec<_>>()
                        ),
                    ));
                }
            }
        }
    }

    fn not_ready(&self, started: Instant, detail: String) -> MetaError {
        MetaError::NotReady {
            node_id: self.inner.node_id,
            waited: started.elapsed(),
            detail,
        }
    }

    /// Proposes a command through Raft and returns its result once committed and applied,
    /// or [`MetaError::Timeout`] after the write timeout (the command may still commit
    /// later: commands are written so that applying one twice is harmless).
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, MetaError> {
        let id = self.inner.node_id;
        let after = self.inner.write_timeout;
        let written = tokio::time::timeout(after, self.inner.raft.client_write(cmd)).await;
        let Ok(written) = written else {
            return Err(MetaError::Timeout {
                after,
                why: self.problem(),
            });
        };
        match written {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(MetaError::NotLeader {
                    node_id: id,
                    leader_id: f.leader_id,
                    leader_addr: f.leader_node.map(|n| n.addr),
                })
            }
            // Only membership changes produce this; `Command`s never do.
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(MetaError::Fatal {
                    node_id: id,
                    reason: format!("unexpected membership error on a metadata write: {e}"),
                })
            }
            Err(RaftError::Fatal(f)) => Err(fatal(id, f)),
        }
    }

    /// Runs `f` over the current applied state (a read lock held only during `f`).
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(&sync::read(&self.inner.state))
    }

    /// A receiver that changes (value = last applied log index) after every apply, so the
    /// broker can react to topic changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.applied_tx.subscribe()
    }

    /// Why this node cannot take writes right now (a full disk, a stopped Raft task), if
    /// it cannot: what readiness reports.
    pub fn problem(&self) -> Option<String> {
        if let Err(f) = &self.inner.raft.metrics().borrow().running_state {
            return Some(format!("the metadata node stopped: {f}"));
        }
        self.inner.space.problem()
    }

    /// Resolves, with the reason, once the Raft task has stopped for any reason but
    /// [`MetaNode::shutdown`]: the node cannot go on, and the process should exit so
    /// that it is restarted.
    pub async fn failed(&self) -> String {
        let mut rx = self.inner.raft.metrics();
        loop {
            match &rx.borrow_and_update().running_state {
                Err(Fatal::Stopped) => {}
                Err(f) => return f.to_string(),
                Ok(()) => {}
            }
            if rx.changed().await.is_err() {
                // The Raft task is gone; a shutdown drops the sender too, so wait forever
                // in that case (the caller is going away anyway).
                std::future::pending::<()>().await;
            }
        }
    }

    /// Shuts openraft down cleanly. Later writes fail with [`MetaError::ShutDown`]; reads
    /// keep returning the last applied state.
    pub async fn shutdown(&self) -> Result<(), MetaError> {
        let id = self.inner.node_id;
        // A write waiting for disk space gives up, so the Raft task can stop.
        self.inner.space.stop();
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| MetaError::Fatal {
                node_id: id,
                reason: format!("raft task did not shut down cleanly: {e}"),
            })?;
        tracing::info!(node_id = id, dir = %self.inner.dir.display(), "metadata node shut down");
        Ok(())
    }

    /// This node's Raft id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The node's storage directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    #[cfg(test)]
    pub(crate) fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Index of the last applied log entry (the value [`MetaNode::subscribe`] publishes).
    pub fn applied_index(&self) -> u64 {
        *self.inner.applied_tx.borrow()
    }
}

fn fatal(node_id: NodeId, f: Fatal<NodeId>) -> MetaError {
    match f {
        Fatal::Stopped => MetaError::ShutDown { node_id },
        other => MetaError::Fatal {
            node_id,
            reason: other.to_string(),
        },
    }
}
