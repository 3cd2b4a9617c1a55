//! A client that sends produce requests ahead of their answers (librdkafka, the Java
//! producer) gets them appended back to back, covered by shared syncs, and answered in
//! the order it sent them, other requests included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use strata_e2e::{RawClient, Strata, now_ms};
use strata_protocol::batch::test_util::simple_batch;

fn produce(records: Vec<u8>) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("pipe")))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(Bytes::from(records))),
                ]),
        ])
}

#[test]
fn pipelined_produce_requests_share_syncs_and_are_answered_in_order() {
    let s = Strata::start();
    let mut c = RawClient::connect(s.kafka);
    assert_eq!(c.create_topic("pipe", 1, 1, &[]), 0);
    let syncs_before = s.metric("strata_log_syncs_total").unwrap_or(0.0);

    // 60 requests in one write: produce, with a corrupt batch at 20 and a Metadata
    // request at 40, which must not overtake the produce requests before it.
    const N: i32 = 60;
    let mut wire = Vec::new();
    for id in 1..=N {
        let frame = match id {
            20 => {
                let mut corrupt = simple_batch(2, now_ms());
                let last = corrupt.len() - 1;
                corrupt[last] ^= 0xff;
                RawClient::frame(ApiKey::Produce, 9, id, &produce(corrupt))
            }
            40 => RawClient::frame(
                ApiKey::Metadata,
                12,
                id,
                &MetadataRequest::default().with_topics(None),
            ),
            _ => RawClient::frame(ApiKey::Produce, 9, id, &produce(simple_batch(2, now_ms()))),
        };
        wire.extend_from_slice(&frame);
    }
    c.send_raw(&wire).unwrap();

    let mut next_offset = 0;
    for id in 1..=N {
        match id {
            40 => {
                let ResponseKind::Metadata(m) = c.read_response(ApiKey::Metadata, 12, id) else {
                    panic!("request {id} is a Metadata request");
                };
                assert_eq!(m.topics.len(), 1);
            }
            _ => {
                let ResponseKind::Produce(r) = c.read_response(ApiKey::Produce, 9, id) else {
                    panic!("request {id} is a Produce request");
                };
                let p = &r.responses[0].partition_responses[0];
                if id == 20 {
                    assert_eq!(p.error_code, ResponseError::CorruptMessage.code());
                } else {
                    assert_eq!(p.error_code, 0, "request {id}");
                    assert_eq!(p.base_offset, next_offset, "request {id}");
                    next_offset += 2;
                }
            }
        }
    }
    // Every acknowledged record is readable, in order, and nothing else is there.
    let fetched = c.fetch("pipe", 0, 0, 1 << 20);
    assert_eq!(fetched.high_watermark, next_offset);
    // The requests queued behind a sync were appended meanwhile and covered by the next
    // one: fewer syncs than written requests (a connection handling them one at a time
    // syncs once per request). How many share one depends on how the machine schedules
    // the connection against the syncs, so only the sharing itself is asserted.
    let written = f64::from(N - 2);
    let syncs = s.metric("strata_log_syncs_total").unwrap() - syncs_before;
    assert!(
        syncs < written,
        "{syncs} syncs for {written} pipelined produce requests written"
    );
}

#[test]
fn nothing_behind_a_request_that_closes_the_connection_is_appended() {
    let s = Strata::start();
    let mut setup = RawClient::connect(s.kafka);
    assert_eq!(setup.create_topic("pipe", 1, 1, &[]), 0);

    // A good produce, one in a version nobody knows (the connection is closed), then
    // another good produce, all in one write.
    let mut c = RawClient::connect(s.kafka);
    let batch = || produce(simple_batch(2, now_ms()));
    let mut wire = RawClient::frame(ApiKey::Produce, 9, 1, &batch());
    wire.extend(RawClient::frame_claiming(
        ApiKey::Produce,
        9,
        99,
        2,
        &batch(),
    ));
    wire.extend(RawClient::frame(ApiKey::Produce, 9, 3, &batch()));
    c.send_raw(&wire).unwrap();

    let ResponseKind::Produce(r) = c.read_response(ApiKey::Produce, 9, 1) else {
        panic!("request 1 is a Produce request");
    };
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    assert!(c.is_closed(), "no answer after the bad request");
    // Only the first request's records were written: the next ones go right after them.
    assert_eq!(setup.produce("pipe", 0, simple_batch(1, now_ms())), (0, 2));
    assert_eq!(setup.fetch("pipe", 0, 0, 1 << 20).high_watermark, 3);
}
