//! Bad input over a real socket: each case gets the Kafka error code or a closed
//! connection, a metric, and the broker keeps serving everyone else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kafka_protocol::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};
use strata_e2e::{RawClient, Strata, assert_serving, now_ms};
use strata_protocol::batch::test_util::simple_batch;

fn connection_errors(s: &Strata, reason: &str) -> f64 {
    s.metric(&format!(
        "strata_kafka_connection_errors_total{{reason=\"{reason}\"}}"
    ))
    .unwrap_or(0.0)
}

#[test]
fn malformed_frames_close_only_their_connection() {
    let s = Strata::start();
    // A client holding a half-sent frame must not block anyone.
    let mut stalled = RawClient::connect(s.kafka);
    stalled.send_raw(&200i32.to_be_bytes()).unwrap();
    stalled.send_raw(&[0, 3]).unwrap();

    // HTTP sent to the Kafka port: "GET " reads as a 1.2 GB frame.
    let mut c = RawClient::connect(s.kafka);
    c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(c.is_closed());
    assert_eq!(connection_errors(&s, "frame_too_large"), 1.0);

    // A frame just over socket.request.max.bytes (100 MiB): closed before the body arrives.
    let mut c = RawClient::connect(s.kafka);
    c.send_raw(&(100 * 1024 * 1024 + 1i32).to_be_bytes())
        .unwrap();
    assert!(c.is_closed());
    assert_eq!(connection_errors(&s, "frame_too_large"), 2.0);

    let mut c = RawClient::connect(s.kafka);
    c.send_raw(&(-7i32).to_be_bytes()).unwrap();
    assert!(c.is_closed());
    assert_eq!(connection_errors(&s, "negative_frame_size"), 1.0);

    // Unknown API key 9999.
    let mut c = RawClient::connect(s.kafka);
    let mut f = 8i32.to_be_bytes().to_vec();
    f.extend_from_slice(&[0x27, 0x0f, 0, 0, 0, 0, 0, 1]);
    c.send_raw(&f).unwrap();
    assert!(c.is_closed());
    assert_eq!(connection_errors(&s, "unknown_api_key"), 1.0);

    // A frame too short to hold a request header.
    let mut c = RawClient::connect(s.kafka);
    c.send_raw(&[0, 0, 0, 3, 0, 3, 0]).unwrap();
    assert!(c.is_closed());
    assert_eq!(connection_errors(&s, "malformed_header"), 1.0);

    // A Metadata v0 request whose topic array claims 2^31-1 entries in a 14-byte frame.
    let mut c = RawClient::connect(s.kafka);
    let mut body = vec![0, 3, 0, 0, 0, 0, 0, 9, 0xff, 0xff];
    body.extend_from_slice(&i32::MAX.to_be_bytes());
    let mut f = (body.len() as i32).to_be_bytes().to_vec();
    f.extend_from_slice(&body);
    c.send_raw(&f).unwrap();
    assert!(c.is_closed());
    assert_eq!(connection_errors(&s, "malformed_request"), 1.0);

    // A known API at a version outside the supported range.
    let mut c = RawClient::connect(s.kafka);
    c.send_raw(&RawClient::frame_claiming(
        ApiKey::Metadata,
        12,
        99,
        5,
        &MetadataRequest::default(),
    ))
    .unwrap();
    assert!(c.is_closed());
    assert_eq!(connection_errors(&s, "unsupported_version"), 1.0);

    // A client that disconnects in the middle of a request.
    let mut c = RawClient::connect(s.kafka);
    c.send_raw(&100i32.to_be_bytes()).unwrap();
    c.send_raw(&[0u8; 10]).unwrap();
    drop(c);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while connection_errors(&s, "disconnect_mid_request") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "mid-request disconnect not counted"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    assert_serving(s.kafka);
    drop(stalled);
    let log = s.log();
    assert!(
        log.contains("closing client connection"),
        "closures are logged"
    );
    assert!(!log.contains("panicked"), "{}", s.log_tail());
}

#[test]
fn api_versions_newer_than_supported_gets_a_v0_answer_with_the_ranges() {
    let s = Strata::start();
    let mut c = RawClient::connect(s.kafka);
    c.send_raw(&RawClient::frame_claiming(
        ApiKey::ApiVersions,
        3,
        99,
        42,
        &ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("future"))
            .with_client_software_version(StrBytes::from_static_str("9")),
    ))
    .unwrap();
    let mut frame = c.read_frame().unwrap();
    let header = ResponseHeader::decode(&mut frame, 0).unwrap();
    assert_eq!(header.correlation_id, 42);
    let body = ApiVersionsResponse::decode(&mut frame, 0).unwrap();
    assert_eq!(body.error_code, ResponseError::UnsupportedVersion.code());
    let metadata = body
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::Metadata as i16)
        .unwrap();
    assert!(metadata.max_version >= 9);
    // The connection stays usable for the retry at a supported version.
    let ResponseKind::ApiVersions(r) = c.request(
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("retry"))
            .with_client_software_version(StrBytes::from_static_str("1")),
    ) else {
        panic!()
    };
    assert_eq!(r.error_code, 0);
    assert_eq!(r.api_keys, body.api_keys);
}

