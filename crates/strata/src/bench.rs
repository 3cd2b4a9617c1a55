//! `strata bench`: produces N messages to a running broker, reads them back from offset
//! 0, and reports throughput and latency percentiles. It speaks the Kafka protocol
//! directly (one request in flight per connection, several connections), so it measures
//! the broker rather than a client library's batching. In a cluster, each partition's
//! requests go to its leader, as Metadata names it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Buf, Bytes};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use strata_protocol::batch::{self, HeaderIter, Record};
use strata_replication::client::KafkaConn;

mod latency;

/// Options of `strata bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Broker to connect to.
    #[arg(long, default_value = "127.0.0.1:9092", value_name = "HOST:PORT")]
    pub bootstrap: String,
    /// Topic to use, created if missing [default: a new topic, strata-bench-<time>]
    #[arg(long)]
    pub topic: Option<String>,
    /// Messages to produce.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Bytes per message value.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Partitions of a newly created topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Replication factor of a newly created topic (-1: the cluster's
    /// `default.replication.factor`).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub replication_factor: i16,
    /// acks for produce requests: -1 (all), 0 or 1.
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub acks: i16,
    /// Bytes of records per produce batch.
    #[arg(long, default_value_t = 256 * 1024)]
    pub batch_bytes: usize,
    /// Connections used in each phase (one request in flight on each).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Topic config for a newly created topic, as name=value (repeatable).
    #[arg(long = "topic-config", value_name = "NAME=VALUE")]
    pub topic_configs: Vec<String>,
    /// Only read the topic back, from its start (a second, cached replay); needs --topic.
    #[arg(long)]
    pub consume_only: bool,
    /// Only produce.
    #[arg(long)]
    pub produce_only: bool,
    /// Latency mode: produce --messages single-record requests at this many per second
    /// (open loop, spread over the partitions, up to five unanswered per connection as
    /// Kafka producers send them) while a consumer follows the topic, and
    /// report produce-to-ack and produce-to-consume percentiles, each measured from the
    /// message's scheduled send time (so a stall also counts against the messages that
    /// queued behind it).
    #[arg(long, value_name = "MSGS_PER_SEC")]
    pub rate: Option<u32>,
}

const CLIENT_ID: &str = "strata-bench";

/// Connections by broker address, opened on first use: one task's way to reach each
/// partition's leader.
#[derive(Default)]
struct Conns(HashMap<String, KafkaConn>);

impl Conns {
    async fn to(&mut self, addr: &str) -> anyhow::Result<&mut KafkaConn> {
        if !self.0.contains_key(addr) {
            let conn = KafkaConn::connect(addr, CLIENT_ID).await?;
            self.0.insert(addr.to_string(), conn);
        }
        self.0
            .get_mut(addr)
            .with_context(|| format!("no connection to {addr}"))
    }
}

/// Where a topic's partitions are: each one's leader and (earliest, latest) offsets.
struct Layout {
    leaders: Vec<String>,
    ranges: Vec<(i64, i64)>,
}

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// A produce request of `records`, as one batch, to one partition.
fn produce_request(
    topic: &str,
    partition: i32,
    acks: i16,
    records: &[Record<'_>],
) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(topic_name(topic))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(Bytes::from(batch::encode(records)))),
                ]),
        ])
}

/// A fetch of `partitions` of `topic`, each from its offset, waiting up to `max_wait_ms`
/// for a first byte.
fn fetch_request(
    topic: &str,
    partitions: impl IntoIterator<Item = (i32, i64)>,
    max_wait_ms: i32,
    max_bytes: i32,
    partition_max_bytes: i32,
) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_session_epoch(-1)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(partition, offset)| {
                            FetchPartition::default()
                                .with_partition(partition)
                                .with_fetch_offset(offset)
                                .with_partition_max_bytes(partition_max_bytes)
                        })
                        .collect(),
                ),
        ])
}

