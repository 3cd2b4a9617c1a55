//! The network seam between openraft and peer metadata nodes.
//!
//! **Multi-node networking is not built yet.** Today the metadata service runs as a single
//! voter embedded in the broker, and openraft never sends an RPC when it is the only voter,
//! so [`NetworkFactory`] hands out clients whose every call fails with
//! [`RPCError::Unreachable`] explaining exactly that. A later change that runs three nodes as
//! separate processes replaces this module: a real client per peer (address from the
//! membership's [`BasicNode::addr`]) plus a server that feeds incoming RPCs to
//! `Raft::append_entries` / `Raft::vote` / `Raft::install_snapshot`. Nothing else in the
//! crate depends on how messages travel.

use openraft::AnyError;
use openraft::BasicNode;
use openraft::RaftNetwork;
use openraft::RaftNetworkFactory;
use openraft::error::InstallSnapshotError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;

use crate::raft::TypeConfig;
use crate::types::NodeId;

/// Creates [`PeerClient`]s. Placeholder until multi-node networking exists; see the module
/// docs.
#[derive(Debug, Clone, Default)]
pub(crate) struct NetworkFactory;

/// A client for one peer. Every RPC fails with `Unreachable` (never called with one voter).
#[derive(Debug, Clone)]
pub(crate) struct PeerClient {
    target: NodeId,
    addr: String,
}

impl PeerClient {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Unreachable(Unreachable::from(AnyError::error(format!(
            "cannot reach metadata node {} at {:?}: multi-node metadata networking is not \
             built yet (strata-meta currently runs a single embedded voter)",
            self.target, self.addr
        ))))
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}