#[test]
fn bad_batches_get_kafka_error_codes() {
    let s = Strata::start();
    let mut c = RawClient::connect(s.kafka);
    assert_eq!(
        c.create_topic("bad", 1, 1, &[("max.message.bytes", "300")]),
        0
    );

    let good = simple_batch(3, now_ms());
    assert_eq!(c.produce("bad", 0, good.clone()), (0, 0));

    let mut corrupt = good.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert_eq!(
        c.produce("bad", 0, corrupt).0,
        ResponseError::CorruptMessage.code()
    );

    let mut truncated = good.clone();
    truncated.truncate(good.len() - 5);
    assert_eq!(
        c.produce("bad", 0, truncated).0,
        ResponseError::CorruptMessage.code()
    );

    let mut old_magic = good.clone();
    old_magic[16] = 1;
    assert_eq!(
        c.produce("bad", 0, old_magic).0,
        ResponseError::UnsupportedForMessageFormat.code()
    );

    let mut two = good.clone();
    two.extend_from_slice(&good);
    assert_eq!(
        c.produce("bad", 0, two).0,
        ResponseError::InvalidRecord.code()
    );
    assert_eq!(
        c.produce("bad", 0, Vec::new()).0,
        ResponseError::InvalidRecord.code()
    );

    let big = simple_batch(40, now_ms());
    assert!(big.len() > 300);
    assert_eq!(
        c.produce("bad", 0, big).0,
        ResponseError::MessageTooLarge.code()
    );

    assert_eq!(
        c.produce("no-such-topic", 0, good.clone()).0,
        ResponseError::UnknownTopicOrPartition.code()
    );

    // Nothing but the first good batch was written.
    assert_eq!(c.produce("bad", 0, good).1, 3);
    let p = c.fetch("bad", 0, 7, 1 << 20);
    assert_eq!(p.error_code, ResponseError::OffsetOutOfRange.code());
    let errors = s
        .metric("strata_kafka_request_errors_total{api=\"Produce\",error=\"CorruptMessage\"}")
        .unwrap();
    assert_eq!(errors, 2.0);
}

#[test]
fn invalid_topic_creations_are_refused_with_kafka_codes() {
    let s = Strata::start();
    let mut c = RawClient::connect(s.kafka);
    assert_eq!(
        c.create_topic("bad name!", 1, 1, &[]),
        ResponseError::InvalidTopicException.code()
    );
    assert_eq!(
        c.create_topic(&"x".repeat(250), 1, 1, &[]),
        ResponseError::InvalidTopicException.code()
    );
    assert_eq!(
        c.create_topic("t", 0, 1, &[]),
        ResponseError::InvalidPartitions.code()
    );
    assert_eq!(
        c.create_topic("t", 1, 3, &[]),
        ResponseError::InvalidReplicationFactor.code()
    );
    assert_eq!(
        c.create_topic("t", 1, 1, &[("cleanup.policy", "compact")]),
        ResponseError::InvalidConfig.code()
    );
    assert_eq!(
        c.create_topic("t", 1, 1, &[("no.such.config", "1")]),
        ResponseError::InvalidConfig.code()
    );
    assert_eq!(c.create_topic("t", 2, 1, &[]), 0);
    assert_eq!(
        c.create_topic("t", 2, 1, &[]),
        ResponseError::TopicAlreadyExists.code()
    );
}

#[test]
fn fetch_max_bytes_caps_what_a_client_may_ask_for() {
    let s = strata_e2e::Strata::with(strata_e2e::Options {
        env: vec![("STRATA_KAFKA_FETCH_MAX_BYTES".into(), "2048".into())],
        ..Default::default()
    });
    let mut c = RawClient::connect(s.kafka);
    assert_eq!(c.create_topic("capped", 1, 1, &[]), 0);
    let batch = simple_batch(10, now_ms());
    for _ in 0..20 {
        assert_eq!(c.produce("capped", 0, batch.clone()).0, 0);
    }
    let records = c.fetch("capped", 0, 0, i32::MAX).records.unwrap();
    assert!(records.len() <= 2048, "{} bytes returned", records.len());
    assert_eq!(records.len() % batch.len(), 0, "whole batches only");
    assert_eq!(records.len() / batch.len(), 2048 / batch.len());
}

/// timeout_ms bounds only the wait of acks=all; acks=1 is answered once the write is done
/// (as Kafka does), so a client sending timeout_ms=0 does not get REQUEST_TIMED_OUT for
/// data that was written, and retry it into a duplicate.
#[test]
fn acks_1_ignores_the_produce_timeout() {
    let s = Strata::start();
    let mut c = RawClient::connect(s.kafka);
    assert_eq!(c.create_topic("quick", 1, 1, &[]), 0);
    let batch = simple_batch(3, now_ms());
    for expected in [0, 3, 6] {
        assert_eq!(
            c.produce_with("quick", 0, batch.clone(), 1, 0),
            (0, expected)
        );
    }
    let records = c.fetch("quick", 0, 0, 1 << 20).records.unwrap();
    assert_eq!(records.len(), 3 * batch.len(), "each batch written once");
}

