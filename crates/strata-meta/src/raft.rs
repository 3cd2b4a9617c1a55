//! openraft type configuration and tuning.

use openraft::BasicNode;
use openraft::SnapshotPolicy;

use crate::error::MetaError;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::NodeId;

openraft::declare_raft_types!(
    /// openraft type configuration of the metadata service.
    ///
    /// `Node = BasicNode` (an address string) is part of the on-disk format (it is stored in
    /// membership entries and snapshot metas); a single-node cluster records an empty address.
    pub(crate) TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub(crate) type Entry = openraft::Entry<TypeConfig>;
pub(crate) type Raft = openraft::Raft<TypeConfig>;

/// Heartbeat interval, ms. Irrelevant with one voter; sized for a LAN quorum later.
const HEARTBEAT_MS: u64 = 100;
/// Election timeout range, ms.
const ELECTION_MIN_MS: u64 = 400;
const ELECTION_MAX_MS: u64 = 800;

/// The openraft config: snapshot every `snapshot_every` applied entries and purge the log
/// right behind each snapshot.
pub(crate) fn config(snapshot_every: u64) -> Result<openraft::Config, MetaError> {
    if snapshot_every == 0 {
        return Err(MetaError::Config(
            "snapshot_every must be at least 1".to_string(),
        ));
    }
    let mut c = openraft::Config {
        cluster_name: "strata-meta".to_string(),
        heartbeat_interval: HEARTBEAT_MS,
        election_timeout_min: ELECTION_MIN_MS,
        election_timeout_max: ELECTION_MAX_MS,
        ..Default::default()
    };
    c.snapshot_policy = SnapshotPolicy::LogsSinceLast(snapshot_every);
    // Keep nothing behind a snapshot: with one voter nobody needs old entries. With several
    // voters a lagging follower then catches up through the snapshot instead of the log.
    c.max_in_snapshot_log_to_keep = 0;
    c.purge_batch_size = 1;
    c.validate()
        .map_err(|e| MetaError::Config(format!("raft config: {e}")))
}

/// The single-voter membership used to initialize a fresh node.
pub(crate) fn initial_members(node_id: NodeId) -> std::collections::BTreeMap<NodeId, BasicNode> {
    std::collections::BTreeMap::from([(node_id, BasicNode::new(""))])
}
