use std::path::PathBuf;

/// Errors of tiered storage, written for the operator.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error("object store URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("object store {op} {key}: {source}")]
    Store {
        op: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{0}")]
    BadSetting(String),
    #[error("object store {op} {key}: no answer within {after:?}")]
    Timeout {
        op: &'static str,
        key: String,
        after: std::time::Duration,
    },
    #[error("object store {store} is not usable: {reason}")]
    Check { store: String, reason: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("remote segment {key} is corrupt at byte {position}: {reason}")]
    Corrupt {
        key: String,
        position: u64,
        reason: String,
    },
    #[error("block cache: {0}")]
    Cache(String),
}

impl TierError {
    /// Whether the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }
        )
    }
}

impl TierError {
    /// Whether the store failed to answer properly (as opposed to answering "no such
    /// object" or "already exists", or a local error): what an outage looks like.
    pub fn is_store_failure(&self) -> bool {
        match self {
            Self::Timeout { .. } => true,
            Self::Store { source, .. } => !matches!(
                source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }
                    | object_store::Error::NotModified { .. }
            ),
            _ => false,
        }
    }

    /// Whether trying the same request again may succeed: a timeout, or a failure that
    /// is not a definite answer (connection errors, 5xx; not 403 or 404).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Timeout { .. } => true,
            Self::Store { source, .. } => matches!(source, object_store::Error::Generic { .. }),
            _ => false,
        }
    }
}

pub type Result<T, E = TierError> = std::result::Result<T, E>;
