//! The transaction APIs: AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit, EndTxn
//! (to the coordinator, `crate::txn`), WriteTxnMarkers (to a partition leader,
//! `crate::markers`), DescribeTransactions and ListTransactions (from metadata).

use std::future::Future;
use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedTransaction;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use strata_meta::{CommittedOffset, OffsetCommit, TxnMeta};

use crate::broker::Broker;
use crate::txn::Marker;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// `NOT_COORDINATOR` if another broker coordinates `transactional_id`, else `step`.
async fn at_coordinator<T>(
    broker: &Broker,
    transactional_id: &str,
    step: impl Future<Output = Result<T, ResponseError>>,
) -> Result<T, ResponseError> {
    match broker.not_coordinator(transactional_id) {
        Some(code) => Err(code),
        None => step.await,
    }
}

/// The transactional InitProducerId (the idempotent one is in `producers`).
pub(super) async fn init_producer_id(
    broker: &Arc<Broker>,
    transactional_id: &str,
    req: &InitProducerIdRequest,
) -> Result<(i64, i16), ResponseError> {
    let given = (req.producer_id.0 >= 0).then_some((req.producer_id.0, req.producer_epoch));
    let step = broker.txn.init_producer(
        transactional_id,
        req.transaction_timeout_ms,
        given,
        broker,
        broker.now_ms(),
    );
    at_coordinator(broker, transactional_id, step).await
}

/// The partitions named in `topics`, as (topic, partition) pairs.
fn pairs(topics: &[AddPartitionsToTxnTopic]) -> Vec<(String, i32)> {
    topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|&p| (t.name.0.to_string(), p)))
        .collect()
}

/// One result per partition of `topics`, all `code` (`None`: success) except those of
/// unknown topics.
fn topic_results(
    broker: &Broker,
    topics: &[AddPartitionsToTxnTopic],
    code: Option<ResponseError>,
) -> Vec<AddPartitionsToTxnTopicResult> {
    topics
        .iter()
        .map(|t| {
            let known = broker.topic(&t.name.0);
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(
                    t.partitions
                        .iter()
                        .map(|&p| {
                            let exists = known.as_ref().is_some_and(|m| {
                                usize::try_from(p).is_ok_and(|i| i < m.partitions.len())
                            });
                            let c = if exists {
                                code.map_or(0, |c| c.code())
                            } else {
                                ResponseError::UnknownTopicOrPartition.code()
                            };
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(p)
                                .with_partition_error_code(c)
                        })
                        .collect(),
                )
        })
        .collect()
}

/// Adds one transaction's partitions (or, with `verify_only`, checks that they are in
/// it: KIP-890's broker-side verification). A partition of an unknown topic fails the
/// whole request, as in Kafka.
async fn add_one(
    broker: &Arc<Broker>,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    topics: &[AddPartitionsToTxnTopic],
    verify_only: bool,
) -> Vec<AddPartitionsToTxnTopicResult> {
    let unknown = topics.iter().any(|t| {
        broker.topic(&t.name.0).is_none_or(|m| {
            t.partitions
                .iter()
                .any(|&p| usize::try_from(p).map_or(true, |i| i >= m.partitions.len()))
        })
    });
    let result = if unknown {
        Err(ResponseError::OperationNotAttempted)
    } else if verify_only {
        let all_in = broker.meta.read(|s| {
            s.transactions
                .get(transactional_id)
                .is_some_and(|t: &TxnMeta| {
                    t.producer_id == producer_id
                        && t.producer_epoch == producer_epoch
                        && pairs(topics).iter().all(|(tp, p)| t.has_partition(tp, *p))
                })
        });
        if all_in {
            Ok(())
        } else {
            Err(ResponseError::InvalidTxnState)
        }
    } else {
        let step = broker.txn.add(
            transactional_id,
            producer_id,
            producer_epoch,
            pairs(topics),
            Vec::new(),
            broker.now_ms(),
        );
        at_coordinator(broker, transactional_id, step).await
    };
    topic_results(broker, topics, result.err())
}

