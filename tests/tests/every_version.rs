//! Every API at every version the broker advertises answers a valid request with a
//! response that decodes at that version. Catches fields set for versions that lack them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use strata_e2e::{Options, RawClient, Strata, now_ms};
use strata_protocol::batch::test_util::simple_batch;
use uuid::Uuid;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// A valid request of `api` at `version`, about `topic` (whose id is `id`).
/// The transactional id the transaction APIs' samples use, and its producer id and
/// epoch (set up by the test before they are sent).
const TXN_ID: &str = "every-txn";
static TXN_PRODUCER: std::sync::OnceLock<(i64, i16)> = std::sync::OnceLock::new();

fn txn_producer() -> (ProducerId, i16) {
    let (id, epoch) = TXN_PRODUCER.get().copied().unwrap_or((-1, -1));
    (ProducerId(id), epoch)
}

fn sample(api: ApiKey, version: i16, topic: &str, id: Uuid) -> RequestKind {
    match api {
        ApiKey::ApiVersions => RequestKind::ApiVersions(
            ApiVersionsRequest::default()
                .with_client_software_name(s("e2e"))
                .with_client_software_version(s("1")),
        ),
        ApiKey::Metadata => {
            RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default()
                    .with_name(Some(name(topic)))
                    .with_topic_id(if version >= 10 { id } else { Uuid::nil() }),
            ])))
        }
        ApiKey::CreateTopics => RequestKind::CreateTopics(
            CreateTopicsRequest::default()
                .with_topics(vec![
                    CreatableTopic::default()
                        .with_name(name(&format!("created-v{version}")))
                        .with_num_partitions(2)
                        .with_replication_factor(1),
                ])
                .with_timeout_ms(5000),
        ),
        ApiKey::DeleteTopics => {
            // DeleteTopics v1..=6 removes what CreateTopics v2..=7 made.
            let victim = format!("created-v{}", version + 1);
            let req = if version >= 6 {
                DeleteTopicsRequest::default().with_topics(vec![
                    DeleteTopicState::default().with_name(Some(name(&victim))),
                ])
            } else {
                DeleteTopicsRequest::default().with_topic_names(vec![name(&victim)])
            };
            RequestKind::DeleteTopics(req.with_timeout_ms(5000))
        }
        ApiKey::Produce => RequestKind::Produce(
            ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(5000)
                .with_topic_data(vec![
                    TopicProduceData::default()
                        .with_name(name(topic))
                        .with_partition_data(vec![
                            PartitionProduceData::default()
                                .with_index(0)
                                .with_records(Some(Bytes::from(simple_batch(2, now_ms())))),
                        ]),
                ]),
        ),
        ApiKey::Fetch => RequestKind::Fetch(
            FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(10)
                .with_max_bytes(1 << 20)
                .with_session_epoch(-1)
                .with_topics(vec![
                    FetchTopic::default()
                        .with_topic(if version < 13 {
                            name(topic)
                        } else {
                            TopicName::default()
                        })
                        .with_topic_id(if version >= 13 { id } else { Uuid::nil() })
                        .with_partitions(vec![
                            FetchPartition::default()
                                .with_partition(0)
                                .with_fetch_offset(0)
                                .with_partition_max_bytes(1 << 20),
                        ]),
                ]),
        ),
        ApiKey::ListOffsets => RequestKind::ListOffsets(
            ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![
                    ListOffsetsTopic::default()
                        .with_name(name(topic))
                        .with_partitions(vec![
                            ListOffsetsPartition::default()
                                .with_partition_index(0)
                                .with_timestamp(-1),
                        ]),
                ]),
        ),
        ApiKey::DescribeConfigs => RequestKind::DescribeConfigs(
            DescribeConfigsRequest::default()
                .with_include_synonyms(true)
                .with_include_documentation(version >= 3)
                .with_resources(vec![
                    DescribeConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(s(topic)),
                    DescribeConfigsResource::default()
                        .with_resource_type(4)
                        .with_resource_name(s("0")),
                ]),
        ),
        ApiKey::FindCoordinator if version >= 4 => RequestKind::FindCoordinator(
            FindCoordinatorRequest::default().with_coordinator_keys(vec![s("grp")]),
        ),
        ApiKey::FindCoordinator => {
            RequestKind::FindCoordinator(FindCoordinatorRequest::default().with_key(s("grp")))
        }
        ApiKey::JoinGroup => RequestKind::JoinGroup(
            JoinGroupRequest::default()
                .with_group_id(GroupId(s(&format!("join-v{version}"))))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(if version >= 1 { 10_000 } else { -1 })
                .with_protocol_type(s("consumer"))
                .with_protocols(vec![
                    join_group_request::JoinGroupRequestProtocol::default()
                        .with_name(s("range"))
                        .with_metadata(Bytes::from_static(b"\x00\x00\x00\x00\x00\x00")),
                ]),
        ),
        ApiKey::SyncGroup => RequestKind::SyncGroup(
            SyncGroupRequest::default()
                .with_group_id(GroupId(s("nobody")))
                .with_generation_id(1)
                .with_member_id(s("m")),
        ),
        ApiKey::Heartbeat => RequestKind::Heartbeat(
            HeartbeatRequest::default()
                .with_group_id(GroupId(s("nobody")))
                .with_generation_id(1)
                .with_member_id(s("m")),
        ),
        ApiKey::LeaveGroup if version >= 3 => RequestKind::LeaveGroup(
            LeaveGroupRequest::default()
                .with_group_id(GroupId(s("nobody")))
                .with_members(vec![
                    leave_group_request::MemberIdentity::default().with_member_id(s("m")),
                ]),
        ),
        ApiKey::LeaveGroup => RequestKind::LeaveGroup(
            LeaveGroupRequest::default()
                .with_group_id(GroupId(s("nobody")))
                .with_member_id(s("m")),
        ),
        ApiKey::OffsetCommit => RequestKind::OffsetCommit(
            OffsetCommitRequest::default()
                .with_group_id(GroupId(s(&format!("commit-v{version}"))))
                .with_generation_id_or_member_epoch(-1)
                .with_retention_time_ms(-1)
                .with_topics(vec![
                    offset_commit_request::OffsetCommitRequestTopic::default()
                        .with_name(name(topic))
                        .with_partitions(vec![
                            offset_commit_request::OffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(1)
                                .with_committed_metadata(Some(s("meta"))),
                        ]),
                ]),
        ),
        ApiKey::OffsetFetch if version >= 8 => {
            RequestKind::OffsetFetch(OffsetFetchRequest::default().with_groups(vec![
            offset_fetch_request::OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(s("commit-v2")))
                .with_topics(None),
        ]))
        }
        ApiKey::OffsetFetch => RequestKind::OffsetFetch(
            OffsetFetchRequest::default()
                .with_group_id(GroupId(s("commit-v2")))
                .with_topics(Some(vec![
                    offset_fetch_request::OffsetFetchRequestTopic::default()
                        .with_name(name(topic))
                        .with_partition_indexes(vec![0]),
                ])),
        ),
        ApiKey::DescribeGroups => RequestKind::DescribeGroups(
            DescribeGroupsRequest::default().with_groups(vec![GroupId(s("commit-v2"))]),
        ),
        ApiKey::ListGroups => RequestKind::ListGroups(ListGroupsRequest::default()),
        ApiKey::OffsetDelete => RequestKind::OffsetDelete(
            OffsetDeleteRequest::default()
                .with_group_id(GroupId(s("commit-v3")))
                .with_topics(vec![
                    offset_delete_request::OffsetDeleteRequestTopic::default()
                        .with_name(name(topic))
                        .with_partitions(vec![
                            offset_delete_request::OffsetDeleteRequestPartition::default()
                                .with_partition_index(0),
                        ]),
                ]),
        ),
        // DeleteGroups v0..=2 removes the groups OffsetCommit v4..=6 created.
        ApiKey::DeleteGroups => RequestKind::DeleteGroups(
            DeleteGroupsRequest::default()
                .with_groups_names(vec![GroupId(s(&format!("commit-v{}", version + 4)))]),
        ),
        ApiKey::InitProducerId => RequestKind::InitProducerId(
            InitProducerIdRequest::default()
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        ),
        ApiKey::DescribeProducers => {
            RequestKind::DescribeProducers(DescribeProducersRequest::default().with_topics(vec![
            describe_producers_request::TopicRequest::default()
                .with_name(name(topic))
                .with_partition_indexes(vec![0]),
        ]))
        }
        ApiKey::OffsetForLeaderEpoch => RequestKind::OffsetForLeaderEpoch(
            OffsetForLeaderEpochRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![
                    offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                        .with_topic(name(topic))
                        .with_partitions(vec![
                            offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                                .with_partition(0)
                                .with_current_leader_epoch(-1)
                                .with_leader_epoch(0),
                        ]),
                ]),
        ),
        ApiKey::DescribeLogDirs => {
            RequestKind::DescribeLogDirs(DescribeLogDirsRequest::default().with_topics(None))
        }
        ApiKey::ElectLeaders => RequestKind::ElectLeaders(
            ElectLeadersRequest::default().with_topic_partitions(Some(vec![
                elect_leaders_request::TopicPartitions::default()
                    .with_topic(name(topic))
                    .with_partitions(vec![0]),
            ])),
        ),
        ApiKey::DescribeCluster => {
            RequestKind::DescribeCluster(DescribeClusterRequest::default().with_endpoint_type(1))
        }
        ApiKey::AlterConfigs => {
            RequestKind::AlterConfigs(AlterConfigsRequest::default().with_resources(vec![
            alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s(topic))
                .with_configs(vec![
                    alter_configs_request::AlterableConfig::default()
                        .with_name(s("retention.ms"))
                        .with_value(Some(s("3600000"))),
                ]),
        ]))
        }
        ApiKey::IncrementalAlterConfigs => RequestKind::IncrementalAlterConfigs(
            IncrementalAlterConfigsRequest::default().with_resources(vec![
                incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s(topic))
                    .with_configs(vec![
                        incremental_alter_configs_request::AlterableConfig::default()
                            .with_name(s("retention.bytes"))
                            .with_config_operation(0)
                            .with_value(Some(s("1000000000"))),
                    ]),
            ]),
        ),
        ApiKey::CreatePartitions => RequestKind::CreatePartitions(
            CreatePartitionsRequest::default()
                .with_timeout_ms(5000)
                .with_topics(vec![
                    create_partitions_request::CreatePartitionsTopic::default()
                        .with_name(name(topic))
                        .with_count(2 + i32::from(version)),
                ]),
        ),
        // v0, v1, v2 delete up to offsets 1, 2, 3.
        ApiKey::DeleteRecords => RequestKind::DeleteRecords(
            DeleteRecordsRequest::default()
                .with_timeout_ms(5000)
                .with_topics(vec![
                    delete_records_request::DeleteRecordsTopic::default()
                        .with_name(name(topic))
                        .with_partitions(vec![
                            delete_records_request::DeleteRecordsPartition::default()
                                .with_partition_index(0)
                                .with_offset(1 + i64::from(version)),
                        ]),
                ]),
        ),
        // The transaction APIs, in this order: partitions and a group are added (v4+:
        // checked, as brokers do), offsets recorded, the transaction committed (then
        // committed again: retries are accepted), a marker written, the id described
        // and listed.
        ApiKey::AddPartitionsToTxn => {
            let (pid, epoch) = txn_producer();
            let topics = vec![
                add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                    .with_name(name(topic))
                    .with_partitions(vec![0]),
            ];
            RequestKind::AddPartitionsToTxn(if version <= 3 {
                AddPartitionsToTxnRequest::default()
                    .with_v3_and_below_transactional_id(TransactionalId(s(TXN_ID)))
                    .with_v3_and_below_producer_id(pid)
                    .with_v3_and_below_producer_epoch(epoch)
                    .with_v3_and_below_topics(topics)
            } else {
                AddPartitionsToTxnRequest::default().with_transactions(vec![
                    add_partitions_to_txn_request::AddPartitionsToTxnTransaction::default()
                        .with_transactional_id(TransactionalId(s(TXN_ID)))
                        .with_producer_id(pid)
                        .with_producer_epoch(epoch)
                        .with_verify_only(true)
                        .with_topics(topics),
                ])
            })
        }
        ApiKey::AddOffsetsToTxn => {
            let (pid, epoch) = txn_producer();
            RequestKind::AddOffsetsToTxn(
                AddOffsetsToTxnRequest::default()
                    .with_transactional_id(TransactionalId(s(TXN_ID)))
                    .with_producer_id(pid)
                    .with_producer_epoch(epoch)
                    .with_group_id(GroupId(s("txn-group"))),
            )
        }
        ApiKey::TxnOffsetCommit => {
            let (pid, epoch) = txn_producer();
            RequestKind::TxnOffsetCommit(
                TxnOffsetCommitRequest::default()
                    .with_transactional_id(TransactionalId(s(TXN_ID)))
                    .with_group_id(GroupId(s("txn-group")))
                    .with_producer_id(pid)
                    .with_producer_epoch(epoch)
                    .with_generation_id(-1)
                    .with_topics(vec![
                        txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                            .with_name(name(topic))
                            .with_partitions(vec![
                                txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                                    .with_partition_index(0)
                                    .with_committed_offset(1 + i64::from(version)),
                            ]),
                    ]),
            )
        }
        ApiKey::EndTxn => {
            let (pid, epoch) = txn_producer();
            RequestKind::EndTxn(
                EndTxnRequest::default()
                    .with_transactional_id(TransactionalId(s(TXN_ID)))
                    .with_producer_id(pid)
                    .with_producer_epoch(epoch)
                    .with_committed(true),
            )
        }
        ApiKey::WriteTxnMarkers => {
            let (pid, epoch) = txn_producer();
            RequestKind::WriteTxnMarkers(WriteTxnMarkersRequest::default().with_markers(vec![
                write_txn_markers_request::WritableTxnMarker::default()
                    .with_producer_id(pid)
                    .with_producer_epoch(epoch)
                    .with_transaction_result(false)
                    .with_topics(vec![
                        write_txn_markers_request::WritableTxnMarkerTopic::default()
                            .with_name(name(topic))
                            .with_partition_indexes(vec![0]),
                    ]),
            ]))
        }
        ApiKey::DescribeTransactions => RequestKind::DescribeTransactions(
            DescribeTransactionsRequest::default()
                .with_transactional_ids(vec![TransactionalId(s(TXN_ID))]),
        ),
        ApiKey::ListTransactions => RequestKind::ListTransactions(
            ListTransactionsRequest::default().with_duration_filter(-1),
        ),
        ApiKey::SaslHandshake => RequestKind::SaslHandshake(
            SaslHandshakeRequest::default().with_mechanism(s("SCRAM-SHA-256")),
        ),
        ApiKey::SaslAuthenticate => RequestKind::SaslAuthenticate(
            SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"n,,n=u,r=x")),
        ),
        ApiKey::DescribeUserScramCredentials => {
            RequestKind::DescribeUserScramCredentials(DescribeUserScramCredentialsRequest::default())
        }
        ApiKey::AlterUserScramCredentials => RequestKind::AlterUserScramCredentials(
            AlterUserScramCredentialsRequest::default().with_upsertions(vec![
                alter_user_scram_credentials_request::ScramCredentialUpsertion::default()
                    .with_name(s("every-user"))
                    .with_mechanism(1)
                    .with_iterations(4096)
                    .with_salt(Bytes::from_static(b"salt"))
                    .with_salted_password(Bytes::from(vec![7u8; 32])),
            ]),
        ),
        ApiKey::CreateAcls => {
            RequestKind::CreateAcls(CreateAclsRequest::default().with_creations(vec![
            create_acls_request::AclCreation::default()
                .with_resource_type(2)
                .with_resource_name(s(topic))
                .with_resource_pattern_type(3)
                .with_principal(s("User:alice"))
                .with_host(s("*"))
                .with_operation(3)
                .with_permission_type(3),
        ]))
        }
        ApiKey::DescribeAcls => RequestKind::DescribeAcls(
            DescribeAclsRequest::default()
                .with_resource_type_filter(1)
                .with_pattern_type_filter(1)
                .with_operation(1)
                .with_permission_type(1),
        ),
        ApiKey::DeleteAcls => {
            RequestKind::DeleteAcls(DeleteAclsRequest::default().with_filters(vec![
            delete_acls_request::DeleteAclsFilter::default()
                .with_resource_type_filter(1)
                .with_pattern_type_filter(1)
                .with_operation(1)
                .with_permission_type(1),
        ]))
        }
        other => panic!("the broker advertises {other:?}: add a sample request for it here"),
    }
}

