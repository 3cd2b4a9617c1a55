//! The client API: [`MetaNode`], one member of the metadata quorum (a voter, or a
//! learner that keeps a full copy), and how it joins.
//!
//! # Joining
//!
//! Every node is given the same voter list. A node that is the only voter initializes
//! itself on first start, as before. With several voters:
//!
//! - A voter with Raft state on disk takes part at once.
//! - A voter whose directory is new asks the other voters who they are before it
//!   answers any Raft request. If the committed metadata names another incarnation of it
//!   (its disk was lost: it may have acknowledged entries the cluster counts on), it asks
//!   the leader to replace it: remove it from the voters, add it back as a learner, and
//!   promote it once it has caught up (from a snapshot). If the cluster exists but never
//!   knew this incarnation, it simply joins. If a majority of voters are new too, they
//!   all initialize the cluster with the same membership, which openraft allows.
//! - A broker-only node joins as a learner.
//!
//! Writes from any node are forwarded to the leader; reads are local.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::BasicNode;
use openraft::ChangeMembers;
use openraft::ServerState;
use openraft::error::ClientWriteError;
use openraft::error::Fatal;
use openraft::error::InitializeError;
use openraft::error::RaftError;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::controller::Controller;
use crate::controller::ControllerConfig;
use crate::error::MetaError;
use crate::error::storage;
use crate::fsutil::DiskSpace;
use crate::fsutil::lock_dir;
use crate::log_store::LogStore;
use crate::network::NetworkFactory;
use crate::raft;
use crate::raft::Raft;
use crate::rpc;
use crate::rpc::CallError;
use crate::rpc::Envelope;
use crate::rpc::HelloReply;
use crate::rpc::Pool;
use crate::rpc::Refusal;
use crate::rpc::Request;
use crate::rpc::Response;
use crate::state_machine::StateMachineStore;
use crate::sync;
use crate::types::BrokerHeartbeat;
use crate::types::ClusterState;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::HeartbeatReply;
use crate::types::NodeId;

/// How long a call to a peer may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a voter waits between rounds of asking its peers who they are.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// How often the leader checks the membership (learners to promote) and the node its
/// own registration.
const MEMBERSHIP_TICK: Duration = Duration::from_millis(500);
/// A learner this close to the leader's log is caught up enough to become a voter.
const PROMOTE_LAG: u64 = 10;
/// File with the incarnation of the node's directory.
const INCARNATION_FILE: &str = "incarnation";

/// The quorum this node is part of, when it is not a single voter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quorum {
    /// Every voter: id and the address peers reach it at (`HOST:PORT`), identical on
    /// every node of the cluster.
    pub voters: BTreeMap<NodeId, String>,
    /// The address other nodes reach this node at.
    pub advertised: String,
    /// The address to talk to peers from (the listener's, on a multi-homed host).
    pub source: Option<std::net::IpAddr>,
    /// Plain TCP, or mTLS between the voters (`strata.meta.tls`).
    pub transport: strata_security::transport::Transport,
}

impl Quorum {
    /// A fingerprint of the voter list: requests between nodes carry it, so a node of
    /// another cluster (or with another list) is refused.
    fn fingerprint(&self) -> String {
        let list: Vec<String> = self
            .voters
            .iter()
            .map(|(id, addr)| format!("{id}@{addr}"))
            .collect();
        format!("{:08x}", crc32c::crc32c(list.join(",").as_bytes()))
    }
}

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
    /// The quorum, if this node is not alone in it.
    pub quorum: Option<Quorum>,
    /// What the controller does while this node leads.
    pub controller: ControllerConfig,
}

impl MetaConfig {
    /// Default for [`MetaConfig::snapshot_every`].
    pub const DEFAULT_SNAPSHOT_EVERY: u64 = 10_000;
    /// Default for [`MetaConfig::write_timeout`].
    pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

    /// A single-voter config with the default snapshot interval.
    pub fn new(node_id: NodeId, dir: impl Into<PathBuf>) -> MetaConfig {
        MetaConfig {
            node_id,
            dir: dir.into(),
            snapshot_every: Self::DEFAULT_SNAPSHOT_EVERY,
            write_timeout: Self::DEFAULT_WRITE_TIMEOUT,
            quorum: None,
            controller: ControllerConfig::default(),
        }
    }

