//! Every API at every version the broker advertises answers a valid request with a
//! response that decodes at that version. Catches fields set for versions that lack them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use strata_e2e::{RawClient, Strata, now_ms};
use strata_protocol::batch::test_util::simple_batch;
use uuid::Uuid;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// A valid request of `api` at `version`, about `topic` (whose id is `id`).
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
        other => panic!("{ctx}: unexpected {other:?}"),
    }
}

#[test]
fn every_advertised_version_answers() {
    let broker = Strata::start();
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
    let id = created.topics[0].topic_id;
    assert_ne!(id, Uuid::nil());
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
    ];
    let mut advertised: Vec<ApiKey> = versions
        .api_keys
        .iter()
        .map(|k| ApiKey::try_from(k.api_key).unwrap())
        .collect();
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
    assert!(served > 40, "only {served} api versions were exercised");
}
