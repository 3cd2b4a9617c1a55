//! Producer ids, handed out from blocks reserved in the metadata quorum: one Raft write
//! per block of ids, not per producer. Used by InitProducerId for idempotent and
//! transactional producers alike.

use kafka_protocol::ResponseError;
use strata_meta::{Command, CommandResult, MetaNode};
use tracing::info;

use crate::errors;

/// Producer ids reserved from metadata at a time.
const PRODUCER_ID_BLOCK: u32 = 1000;

#[derive(Default)]
pub(crate) struct ProducerIds {
    /// The next id to hand out and the end of the current block.
    block: tokio::sync::Mutex<(i64, i64)>,
}

impl ProducerIds {
    pub(crate) async fn next(&self, meta: &MetaNode) -> Result<i64, ResponseError> {
        let mut block = self.block.lock().await;
        if block.0 >= block.1 {
            match meta
                .write(Command::AllocateProducerIds {
                    count: PRODUCER_ID_BLOCK,
                })
                .await
            {
                Ok(CommandResult::ProducerIds { first }) => {
                    info!(
                        first,
                        count = PRODUCER_ID_BLOCK,
                        "reserved a block of producer ids"
                    );
                    *block = (first, first + i64::from(PRODUCER_ID_BLOCK));
                }
                Ok(other) => {
                    tracing::error!(result = ?other, "unexpected answer to a producer id allocation");
                    return Err(ResponseError::UnknownServerError);
                }
                Err(e) => return Err(errors::meta_error(&e)),
            }
        }
        let id = block.0;
        block.0 += 1;
        Ok(id)
    }
}