/// Latency percentiles of a run, in milliseconds.
fn percentiles(mut samples: Vec<Duration>) -> String {
    if samples.is_empty() {
        return "no samples".into();
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    format!(
        "p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        at(0.5),
        at(0.95),
        at(0.99),
        at(0.999),
        at(1.0)
    )
}

/// A progress bar on stderr, redrawn every 250 ms until [`Progress::finish`] draws it
/// a last time with the phase's own elapsed time (the one its result line reports).
struct Progress {
    label: &'static str,
    done: Arc<AtomicU64>,
    total: u64,
    ticker: tokio::task::JoinHandle<()>,
}

fn draw(label: &str, n: u64, total: u64, elapsed: Duration) {
    let n = n.min(total);
    let frac = if total == 0 {
        1.0
    } else {
        n as f64 / total as f64
    };
    let filled = (frac * 40.0) as usize;
    eprint!(
        "\r{label:8} [{}{}] {:5.1}% {n}/{total} msgs, {:.1}s",
        "#".repeat(filled),
        "-".repeat(40 - filled),
        frac * 100.0,
        elapsed.as_secs_f64()
    );
}

impl Progress {
    fn start(label: &'static str, total: u64) -> Self {
        let done = Arc::new(AtomicU64::new(0));
        let counter = done.clone();
        let started = Instant::now();
        let ticker = tokio::spawn(async move {
            loop {
                draw(
                    label,
                    counter.load(Ordering::Relaxed),
                    total,
                    started.elapsed(),
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Self {
            label,
            done,
            total,
            ticker,
        }
    }

    fn finish(self, elapsed: Duration) {
        self.ticker.abort();
        draw(
            self.label,
            self.done.load(Ordering::Relaxed),
            self.total,
            elapsed,
        );
        eprintln!();
    }
}

/// The topic of this run: the one named, or a new one.
fn topic_of(args: &BenchArgs) -> String {
    match &args.topic {
        Some(t) => t.clone(),
        None => {
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            format!("strata-bench-{ms}")
        }
    }
}

async fn ensure_topic(args: &BenchArgs, topic: &str) -> anyhow::Result<()> {
    let mut c = KafkaConn::connect(&args.bootstrap, CLIENT_ID).await?;
    let configs = args
        .topic_configs
        .iter()
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--topic-config {kv:?} is not NAME=VALUE"))?;
            Ok(CreatableTopicConfig::default()
                .with_name(StrBytes::from_string(k.to_string()))
                .with_value(Some(StrBytes::from_string(v.to_string()))))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(topic_name(topic))
                .with_num_partitions(args.partitions)
                .with_replication_factor(args.replication_factor)
                .with_configs(configs),
        ]);
    let ResponseKind::CreateTopics(r) = c.call(ApiKey::CreateTopics, 7, &req).await? else {
        bail!("unexpected response to CreateTopics");
    };
    match r.topics.first().map(|t| t.error_code) {
        Some(0) | Some(36) => Ok(()),
        Some(code) => bail!("creating topic {topic}: error code {code}"),
        None => bail!("empty CreateTopics response"),
    }
}

/// Each partition's leader (waiting up to 30 s for a new topic's leaders) and
/// (earliest, latest) offsets. A topic that does not exist is an error (it is not
/// created).
async fn offsets(args: &BenchArgs, topic: &str) -> anyhow::Result<Layout> {
    let leaders = leaders(args, topic).await?;
    let mut conns = Conns::default();
    let mut ranges = Vec::new();
    for (p, leader) in leaders.iter().enumerate() {
        let mut pair = [0i64; 2];
        for (slot, ts) in [(0, -2i64), (1, -1)] {
            let req = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![
                    ListOffsetsTopic::default()
                        .with_name(topic_name(topic))
                        .with_partitions(vec![
                            ListOffsetsPartition::default()
                                .with_partition_index(p as i32)
                                .with_timestamp(ts),
                        ]),
                ]);
            let c = conns.to(leader).await?;
            let ResponseKind::ListOffsets(r) = c.call(ApiKey::ListOffsets, 7, &req).await? else {
                bail!("unexpected response to ListOffsets");
            };
            let part = &r.topics[0].partitions[0];
            if part.error_code != 0 {
                bail!(
                    "offsets of partition {p}: error code {} from {leader}",
                    part.error_code
                );
            }
            pair[slot] = part.offset;
        }
        ranges.push((pair[0], pair[1]));
    }
    Ok(Layout { leaders, ranges })
}

/// The address of each partition's leader, from Metadata.
async fn leaders(args: &BenchArgs, topic: &str) -> anyhow::Result<Vec<String>> {
    let mut c = KafkaConn::connect(&args.bootstrap, CLIENT_ID).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ResponseKind::Metadata(m) = c
            .call(
                ApiKey::Metadata,
                12,
                &MetadataRequest::default()
                    .with_allow_auto_topic_creation(false)
                    .with_topics(Some(vec![
                        metadata_request::MetadataRequestTopic::default()
                            .with_name(Some(topic_name(topic))),
                    ])),
            )
            .await?
        else {
            bail!("unexpected response to Metadata");
        };
        let Some(t) = m.topics.first() else {
            bail!("empty Metadata response");
        };
        match t.error_code {
            0 | 5 => {}
            3 => bail!("topic {topic} does not exist"),
            code => bail!("metadata of topic {topic}: error code {code}"),
        }
        if t.error_code == 0 && t.partitions.is_empty() {
            bail!("topic {topic} has no partitions");
        }
        let brokers: HashMap<i32, String> = m
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
            .collect();
        let mut parts: Vec<(i32, Option<String>)> = t
            .partitions
            .iter()
            .map(|p| (p.partition_index, brokers.get(&p.leader_id.0).cloned()))
            .collect();
        parts.sort_by_key(|(i, _)| *i);
        if t.error_code == 0 && parts.iter().all(|(_, l)| l.is_some()) {
            return Ok(parts.into_iter().filter_map(|(_, l)| l).collect());
        }
        if Instant::now() > deadline {
            bail!("partitions of {topic} have no leader after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn produce(args: &BenchArgs, topic: &str, leaders: &[String]) -> anyhow::Result<()> {
    let partitions = leaders.len() as i32;
    let per_batch = (args.batch_bytes / args.size.max(1)).max(1);
    let value: Vec<u8> = (0..args.size).map(|i| (i % 251) as u8).collect();
    let bar = Progress::start("produce", args.messages);
    let done = bar.done.clone();
    let started = Instant::now();
    let conns = args.connections.max(1);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let share =
            args.messages / conns as u64 + u64::from((c as u64) < args.messages % conns as u64);
        let (args, value, done) = (args.clone(), value.clone(), done.clone());
        let (topic, leaders) = (topic.to_string(), leaders.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut pool = Conns::default();
            let mut latencies = Vec::new();
            let mut sent = 0u64;
            // This connection's partitions; with more connections than partitions, some
            // share one.
            let mut mine: Vec<i32> = (0..partitions)
                .filter(|p| *p as usize % conns == c)
                .collect();
            if mine.is_empty() {
                mine.push(c as i32 % partitions);
            }
            let mut turn = 0usize;
            while sent < share {
                let p = mine[turn % mine.len()];
                turn += 1;
                let n = per_batch.min((share - sent) as usize);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_millis() as i64;
                let records: Vec<Record<'_>> = (0..n)
                    .map(|_| Record {
                        key: None,
                        value: Some(&value),
                        timestamp: now,
                    })
                    .collect();
                let req = produce_request(&topic, p, args.acks, &records);
                let conn = pool.to(&leaders[p as usize]).await?;
                let t = Instant::now();
                if args.acks == 0 {
                    // No response comes back for acks=0.
                    let (_, buf) = conn.frame(ApiKey::Produce, 9, &req)?;
                    conn.send(&buf).await?;
                } else {
                    let ResponseKind::Produce(r) = conn.call(ApiKey::Produce, 9, &req).await?
                    else {
                        bail!("unexpected response to Produce");
                    };
                    let code = r.responses[0].partition_responses[0].error_code;
                    if code != 0 {
                        bail!("produce to partition {p} failed with error code {code}");
                    }
                }
                latencies.push(t.elapsed());
                sent += n as u64;
                done.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let took = started.elapsed();
    bar.finish(took);
    let elapsed = took.as_secs_f64();
    let bytes = args.messages as f64 * args.size as f64;
    println!(
        "produce: {} msgs of {} B, acks={}, in {:.2} s: {:.1} MB/s, {:.0} msgs/s; request latency {}",
        args.messages,
        args.size,
        args.acks,
        elapsed,
        bytes / elapsed / 1e6,
        args.messages as f64 / elapsed,
        percentiles(latencies)
    );
    Ok(())
}

async fn consume(args: &BenchArgs, topic: &str, layout: Layout) -> anyhow::Result<()> {
    let Layout { leaders, ranges } = layout;
    let total: i64 = ranges.iter().map(|(s, e)| e - s).sum();
    let bar = Progress::start("consume", total.max(0) as u64);
    let done = bar.done.clone();
    let started = Instant::now();
    let conns = args.connections.max(1);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let mine: Vec<(i32, i64, i64)> = ranges
            .iter()
            .enumerate()
            .filter(|(p, _)| p % conns == c)
            .map(|(p, (s, e))| (p as i32, *s, *e))
            .collect();
        let done = done.clone();
        let (topic, leaders) = (topic.to_string(), leaders.clone());
        tasks.push(tokio::spawn(async move {
            let mut pool = Conns::default();
            let (mut latencies, mut bytes) = (Vec::new(), 0u64);
            for (p, start, end) in mine {
                let conn = pool.to(&leaders[p as usize]).await?;
                let mut offset = start;
                while offset < end {
                    let req = fetch_request(&topic, [(p, offset)], 500, 32 << 20, 16 << 20);
                    let t = Instant::now();
                    let ResponseKind::Fetch(r) = conn.call(ApiKey::Fetch, 12, &req).await? else {
                        bail!("unexpected response to Fetch");
                    };
                    latencies.push(t.elapsed());
                    let part = &r.responses[0].partitions[0];
                    if part.error_code != 0 {
                        bail!(
                            "fetch of partition {p} at {offset} failed with error code {}",
                            part.error_code
                        );
                    }
                    let records = part.records.clone().unwrap_or_default();
                    bytes += records.remaining() as u64;
                    let before = offset;
                    for (_, h) in HeaderIter::new(&records) {
                        if h.last_offset() >= offset {
                            done.fetch_add(
                                (h.last_offset() + 1 - offset.max(h.base_offset)) as u64,
                                Ordering::Relaxed,
                            );
                            offset = h.next_offset();
                        }
                    }
                    if offset == before && records.is_empty() && part.high_watermark <= offset {
                        bail!(
                            "partition {p} ends at {} before the expected {end}",
                            part.high_watermark
                        );
                    }
                }
            }
            Ok::<_, anyhow::Error>((latencies, bytes))
        }));
    }
    let (mut latencies, mut bytes) = (Vec::new(), 0u64);
    for t in tasks {
        let (l, b) = t.await??;
        latencies.extend(l);
        bytes += b;
    }
    let took = started.elapsed();
    bar.finish(took);
    let elapsed = took.as_secs_f64();
    println!(
        "consume: {total} msgs ({:.1} MB of batches) in {:.2} s: {:.1} MB/s, {:.0} msgs/s; fetch latency {}",
        bytes as f64 / 1e6,
        elapsed,
        bytes as f64 / elapsed / 1e6,
        total as f64 / elapsed,
        percentiles(latencies)
    );
    Ok(())
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.consume_only && args.produce_only {
        bail!("--consume-only and --produce-only exclude each other");
    }
    if let Some(rate) = args.rate {
        if args.consume_only || args.produce_only {
            bail!("--rate runs its own producer and consumer: drop --consume-only/--produce-only");
        }
        return latency::run(&args, rate).await;
    }
    if args.consume_only {
        let Some(topic) = &args.topic else {
            bail!("--consume-only reads an existing topic: name it with --topic");
        };
        let layout = offsets(&args, topic).await?;
        return consume(&args, topic, layout).await;
    }
    let topic = topic_of(&args);
    eprintln!("topic: {topic}");
    ensure_topic(&args, &topic).await?;
    // A named topic may hold earlier runs' messages: this run reads back its own.
    let before = offsets(&args, &topic).await?;
    produce(&args, &topic, &before.leaders).await?;
    if !args.produce_only {
        let after = offsets(&args, &topic).await?;
        let ranges = before
            .ranges
            .iter()
            .zip(&after.ranges)
            .map(|((_, from), (_, to))| (*from, *to))
            .collect();
        let layout = Layout {
            leaders: after.leaders,
            ranges,
        };
        consume(&args, &topic, layout).await?;
    }
    Ok(())
}
