//! `strata-meta` owns Strata's cluster metadata — the cluster id, registered brokers, topics
//! and their partitions, topic configs, and partition log start offsets — and replicates it
//! through Raft (openraft), persisting the Raft log and state snapshots in its own directory.
//! It must not know about the Kafka wire protocol (no Kafka request/response types) and must
//! not do segment I/O: it only records *what* exists; the broker turns that into data on disk
//! and answers clients.
//!
//! Today the service runs as one voter embedded in the broker process ([`MetaNode::open`]
//! initializes a single-voter cluster). The state machine ([`ClusterState`], [`Command`]) and
//! the client API ([`MetaNode`]) do not depend on that: running three nodes as separate
//! processes later means replacing the network seam (`network` module) and extending
//! cluster formation, not changing callers.
//!
//! On-disk layout of a node directory:
//!
//! - `LOCK` — advisory exclusive lock; one process per directory.
//! - `raft.log` — append-only Raft log and vote (see the `log_store` module docs).
//! - `state.snapshot` — the latest state snapshot, replaced atomically (see `state_machine`).

mod codec;
mod error;
mod fsutil;
mod log_store;
mod network;
mod node;
mod raft;
mod state_machine;
mod sync;
mod types;

#[cfg(test)]
mod tests;

pub use error::MetaError;
pub use node::MetaConfig;
pub use node::MetaNode;
pub use types::BrokerInfo;
pub use types::ClusterState;
pub use types::Command;
pub use types::CommandResult;
pub use types::CommittedOffset;
pub use types::NodeId;
pub use types::OffsetCommit;
pub use types::PartitionMeta;
pub use types::RemoteSegmentMeta;
pub use types::TopicMeta;
