//! `strata bench --rate N`: latency at a steady, modest load rather than throughput at
//! saturation. Messages are scheduled at fixed intervals (open loop) and each is its own
//! produce request, acks as `--acks`, with up to five unanswered per connection as Kafka
//! producers send them; a consumer long-polls every partition meanwhile.
//! Each record's value starts with its scheduled send time, so the consumer measures
//! produce-to-consume from the same origin as the producer's produce-to-ack.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Buf, Bytes};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Decodable;
use kafka_protocol::records::RecordBatchDecoder;
use strata_protocol::batch::{HeaderIter, Record};
use strata_protocol::frame::encode_request;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::{BenchArgs, Conns, fetch_request, percentiles, produce_request};

/// Bytes at the start of each value that carry its scheduled send time.
const STAMP: usize = 8;

pub(super) async fn run(args: &BenchArgs, rate: u32) -> anyhow::Result<()> {
    if rate == 0 {
        bail!("--rate must be at least 1 message per second");
    }
    if args.acks == 0 {
        bail!("--rate measures acknowledgements: use --acks 1 or -1");
    }
    if args.size < STAMP {
        bail!("--rate needs --size of at least {STAMP} bytes (each value carries its send time)");
    }
    let topic = super::topic_of(args);
    eprintln!("topic: {topic}");
    super::ensure_topic(args, &topic).await?;
    let layout = super::offsets(args, &topic).await?;
    let origin = Instant::now();
    // The consumer starts first and follows each partition from its current end.
    let consumer = tokio::spawn(follow(
        topic.clone(),
        layout.leaders.clone(),
        layout.ranges.iter().map(|(_, end)| *end).collect(),
        origin,
        args.messages,
    ));
    let acked = produce(args, &topic, &layout.leaders, rate, origin).await?;
    // Everything was acknowledged, so the consumer must see all of it soon.
    let consumed = match tokio::time::timeout(Duration::from_secs(30), consumer).await {
        Ok(joined) => joined??,
        Err(_) => bail!("the consumer did not see every acknowledged message within 30 s"),
    };
    println!(
        "latency at {rate} msgs/s, {} msgs of {} B, acks={}:\n  produce-to-ack     {}\n  produce-to-consume {}",
        args.messages,
        args.size,
        args.acks,
        percentiles(acked),
        percentiles(consumed)
    );
    Ok(())
}

/// Requests a connection may have unanswered, as Kafka producers allow by default
/// (`max.in.flight.requests.per.connection`).
const IN_FLIGHT: u32 = 5;

/// A request on its way: what its answer is measured against.
struct Sent {
    id: i32,
    start: Duration,
    _slot: OwnedSemaphorePermit,
}

/// One connection to a leader: requests go out on `wr` as they fall due, a task reads
/// the answers in order.
struct Pipe {
    wr: OwnedWriteHalf,
    sent: mpsc::UnboundedSender<Sent>,
    slots: Arc<Semaphore>,
    answers: tokio::task::JoinHandle<anyhow::Result<Vec<Duration>>>,
}

impl Pipe {
    async fn open(addr: &str, origin: Instant) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let (sent, queue) = mpsc::unbounded_channel();
        Ok(Self {
            wr,
            sent,
            slots: Arc::new(Semaphore::new(IN_FLIGHT as usize)),
            answers: tokio::spawn(answers(rd, queue, origin)),
        })
    }
}

/// Reads the answers to the requests in `queue`, in order, and returns each one's time
/// from its start to its answer.
async fn answers(
    rd: OwnedReadHalf,
    mut queue: mpsc::UnboundedReceiver<Sent>,
    origin: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let mut rd = BufReader::new(rd);
    let mut latencies = Vec::new();
    while let Some(sent) = queue.recv().await {
        let len = usize::try_from(rd.read_i32().await?)?;
        let mut frame = vec![0u8; len];
        rd.read_exact(&mut frame).await?;
        let arrived = origin.elapsed();
        let mut frame = Bytes::from(frame);
        let header = ResponseHeader::decode(
            &mut frame,
            ApiKey::Produce.response_header_version(PRODUCE_VERSION),
        )?;
        if header.correlation_id != sent.id {
            bail!(
                "answer {} came for request {}",
                header.correlation_id,
                sent.id
            );
        }
        let r = ProduceResponse::decode(&mut frame, PRODUCE_VERSION)?;
        let code = r.responses[0].partition_responses[0].error_code;
        if code != 0 {
            bail!("produce failed with error code {code}");
        }
        latencies.push(arrived.saturating_sub(sent.start));
    }
    Ok(latencies)
}

const PRODUCE_VERSION: i16 = 9;