    fn is_voter(&self) -> bool {
        self.quorum
            .as_ref()
            .is_none_or(|q| q.voters.contains_key(&self.node_id))
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
    quorum: Option<Quorum>,
    pool: Pool,
    incarnation: String,
    /// Whether Raft requests from peers are answered (not while a new voter finds out
    /// whether it must be replaced).
    accepting: AtomicBool,
    controller: Controller,
    stop: CancellationToken,
    /// Told how long each write took to commit (for a metric).
    write_observer: std::sync::OnceLock<Arc<dyn Fn(Duration) + Send + Sync>>,
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

/// Reads the directory's incarnation, making one for a new directory (or one from before
/// incarnations existed). Returns it and whether it was just made.
pub(crate) fn incarnation(dir: &Path) -> Result<(String, bool), MetaError> {
    let path = dir.join(INCARNATION_FILE);
    match fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok((s.trim().to_string(), false)),
        Ok(_) => Err(storage(
            &path,
            "read",
            io::Error::new(io::ErrorKind::InvalidData, "empty incarnation file"),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = uuid::Uuid::new_v4().to_string();
            crate::fsutil::write_atomic(dir, INCARNATION_FILE, id.as_bytes())?;
            Ok((id, true))
        }
        Err(e) => Err(storage(&path, "read", e)),
    }
}

impl MetaNode {
    /// Opens (or creates) a single-voter node's storage under cfg.dir; see
    /// [`MetaNode::open_with`].
    pub async fn open(cfg: MetaConfig) -> Result<MetaNode, MetaError> {
        Self::open_with(cfg, None).await
    }

    /// Opens (or creates) the node's storage under cfg.dir, starts openraft, serves the
    /// metadata RPCs on `listener` (needed when the quorum has other nodes), joins the
    /// quorum (see the module docs), and returns once a leader is known and this node
    /// has applied everything committed when it asked (so reads after open see all
    /// earlier writes).
    pub async fn open_with(
        cfg: MetaConfig,
        listener: Option<TcpListener>,
    ) -> Result<MetaNode, MetaError> {
        let raft_config = Arc::new(raft::config(cfg.snapshot_every, cfg.quorum.is_some())?);
        let applied_tx = Arc::new(watch::channel(0u64).0);
        if cfg.quorum.is_some() && listener.is_none() {
            return Err(MetaError::Config(
                "a node of a multi-node quorum needs a listener for the metadata RPCs".into(),
            ));
        }

        let dir = cfg.dir.clone();
        let tx = applied_tx.clone();
        let space = Arc::new(DiskSpace::default());
        let disk = space.clone();
        let (log_store, state_machine, state, incarnation) =
            tokio::task::spawn_blocking(move || {
                fs::create_dir_all(&dir).map_err(|e| storage(&dir, "create directory", e))?;
                let lock = lock_dir(&dir)?;
                let (incarnation, _) = incarnation(&dir)?;
                let log_store = LogStore::open(&dir, lock, disk.clone())?;
                let (state_machine, state) = StateMachineStore::open(&dir, tx, disk)?;
                Ok::<_, MetaError>((log_store, state_machine, state, incarnation))
            })
            .await
            .map_err(|e| storage(&cfg.dir, "open task", io::Error::other(e.to_string())))??;

        let pool = Pool::new(
            cfg.quorum
                .as_ref()
                .map_or_else(String::new, Quorum::fingerprint),
            cfg.node_id,
            cfg.quorum.as_ref().and_then(|q| q.source),
            cfg.quorum
                .as_ref()
                .map(|q| q.transport.clone())
                .unwrap_or_default(),
        );
        let raft = Raft::new(
            cfg.node_id,
            raft_config,
            NetworkFactory { pool: pool.clone() },
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| fatal(cfg.node_id, e))?;

        let node = MetaNode {
            inner: Arc::new(Inner {
                node_id: cfg.node_id,
                dir: cfg.dir.clone(),
                raft,
                state,
                applied_tx,
                space,
                write_timeout: cfg.write_timeout,
                quorum: cfg.quorum.clone(),
                pool,
                incarnation,
                accepting: AtomicBool::new(false),
                controller: Controller::new(cfg.controller.clone()),
                stop: CancellationToken::new(),
                write_observer: std::sync::OnceLock::new(),
            }),
        };
        if let Some(listener) = listener {
            tokio::spawn(node.clone().serve(listener));
        }
        let started = match &cfg.quorum {
            None => node.start_alone().await,
            Some(q) => node.start_in(q, cfg.is_voter()).await,
        };
        if let Err(e) = started {
            node.inner.stop.cancel();
            if let Err(shutdown_err) = node.inner.raft.shutdown().await {
                tracing::warn!(error = %shutdown_err, "shutting down after a failed open");
            }
            return Err(e);
        }
        tokio::spawn(node.clone().run_membership());
        tokio::spawn(node.clone().run_controller());
        Ok(node)
    }

    /// The single-voter start: initialize on first start, elect, apply everything.
    async fn start_alone(&self) -> Result<(), MetaError> {
        let id = self.inner.node_id;
        let raft = &self.inner.raft;
        let started = Instant::now();
        if !raft.is_initialized().await.map_err(|e| fatal(id, e))? {
            tracing::info!(node_id = id, dir = %self.inner.dir.display(), "initializing single-voter metadata cluster");
            self.initialize(raft::initial_members(id)).await?;
        }
        // A single voter that restarts with an uncommitted vote would otherwise wait a
        // whole election timeout before electing itself.
        let mut rx = raft.metrics();
        loop {
            let (state, leading) = {
                let m = rx.borrow_and_update();
                if let Err(f) = &m.running_state {
                    return Err(fatal(id, f.clone()));
                }
                (m.state, m.current_leader == Some(id))
            };
            if leading {
                break;
            }
            if state == ServerState::Follower {
                raft.trigger().elect().await.map_err(|e| fatal(id, e))?;
            }
            if rx.changed().await.is_err() {
                return Err(MetaError::ShutDown { node_id: id });
            }
        }
        // Everything committed before this leader's term is applied once the state machine
        // reaches the read log id; with a single voter every entry in the local log was
        // fsynced, so it is (or is about to be) committed too: wait for all of it.
        let read = raft
            .ensure_linearizable()
            .await
            .map_err(|e| self.not_ready(started, e.to_string()))?;
        let want = read
            .map(|l| l.index)
            .max(raft.metrics().borrow().last_log_index);
        self.wait_applied(want, started).await
    }

    /// The start of a node of a multi-node quorum: join (see the module docs), then wait
    /// for a leader and catch up.
    async fn start_in(&self, q: &Quorum, voter: bool) -> Result<(), MetaError> {
        let id = self.inner.node_id;
        let started = Instant::now();
        let initialized = self
            .inner
            .raft
            .is_initialized()
            .await
            .map_err(|e| fatal(id, e))?;
        if !voter {
            self.inner.accepting.store(true, Ordering::SeqCst);
            self.join(q, false).await?;
        } else if initialized {
            self.inner.accepting.store(true, Ordering::SeqCst);
        } else {
            self.form_or_join(q).await?;
        }
        tracing::info!(node_id = id, voter, "waiting for the metadata leader");
        self.catch_up(started).await
    }

    /// A new voter: initialize with the others, join as is, or ask to be replaced.
    async fn form_or_join(&self, q: &Quorum) -> Result<(), MetaError> {
        let id = self.inner.node_id;
        let members: BTreeMap<NodeId, BasicNode> = q
            .voters
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        let majority = q.voters.len() / 2 + 1;
        let mut last_log = Instant::now();
        loop {
            if self.inner.stop.is_cancelled() {
                return Err(MetaError::ShutDown { node_id: id });
            }
            let replies = self.hello_all(q).await;
            if replies.iter().any(|r| {
                r.your_incarnation
                    .as_ref()
                    .is_some_and(|i| *i != self.inner.incarnation)
            }) {
                tracing::warn!(
                    node_id = id,
                    "this voter's data directory is new but the cluster knew an earlier one: asking to be replaced (removed, then added back once caught up)"
                );
                self.join(q, true).await?;
                self.inner.accepting.store(true, Ordering::SeqCst);
                return Ok(());
            }
            if replies.iter().any(|r| r.initialized) {
                tracing::info!(node_id = id, "joining the existing metadata cluster");
                self.inner.accepting.store(true, Ordering::SeqCst);
                return Ok(());
            }
            if 1 + replies.len() >= majority {
                tracing::info!(node_id = id, voters = ?q.voters, "a majority of voters are new: initializing the metadata cluster");
                self.inner.accepting.store(true, Ordering::SeqCst);
                return self.initialize(members).await;
            }
            if last_log.elapsed() > Duration::from_secs(10) {
                tracing::info!(
                    node_id = id,
                    answered = replies.len(),
                    needed = majority - 1,
                    "waiting for more voters to answer"
                );
                last_log = Instant::now();
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    async fn initialize(&self, members: BTreeMap<NodeId, BasicNode>) -> Result<(), MetaError> {
        let id = self.inner.node_id;
        match self.inner.raft.initialize(members).await {
            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(RaftError::APIError(e)) => Err(MetaError::Config(format!(
                "cannot initialize the metadata cluster: {e}"
            ))),
            Err(RaftError::Fatal(f)) => Err(fatal(id, f)),
        }
    }

    /// Asks every other voter who it is; returns the answers of those that answered.
    async fn hello_all(&self, q: &Quorum) -> Vec<HelloReply> {
        let calls = q
            .voters
            .iter()
            .filter(|(id, _)| **id != self.inner.node_id)
            .map(|(id, addr)| {
                self.inner
                    .pool
                    .call(*id, addr, Request::Hello, Duration::from_millis(500))
            });
        futures::future::join_all(calls)
            .await
            .into_iter()
            .filter_map(|r| match r {
                Ok(Response::Hello(h)) => Some(h),
                _ => None,
            })
            .collect()
    }

    /// Asks the leader to add this node: as a learner, or (`voter`) to replace its lost
    /// incarnation. Retries until it is done.
    async fn join(&self, q: &Quorum, voter: bool) -> Result<(), MetaError> {
        let id = self.inner.node_id;
        let req = || Request::Join {
            addr: q.advertised.clone(),
            voter,
        };
        let mut last_log = Instant::now();
        loop {
            if self.inner.stop.is_cancelled() {
                return Err(MetaError::ShutDown { node_id: id });
            }
            match self.call_leader(q, req).await {
                Ok(Response::Join(Ok(()))) => {
                    tracing::info!(node_id = id, voter, "joined the metadata cluster");
                    return Ok(());
                }
                other => {
                    if last_log.elapsed() > Duration::from_secs(10) {
                        tracing::info!(node_id = id, answer = ?other, "still asking to join the metadata cluster");
                        last_log = Instant::now();
                    }
                }
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// Calls the leader: the one this node knows, else each voter in turn, following
    /// `NotLeader` answers. Only for requests that are safe to send twice.
    async fn call_leader(
        &self,
        q: &Quorum,
        req: impl Fn() -> Request,
    ) -> Result<Response, CallError> {
        let known = self.leader_addr();
        let mut targets: Vec<(NodeId, String)> = known.into_iter().collect();
        targets.extend(q.voters.iter().map(|(id, a)| (*id, a.clone())));
        let mut last = None;
        for (to, addr) in targets {
            if to == self.inner.node_id {
                continue;
            }
            match self.inner.pool.call(to, &addr, req(), CALL_TIMEOUT).await {
                Ok(Response::Join(Err(Refusal::NotLeader { .. })))
                | Ok(Response::Write(Err(Refusal::NotLeader { .. })))
                | Ok(Response::ReadIndex(Err(Refusal::NotLeader { .. })))
                | Ok(Response::Heartbeat(Err(Refusal::NotLeader { .. }))) => continue,
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(CallError::Unreachable {
            addr: "the metadata leader".into(),
            reason: "no voter answered as leader".into(),
        }))
    }

    /// The leader and its address, from this node's Raft state.
    fn leader_addr(&self) -> Option<(NodeId, String)> {
        let m = self.inner.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())?;
        Some((leader, addr))
    }

    /// Waits for a leader, asks it for its commit index, and waits until this node has
    /// applied that far.
    async fn catch_up(&self, started: Instant) -> Result<(), MetaError> {
        let id = self.inner.node_id;
        let mut last_log = Instant::now();
        loop {
            if self.inner.stop.is_cancelled() {
                return Err(MetaError::ShutDown { node_id: id });
            }
            if let Err(f) = &self.inner.raft.metrics().borrow().running_state {
                return Err(fatal(id, f.clone()));
            }
            match self.read_index().await {
                Ok(index) => return self.wait_applied(Some(index), started).await,
                Err(e) => {
                    if last_log.elapsed() > Duration::from_secs(10) {
                        tracing::info!(node_id = id, error = %e, "waiting for a metadata leader");
                        last_log = Instant::now();
                    }
                }
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// The commit index the leader confirms with a quorum.
    async fn read_index(&self) -> Result<u64, MetaError> {
        let raft = &self.inner.raft;
        if self.is_leader() {
            let read = raft
                .ensure_linearizable()
                .await
                .map_err(|e| MetaError::Timeout {
                    after: Duration::ZERO,
                    why: Some(e.to_string()),
                })?;
            return Ok(read.map_or(0, |l| l.index));
        }
        let Some((leader, addr)) = self.leader_addr() else {
            return Err(MetaError::NotLeader {
                node_id: self.inner.node_id,
                leader_id: None,
                leader_addr: None,
            });
        };
        match self
            .inner
            .pool
            .call(leader, &addr, Request::ReadIndex, CALL_TIMEOUT)
            .await
        {
            Ok(Response::ReadIndex(Ok(i))) => Ok(i),
            other => Err(MetaError::Timeout {
                after: CALL_TIMEOUT,
                why: Some(format!("asking the leader for its commit index: {other:?}")),
            }),
        }
    }

    async fn wait_applied(&self, want: Option<u64>, started: Instant) -> Result<(), MetaError> {
        let id = self.inner.node_id;
        let metrics = self
            .inner
            .raft
            .wait(None)
            .applied_index_at_least(want, "metadata node catching up")
            .await
            .map_err(|e| self.not_ready(started, e.to_string()))?;
        tracing::info!(
            node_id = id,
            dir = %self.inner.dir.display(),
            term = metrics.current_term,
            leader = ?metrics.current_leader,
            applied = ?metrics.last_applied.map(|l| l.index),
            snapshot = ?metrics.snapshot.map(|l| l.index),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "metadata node ready"
        );
        Ok(())
    }

    fn not_ready(&self, started: Instant, detail: String) -> MetaError {
        MetaError::NotReady {
            node_id: self.inner.node_id,
            waited: started.elapsed(),
            detail,
        }
    }

    /// Whether this node is the Raft leader right now (as far as it knows).
    pub fn is_leader(&self) -> bool {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.inner.node_id)
    }

    /// The Raft leader's id, if one is known.
    pub fn leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// Calls `observe` with the commit time of every write from now on.
    pub fn observe_writes(&self, observe: Arc<dyn Fn(Duration) + Send + Sync>) {
        let _ = self.inner.write_observer.set(observe);
    }

    /// The current Raft term.
    pub fn term(&self) -> u64 {
        self.inner.raft.metrics().borrow().current_term
    }

    /// The voters and learners of the committed membership.
    pub fn members(&self) -> (BTreeSet<NodeId>, BTreeSet<NodeId>) {
        let m = self.inner.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        (
            membership.voter_ids().collect(),
            membership.learner_ids().collect(),
        )
    }

    /// Proposes a command through Raft (forwarded to the leader if this node does not
    /// lead) and returns its result once committed and applied, or
    /// [`MetaError::Timeout`] after the write timeout (the command may still commit
    /// later: commands are written so that applying one twice is harmless).
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, MetaError> {
        let after = self.inner.write_timeout;
        let started = Instant::now();
        let span = if strata_telemetry::tracing_enabled() {
            tracing::info_span!("metadata.commit", strata.command = command_name(&cmd))
        } else {
            tracing::Span::none()
        };
        let written = tokio::time::timeout(after, self.write_until(cmd))
            .instrument(span)
            .await;
        match written {
            Ok(r) => {
                if let Some(observe) = self.inner.write_observer.get() {
                    observe(started.elapsed());
                }
                r
            }
            Err(_) => Err(MetaError::Timeout {
                after,
                why: self.problem(),
            }),
        }
    }

    async fn write_until(&self, cmd: Command) -> Result<CommandResult, MetaError> {
        let id = self.inner.node_id;
        loop {
            if self.is_leader() || self.inner.quorum.is_none() {
                match self.inner.raft.client_write(cmd.clone()).await {
                    Ok(resp) => return Ok(resp.data),
                    // Leadership moved: go round again and forward.
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))
                        if self.inner.quorum.is_some() => {}
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                        return Err(MetaError::NotLeader {
                            node_id: id,
                            leader_id: f.leader_id,
                            leader_addr: f.leader_node.map(|n| n.addr),
                        });
                    }
                    // Only membership changes produce this; `Command`s never do.
                    Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                        return Err(MetaError::Fatal {
                            node_id: id,
                            reason: format!("unexpected membership error on a metadata write: {e}"),
                        });
                    }
                    Err(RaftError::Fatal(f)) => return Err(fatal(id, f)),
                }
            } else if let Some((leader, addr)) = self.leader_addr() {
                match self
                    .inner
                    .pool
                    .call(
                        leader,
                        &addr,
                        Request::Write(cmd.clone()),
                        self.inner.write_timeout,
                    )
                    .await
                {
                    Ok(Response::Write(Ok((r, index)))) => {
                        // Read your writes: what the caller does next reads this
                        // node's copy of the state.
                        self.applied(index).await;
                        return Ok(r);
                    }
                    // Not delivered: safe to send again (to the new leader).
                    Ok(Response::Write(Err(Refusal::NotLeader { .. })))
                    | Ok(Response::Rejected(_))
                    | Err(CallError::Unreachable { .. }) => {}
                    Ok(Response::Write(Err(Refusal::Failed(why)))) => {
                        return Err(MetaError::Fatal {
                            node_id: leader,
                            reason: why,
                        });
                    }
                    // Maybe delivered: the caller must not assume either way.
                    Ok(other) => {
                        return Err(MetaError::Timeout {
                            after: Duration::ZERO,
                            why: Some(format!("unexpected answer {other:?}")),
                        });
                    }
                    Err(e) => {
                        return Err(MetaError::Timeout {
                            after: self.inner.write_timeout,
                            why: Some(e.to_string()),
                        });
                    }
                }
            }
            if let Err(f) = &self.inner.raft.metrics().borrow().running_state {
                return Err(fatal(id, f.clone()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Renews a broker's liveness lease with the controller (the leader), or tells the
    /// controller it is shutting down (which moves its leadership away before answering).
    pub async fn heartbeat(&self, hb: BrokerHeartbeat) -> Result<HeartbeatReply, MetaError> {
        let after = self.inner.write_timeout;
        // Every voter keeps track of leases, so a new leader knows them at once.
        if let Some(q) = &self.inner.quorum {
            let leader = self.leader();
            for (id, addr) in &q.voters {
                if *id == self.inner.node_id || Some(*id) == leader {
                    continue;
                }
                let (pool, id, addr, hb) = (self.inner.pool.clone(), *id, addr.clone(), hb.clone());
                tokio::spawn(async move {
                    let _ = pool
                        .call(id, &addr, Request::Heartbeat(hb), CALL_TIMEOUT)
                        .await;
                });
            }
        }
        let attempt = async {
            loop {
                if self.is_leader() || self.inner.quorum.is_none() {
                    match self.inner.controller.heartbeat(self, hb.clone()).await {
                        Ok(r) => return Ok(r),
                        Err(Refusal::NotLeader { .. }) => {}
                        Err(Refusal::Failed(why)) => {
                            return Err(MetaError::Timeout {
                                after,
                                why: Some(why),
                            });
                        }
                    }
                } else if let Some((leader, addr)) = self.leader_addr() {
                    match self
                        .inner
                        .pool
                        .call(leader, &addr, Request::Heartbeat(hb.clone()), after)
                        .await
                    {
                        Ok(Response::Heartbeat(Ok(r))) => return Ok(r),
                        Ok(Response::Heartbeat(Err(Refusal::Failed(why)))) => {
                            return Err(MetaError::Timeout {
                                after,
                                why: Some(why),
                            });
                        }
                        _ => {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(after, attempt)
            .await
            .unwrap_or(Err(MetaError::Timeout {
                after,
                why: self.problem(),
            }))
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

    /// Why this node cannot take writes right now (a full disk, a stopped Raft task, no
    /// leader), if it cannot: what readiness reports.
    pub fn problem(&self) -> Option<String> {
        {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            if let Err(f) = &m.running_state {
                return Some(format!("the metadata node stopped: {f}"));
            }
            if m.current_leader.is_none() {
                return Some("no metadata leader is known (an election is under way)".into());
            }
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
        self.inner.stop.cancel();
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

    /// Returns once this node has applied the log up to `index`.
    async fn applied(&self, index: u64) {
        let mut rx = self.inner.applied_tx.subscribe();
        while *rx.borrow_and_update() < index {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Index of the last applied log entry (the value [`MetaNode::subscribe`] publishes).
    pub fn applied_index(&self) -> u64 {
        *self.inner.applied_tx.borrow()
    }

    // --- serving peers ----------------------------------------------------------------

    async fn serve(self, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                () = self.inner.stop.cancelled() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let node = self.clone();
                    tokio::spawn(async move {
                        let transport = node.inner.pool.transport.clone();
                        // A peer that cannot finish its handshake (a stranger to the
                        // cluster's CA, plaintext on a TLS port) is dropped.
                        match tokio::time::timeout(
                            Duration::from_secs(10),
                            transport.accept(stream),
                        )
                        .await
                        {
                            Ok(Ok(stream)) => node.serve_connection(stream).await,
                            Ok(Err(e)) => {
                                tracing::warn!(%peer, error = %e, "metadata listener: handshake failed")
                            }
                            Err(_) => {
                                tracing::warn!(%peer, "metadata listener: no handshake within 10 s")
                            }
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metadata listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn serve_connection(self, mut stream: strata_security::transport::BoxStream) {
        loop {
            let req = tokio::select! {
                () = self.inner.stop.cancelled() => return,
                r = rpc::read_frame::<Envelope<Request>>(&mut stream) => match r {
                    Ok(r) => r,
                    Err(_) => return,
                },
            };
            let resp = self.handle(req).await;
            if rpc::write_frame(&mut stream, &resp).await.is_err() {
                return;
            }
        }
    }

    async fn handle(&self, req: Envelope<Request>) -> Response {
        let fingerprint = &self.inner.pool.cluster;
        if req.cluster != *fingerprint || req.to != self.inner.node_id {
            return Response::Rejected(format!(
                "this is metadata node {} of cluster {fingerprint}, not node {} of cluster {}",
                self.inner.node_id, req.to, req.cluster
            ));
        }
        let raft = &self.inner.raft;
        let accepting = self.inner.accepting.load(Ordering::SeqCst);
        match req.body {
            Request::AppendEntries(_) | Request::Vote(_) | Request::InstallSnapshot(_)
                if !accepting =>
            {
                Response::Rejected("this node is not taking Raft requests yet".into())
            }
            Request::AppendEntries(r) => Response::AppendEntries(raft.append_entries(r).await),
            Request::Vote(r) => Response::Vote(raft.vote(r).await),
            Request::InstallSnapshot(r) => {
                Response::InstallSnapshot(raft.install_snapshot(r).await)
            }
            Request::Write(cmd) => Response::Write(if self.is_leader() {
                match raft.client_write(cmd).await {
                    Ok(r) => Ok((r.data, r.log_id.index)),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                        Err(Refusal::NotLeader {
                            leader: f.leader_id,
                            leader_addr: f.leader_node.map(|n| n.addr),
                        })
                    }
                    Err(e) => Err(Refusal::Failed(e.to_string())),
                }
            } else {
                Err(self.not_leader())
            }),
            Request::ReadIndex => Response::ReadIndex(if self.is_leader() {
                raft.ensure_linearizable()
                    .await
                    .map(|l| l.map_or(0, |l| l.index))
                    .map_err(|e| Refusal::Failed(e.to_string()))
            } else {
                Err(self.not_leader())
            }),
            Request::Hello => Response::Hello(HelloReply {
                initialized: raft.is_initialized().await.unwrap_or(false),
                leader: self.leader(),
                your_incarnation: self.read(|s| s.voter_incarnations.get(&req.from).cloned()),
                cluster_id: self.read(|s| s.cluster_id.clone()),
            }),
            Request::Join { addr, voter } => Response::Join(if self.is_leader() {
                self.add_member(req.from, addr, voter).await
            } else {
                Err(self.not_leader())
            }),
            Request::Heartbeat(hb) => {
                Response::Heartbeat(self.inner.controller.heartbeat(self, hb).await)
            }
        }
    }

    fn not_leader(&self) -> Refusal {
        let leader = self.leader_addr();
        Refusal::NotLeader {
            leader: leader.as_ref().map(|(id, _)| *id),
            leader_addr: leader.map(|(_, a)| a),
        }
    }

    /// On the leader: adds `id` as a learner, first removing it from the voters when it
    /// asks to be replaced (its promotion back follows in [`MetaNode::run_membership`]).
    async fn add_member(&self, id: NodeId, addr: String, replace: bool) -> Result<(), Refusal> {
        let raft = &self.inner.raft;
        let failed = |e: &dyn fmt::Display| Refusal::Failed(e.to_string());
        let (voters, learners) = self.members();
        if replace && voters.contains(&id) {
            tracing::warn!(
                node_id = id,
                "replacing a metadata voter that lost its data: removing it, then adding it back"
            );
            raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(|e| failed(&e))?;
        }
        if !voters.contains(&id) && !learners.contains(&id) || replace {
            raft.add_learner(id, BasicNode::new(addr), false)
                .await
                .map_err(|e| failed(&e))?;
        }
        Ok(())
    }

    /// Keeps the membership right while this node leads (voters of the configured list
    /// that are learners, after a replacement, become voters again once caught up), and
    /// this node's incarnation recorded once it is a voter.
    async fn run_membership(self) {
        let Some(q) = self.inner.quorum.clone() else {
            return;
        };
        let id = self.inner.node_id;
        loop {
            tokio::select! {
                () = self.inner.stop.cancelled() => return,
                () = tokio::time::sleep(MEMBERSHIP_TICK) => {}
            }
            let (voters, learners) = self.members();
            if voters.contains(&id)
                && self.read(|s| s.voter_incarnations.get(&id).cloned())
                    != Some(self.inner.incarnation.clone())
                && self.leader().is_some()
            {
                let _ = self
                    .write(Command::RegisterVoter {
                        node_id: id,
                        incarnation: self.inner.incarnation.clone(),
                    })
                    .await;
            }
            if !self.is_leader() {
                continue;
            }
            let m = self.inner.raft.metrics().borrow().clone();
            let last = m.last_log_index.unwrap_or(0);
            for learner in learners.iter().filter(|l| q.voters.contains_key(l)) {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(learner).cloned().flatten())
                    .map_or(0, |l| l.index);
                if matched + PROMOTE_LAG >= last {
                    tracing::info!(
                        node_id = learner,
                        "promoting a caught-up learner back to metadata voter"
                    );
                    if let Err(e) = self
                        .inner
                        .raft
                        .change_membership(
                            ChangeMembers::AddVoterIds(BTreeSet::from([*learner])),
                            true,
                        )
                        .await
                    {
                        tracing::warn!(node_id = learner, error = %e, "could not promote the learner yet");
                    }
                }
            }
        }
    }

    /// While this node leads, the controller watches brokers' leases.
    async fn run_controller(self) {
        self.inner.controller.run(&self, &self.inner.stop).await;
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

/// The command's variant name (`CreateTopic`), for spans: the start of its `Debug`
/// output, whose formatting stops there (a command can carry thousands of offsets).
fn command_name(cmd: &Command) -> String {
    struct Name(String);
    impl std::fmt::Write for Name {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let end = s.find(|c: char| !c.is_alphanumeric()).unwrap_or(s.len());
            self.0.push_str(&s[..end]);
            if end < s.len() {
                Err(std::fmt::Error)
            } else {
                Ok(())
            }
        }
    }
    let mut name = Name(String::new());
    // The writer ends the formatting with an error once the name is complete.
    let _ = std::fmt::write(&mut name, format_args!("{cmd:?}"));
    name.0
}
