//! Kafka wire format, free of I/O and of storage concerns.
//!
//! This crate owns three things:
//! - [`frame`]: splitting a request frame into its header and typed body (over the
//!   `kafka-protocol` crate's message types) and encoding a response frame, with every
//!   malformed input turned into a [`FrameError`] instead of a panic;
//! - [`batch`]: the v2 record-batch header, its validation (lengths, magic, CRC-32C,
//!   offset range) and the fields the broker rewrites (base offset, leader epoch); the
//!   partition log stores batches in exactly this format;
//! - [`records`]: walking the records inside one batch (decompressing with a bound) for
//!   the rare paths that need per-record timestamps, such as ListOffsets by time.
//!
//! It must not open sockets or files, keep state between calls, or know about topics,
//! partitions and the log: callers hand it bytes and get bytes or typed values back.

pub mod batch;
pub mod frame;
pub mod records;
pub mod vectored;

pub use batch::{BatchError, BatchHeader, Compression};
pub use frame::{FrameError, RequestPrefix};