pub(super) async fn add_partitions(
    broker: &Arc<Broker>,
    req: AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    if version <= 3 {
        let results = add_one(
            broker,
            &req.v3_and_below_transactional_id.0,
            req.v3_and_below_producer_id.0,
            req.v3_and_below_producer_epoch,
            &req.v3_and_below_topics,
            false,
        )
        .await;
        return AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results);
    }
    let mut out = Vec::with_capacity(req.transactions.len());
    for t in &req.transactions {
        let results = add_one(
            broker,
            &t.transactional_id.0,
            t.producer_id.0,
            t.producer_epoch,
            &t.topics,
            t.verify_only,
        )
        .await;
        out.push(
            AddPartitionsToTxnResult::default()
                .with_transactional_id(t.transactional_id.clone())
                .with_topic_results(results),
        );
    }
    AddPartitionsToTxnResponse::default().with_results_by_transaction(out)
}

pub(super) async fn add_offsets(
    broker: &Arc<Broker>,
    req: AddOffsetsToTxnRequest,
) -> AddOffsetsToTxnResponse {
    let id = &req.transactional_id.0;
    let step = broker.txn.add(
        id,
        req.producer_id.0,
        req.producer_epoch,
        Vec::new(),
        vec![req.group_id.0.to_string()],
        broker.now_ms(),
    );
    let result = at_coordinator(broker, id, step).await;
    AddOffsetsToTxnResponse::default().with_error_code(result.err().map_or(0, |c| c.code()))
}

