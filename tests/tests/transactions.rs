//! The broker's side of transactions over raw frames, where clients never go: a
//! transactional batch for a partition its transaction did not add is refused (KIP-890),
//! a fenced epoch is refused, and WriteTxnMarkers from an old epoch is refused; and
//! transaction version 2 (KIP-890 part 2), which none of the test clients speaks yet.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kafka_protocol::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use strata_e2e::{RawClient, Strata};
use strata_protocol::batch::{self, test_util};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn init(c: &mut RawClient, id: &str) -> (i64, i16) {
    let (code, producer) = init_from(c, id, (-1, -1));
    assert_eq!(code, 0);
    producer
}

/// InitProducerId for `id` by a client that has `(producer id, epoch)` already (KIP-360;
/// `(-1, -1)`: a new client). The error code and the producer id and epoch answered.
fn init_from(c: &mut RawClient, id: &str, (pid, epoch): (i64, i16)) -> (i16, (i64, i16)) {
    let req = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(s(id))))
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch);
    match c.request(ApiKey::InitProducerId, 4, &req) {
        ResponseKind::InitProducerId(r) => (r.error_code, (r.producer_id.0, r.producer_epoch)),
        other => panic!("{other:?}"),
    }
}

fn add(c: &mut RawClient, id: &str, (pid, epoch): (i64, i16), topic: &str, partition: i32) -> i16 {
    let req = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(s(id)))
        .with_v3_and_below_producer_id(ProducerId(pid))
        .with_v3_and_below_producer_epoch(epoch)
        .with_v3_and_below_topics(vec![
            add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partitions(vec![partition]),
        ]);
    match c.request(ApiKey::AddPartitionsToTxn, 3, &req) {
        ResponseKind::AddPartitionsToTxn(r) => {
            r.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code
        }
        other => panic!("{other:?}"),
    }
}

/// A transactional batch of `n` records from `producer`, starting at sequence `seq`.
fn txn_batch((pid, epoch): (i64, i16), seq: i32, n: usize) -> Vec<u8> {
    test_util::txn_batch(pid, epoch, seq, n)
}

