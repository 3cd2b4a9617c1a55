//! librdkafka (through the `rdkafka` crate) against the real broker: produce with keys,
//! headers and timestamps under every acks setting, consume back, offsets, topic
//! lifecycle, restarts and crashes, and transactions seen by read_committed and
//! read_uncommitted consumers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, Timestamp, TopicPartitionList};
use strata_e2e::Strata;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Record timestamps a minute in the past: recent enough that the default
/// `retention.ms` (7 days) never deletes them during a test.
fn recent_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    now.as_millis() as i64 - 60_000
}

/// A message as produced and as consumed, for comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Msg {
    key: Vec<u8>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    timestamp: i64,
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap()
}

async fn create_topic(bootstrap: &str, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let res = admin(bootstrap)
        .create_topics(&[t], &AdminOptions::new().operation_timeout(Some(TIMEOUT)))
        .await
        .unwrap();
    assert!(res[0].is_ok(), "create {name}: {res:?}");
}

/// A delivery report: the message id and the (partition, offset) it got, or the error.
type Report = (usize, Result<(i32, i64), String>);

/// Records delivery reports.
#[derive(Clone, Default)]
struct Deliveries(Arc<Mutex<Vec<Report>>>);

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<usize>;
    fn delivery(&self, result: &DeliveryResult<'_>, id: Box<usize>) {
        let outcome = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        self.0.lock().unwrap().push((*id, outcome));
    }
}

fn producer(bootstrap: &str, acks: &str) -> (BaseProducer<Deliveries>, Deliveries) {
    let d = Deliveries::default();
    let p = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", acks)
        .set("enable.idempotence", "false")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create_with_context(d.clone())
        .unwrap();
    (p, d)
}

fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "strata-e2e-unused")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap()
}

fn sample(i: usize, tag: &str, base_ts: i64) -> Msg {
    Msg {
        key: format!("key-{i}").into_bytes(),
        value: format!("value-{i}-{tag}-{}", "x".repeat(i % 97)).into_bytes(),
        headers: vec![
            ("seq".into(), i.to_string().into_bytes()),
            ("tag".into(), tag.as_bytes().to_vec()),
        ],
        timestamp: base_ts + i as i64,
    }
}

/// Produces `msgs[i]` to partition `i % partitions`; returns the delivery reports.
fn produce_all(
    p: &BaseProducer<Deliveries>,
    d: &Deliveries,
    topic: &str,
    partitions: usize,
    msgs: &[Msg],
) -> Vec<Report> {
    for (i, m) in msgs.iter().enumerate() {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &m.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(i))
            .key(&m.key)
            .payload(&m.value)
            .headers(headers)
            .partition((i % partitions) as i32)
            .timestamp(m.timestamp);
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    record = r;
                    p.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("send: {e}"),
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(TIMEOUT).unwrap();
    let mut out = std::mem::take(&mut *d.0.lock().unwrap());
    out.sort_by_key(|(id, _)| *id);
    out
}

fn to_msg(m: &BorrowedMessage<'_>) -> Msg {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    let timestamp = match m.timestamp() {
        Timestamp::CreateTime(t) => t,
        other => panic!("unexpected timestamp kind {other:?}"),
    };
    Msg {
        key: m.key().unwrap_or_default().to_vec(),
        value: m.payload().unwrap_or_default().to_vec(),
        headers,
        timestamp,
    }
}

