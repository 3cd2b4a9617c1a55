use std::path::PathBuf;

use crate::producers::ProducerError;

/// Errors of the partition log. Messages are written for the operator reading the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("offset {offset} is outside the log's range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        log_end: i64,
    },
    #[error(
        "offset {offset} is no longer on local disk (local data starts at {local_start}): read it from the object store"
    )]
    NotLocal { offset: i64, local_start: i64 },
    #[error("partition log {path} is offline after a disk error: {reason}")]
    Offline { path: PathBuf, reason: String },
    #[error("segment {path} holds a corrupt batch at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error(
        "records before offset {offset} from leader epoch {epoch} were replaced by a newer leader's"
    )]
    Superseded { epoch: i32, offset: i64 },
    /// Waiting for records that are no longer there: the log was cut back below them
    /// (this replica lost leadership and truncated to the new leader's log).
    #[error("the log now ends at offset {log_end}, before {offset}: the records up to it were cut")]
    Truncated { offset: i64, log_end: i64 },
    #[error("partition directory {path} has an unexpected name")]
    BadDirectory { path: PathBuf },
    /// An idempotent producer's batch was refused; nothing of the append was written.
    #[error(transparent)]
    Producer(#[from] ProducerError),
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Whether this error means the disk is full (the request may succeed later).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.raw_os_error() == Some(28))
    }
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;
