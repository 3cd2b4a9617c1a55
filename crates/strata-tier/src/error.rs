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

pub type Result<T, E = TierError> = std::result::Result<T, E>;
