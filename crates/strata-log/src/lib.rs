//! The partition log: Kafka record batches in segment files on local disk.
//!
//! This crate owns everything between "a validated batch" and "bytes on disk": segment
//! files and their sparse offset and time indexes, offset assignment, group-committed
//! `fdatasync`, crash recovery (a torn or corrupt tail is found by CRC and cut off),
//! segment rolling by size and age, deletion of whole old segments when the log start
//! offset moves, and the in-memory tail of each partition's newest appends (one
//! broker-wide budget) from which readers at the end of the log are served. It also keeps each partition's idempotent-producer state (epochs and the
//! last five batches' sequences per producer id), rejects out-of-order or fenced batches
//! and answers retries with the original offsets; that state is snapshotted beside each
//! sealed segment and rebuilt from the log at start-up. The on-disk format is documented
//! in `docs/storage-format.md`.
//!
//! It must not know about Kafka requests, topics' configs as Kafka names, or the metadata
//! service: callers pass plain numbers (`LogConfig`, retention limits, the time) and
//! decide when a log start offset may move (the broker commits it to metadata first).
//! Time comes in as arguments, never from the system clock, so tests control it.

mod acked;
mod epochs;
mod error;
mod index;
mod manager;
mod partition;
mod producers;
mod segment;
mod tail;

pub use error::{LogError, Result};
pub use index::SegmentIndex;
pub use manager::{LogManager, PartitionKey};
pub use partition::{
    AppendInfo, FileRange, LogConfig, Offsets, Partition, ReadResult, SealedSegment, SegmentInfo,
    Upto, plan_retention, wait_durable_all,
};
pub use producers::{AbortedTxn, ProducerError, ProducerInfo};
pub use tail::TailCache;

#[cfg(test)]
mod producer_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod txn_tests;