/// SIGTERM does not wait for a client that stopped halfway through a request (the
/// broker would otherwise hold on until its 25 s grace period for in-flight requests).
#[test]
fn a_client_stalled_mid_request_does_not_hold_up_shutdown() {
    let mut s = Strata::start();
    let mut stalled = RawClient::connect(s.kafka);
    stalled.send_raw(&200i32.to_be_bytes()).unwrap();
    stalled.send_raw(&[0, 3, 0, 12]).unwrap();
    assert_serving(s.kafka);
    let started = std::time::Instant::now();
    assert!(s.stop().success(), "SIGTERM exits 0:\n{}", s.log_tail());
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(20),
        "shutdown waited {took:?} for the stalled request:\n{}",
        s.log_tail()
    );
}

/// The broker's resident memory, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// 64 connections each announcing and sending a 4 MiB frame: the broker holds at most
/// queued.max.request.bytes of them in memory at once; the others wait unread.
#[test]
fn request_memory_across_connections_stays_within_the_budget() {
    use std::io::Write;
    let budget = 8 << 20;
    let s = Strata::with(strata_e2e::Options {
        env: vec![(
            "STRATA_KAFKA_QUEUED_MAX_REQUEST_BYTES".into(),
            budget.to_string(),
        )],
        ..strata_e2e::Options::default()
    });
    let pid = s.pid();
    let before = rss_bytes(pid);
    let frame = 4 << 20;
    let mut streams = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..64 {
        let stream = std::net::TcpStream::connect(s.kafka).unwrap();
        let mut w = stream.try_clone().unwrap();
        streams.push(stream);
        writers.push(std::thread::spawn(move || {
            // Blocks once the socket buffers are full: the broker is not reading.
            let _ = w.write_all(&(frame as i32).to_be_bytes());
            let _ = w.write_all(&vec![0u8; frame - 1024]);
        }));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut peak_gauge = 0.0f64;
    while std::time::Instant::now() < deadline {
        peak_gauge = peak_gauge.max(
            s.metric("strata_kafka_request_bytes_in_memory")
                .unwrap_or(0.0),
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let grown = rss_bytes(pid).saturating_sub(before);
    assert!(
        peak_gauge > 0.0 && peak_gauge <= budget as f64,
        "frames held: {peak_gauge} bytes, budget {budget}"
    );
    // Without the budget the 64 frames would take 256 MiB.
    assert!(grown < 3 * budget as u64, "RSS grew by {grown} bytes");
    drop(streams);
    for w in writers {
        let _ = w.join();
    }
    assert_serving(s.kafka);
}

/// Idle connections are closed after connections.max.idle.ms, and one that stalls in the
/// middle of a frame after strata.kafka.request-read-timeout-ms; both are counted.
#[test]
fn idle_and_stalled_connections_are_closed() {
    let s = Strata::with(strata_e2e::Options {
        env: vec![
            ("STRATA_KAFKA_CONNECTIONS_MAX_IDLE_MS".into(), "1000".into()),
            ("STRATA_KAFKA_REQUEST_READ_TIMEOUT_MS".into(), "500".into()),
        ],
        ..strata_e2e::Options::default()
    });
    let mut idle = RawClient::connect(s.kafka);
    let mut stalled = RawClient::connect(s.kafka);
    stalled.send_raw(&100i32.to_be_bytes()).unwrap();
    stalled.send_raw(&[0, 3, 0]).unwrap();
    let mut busy = RawClient::connect(s.kafka);
    let started = std::time::Instant::now();
    // A client that keeps asking stays connected.
    while started.elapsed() < std::time::Duration::from_millis(2500) {
        assert!(matches!(
            busy.request(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()),
            kafka_protocol::messages::ResponseKind::ApiVersions(_)
        ));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(stalled.is_closed());
    assert!(idle.is_closed());
    assert_eq!(connection_errors(&s, "request_timeout"), 1.0);
    assert_eq!(connection_errors(&s, "idle"), 1.0);
}

/// Thousands of bad frames are all counted, but logged at most once a second.
#[test]
fn bad_frames_are_counted_not_each_logged() {
    let s = Strata::start();
    for _ in 0..300 {
        let mut c = RawClient::connect(s.kafka);
        c.send_raw(&(-1i32).to_be_bytes()).unwrap();
        assert!(c.is_closed());
    }
    assert_eq!(connection_errors(&s, "negative_frame_size"), 300.0);
    let lines = s
        .log()
        .lines()
        .filter(|l| l.contains("closing client connection"))
        .count();
    assert!(lines <= 10, "{lines} log lines for 300 bad frames");
    assert!(lines >= 1);
}
