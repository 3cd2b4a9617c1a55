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

/// Heartbeat interval, ms. It is also the deadline of an AppendEntries call, which
/// includes the follower's fsync: generous for a loaded machine.
const HEARTBEAT_MS: u64 = 200;
/// Election timeout range, ms: a leader that stops (crashes, pauses) is replaced within
/// about three seconds.
const ELECTION_MIN_MS: u64 = 1000;
const ELECTION_MAX_MS: u64 = 2000;

/// The openraft config: snapshot every `snapshot_every` applied entries and purge the log
/// behind each snapshot (all of it with one voter; with several, up to 1000 entries are
/// kept, or `snapshot_every` if fewer, so a node that was away for a short while catches
/// up from the log, a longer absence from the snapshot).
pub(crate) fn config(snapshot_every: u64, several: bool) -> Result<openraft::Config, MetaError> {
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
        install_snapshot_timeout: 10_000,
        snapshot_max_chunk_size: 1 << 20,
        ..Default::default()
    };
    c.snapshot_policy = SnapshotPolicy::LogsSinceLast(snapshot_every);
    c.max_in_snapshot_log_to_keep = if several { snapshot_every.min(1000) } else { 0 };
    c.purge_batch_size = 1;
    c.validate()
        .map_err(|e| MetaError::Config(format!("raft config: {e}")))
}

/// The single-voter membership used to initialize a fresh node.
pub(crate) fn initial_members(node_id: NodeId) -> std::collections::BTreeMap<NodeId, BasicNode> {
    std::collections::BTreeMap::from([(node_id, BasicNode::new(""))])
}