/// Error codes in a response that would mean the request was not served.
fn check(resp: &ResponseKind, api: ApiKey, version: i16) {
    let ctx = format!("{api:?} v{version}");
    match resp {
        ResponseKind::ApiVersions(r) => assert_eq!(r.error_code, 0, "{ctx}"),
        ResponseKind::Metadata(r) => {
            assert_eq!(r.topics.len(), 1, "{ctx}");
            assert_eq!(r.topics[0].error_code, 0, "{ctx}");
            assert_eq!(r.topics[0].partitions.len(), 1, "{ctx}");
            assert_eq!(r.brokers.len(), 1, "{ctx}");
        }
        ResponseKind::CreateTopics(r) => assert_eq!(r.topics[0].error_code, 0, "{ctx}"),
        ResponseKind::DeleteTopics(r) => assert_eq!(r.responses[0].error_code, 0, "{ctx}"),
        ResponseKind::Produce(r) => {
            let p = &r.responses[0].partition_responses[0];
            assert_eq!(p.error_code, 0, "{ctx}");
            assert!(p.base_offset >= 0, "{ctx}");
        }
        ResponseKind::Fetch(r) => {
            assert_eq!(r.error_code, 0, "{ctx}");
            let p = &r.responses[0].partitions[0];
            assert_eq!(p.error_code, 0, "{ctx}");
            assert!(p.high_watermark > 0, "{ctx}");
            assert!(!p.records.as_ref().unwrap().is_empty(), "{ctx}");
        }
        ResponseKind::ListOffsets(r) => {
            let p = &r.topics[0].partitions[0];
            assert_eq!(p.error_code, 0, "{ctx}");
            assert!(p.offset > 0, "{ctx}");
        }
        ResponseKind::DescribeConfigs(r) => {
            assert_eq!(r.results.len(), 2, "{ctx}");
            for res in &r.results {
                assert_eq!(res.error_code, 0, "{ctx}");
                assert!(!res.configs.is_empty(), "{ctx}");
            }
        }
        ResponseKind::FindCoordinator(r) if version >= 4 => {
            assert_eq!(r.coordinators.len(), 1, "{ctx}");
            assert_eq!(r.coordinators[0].error_code, 0, "{ctx}");
            assert_eq!(r.coordinators[0].node_id.0, 0, "{ctx}");
        }
        ResponseKind::FindCoordinator(r) => {
            assert_eq!(r.error_code, 0, "{ctx}");
            assert!(r.port > 0, "{ctx}");
        }
        ResponseKind::JoinGroup(r) if version >= 4 => {
            assert_eq!(
                r.error_code,
                ResponseError::MemberIdRequired.code(),
                "{ctx}"
            );
            assert!(!r.member_id.is_empty(), "{ctx}");
        }
        ResponseKind::JoinGroup(r) => {
            assert_eq!(r.error_code, 0, "{ctx}");
            assert_eq!(r.generation_id, 1, "{ctx}");
            assert_eq!(r.leader, r.member_id, "{ctx}: the only member leads");
            assert_eq!(r.members.len(), 1, "{ctx}");
        }
        ResponseKind::SyncGroup(r) => {
            assert_eq!(r.error_code, ResponseError::UnknownMemberId.code(), "{ctx}")
        }
        ResponseKind::Heartbeat(r) => {
            assert_eq!(r.error_code, ResponseError::UnknownMemberId.code(), "{ctx}")
        }
        // An unknown group: v3+ answers per member (the request itself is fine), as Kafka.
        ResponseKind::LeaveGroup(r) if version >= 3 => {
            assert_eq!(r.error_code, 0, "{ctx}");
            assert_eq!(r.members.len(), 1, "{ctx}");
            assert_eq!(
                r.members[0].error_code,
                ResponseError::UnknownMemberId.code(),
                "{ctx}"
            );
        }
        ResponseKind::LeaveGroup(r) => {
            assert_eq!(r.error_code, ResponseError::UnknownMemberId.code(), "{ctx}")
        }
        ResponseKind::OffsetCommit(r) => {
            assert_eq!(r.topics[0].partitions[0].error_code, 0, "{ctx}")
        }
        ResponseKind::OffsetFetch(r) if version >= 8 => {
            assert_eq!(r.groups[0].error_code, 0, "{ctx}");
            assert_eq!(
                r.groups[0].topics[0].partitions[0].committed_offset, 1,
                "{ctx}"
            );
            assert_eq!(
                r.groups[0].topics[0].partitions[0].metadata.as_deref(),
                Some("meta"),
                "{ctx}"
            );
        }
        ResponseKind::OffsetFetch(r) => {
            assert_eq!(r.topics[0].partitions[0].error_code, 0, "{ctx}");
            assert_eq!(r.topics[0].partitions[0].committed_offset, 1, "{ctx}");
        }
        ResponseKind::DescribeGroups(r) => {
            assert_eq!(r.groups[0].error_code, 0, "{ctx}");
            assert_eq!(r.groups[0].group_state.as_str(), "Empty", "{ctx}");
        }
        ResponseKind::ListGroups(r) => {
            assert_eq!(r.error_code, 0, "{ctx}");
            assert!(
                r.groups.iter().any(|g| g.group_id.as_str() == "commit-v2"),
                "{ctx}"
            );
        }
        ResponseKind::OffsetDelete(r) => {
            assert_eq!(r.error_code, 0, "{ctx}");
            assert_eq!(r.topics[0].partitions[0].error_code, 0, "{ctx}");
        }
        ResponseKind::DeleteGroups(r) => assert_eq!(r.results[0].error_code, 0, "{ctx}"),
        ResponseKind::InitProducerId(r) => {
            assert_eq!(r.error_code, 0, "{ctx}");
            assert!(r.producer_id.0 >= 0, "{ctx}");
            assert_eq!(r.producer_epoch, 0, "{ctx}");
        }
        ResponseKind::DescribeProducers(r) => {
            assert_eq!(r.topics[0].partitions[0].error_code, 0, "{ctx}")
        }
        ResponseKind::OffsetForLeaderEpoch(r) => {
            let p = &r.topics[0].partitions[0];
            assert_eq!(p.error_code, 0, "{ctx}");
            assert!(p.end_offset > 0, "{ctx}");
        }
        ResponseKind::DescribeLogDirs(r) => {
            assert_eq!(r.results.len(), 1, "{ctx}");
            assert_eq!(r.results[0].error_code, 0, "{ctx}");
            assert!(!r.results[0].topics.is_empty(), "{ctx}");
        }
        ResponseKind::ElectLeaders(r) => {
            // One broker: the preferred replica leads already.
            let p = &r.replica_election_results[0].partition_result[0];
            assert_eq!(
                p.error_code,
                ResponseError::ElectionNotNeeded.code(),
                "{ctx}"
            );
        }
        ResponseKind::DescribeCluster(r) => {
            assert_eq!(r.error_code, 0, "{ctx}");
            assert_eq!(r.brokers.len(), 1, "{ctx}");
        }
        ResponseKind::AlterConfigs(r) => assert_eq!(r.responses[0].error_code, 0, "{ctx}"),
        ResponseKind::IncrementalAlterConfigs(r) => {
            assert_eq!(r.responses[0].error_code, 0, "{ctx}")
        }
        ResponseKind::CreatePartitions(r) => assert_eq!(r.results[0].error_code, 0, "{ctx}"),
        ResponseKind::DeleteRecords(r) => {
            let p = &r.topics[0].partitions[0];
            assert_eq!(p.error_code, 0, "{ctx}");
            assert_eq!(p.low_watermark, 1 + i64::from(version), "{ctx}");
        }
        ResponseKind::AddPartitionsToTxn(r) if version >= 4 => {
            let t = &r.results_by_transaction[0].topic_results[0];
            assert_eq!(t.results_by_partition[0].partition_error_code, 0, "{ctx}");
        }
        ResponseKind::AddPartitionsToTxn(r) => {
            let t = &r.results_by_topic_v3_and_below[0];
            assert_eq!(t.results_by_partition[0].partition_error_code, 0, "{ctx}");
        }
        ResponseKind::AddOffsetsToTxn(r) => assert_eq!(r.error_code, 0, "{ctx}"),
        ResponseKind::TxnOffsetCommit(r) => {
            assert_eq!(r.topics[0].partitions[0].error_code, 0, "{ctx}")
        }
        ResponseKind::EndTxn(r) => assert_eq!(r.error_code, 0, "{ctx}"),
        ResponseKind::WriteTxnMarkers(r) => {
            assert_eq!(r.markers[0].topics[0].partitions[0].error_code, 0, "{ctx}")
        }
        ResponseKind::DescribeTransactions(r) => {
            let t = &r.transaction_states[0];
            assert_eq!(t.error_code, 0, "{ctx}");
            assert_eq!(t.transaction_state.as_str(), "CompleteCommit", "{ctx}");
        }
        ResponseKind::ListTransactions(r) => {
            assert_eq!(r.error_code, 0, "{ctx}");
            assert!(
                r.transaction_states
                    .iter()
                    .any(|t| t.transactional_id.as_str() == TXN_ID),
                "{ctx}"
            );
        }
        // This listener is PLAINTEXT: Kafka answers the SASL APIs with ILLEGAL_SASL_STATE
        // (and keeps the connection) there.
        ResponseKind::SaslHandshake(r) => {
            assert_eq!(
                r.error_code,
                ResponseError::IllegalSaslState.code(),
                "{ctx}"
            );
            assert!(!r.mechanisms.is_empty(), "{ctx}");
        }
        ResponseKind::SaslAuthenticate(r) => {
            assert_eq!(
                r.error_code,
                ResponseError::IllegalSaslState.code(),
                "{ctx}"
            )
        }
        ResponseKind::DescribeUserScramCredentials(r) => {
            assert_eq!(r.error_code, 0, "{ctx}");
            assert!(
                r.results.iter().any(|u| u.user.as_str() == "every-user"),
                "{ctx}"
            );
        }
        ResponseKind::AlterUserScramCredentials(r) => {
            assert_eq!(r.results.len(), 1, "{ctx}");
            assert_eq!(r.results[0].error_code, 0, "{ctx}");
        }
        // No authorizer here: Kafka's answer is SECURITY_DISABLED.
        ResponseKind::CreateAcls(r) => {
            assert_eq!(
                r.results[0].error_code,
                ResponseError::SecurityDisabled.code(),
                "{ctx}"
            )
        }
        ResponseKind::DescribeAcls(r) => {
            assert_eq!(
                r.error_code,
                ResponseError::SecurityDisabled.code(),
                "{ctx}"
            )
        }
        ResponseKind::DeleteAcls(r) => assert_eq!(
            r.filter_results[0].error_code,
            ResponseError::SecurityDisabled.code(),
            "{ctx}"
        ),
        other => panic!("{ctx}: unexpected {other:?}"),
    }
}

