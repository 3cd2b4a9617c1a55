//! The metadata quorum's wire: requests between metadata nodes (and from brokers) over
//! TCP, one frame each way per call.
//!
//! A frame is a 4-byte big-endian length and a JSON body. Every request names the
//! cluster it is meant for (a fingerprint of the voter list and the cluster name) and
//! the node it is addressed to, so a request sent to the wrong process (a stale address,
//! a node of another cluster) is refused instead of being applied. Connections are kept
//! open and reused: a [`Pool`] holds idle ones per address.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use serde::Deserialize;
use serde::Serialize;
use std::net::IpAddr;
use strata_security::transport::{BoxStream, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::raft::TypeConfig;
use crate::types::BrokerHeartbeat;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::HeartbeatReply;
use crate::types::NodeId;

/// Largest frame accepted (a snapshot chunk is at most a few MiB as JSON).
const MAX_FRAME: usize = 64 << 20;
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What one call asks.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A metadata write, for the leader to commit.
    Write(Command),
    /// The leader's commit index, confirmed with a quorum (for catching up).
    ReadIndex,
    /// Who are you: initialized, the leader you know, my incarnation as you know it.
    Hello,
    /// Add the sender to the membership: as a learner (a broker-only node), or, for a
    /// voter that lost its disk, replace it (remove, then add back as a learner that is
    /// promoted once caught up).
    Join {
        addr: String,
        voter: bool,
    },
    /// A broker's liveness lease, for the controller (the leader).
    Heartbeat(BrokerHeartbeat),
}

/// What a call answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, openraft::error::RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, openraft::error::RaftError<NodeId>>),
    InstallSnapshot(
        Result<
            InstallSnapshotResponse<NodeId>,
            openraft::error::RaftError<NodeId, openraft::error::InstallSnapshotError>,
        >,
    ),
    /// The command's result and the index of the log entry that carries it.
    Write(Result<(CommandResult, u64), Refusal>),
    ReadIndex(Result<u64, Refusal>),
    Hello(HelloReply),
    Join(Result<(), Refusal>),
    Heartbeat(Result<HeartbeatReply, Refusal>),
    /// The request was not for this node or cluster, or it does not take such requests
    /// now.
    Rejected(String),
}

/// Why the receiver did not do what was asked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) enum Refusal {
    /// Not the leader; the leader if known.
    NotLeader {
        leader: Option<NodeId>,
        leader_addr: Option<String>,
    },
    /// Tried and failed.
    Failed(String),
}

/// A node's answer to [`Request::Hello`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HelloReply {
    pub initialized: bool,
    pub leader: Option<NodeId>,
    /// The incarnation the committed metadata records for the asking node, if any.
    pub your_incarnation: Option<String>,
    pub cluster_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope<T> {
    /// The fingerprint of the cluster the sender belongs to.
    pub cluster: String,
    pub from: NodeId,
    pub to: NodeId,
    pub body: T,
}

/// Why a call did not get an answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// Nothing reached the peer (it is down, or not listening).
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// The connection failed after the request may have been sent.
    #[error("call to {addr} failed: {reason}")]
    Failed { addr: String, reason: String },
    #[error("no answer from {addr} within {after:?}")]
    Timeout { addr: String, after: Duration },
}

pub(crate) async fn write_frame(
    s: &mut (impl AsyncWrite + Unpin),
    body: &impl Serialize,
) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(body).map_err(std::io::Error::other)?;
    if bytes.len() > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "frame of {} bytes exceeds {MAX_FRAME}",
            bytes.len()
        )));
    }
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&bytes);
    s.write_all(&out).await
}

pub(crate) async fn read_frame<T: for<'de> Deserialize<'de>>(
    s: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<T> {
    let len = s.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "frame of {len} bytes exceeds {MAX_FRAME}"
        )));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await?;
    serde_json::from_slice(&buf).map_err(std::io::Error::other)
}

/// Idle connections per address, shared by every client of this node.
#[derive(Debug, Clone)]
pub(crate) struct Pool {
    pub cluster: String,
    pub me: NodeId,
    /// The address outgoing connections are made from, if pinned.
    source: Option<IpAddr>,
    /// Plain TCP or mTLS between the voters.
    pub transport: Transport,
    idle: Arc<parking_lot::Mutex<HashMap<String, Vec<BoxStream>>>>,
}

impl Pool {
    pub(crate) fn new(
        cluster: String,
        me: NodeId,
        source: Option<IpAddr>,
        transport: Transport,
    ) -> Self {
        Self {
            cluster,
            me,
            source,
            transport,
            idle: Arc::default(),
        }
    }

    /// Sends `body` to node `to` at `addr` and waits up to `timeout` for the answer.
    pub(crate) async fn call(
        &self,
        to: NodeId,
        addr: &str,
        body: Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let started = tokio::time::Instant::now();
        let pooled = self.idle.lock().get_mut(addr).and_then(Vec::pop);
        let mut stream = match pooled {
            Some(s) => s,
            None => {
                let limit = CONNECT_TIMEOUT.min(timeout);
                match tokio::time::timeout(limit, self.transport.connect(addr, self.source)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        return Err(CallError::Unreachable {
                            addr: addr.to_string(),
                            reason: e.to_string(),
                        });
                    }
                    Err(_) => {
                        return Err(CallError::Unreachable {
                            addr: addr.to_string(),
                            reason: format!("no connection within {limit:?}"),
                        });
                    }
                }
            }
        };
        let envelope = Envelope {
            cluster: self.cluster.clone(),
            from: self.me,
            to,
            body,
        };
        let left = timeout.saturating_sub(started.elapsed());
        let exchange = async {
            write_frame(&mut stream, &envelope).await?;
            read_frame::<Response>(&mut stream).await
        };
        match tokio::time::timeout(left, exchange).await {
            Ok(Ok(resp)) => {
                self.idle
                    .lock()
                    .entry(addr.to_string())
                    .or_default()
                    .push(stream);
                Ok(resp)
            }
            Ok(Err(e)) => Err(CallError::Failed {
                addr: addr.to_string(),
                reason: e.to_string(),
            }),
            Err(_) => Err(CallError::Timeout {
                addr: addr.to_string(),
                after: timeout,
            }),
        }
    }
}
