//! The one place where internal errors become Kafka error codes. Every match is
//! exhaustive, so a new error variant forces a decision about what clients see.

use kafka_protocol::ResponseError;
use strata_log::{LogError, ProducerError};
use strata_meta::MetaError;
use strata_protocol::BatchError;

/// What a client sees for a partition-log error.
pub fn log_error(e: &LogError) -> ResponseError {
    match e {
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        LogError::Superseded { .. } | LogError::Truncated { .. } => {
            ResponseError::NotLeaderOrFollower
        }
        // Fetches read such offsets from the object store; anything else asking the
        // local log for them cannot be served from this storage.
        LogError::NotLocal { .. }
        | LogError::Io { .. }
        | LogError::Offline { .. }
        | LogError::Corrupt { .. }
        | LogError::BadDirectory { .. } => ResponseError::KafkaStorageError,
        LogError::Producer(p) => match p {
            ProducerError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
            ProducerError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
            ProducerError::InvalidSequence { .. } => ResponseError::InvalidRecord,
        },
    }
}

/// What a client sees for a batch that failed validation on produce.
pub fn batch_error(e: &BatchError) -> ResponseError {
    match e {
        BatchError::Truncated { .. }
        | BatchError::BadLength(_)
        | BatchError::CrcMismatch { .. }
        | BatchError::UnknownCompression(_) => ResponseError::CorruptMessage,
        BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
        BatchError::CountMismatch { .. } | BatchError::ControlBatch => ResponseError::InvalidRecord,
    }
}

/// What a client sees when a metadata write fails.
pub fn meta_error(e: &MetaError) -> ResponseError {
    match e {
        MetaError::NotLeader { .. } | MetaError::NotReady { .. } => ResponseError::NotController,
        MetaError::ShutDown { .. } => ResponseError::BrokerNotAvailable,
        MetaError::Storage { .. } => ResponseError::KafkaStorageError,
        // Retriable: the write may go through once a leader is elected or space is free.
        MetaError::Timeout { .. } => ResponseError::RequestTimedOut,
        // A fatal Raft error or an invalid metadata config is a bug or a broken disk.
        MetaError::Fatal { .. } | MetaError::Config(_) => ResponseError::UnknownServerError,
    }
}