#[test]
fn every_advertised_version_answers() {
    // No initial rebalance delay: a lone JoinGroup completes at once.
    let broker = Strata::with(Options {
        env: vec![(
            "STRATA_KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS".into(),
            "0".into(),
        )],
        ..Options::default()
    });
    let mut c = RawClient::connect(broker.kafka);
    let ResponseKind::ApiVersions(versions) = c.request(
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default()
            .with_client_software_name(s("e2e"))
            .with_client_software_version(s("1")),
    ) else {
        panic!()
    };
    // A topic every request can talk about, with data in it.
    let id = create_every(&mut c);
    // A transactional producer for the transaction APIs.
    let ResponseKind::InitProducerId(init) = c.request(
        ApiKey::InitProducerId,
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(s(TXN_ID))))
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    ) else {
        panic!()
    };
    assert_eq!(init.error_code, 0);
    TXN_PRODUCER
        .set((init.producer_id.0, init.producer_epoch))
        .unwrap();
    // Produce first so that fetches and offset lookups have data; create before delete.
    let order = [
        ApiKey::ApiVersions,
        ApiKey::Produce,
        ApiKey::Metadata,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::DescribeConfigs,
        ApiKey::CreateTopics,
        ApiKey::DeleteTopics,
        ApiKey::FindCoordinator,
        ApiKey::JoinGroup,
        ApiKey::SyncGroup,
        ApiKey::Heartbeat,
        ApiKey::LeaveGroup,
        ApiKey::OffsetCommit,
        ApiKey::OffsetFetch,
        ApiKey::DescribeGroups,
        ApiKey::ListGroups,
        ApiKey::OffsetDelete,
        ApiKey::DeleteGroups,
        ApiKey::InitProducerId,
        ApiKey::DescribeProducers,
        ApiKey::OffsetForLeaderEpoch,
        ApiKey::DescribeLogDirs,
        ApiKey::DescribeCluster,
        ApiKey::ElectLeaders,
        ApiKey::AlterConfigs,
        ApiKey::IncrementalAlterConfigs,
        ApiKey::AddPartitionsToTxn,
        ApiKey::AddOffsetsToTxn,
        ApiKey::TxnOffsetCommit,
        ApiKey::EndTxn,
        ApiKey::WriteTxnMarkers,
        ApiKey::DescribeTransactions,
        ApiKey::ListTransactions,
        ApiKey::CreatePartitions,
        ApiKey::DeleteRecords,
        ApiKey::SaslHandshake,
        ApiKey::SaslAuthenticate,
        ApiKey::AlterUserScramCredentials,
        ApiKey::DescribeUserScramCredentials,
        ApiKey::CreateAcls,
        ApiKey::DescribeAcls,
        ApiKey::DeleteAcls,
    ];
    let mut advertised: Vec<ApiKey> = versions
        .api_keys
        .iter()
        .map(|k| ApiKey::try_from(k.api_key).unwrap())
        .collect();
    let advertised_count = advertised.len();
    advertised.sort_by_key(|k| order.iter().position(|o| o == k).unwrap_or(usize::MAX));
    let mut served = 0;
    for api in advertised {
        let range = versions
            .api_keys
            .iter()
            .find(|k| k.api_key == api as i16)
            .unwrap();
        for version in range.min_version..=range.max_version {
            let resp = c.request_kind(version, &sample(api, version, "every", id));
            check(&resp, api, version);
            served += 1;
        }
    }
    assert!(served > 100, "only {served} api versions were exercised");
    assert!(
        order.len() >= advertised_count,
        "every advertised API has a place in the order"
    );
}