pub(super) async fn txn_offset_commit(
    broker: &Arc<Broker>,
    req: TxnOffsetCommitRequest,
    version: i16,
) -> TxnOffsetCommitResponse {
    let group = req.group_id.0.to_string();
    let now = broker.now_ms();
    let offsets: Vec<OffsetCommit> = req
        .topics
        .iter()
        .flat_map(|t| {
            let group = group.clone();
            t.partitions.iter().map(move |p| OffsetCommit {
                group: group.clone(),
                topic: t.name.0.to_string(),
                partition: p.partition_index,
                committed: CommittedOffset {
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: p
                        .committed_metadata
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_default(),
                    commit_timestamp_ms: now,
                },
                protocol_type: String::new(),
            })
        })
        .collect();
    let (id, pid, epoch) = (
        &req.transactional_id.0,
        req.producer_id.0,
        req.producer_epoch,
    );
    let step = async {
        if let Some(code) = broker.not_coordinator(&group) {
            return Err(code);
        }
        // v5 (transaction version 2): the group joins the transaction here, the producer
        // sends no AddOffsetsToTxn.
        if version >= 5 {
            let groups = vec![group.clone()];
            broker
                .txn
                .add(id, pid, epoch, Vec::new(), groups, now)
                .await?;
        }
        broker
            .txn
            .add_offsets(id, pid, epoch, &group, offsets)
            .await
    };
    let result = step.await;
    let code = result.err().map_or(0, |c| c.code());
    TxnOffsetCommitResponse::default().with_topics(
        req.topics
            .iter()
            .map(|t| {
                TxnOffsetCommitResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                TxnOffsetCommitResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// EndTxn; from v5 (KIP-890 transaction version 2) every end bumps the producer's epoch
/// and the answer carries the producer id and epoch to go on with.
pub(super) async fn end_txn(
    broker: &Arc<Broker>,
    req: EndTxnRequest,
    version: i16,
) -> EndTxnResponse {
    let id = &req.transactional_id.0;
    let given = (req.producer_id.0, req.producer_epoch);
    let step = broker.txn.end(
        id,
        given,
        req.committed,
        version >= 5,
        broker,
        broker.now_ms(),
    );
    let (code, (producer_id, producer_epoch)) = match at_coordinator(broker, id, step).await {
        Ok(next) => (0, next),
        Err(c) => (c.code(), (-1, -1)),
    };
    EndTxnResponse::default()
        .with_error_code(code)
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(producer_epoch)
}

pub(super) async fn write_txn_markers(
    broker: &Arc<Broker>,
    req: WriteTxnMarkersRequest,
) -> WriteTxnMarkersResponse {
    let mut out = Vec::with_capacity(req.markers.len());
    for m in req.markers {
        let marker = Marker {
            producer_id: m.producer_id.0,
            producer_epoch: m.producer_epoch,
            commit: m.transaction_result,
        };
        let mut topics = Vec::with_capacity(m.topics.len());
        for t in m.topics {
            let results = broker
                .write_local_markers(marker, &t.name.0, &t.partition_indexes)
                .await;
            topics.push(
                WritableTxnMarkerTopicResult::default()
                    .with_name(t.name)
                    .with_partitions(
                        results
                            .into_iter()
                            .map(|(p, r)| {
                                WritableTxnMarkerPartitionResult::default()
                                    .with_partition_index(p)
                                    .with_error_code(r.err().map_or(0, |c| c.code()))
                            })
                            .collect(),
                    ),
            );
        }
        out.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(m.producer_id)
                .with_topics(topics),
        );
    }
    WriteTxnMarkersResponse::default().with_markers(out)
}

fn described(id: &str, t: &TxnMeta) -> TransactionState {
    TransactionState::default()
        .with_transactional_id(TransactionalId(s(id)))
        .with_transaction_state(s(t.state.name()))
        .with_transaction_timeout_ms(t.timeout_ms)
        .with_transaction_start_time_ms(t.started_ms)
        .with_producer_id(ProducerId(t.producer_id))
        .with_producer_epoch(t.producer_epoch)
        .with_topics(
            t.partitions
                .iter()
                .map(|(topic, ps)| {
                    TopicData::default()
                        .with_topic(TopicName(s(topic)))
                        .with_partitions(ps.iter().copied().collect())
                })
                .collect(),
        )
}

pub(super) fn describe_transactions(
    broker: &Arc<Broker>,
    req: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let states = broker.meta.read(|st| {
        req.transactional_ids
            .iter()
            .map(|id| match st.transactions.get(id.0.as_str()) {
                Some(t) if broker.not_coordinator(&id.0).is_none() => described(&id.0, t),
                found => TransactionState::default()
                    .with_transactional_id(id.clone())
                    .with_error_code(
                        match (found, broker.not_coordinator(&id.0)) {
                            (_, Some(code)) => code,
                            _ => ResponseError::TransactionalIdNotFound,
                        }
                        .code(),
                    ),
            })
            .collect()
    });
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

pub(super) fn list_transactions(
    broker: &Arc<Broker>,
    req: ListTransactionsRequest,
) -> ListTransactionsResponse {
    let now = broker.now_ms();
    let known = [
        "Empty",
        "Ongoing",
        "PrepareCommit",
        "PrepareAbort",
        "CompleteCommit",
        "CompleteAbort",
    ];
    let unknown: Vec<StrBytes> = req
        .state_filters
        .iter()
        .filter(|f| !known.contains(&f.as_str()))
        .cloned()
        .collect();
    let listed = broker.meta.read(|st| {
        st.transactions
            .iter()
            .filter(|(id, _)| broker.not_coordinator(id).is_none())
            .filter(|(_, t)| {
                req.state_filters.is_empty()
                    || req
                        .state_filters
                        .iter()
                        .any(|f| f.as_str() == t.state.name())
            })
            .filter(|(_, t)| {
                req.producer_id_filters.is_empty()
                    || req.producer_id_filters.contains(&ProducerId(t.producer_id))
            })
            .filter(|(_, t)| {
                req.duration_filter < 0
                    || (t.started_ms >= 0 && now - t.started_ms >= req.duration_filter)
            })
            .map(|(id, t)| {
                ListedTransaction::default()
                    .with_transactional_id(TransactionalId(s(id)))
                    .with_producer_id(ProducerId(t.producer_id))
                    .with_transaction_state(s(t.state.name()))
            })
            .collect()
    });
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown)
        .with_transaction_states(listed)
}