/// Sends message i at `origin + i / rate`, up to [`IN_FLIGHT`] unanswered per leader,
/// and returns each message's time from its start (see below) to its acknowledgement.
async fn produce(
    args: &BenchArgs,
    topic: &str,
    leaders: &[String],
    rate: u32,
    origin: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let interval = Duration::from_secs(1) / rate;
    let mut value = vec![0u8; args.size];
    let mut pipes: HashMap<&str, Pipe> = HashMap::new();
    for leader in leaders {
        if !pipes.contains_key(leader.as_str()) {
            pipes.insert(leader, Pipe::open(leader, origin).await?);
        }
    }
    // Tokio's timers tick in milliseconds, as coarse as the interval itself: a thread of
    // its own keeps the schedule, to tens of microseconds, and wakes the sender.
    let (tick, mut ticks) = mpsc::unbounded_channel();
    let messages = args.messages;
    let clock = std::thread::spawn(move || {
        for i in 0..messages {
            let due = interval * u32::try_from(i).unwrap_or(u32::MAX);
            if let Some(wait) = (origin + due).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if tick.send((i, due)).is_err() {
                return;
            }
        }
    });
    while let Some((i, due)) = ticks.recv().await {
        let p = (i % leaders.len() as u64) as usize;
        let Some(pipe) = pipes.get_mut(leaders[p].as_str()) else {
            bail!("no connection to {}", leaders[p]);
        };
        // A message held up by the ones before it counts from when it was due; one the
        // sleep let out a little late counts from when it went out.
        let held = pipe.slots.available_permits() == 0;
        let slot = pipe.slots.clone().acquire_owned().await?;
        let start = if held { due } else { origin.elapsed() };
        value[..STAMP].copy_from_slice(&(start.as_nanos() as u64).to_le_bytes());
        let records = [Record {
            key: None,
            value: Some(&value),
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as i64,
        }];
        let req = produce_request(topic, p as i32, args.acks, &records);
        let id = i32::try_from(i)?;
        let frame = encode_request(id, super::CLIENT_ID, ApiKey::Produce, PRODUCE_VERSION, &req)?;
        pipe.sent.send(Sent {
            id,
            start,
            _slot: slot,
        })?;
        pipe.wr.write_all(&frame).await?;
    }
    if clock.join().is_err() {
        bail!("the clock thread failed");
    }
    let mut latencies = Vec::with_capacity(args.messages as usize);
    for (_, pipe) in pipes {
        drop(pipe.sent);
        latencies.extend(pipe.answers.await??);
    }
    Ok(latencies)
}

/// Long-polls every partition from `starts` until `expected` messages have arrived, and
/// returns each one's time from its scheduled send to its arrival here.
async fn follow(
    topic: String,
    leaders: Vec<String>,
    mut offsets: Vec<i64>,
    origin: Instant,
    expected: u64,
) -> anyhow::Result<Vec<Duration>> {
    let mut pool = Conns::default();
    let mut latencies = Vec::with_capacity(expected as usize);
    // One fetch per leader, each covering that leader's partitions.
    let mut by_leader: Vec<(String, Vec<usize>)> = Vec::new();
    for (p, l) in leaders.iter().enumerate() {
        match by_leader.iter_mut().find(|(addr, _)| addr == l) {
            Some((_, ps)) => ps.push(p),
            None => by_leader.push((l.clone(), vec![p])),
        }
    }
    while (latencies.len() as u64) < expected {
        for (leader, parts) in &by_leader {
            let from = parts.iter().map(|&p| (p as i32, offsets[p]));
            let req = fetch_request(&topic, from, 100, 8 << 20, 1 << 20);
            let conn = pool.to(leader).await?;
            let ResponseKind::Fetch(r) = conn.call(ApiKey::Fetch, 12, &req).await? else {
                bail!("unexpected response to Fetch");
            };
            let arrived = origin.elapsed();
            for part in r.responses.iter().flat_map(|t| &t.partitions) {
                if part.error_code != 0 {
                    bail!(
                        "fetch of partition {} failed with error code {}",
                        part.partition_index,
                        part.error_code
                    );
                }
                let p = part.partition_index as usize;
                let records = part.records.clone().unwrap_or_default();
                for (at, h) in HeaderIter::new(&records) {
                    if h.last_offset() < offsets[p] {
                        continue;
                    }
                    offsets[p] = h.next_offset();
                    let mut body = records.slice(at..at + h.total_len());
                    for rec in RecordBatchDecoder::decode(&mut body)?.records {
                        let Some(v) = rec.value.filter(|v| v.len() >= STAMP) else {
                            bail!("partition {p} holds a record this run did not write");
                        };
                        let start = Duration::from_nanos((&v[..STAMP]).get_u64_le());
                        latencies.push(arrived.saturating_sub(start));
                    }
                }
            }
        }
    }
    Ok(latencies)
}
