//! The network seam between openraft and peer metadata nodes: each Raft RPC is one call
//! over the metadata wire ([`crate::rpc`]), to the address the membership records for
//! the peer. Errors map to what openraft does with them: nothing sent (the peer is down)
//! is `Unreachable` (openraft backs off), a call that failed or timed out after it may
//! have been sent is a network error or a timeout (retried on the next tick).

use openraft::BasicNode;
use openraft::RaftNetwork;
use openraft::RaftNetworkFactory;
use openraft::error::InstallSnapshotError;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::RemoteError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;

use crate::raft::TypeConfig;
use crate::rpc::CallError;
use crate::rpc::Pool;
use crate::rpc::Request;
use crate::rpc::Response;
use crate::types::NodeId;

/// Creates [`PeerClient`]s over the node's connection pool.
#[derive(Debug, Clone)]
pub(crate) struct NetworkFactory {
    pub(crate) pool: Pool,
}

/// A client for one peer.
#[derive(Debug, Clone)]
pub(crate) struct PeerClient {
    pool: Pool,
    target: NodeId,
    node: BasicNode,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            pool: self.pool.clone(),
            target,
            node: node.clone(),
        }
    }
}

/// An answer that is not the one asked for: the peer refused the request (not for it, or
/// not taking Raft traffic now), which openraft should treat as unreachable.
fn refused<E: std::error::Error>(resp: Response) -> RPCError<NodeId, BasicNode, E> {
    let why = match resp {
        Response::Rejected(why) => why,
        other => format!("unexpected answer {other:?}"),
    };
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(why)))
}

impl PeerClient {
    async fn call<E: std::error::Error>(
        &self,
        req: Request,
        option: &RPCOption,
    ) -> Result<Response, RPCError<NodeId, BasicNode, E>> {
        match self
            .pool
            .call(self.target, &self.node.addr, req, option.hard_ttl())
            .await
        {
            Ok(r) => Ok(r),
            Err(e @ CallError::Unreachable { .. }) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<NodeId, BasicNode, E> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.node.clone(),
            e,
        ))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(Request::AppendEntries(rpc), &option).await? {
            Response::AppendEntries(Ok(r)) => Ok(r),
            Response::AppendEntries(Err(e)) => Err(self.remote(e)),
            other => Err(refused(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(Request::InstallSnapshot(rpc), &option).await? {
            Response::InstallSnapshot(Ok(r)) => Ok(r),
            Response::InstallSnapshot(Err(e)) => Err(self.remote(e)),
            other => Err(refused(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(Request::Vote(rpc), &option).await? {
            Response::Vote(Ok(r)) => Ok(r),
            Response::Vote(Err(e)) => Err(self.remote(e)),
            other => Err(refused(other)),
        }
    }
}