fn commit_offsets(c: &mut RawClient, group: &str, topic: &str, offsets: &[(i32, i64)]) {
    use offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
    let req = OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            OffsetCommitRequestTopic::default()
                .with_name(name(topic))
                .with_partitions(
                    offsets
                        .iter()
                        .map(|&(p, o)| {
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(o)
                        })
                        .collect(),
                ),
        ]);
    match c.request(ApiKey::OffsetCommit, 8, &req) {
        ResponseKind::OffsetCommit(r) => {
            for p in &r.topics[0].partitions {
                assert_eq!(p.error_code, 0, "{group}: {p:?}");
            }
        }
        other => panic!("{other:?}"),
    }
}

/// The batched forms (FindCoordinator v4, OffsetFetch v8+) answer every entry of the
/// request, each on its own.
#[test]
fn batched_group_requests_answer_each_entry() {
    let broker = Strata::start();
    let mut c = RawClient::connect(broker.kafka);
    assert_eq!(c.create_topic("bt", 2, 1, &[]), 0);
    commit_offsets(&mut c, "g1", "bt", &[(0, 11), (1, 12)]);
    commit_offsets(&mut c, "g2", "bt", &[(0, 21)]);

    use offset_fetch_request::{OffsetFetchRequestGroup, OffsetFetchRequestTopics};
    let req = OffsetFetchRequest::default().with_groups(vec![
        OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(s("g1")))
            .with_topics(None),
        OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(s("g2")))
            .with_topics(Some(vec![
                OffsetFetchRequestTopics::default()
                    .with_name(name("bt"))
                    .with_partition_indexes(vec![0, 1]),
            ])),
        OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(s("g3")))
            .with_topics(None),
    ]);
    let ResponseKind::OffsetFetch(r) = c.request(ApiKey::OffsetFetch, 8, &req) else {
        panic!("not an OffsetFetch response")
    };
    // (group, error, [(partition, committed offset)])
    type Fetched = Vec<(String, i16, Vec<(i32, i64)>)>;
    let got: Fetched = r
        .groups
        .iter()
        .map(|g| {
            let mut parts: Vec<(i32, i64)> = g
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter())
                .map(|p| (p.partition_index, p.committed_offset))
                .collect();
            parts.sort();
            (g.group_id.to_string(), g.error_code, parts)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("g1".to_string(), 0, vec![(0, 11), (1, 12)]),
            ("g2".to_string(), 0, vec![(0, 21), (1, -1)]),
            ("g3".to_string(), 0, vec![]),
        ]
    );

    let req = FindCoordinatorRequest::default()
        .with_key_type(0)
        .with_coordinator_keys(vec![s("g1"), s("g2")]);
    let ResponseKind::FindCoordinator(r) = c.request(ApiKey::FindCoordinator, 4, &req) else {
        panic!("not a FindCoordinator response")
    };
    let got: Vec<(String, i32, i32, i16)> = r
        .coordinators
        .iter()
        .map(|k| (k.key.to_string(), k.node_id.0, k.port, k.error_code))
        .collect();
    let port = i32::from(broker.kafka.port());
    assert_eq!(
        got,
        vec![
            ("g1".to_string(), 0, port, 0),
            ("g2".to_string(), 0, port, 0)
        ]
    );
}