/// Consumes partitions from the beginning until `expected` messages arrived (or the
/// deadline); returns them per partition with their offsets.
fn consume_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> BTreeMap<i32, Vec<(i64, Msg)>> {
    let c = consumer(bootstrap);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out: BTreeMap<i32, Vec<(i64, Msg)>> = BTreeMap::new();
    let mut got = 0;
    let deadline = Instant::now() + TIMEOUT;
    while got < expected && Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.entry(m.partition())
                    .or_default()
                    .push((m.offset(), to_msg(&m)));
                got += 1;
            }
            Some(Err(e)) => panic!("consume: {e}"),
            None => {}
        }
    }
    // Nothing beyond what was expected.
    if let Some(Ok(m)) = c.poll(Duration::from_millis(500)) {
        panic!(
            "unexpected extra message at {}:{}",
            m.partition(),
            m.offset()
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn produce_and_consume_under_every_acks_setting() {
    let s = Strata::start();
    let bootstrap = s.bootstrap();
    let base_ts = recent_ms();
    for acks in ["0", "1", "all"] {
        let topic = format!("acks-{acks}");
        create_topic(&bootstrap, &topic, 4, &[]).await;
        let msgs: Vec<Msg> = (0..2000).map(|i| sample(i, acks, base_ts)).collect();
        let (p, d) = producer(&bootstrap, acks);
        let reports = produce_all(&p, &d, &topic, 4, &msgs);
        assert_eq!(reports.len(), msgs.len());
        assert!(
            reports.iter().all(|(_, r)| r.is_ok()),
            "{acks}: {:?}",
            reports.iter().find(|r| r.1.is_err())
        );
        let consumed = consume_all(&bootstrap, &topic, 4, msgs.len());
        for p in 0..4 {
            let want: Vec<&Msg> = msgs
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 4 == p)
                .map(|(_, m)| m)
                .collect();
            let got = &consumed[&(p as i32)];
            assert_eq!(got.len(), want.len(), "acks={acks} partition {p}");
            for (n, ((offset, m), w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    *offset, n as i64,
                    "acks={acks} partition {p}: offsets are dense and in order"
                );
                assert_eq!(&m, w, "acks={acks} partition {p} offset {offset}");
            }
        }
        if acks != "0" {
            // The broker's answer carried the real offsets.
            for (i, r) in &reports {
                let (partition, offset) = r.as_ref().unwrap();
                assert_eq!(*partition as usize, i % 4);
                assert_eq!(*offset as usize, i / 4);
            }
        }
    }
    let produced = s
        .metric("strata_kafka_requests_total{api=\"Produce\"}")
        .unwrap();
    assert!(produced > 0.0);
    assert_eq!(
        s.metric("strata_log_end_offset{partition=\"3\",topic=\"acks-all\"}"),
        Some(500.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn list_offsets_earliest_latest_and_by_time() {
    let s = Strata::start();
    let bootstrap = s.bootstrap();
    create_topic(&bootstrap, "times", 2, &[("segment.bytes", "2048")]).await;
    let base_ts = recent_ms() - 10_000;
    // Timestamps 10 ms apart so each message has its own instant.
    let msgs: Vec<Msg> = (0..600)
        .map(|i| Msg {
            timestamp: base_ts + 10 * i as i64,
            ..sample(i, "t", base_ts)
        })
        .collect();
    let (p, d) = producer(&bootstrap, "all");
    produce_all(&p, &d, "times", 2, &msgs);
    let c = consumer(&bootstrap);
    for part in 0..2 {
        assert_eq!(
            c.fetch_watermarks("times", part, TIMEOUT).unwrap(),
            (0, 300)
        );
    }
    // Message i is in partition i%2 at offset i/2 with timestamp base+10i.
    for (target, want0, want1) in [
        (base_ts, 0, 0),
        (base_ts + 10, 1, 0),
        (base_ts + 15, 1, 1),
        (base_ts + 10 * 401, 201, 200),
        (base_ts + 10 * 599, -1, 299),
    ] {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("times", 0, Offset::Offset(target))
            .unwrap();
        tpl.add_partition_offset("times", 1, Offset::Offset(target))
            .unwrap();
        let found = c.offsets_for_times(tpl, TIMEOUT).unwrap();
        let offsets: Vec<Offset> = found.elements().iter().map(|e| e.offset()).collect();
        let expect = |o: i64| {
            if o < 0 {
                Offset::End
            } else {
                Offset::Offset(o)
            }
        };
        assert_eq!(
            offsets,
            vec![expect(want0), expect(want1)],
            "timestamp {target}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_and_recreated_topic_starts_empty() {
    let s = Strata::start();
    let bootstrap = s.bootstrap();
    create_topic(&bootstrap, "phoenix", 3, &[]).await;
    let (p, d) = producer(&bootstrap, "all");
    let old: Vec<Msg> = (0..300).map(|i| sample(i, "old", recent_ms())).collect();
    produce_all(&p, &d, "phoenix", 3, &old);
    let a = admin(&bootstrap);
    let res = a
        .delete_topics(&["phoenix"], &AdminOptions::new())
        .await
        .unwrap();
    assert!(res[0].is_ok(), "{res:?}");
    // All topics: naming the topic would let this (producer-type) handle auto-create it.
    let meta = a.inner().fetch_metadata(None, TIMEOUT).unwrap();
    assert!(
        meta.topics().iter().all(|t| t.name() != "phoenix"),
        "topic is gone"
    );

    create_topic(&bootstrap, "phoenix", 2, &[]).await;
    let c = consumer(&bootstrap);
    for part in 0..2 {
        assert_eq!(
            c.fetch_watermarks("phoenix", part, TIMEOUT).unwrap(),
            (0, 0)
        );
    }
    let new: Vec<Msg> = (0..100).map(|i| sample(i, "new", recent_ms())).collect();
    let (p, d) = producer(&bootstrap, "all");
    produce_all(&p, &d, "phoenix", 2, &new);
    let consumed = consume_all(&bootstrap, "phoenix", 2, new.len());
    let all: Vec<&Msg> = consumed.values().flatten().map(|(_, m)| m).collect();
    assert_eq!(all.len(), 100);
    assert!(all.iter().all(|m| m.headers[1].1 == b"new"));
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_restart_keeps_everything() {
    let mut s = Strata::start();
    let bootstrap = s.bootstrap();
    create_topic(&bootstrap, "durable", 2, &[("segment.bytes", "65536")]).await;
    let msgs: Vec<Msg> = (0..3000).map(|i| sample(i, "r", recent_ms())).collect();
    let (p, d) = producer(&bootstrap, "all");
    produce_all(&p, &d, "durable", 2, &msgs);
    drop(p);
    assert!(s.stop().success(), "SIGTERM exits 0:\n{}", s.log_tail());
    assert!(s.log().contains("partition logs synced"));
    s.restart();
    let consumed = consume_all(&bootstrap, "durable", 2, msgs.len());
    for part in 0..2usize {
        let want: Vec<&Msg> = msgs
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == part)
            .map(|(_, m)| m)
            .collect();
        let got: Vec<&Msg> = consumed[&(part as i32)].iter().map(|(_, m)| m).collect();
        assert_eq!(got, want);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_produce_loses_nothing_acknowledged() {
    let mut s = Strata::start();
    let bootstrap = s.bootstrap();
    create_topic(&bootstrap, "crash", 3, &[("segment.bytes", "32768")]).await;
    let acked: Arc<Mutex<Vec<(i32, i64, Msg)>>> = Arc::default();
    let base_ts = recent_ms();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let (acked, stop, bootstrap) = (acked.clone(), stop.clone(), bootstrap.clone());
        std::thread::spawn(move || {
            let (p, d) = producer(&bootstrap, "all");
            let mut sent = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let m = sample(i, "crash", base_ts);
                let record = BaseRecord::with_opaque_to("crash", Box::new(i))
                    .key(&m.key)
                    .payload(&m.value)
                    .headers(
                        OwnedHeaders::new()
                            .insert(Header {
                                key: "seq",
                                value: Some(&m.headers[0].1),
                            })
                            .insert(Header {
                                key: "tag",
                                value: Some(&m.headers[1].1),
                            }),
                    )
                    .partition((i % 3) as i32)
                    .timestamp(m.timestamp);
                if p.send(record).is_ok() {
                    sent.push(m);
                    i += 1;
                }
                p.poll(Duration::from_millis(1));
                for (id, r) in d.0.lock().unwrap().drain(..) {
                    if let Ok((part, off)) = r {
                        acked.lock().unwrap().push((part, off, sent[id].clone()));
                    }
                }
            }
        })
    };
    // Let a good number of acknowledgements through, then crash the broker mid-stream.
    let deadline = Instant::now() + TIMEOUT;
    while acked.lock().unwrap().len() < 3000 {
        assert!(
            Instant::now() < deadline,
            "producer made no progress:\n{}",
            s.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    s.kill();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    worker.join().unwrap();
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.len() >= 3000);

    s.restart();
    let c = consumer(&bootstrap);
    let mut total = 0;
    for part in 0..3 {
        total += c.fetch_watermarks("crash", part, TIMEOUT).unwrap().1;
    }
    let consumed = consume_all(&bootstrap, "crash", 3, total as usize);
    for (part, offset, m) in &acked {
        let got = consumed
            .get(part)
            .and_then(|v| v.iter().find(|(o, _)| o == offset))
            .map(|(_, m)| m);
        assert_eq!(
            got,
            Some(m),
            "acknowledged message at {part}:{offset} is missing after kill -9"
        );
    }
}

/// Every message a consumer with `isolation` reads from the partitions of `topic`, up to
/// the end offset such a consumer is told (the last stable offset for read_committed).
fn read_isolated(bootstrap: &str, topic: &str, partitions: i32, isolation: &str) -> Vec<Msg> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "strata-e2e-unused")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut open = std::collections::BTreeSet::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
        if c.fetch_watermarks(topic, p, TIMEOUT).unwrap().1 > 0 {
            open.insert(p);
        }
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while !open.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{topic}: partitions {open:?} never ended"
        );
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(to_msg(&m)),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => panic!("consume: {e}"),
            None => {}
        }
    }
    out
}

#[tokio::test]
async fn transactions_commit_and_abort_as_read_committed_consumers_see_them() {
    let s = Strata::start();
    let bootstrap = s.bootstrap();
    create_topic(&bootstrap, "txn", 2, &[]).await;
    let d = Deliveries::default();
    let p: BaseProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("transactional.id", "rdkafka-txn")
        .create_with_context(d.clone())
        .unwrap();
    p.init_transactions(TIMEOUT).unwrap();
    let base = recent_ms();
    let mut committed = Vec::new();
    let mut all = Vec::new();
    for (tag, commit) in [("first", true), ("aborted", false), ("last", true)] {
        let msgs: Vec<Msg> = (0..10).map(|i| sample(i, tag, base)).collect();
        p.begin_transaction().unwrap();
        let reports = produce_all(&p, &d, "txn", 2, &msgs);
        assert!(reports.iter().all(|(_, r)| r.is_ok()), "{reports:?}");
        if commit {
            p.commit_transaction(TIMEOUT).unwrap();
            committed.extend(msgs.iter().cloned());
        } else {
            p.abort_transaction(TIMEOUT).unwrap();
        }
        all.extend(msgs);
    }
    let sorted = |mut v: Vec<Msg>| {
        v.sort_by(|a, b| a.value.cmp(&b.value));
        v
    };
    assert_eq!(
        sorted(read_isolated(&bootstrap, "txn", 2, "read_committed")),
        sorted(committed)
    );
    assert_eq!(
        sorted(read_isolated(&bootstrap, "txn", 2, "read_uncommitted")),
        sorted(all)
    );
}