#[test]
fn only_partitions_added_to_the_open_transaction_take_its_batches() {
    let broker = Strata::start();
    let mut c = RawClient::connect(broker.kafka);
    assert_eq!(c.create_topic("t", 2, 1, &[]), 0);
    let producer = init(&mut c, "raw-txn");

    // Nothing added yet: refused, and nothing is written.
    let (code, _) = c.produce_with("t", 0, txn_batch(producer, 0, 2), -1, 5000);
    assert_eq!(code, ResponseError::InvalidTxnState.code());
    assert_eq!(add(&mut c, "raw-txn", producer, "t", 0), 0);
    let (code, base) = c.produce_with("t", 0, txn_batch(producer, 0, 2), -1, 5000);
    assert_eq!((code, base), (0, 0));
    // DescribeProducers shows the open transaction's first offset.
    let describe = DescribeProducersRequest::default().with_topics(vec![
        describe_producers_request::TopicRequest::default()
            .with_name(TopicName(s("t")))
            .with_partition_indexes(vec![0]),
    ]);
    match c.request(ApiKey::DescribeProducers, 0, &describe) {
        ResponseKind::DescribeProducers(r) => {
            let active = &r.topics[0].partitions[0].active_producers;
            assert_eq!(active.len(), 1, "{active:?}");
            assert_eq!(active[0].current_txn_start_offset, 0);
        }
        other => panic!("{other:?}"),
    }
    // Partition 1 was not added to this transaction.
    let (code, _) = c.produce_with("t", 1, txn_batch(producer, 0, 2), -1, 5000);
    assert_eq!(code, ResponseError::InvalidTxnState.code());

    // A second instance fences the first: its epoch is refused from then on.
    let newer = init(&mut c, "raw-txn");
    assert_eq!(
        newer,
        (producer.0, producer.1 + 2),
        "abort bump, then init bump"
    );
    let (code, _) = c.produce_with("t", 0, txn_batch(producer, 2, 1), -1, 5000);
    assert_eq!(code, ResponseError::ProducerFenced.code());
    assert_eq!(
        add(&mut c, "raw-txn", producer, "t", 0),
        ResponseError::ProducerFenced.code()
    );
    // The old instance's transaction was aborted: a marker at offset 2 ends it.
    let fetched = c.fetch("t", 0, 0, 1 << 20);
    let headers: Vec<_> = batch::HeaderIter::new(fetched.records.as_deref().unwrap())
        .map(|(_, h)| (h.base_offset, h.is_control()))
        .collect();
    assert_eq!(headers, vec![(0, false), (2, true)]);

    // A marker from the fenced epoch is refused by the partition.
    let stale = WriteTxnMarkersRequest::default().with_markers(vec![
        write_txn_markers_request::WritableTxnMarker::default()
            .with_producer_id(ProducerId(producer.0))
            .with_producer_epoch(producer.1)
            .with_transaction_result(true)
            .with_topics(vec![
                write_txn_markers_request::WritableTxnMarkerTopic::default()
                    .with_name(TopicName(s("t")))
                    .with_partition_indexes(vec![0]),
            ]),
    ]);
    match c.request(ApiKey::WriteTxnMarkers, 1, &stale) {
        ResponseKind::WriteTxnMarkers(r) => assert_eq!(
            r.markers[0].topics[0].partitions[0].error_code,
            ResponseError::InvalidProducerEpoch.code()
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_client_bumping_its_epoch_may_retry_and_others_are_fenced() {
    let broker = Strata::start();
    let mut c = RawClient::connect(broker.kafka);
    let (pid, epoch) = init(&mut c, "bumper");
    // The client bumps its own epoch (KIP-360)...
    assert_eq!(
        init_from(&mut c, "bumper", (pid, epoch)),
        (0, (pid, epoch + 1))
    );
    // ...and, its answer lost, asks again with the epoch it had: the same answer.
    assert_eq!(
        init_from(&mut c, "bumper", (pid, epoch)),
        (0, (pid, epoch + 1))
    );
    assert_eq!(
        init_from(&mut c, "bumper", (pid, epoch + 1)),
        (0, (pid, epoch + 2))
    );
    // An epoch from before that is fenced; another producer id is not this id's.
    let fenced = ResponseError::ProducerFenced.code();
    assert_eq!(init_from(&mut c, "bumper", (pid, epoch)).0, fenced);
    let mapping = ResponseError::InvalidProducerIdMapping.code();
    assert_eq!(init_from(&mut c, "bumper", (pid + 1, epoch + 2)).0, mapping);
}

/// Produce v12 (transaction version 2) of `records` for `transactional_id`.
fn produce_v12(c: &mut RawClient, id: &str, partition: i32, records: Vec<u8>) -> i16 {
    use produce_request::{PartitionProduceData, TopicProduceData};
    let req = ProduceRequest::default()
        .with_transactional_id(Some(TransactionalId(s(id))))
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(s("t")))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(records.into())),
                ]),
        ]);
    match c.request(ApiKey::Produce, 12, &req) {
        ResponseKind::Produce(r) => r.responses[0].partition_responses[0].error_code,
        other => panic!("{other:?}"),
    }
}

/// EndTxn v5: the error code and the producer id and epoch to go on with.
fn end_v5(
    c: &mut RawClient,
    id: &str,
    (pid, epoch): (i64, i16),
    commit: bool,
) -> (i16, (i64, i16)) {
    let req = EndTxnRequest::default()
        .with_transactional_id(TransactionalId(s(id)))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_committed(commit);
    match c.request(ApiKey::EndTxn, 5, &req) {
        ResponseKind::EndTxn(r) => (r.error_code, (r.producer_id.0, r.producer_epoch)),
        other => panic!("{other:?}"),
    }
}

/// Records of partition `p` of `t` a read_committed consumer gets, from offset 0.
fn committed_records(c: &mut RawClient, p: i32) -> usize {
    use fetch_request::{FetchPartition, FetchTopic};
    let req = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_isolation_level(1)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(s("t")))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(p)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let r = match c.request(ApiKey::Fetch, 12, &req) {
        ResponseKind::Fetch(r) => r.responses[0].partitions[0].clone(),
        other => panic!("{other:?}"),
    };
    // As a client does: an aborted transaction's batches run from its first offset to its
    // producer's next control batch.
    let mut aborted: Vec<(i64, i64)> = r
        .aborted_transactions
        .unwrap_or_default()
        .iter()
        .map(|a| (a.first_offset, a.producer_id.0))
        .collect();
    aborted.sort();
    let mut aborting = std::collections::HashSet::new();
    let mut count = 0;
    for (_, h) in batch::HeaderIter::new(r.records.as_deref().unwrap_or_default()) {
        while let Some(&(first, pid)) = aborted.first().filter(|(first, _)| *first <= h.base_offset)
        {
            aborting.insert(pid);
            aborted.retain(|a| *a != (first, pid));
        }
        if h.is_control() {
            aborting.remove(&h.producer_id);
        } else if !aborting.contains(&h.producer_id) {
            count += h.last_offset_delta as usize + 1;
        }
    }
    count
}

