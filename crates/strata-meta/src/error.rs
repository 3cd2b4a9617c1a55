//! Errors surfaced by the metadata service, and the conversions from internal failures.

use std::fmt::Display;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use openraft::AnyError;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::StorageError;
use openraft::StorageIOError;

use crate::types::NodeId;

/// Errors returned by [`MetaNode`](crate::MetaNode).
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// Reading or writing the node's on-disk state failed, or the files are damaged beyond
    /// what crash recovery may repair.
    #[error("metadata storage at {}: {source}", .path.display())]
    Storage {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The Raft node stopped because of an unrecoverable error (a storage failure while
    /// running, a panic in the Raft task, ...). The node must be reopened.
    #[error("metadata node {node_id} failed: {reason}")]
    Fatal { node_id: NodeId, reason: String },

    /// The node has been shut down.
    #[error("metadata node {node_id} is shut down")]
    ShutDown { node_id: NodeId },

    /// This node is not the Raft leader; writes must go to `leader_id` (if known).
    #[error(
        "metadata node {node_id} is not the leader; forward to {}",
        match .leader_id { Some(id) => format!("node {id}"), None => "an unknown leader (election in progress)".to_string() }
    )]
    NotLeader {
        node_id: NodeId,
        leader_id: Option<NodeId>,
        /// The leader's address from the Raft membership, when known.
        leader_addr: Option<String>,
    },

    /// The node did not become leader / catch up in time while opening.
    #[error("metadata node {node_id} was not ready after {waited:?}: {detail}")]
    NotReady {
        node_id: NodeId,
        waited: Duration,
        detail: String,
    },

    /// The configuration is invalid.
    #[error("invalid metadata config: {0}")]
    Config(String),

    /// A write was not committed within the node's write timeout (no leader, or the disk
    /// is full). It may still commit later.
    #[error("metadata write not committed within {after:?}{}", .why.as_deref().map(|w| format!(": {w}")).unwrap_or_default())]
    Timeout {
        after: Duration,
        why: Option<String>,
    },
}

impl MetaError {
    /// Whether this is a write that failed because the disk is full (or over quota).
    pub fn is_out_of_space(&self) -> bool {
        matches!(
            self,
            MetaError::Storage { source, .. }
                if matches!(source.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
        )
    }
}

/// Wraps an I/O error with the file it concerns and what was being done.
pub(crate) fn storage(path: &Path, what: impl Display, err: io::Error) -> MetaError {
    MetaError::Storage {
        path: path.to_path_buf(),
        source: io::Error::new(err.kind(), format!("{what}: {err}")),
    }
}

/// A damaged or undecodable file.
pub(crate) fn corrupt(path: &Path, what: impl Display) -> MetaError {
    MetaError::Storage {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, what.to_string()),
    }
}

/// Converts to the error type openraft's storage traits return. The message keeps the path.
pub(crate) fn to_storage_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    err: &MetaError,
) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, AnyError::new(err)),
    }
}
