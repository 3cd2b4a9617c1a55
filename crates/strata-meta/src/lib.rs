//! `strata-meta` owns Strata's cluster metadata — the cluster id, registered brokers, topics
//! and their partitions, topic configs, and partition log start offsets — and replicates it
//! through Raft (openraft), persisting the Raft log and state snapshots in its own directory.
//! It must not know about the Kafka wire protocol (no Kafka request/response types) and must
//! not do segment I/O: it only records *what* exists; the broker turns that into data on disk
//! and answers clients.
//!
//! The service runs as one voter embedded in the broker by default ([`MetaNode::open`]), or
//! as a quorum of 3 or 5 voters (separate processes, or combined with brokers) that
//! brokers-only nodes follow as learners ([`MetaNode::open_with`] and [`Quorum`]). Nodes
//! talk over TCP (`rpc`, `network`); writes from any node are forwarded to the leader.
//! The leader also runs the controller (`controller`): broker leases, fencing, leader
//! elections and replica placement, decided here and applied by the state machine, which
//! stays free of sockets and of Kafka's wire types.
//!
//! On-disk layout of a node directory:
//!
//! - `LOCK` — advisory exclusive lock; one process per directory.
//! - `raft.log` — append-only Raft log and vote (see the `log_store` module docs).
//! - `state.snapshot` — the latest state snapshot, replaced atomically (see `state_machine`).
//! - `incarnation` — a random id made with the directory: a voter that comes back with
//!   another one lost its data and is replaced rather than trusted (see `node`).

mod codec;
mod controller;
mod error;
mod fsutil;
mod log_store;
mod network;
mod node;
mod raft;
mod rpc;
mod state_machine;
mod sync;
mod txn;
mod types;

#[cfg(test)]
mod tests;

/// Entry points for `fuzz/`: the decoders of this crate's files and RPC frames, with
/// no other use. Only built with the `fuzzing` feature.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use std::path::Path;
    use std::sync::Arc;

    /// Opens the metadata files in `dir` (`raft.log`, `state.snapshot`, `incarnation`)
    /// as a node does at start-up.
    pub fn open_dir(dir: &Path) -> Result<(), crate::MetaError> {
        let space = Arc::new(crate::fsutil::DiskSpace::default());
        let lock = crate::fsutil::lock_dir(dir)?;
        crate::node::incarnation(dir)?;
        crate::log_store::LogStore::open(dir, lock, space.clone())?;
        let applied = Arc::new(tokio::sync::watch::channel(0).0);
        crate::state_machine::StateMachineStore::open(dir, applied, space)?;
        Ok(())
    }

    /// Decodes a metadata RPC frame's body as a request and as a response.
    pub fn decode_rpc(body: &[u8]) {
        let _ = serde_json::from_slice::<crate::rpc::Request>(body);
        let _ = serde_json::from_slice::<crate::rpc::Response>(body);
    }
}

/// The set of metadata commands this software applies, in the order they appeared:
/// 1 added [`TxnCommand::Expire`]. Brokers register it
/// ([`BrokerInfo::metadata_version`]); a command is proposed only once every registered
/// broker applies it (see [`ClusterState::metadata_version`]).
pub const METADATA_VERSION: u16 = 1;

pub use controller::ControllerConfig;
pub use controller::Election;
pub use controller::NoElection;
pub use controller::election;
pub use controller::place_replicas;
pub use error::MetaError;
pub use node::MetaConfig;
pub use node::MetaNode;
pub use node::Quorum;
pub use txn::{LAST_EPOCH, TxnCommand, TxnMeta, TxnRefusal, TxnState};
pub use types::BrokerHeartbeat;
pub use types::BrokerInfo;
pub use types::ClusterState;
pub use types::Command;
pub use types::CommandResult;
pub use types::CommittedOffset;
pub use types::HeartbeatReply;
pub use types::ListenerEndpoint;
pub use types::NodeId;
pub use types::OffsetCommit;
pub use types::PartitionMeta;
pub use types::RemoteAbortedTxn;
pub use types::RemoteSegmentMeta;
pub use types::ScramCredential;
pub use types::TopicMeta;
