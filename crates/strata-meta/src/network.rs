//! The network seam between openraft and peer metadata nodes: each Raft RPC is one call
//! over the metadata wire ([`crate::rpc`]), to the address the membership records for
//! the peer. Errors map to what openraft does with them: nothing sent (the peer is down),
//! or a connection that broke before the answer (reset or closed: the peer went down, or
//! a network between is cutting it off) is `Unreachable`, and openraft backs off; a call
//! that timed out is a network error (retried on the next tick). Replication retries a
//! network error at once, so a peer whose connections are reset the moment they open
//! was called thousands of times a second, starving the node's other work.

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
            Err(e @ (CallError::Unreachable { .. } | CallError::Failed { .. })) => {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use openraft::BasicNode;
    use openraft::RaftNetwork;
    use openraft::Vote;
    use openraft::error::RPCError;
    use openraft::network::RPCOption;
    use openraft::raft::VoteRequest;

    use super::PeerClient;
    use crate::rpc::Pool;

    #[tokio::test]
    async fn a_peer_whose_connections_break_is_unreachable_so_raft_backs_off() {
        // What a cut network looks like through a proxy: connections open, then close.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                drop(conn);
            }
        });
        let mut peer = PeerClient {
            pool: Pool::new("c".into(), 1, None, Default::default()),
            target: 2,
            node: BasicNode::new(addr),
        };
        let got = peer
            .vote(
                VoteRequest::new(Vote::new(1, 1), None),
                RPCOption::new(Duration::from_secs(5)),
            )
            .await;
        assert!(matches!(got, Err(RPCError::Unreachable(_))), "{got:?}");
    }
}