/// Creates the topic "every" (one partition); its id.
fn create_every(c: &mut RawClient) -> Uuid {
    let ResponseKind::CreateTopics(created) = c.request_kind(
        7,
        &RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![
            CreatableTopic::default()
                .with_name(name("every"))
                .with_num_partitions(1)
                .with_replication_factor(1),
        ])),
    ) else {
        panic!()
    };
    assert_eq!(created.topics[0].error_code, 0);
    let id = created.topics[0].topic_id;
    assert_ne!(id, Uuid::nil());
    id
}

/// A SASL/PLAIN login over raw frames.
fn login(addr: std::net::SocketAddr, user: &str, password: &str) -> RawClient {
    let mut c = RawClient::connect(addr);
    let ResponseKind::SaslHandshake(h) = c.request(
        ApiKey::SaslHandshake,
        1,
        &SaslHandshakeRequest::default().with_mechanism(s("PLAIN")),
    ) else {
        panic!("SaslHandshake")
    };
    assert_eq!(h.error_code, 0);
    let token = format!("\0{user}\0{password}");
    let ResponseKind::SaslAuthenticate(a) = c.request(
        ApiKey::SaslAuthenticate,
        2,
        &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(token)),
    ) else {
        panic!("SaslAuthenticate")
    };
    assert_eq!(a.error_code, 0, "{user} logs in");
    c
}

