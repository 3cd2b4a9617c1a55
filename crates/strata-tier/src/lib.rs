//! Tiered storage: the object-store seam, object layout, and the remote read path.
//!
//! This crate owns everything that touches the object store: turning an
//! `--object-store` URL into a client (a local directory or an S3-compatible bucket, with
//! credentials from the standard AWS sources), a start-up check that says what is wrong,
//! instrumented puts/gets/deletes/lists, multipart uploads of segment files, the object
//! key layout, and reading remote segments through a `foyer` hybrid cache of fixed-size
//! blocks with read-ahead.
//!
//! It must not decide what to upload or delete, or when: the broker does that against
//! the metadata service (the manifest of remote segments is committed there). It knows
//! the segment format only through `strata-log` (batch headers, index files).

mod cache;
mod cache_drops;
mod error;
pub mod layout;
mod reader;
mod store;

pub use cache::{BlockCache, CacheConfig, MAX_BLOCK_BYTES};
pub use error::TierError;
pub use reader::RemoteSegment;
pub use store::{
    DEFAULT_REQUEST_TIMEOUT, Env, ObjectInfo, PROBE_IDLE, Store, StoreConfig, StoreStatus,
    process_env,
};

#[cfg(test)]
mod tests;