#[test]
fn transaction_version_2_adds_partitions_with_produce_and_bumps_the_epoch_at_every_end() {
    let broker = Strata::start();
    let mut c = RawClient::connect(broker.kafka);
    let versions = ApiVersionsRequest::default()
        .with_client_software_name(s("raw"))
        .with_client_software_version(s("1"));
    match c.request(ApiKey::ApiVersions, 3, &versions) {
        ResponseKind::ApiVersions(r) => {
            let tv = r
                .finalized_features
                .iter()
                .find(|f| f.name.as_str() == "transaction.version");
            assert_eq!(tv.map(|f| f.max_version_level), Some(2), "{r:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.create_topic("t", 2, 1, &[]), 0);
    let first = init(&mut c, "tv2");

    // No AddPartitionsToTxn and no AddOffsetsToTxn: the batch and the offsets join.
    assert_eq!(produce_v12(&mut c, "tv2", 0, txn_batch(first, 0, 3)), 0);
    let offsets = TxnOffsetCommitRequest::default()
        .with_transactional_id(TransactionalId(s("tv2")))
        .with_group_id(GroupId(s("g")))
        .with_producer_id(ProducerId(first.0))
        .with_producer_epoch(first.1)
        .with_generation_id(-1)
        .with_topics(vec![
            txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                .with_name(TopicName(s("t")))
                .with_partitions(vec![
                    txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                        .with_partition_index(1)
                        .with_committed_offset(42),
                ]),
        ]);
    match c.request(ApiKey::TxnOffsetCommit, 5, &offsets) {
        ResponseKind::TxnOffsetCommit(r) => {
            assert_eq!(r.topics[0].partitions[0].error_code, 0, "{r:?}")
        }
        other => panic!("{other:?}"),
    }

    // The commit bumps the epoch; a retry from the old one gets the same answer.
    let second = (first.0, first.1 + 1);
    assert_eq!(end_v5(&mut c, "tv2", first, true), (0, second));
    assert_eq!(end_v5(&mut c, "tv2", first, true), (0, second));
    assert_eq!(committed_records(&mut c, 0), 3);
    let fetch = OffsetFetchRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_topics(Some(vec![
            offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(TopicName(s("t")))
                .with_partition_indexes(vec![1]),
        ]));
    match c.request(ApiKey::OffsetFetch, 7, &fetch) {
        ResponseKind::OffsetFetch(r) => {
            assert_eq!(r.topics[0].partitions[0].committed_offset, 42);
        }
        other => panic!("{other:?}"),
    }

    // A batch of the ended transaction arriving late cannot start or join another one:
    // the hanging transaction KIP-890 is about (an abortable error for the producer).
    assert_eq!(
        produce_v12(&mut c, "tv2", 1, txn_batch(first, 3, 1)),
        ResponseError::InvalidProducerEpoch.code()
    );

    // The next transaction goes on at the new epoch, from sequence 0, and aborts.
    assert_eq!(produce_v12(&mut c, "tv2", 0, txn_batch(second, 0, 2)), 0);
    assert_eq!(
        end_v5(&mut c, "tv2", second, false),
        (0, (first.0, first.1 + 2))
    );
    assert_eq!(
        committed_records(&mut c, 0),
        3,
        "the aborted records stay hidden"
    );
    let fenced = ResponseError::ProducerFenced.code();
    assert_eq!(end_v5(&mut c, "tv2", first, true).0, fenced);
    // An abort with nothing sent still moves the epoch on (the client may have begun a
    // transaction whose records it dropped).
    let third = (first.0, first.1 + 2);
    assert_eq!(
        end_v5(&mut c, "tv2", third, false),
        (0, (first.0, first.1 + 3))
    );
}