#[test]
fn every_api_checks_its_acl_for_a_principal_without_any() {
    let broker = Strata::with(Options {
        env: [
            ("STRATA_KAFKA_LISTENERS", "SASL_PLAINTEXT://127.0.0.1:0"),
            ("STRATA_KAFKA_AUTHORIZER_CLASS_NAME", "org.apache.kafka.metadata.authorizer.StandardAuthorizer"),
            ("STRATA_KAFKA_SUPER_USERS", "User:admin"),
            (
                "STRATA_SCRAM_BOOTSTRAP",
                "SCRAM-SHA-256=[name=admin,password=admin-pw],SCRAM-SHA-256=[name=nobody,password=nobody-pw]",
            ),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..Options::default()
    });
    let mut admin = login(broker.kafka, "admin", "admin-pw");
    // A super user creates topics.
    let id = create_every(&mut admin);

    let mut nobody = login(broker.kafka, "nobody", "nobody-pw");
    let ResponseKind::ApiVersions(versions) =
        nobody.request(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
    else {
        panic!()
    };
    let skip = [
        ApiKey::ApiVersions,
        ApiKey::SaslHandshake,
        ApiKey::SaslAuthenticate,
        // Listings: what nobody may not see is left out, not refused.
        ApiKey::ListGroups,
        ApiKey::ListTransactions,
    ];
    let mut checked = Vec::new();
    for k in &versions.api_keys {
        let api = ApiKey::try_from(k.api_key).unwrap();
        if skip.contains(&api) {
            continue;
        }
        let req = sample(api, k.max_version, "every", id);
        let _ = nobody.request_kind(k.max_version, &req);
        checked.push(api);
    }
    // A follower's fetch (a replica id) from a principal without CLUSTER_ACTION is refused
    // before it is handled: it would otherwise move the leader's view of its followers.
    let ResponseKind::Fetch(f) = nobody.request_kind(12, &{
        let RequestKind::Fetch(mut r) = sample(ApiKey::Fetch, 12, "every", id) else {
            panic!()
        };
        r.replica_id = BrokerId(0);
        RequestKind::Fetch(r)
    }) else {
        panic!()
    };
    assert_eq!(f.responses[0].partitions[0].error_code, 29);
    let (_, metrics) = broker.http_get("/metrics");
    assert!(
        metrics.contains(r#"strata_kafka_authorization_denied_total{api="Fetch",operation="CLUSTER_ACTION",resource_type="CLUSTER"} 1"#),
        "{metrics}"
    );
    for api in &checked {
        let label = format!("api=\"{api:?}\"");
        let denied: f64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("strata_kafka_authorization_denied_total{") && l.contains(&label)
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        assert!(
            denied >= 1.0,
            "{api:?} was not refused an ACL check:\n{metrics}"
        );
    }
    assert!(checked.len() >= 35, "{} APIs checked", checked.len());

    // Nothing nobody sent changed anything: the topic is there, no ACL was made.
    let ResponseKind::Metadata(m) = admin.request_kind(
        12,
        &RequestKind::Metadata(MetadataRequest::default().with_topics(None)),
    ) else {
        panic!()
    };
    assert!(
        m.topics
            .iter()
            .any(|t| t.name.as_deref().map(|n| n.as_str()) == Some("every"))
    );
    let ResponseKind::DescribeAcls(acls) = admin.request_kind(
        3,
        &RequestKind::DescribeAcls(
            DescribeAclsRequest::default()
                .with_resource_type_filter(1)
                .with_pattern_type_filter(1)
                .with_operation(1)
                .with_permission_type(1),
        ),
    ) else {
        panic!()
    };
    assert_eq!((acls.error_code, acls.resources.len()), (0, 0));
}
