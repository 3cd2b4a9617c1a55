//! Helpers shared by the end-to-end tests: the real `strata` binary as a child process
//! on ports it picks itself, and a raw Kafka client for requests no well-behaved client
//! would send.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// Milliseconds since the epoch. Test records carry recent timestamps: a record from 1970
/// is, correctly, deleted by the first retention pass (`retention.ms` defaults to 7 days).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The `strata` binary under test: `$STRATA_BIN`, else the workspace's debug build.
pub fn strata_bin() -> PathBuf {
    if let Ok(p) = std::env::var("STRATA_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/strata");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build --bin strata` (or set STRATA_BIN)",
        p.display()
    );
    p
}

/// How a `strata` command that was expected to stop by itself ended.
#[derive(Debug)]
pub struct Finished {
    /// The exit code (`None` if a signal ended it).
    pub code: Option<i32>,
    pub stderr: String,
}

/// Runs `strata ARGS` with only the `STRATA_*` and `AWS_*` variables in `env` (the test
/// process's own are removed), `HOME` set to an empty directory, and waits up to 60 s
/// for it to exit by itself.
pub fn run_strata(args: &[&str], env: &[(&str, &str)]) -> Finished {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(strata_bin());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if k.starts_with("STRATA_") || k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    let stderr_path = home.path().join("stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut child = cmd
        .args(args)
        .env("HOME", home.path())
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn strata");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "strata {args:?} did not exit within 60 s:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        code: status.code(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    }
}

/// A running `strata serve` process. Killed when dropped.
pub struct Strata {
    child: Option<Child>,
    pub kafka: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
    settings_in_env: bool,
    _tmp: tempfile::TempDir,
}

/// Options for starting a broker.
#[derive(Default)]
pub struct Options {
    /// Data directory; a fresh temporary one if `None`.
    pub data_dir: Option<PathBuf>,
    /// Extra environment, e.g. `STRATA_KAFKA_LOG_RETENTION_CHECK_INTERVAL_MS`.
    pub env: Vec<(String, String)>,
    /// Run plain `strata`, with the data directory and listeners given as `STRATA_*`
    /// variables instead of `strata serve` flags.
    pub settings_in_env: bool,
}

fn parse_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(" addr=")? + 6..];
    rest.split_whitespace().next()?.parse().ok()
}

impl Strata {
    pub fn start() -> Self {
        Self::with(Options::default())
    }

    pub fn with(opts: Options) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = opts.data_dir.unwrap_or_else(|| tmp.path().join("data"));
        // The broker's log stays off the data disk (a test may fill that one up).
        let log = tmp.path().join("strata.log");
        let mut s = Self {
            child: None,
            kafka: "127.0.0.1:0".parse().unwrap(),
            http: "127.0.0.1:0".parse().unwrap(),
            data_dir,
            log,
            env: opts.env,
            settings_in_env: opts.settings_in_env,
            _tmp: tmp,
        };
        s.spawn(0);
        s
    }

    /// Starts the process, on `kafka_port` (0: any free port), and waits until it serves.
    fn spawn(&mut self, kafka_port: u16) {
        let mut cmd = Command::new(strata_bin());
        // The broker refuses unknown STRATA_* variables (STRATA_BIN among them): it sees
        // only the ones this test gives it.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("STRATA_") {
                cmd.env_remove(k);
            }
        }
        // With Kafka's `listeners` setting the broker binds those instead.
        let named = self.env.iter().any(|(k, _)| k == "STRATA_KAFKA_LISTENERS");
        let settings = [
            ("data-dir", self.data_dir.display().to_string()),
            ("kafka-listen", format!("127.0.0.1:{kafka_port}")),
            ("http-listen", "127.0.0.1:0".to_string()),
        ]
        .into_iter()
        .filter(|(flag, _)| !(named && *flag == "kafka-listen"));
        if self.settings_in_env {
            for (flag, value) in settings {
                cmd.env(
                    format!("STRATA_{}", flag.to_uppercase().replace('-', "_")),
                    value,
                );
            }
        } else {
            cmd.arg("serve");
            for (flag, value) in settings {
                cmd.arg(format!("--{flag}")).arg(value);
            }
        }
        cmd.env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn strata");
        let stderr = child.stderr.take().unwrap();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                if line.contains("kafka listener ready") {
                    let _ = tx.send(("kafka", parse_addr(&line)));
                } else if line.contains("http listener ready") {
                    let _ = tx.send(("http", parse_addr(&line)));
                }
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut kafka, mut http) = (None, None);
        while kafka.is_none() || http.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(("kafka", a)) => kafka = a,
                Ok((_, a)) => http = a,
                Err(_) => panic!("strata did not become ready:\n{}", self.log_tail()),
            }
        }
        self.kafka = kafka.unwrap();
        self.http = http.unwrap();
    }

    pub fn bootstrap(&self) -> String {
        self.kafka.to_string()
    }

    /// The last lines the broker logged.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The whole broker log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("broker is running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("strata did not exit after SIGTERM:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: a crash, with no chance to sync or clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same data directory and Kafka port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the broker first");
        let port = self.kafka.port();
        self.spawn(port);
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("broker is running").id()
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// `GET path` on the HTTP listener: (status code, body).
    /// Waits up to `within` for `/readyz` to answer 200 (the node is registered and its
    /// metadata caught up, which may come a little after the listeners open).
    pub fn wait_ready(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.http_get("/readyz").0 == 200 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn http_get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: strata\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// The value of one metric series, e.g. `strata_kafka_connection_errors_total{reason="frame_too_large"}`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }
}

impl Drop for Strata {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- strata log (last lines) ----\n{}", self.log_tail());
        }
    }
}

/// A raw Kafka client over a blocking socket.
pub struct RawClient {
    stream: TcpStream,
    next_correlation: i32,
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        Self {
            stream,
            next_correlation: 1,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// A frame encoded at `version` whose header then claims `claimed`: how a client from
    /// the future, or a broken one, would send a version this broker does not know.
    pub fn frame_claiming(
        api: ApiKey,
        version: i16,
        claimed: i16,
        correlation_id: i32,
        body: &impl Encodable,
    ) -> Vec<u8> {
        let mut f = Self::frame(api, version, correlation_id, body);
        f[6..8].copy_from_slice(&claimed.to_be_bytes());
        f
    }

    /// Encodes a request frame (size prefix included).
    pub fn frame(api: ApiKey, version: i16, correlation_id: i32, body: &impl Encodable) -> Vec<u8> {
        Self::frame_with(api, version, correlation_id, |buf| {
            body.encode(buf, version).unwrap()
        })
    }

    fn frame_with(
        api: ApiKey,
        version: i16,
        correlation_id: i32,
        body: impl FnOnce(&mut BytesMut),
    ) -> Vec<u8> {
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("strata-e2e")))
            .encode(&mut buf, api.request_header_version(version))
            .unwrap();
        body(&mut buf);
        let mut out = (buf.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(&buf);
        out
    }

    /// Sends any request and decodes its response.
    pub fn request_kind(&mut self, version: i16, body: &RequestKind) -> ResponseKind {
        let api = api_key_of(body);
        let id = self.next_correlation;
        self.next_correlation += 1;
        self.send_raw(&Self::frame_with(api, version, id, |buf| {
            body.encode(buf, version).unwrap()
        }))
        .unwrap();
        self.read_response(api, version, id)
    }

    /// Reads the next response, which must answer request `id`, and decodes it.
    pub fn read_response(&mut self, api: ApiKey, version: i16, id: i32) -> ResponseKind {
        let mut frame = self.read_frame().unwrap();
        let header =
            ResponseHeader::decode(&mut frame, api.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, id);
        ResponseKind::decode(api, &mut frame, version).unwrap()
    }

    /// How long reads wait before failing with a timeout (15 s unless set).
    pub fn set_read_timeout(&self, timeout: Duration) {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
    }

    /// Reads one response frame (without its size prefix).
    pub fn read_frame(&mut self) -> std::io::Result<Bytes> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size)?;
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut body)?;
        Ok(Bytes::from(body))
    }

    /// Sends a request and decodes its response, checking the correlation id.
    pub fn request(&mut self, api: ApiKey, version: i16, body: &impl Encodable) -> ResponseKind {
        let id = self.next_correlation;
        self.next_correlation += 1;
        self.send_raw(&Self::frame(api, version, id, body)).unwrap();
        self.read_response(api, version, id)
    }

    /// Whether the broker closed this connection (EOF or reset within the read timeout).
    pub fn is_closed(&mut self) -> bool {
        use std::io::ErrorKind::*;
        let mut b = [0u8; 1];
        match self.stream.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe),
        }
    }
}

/// Re-exported so tests can match on requests they build.
pub use kafka_protocol::messages;

/// Asserts the broker still serves a normal request on a new connection.
pub fn assert_serving(addr: SocketAddr) {
    let mut c = RawClient::connect(addr);
    let resp = c.request(
        ApiKey::Metadata,
        12,
        &messages::MetadataRequest::default().with_topics(None),
    );
    assert!(matches!(resp, ResponseKind::Metadata(_)));
}

/// The API key of a request.
pub fn api_key_of(req: &RequestKind) -> ApiKey {
    match req {
        RequestKind::Produce(_) => ApiKey::Produce,
        RequestKind::Fetch(_) => ApiKey::Fetch,
        RequestKind::ListOffsets(_) => ApiKey::ListOffsets,
        RequestKind::Metadata(_) => ApiKey::Metadata,
        RequestKind::ApiVersions(_) => ApiKey::ApiVersions,
        RequestKind::CreateTopics(_) => ApiKey::CreateTopics,
        RequestKind::DeleteTopics(_) => ApiKey::DeleteTopics,
        RequestKind::DescribeConfigs(_) => ApiKey::DescribeConfigs,
        RequestKind::OffsetCommit(_) => ApiKey::OffsetCommit,
        RequestKind::OffsetFetch(_) => ApiKey::OffsetFetch,
        RequestKind::FindCoordinator(_) => ApiKey::FindCoordinator,
        RequestKind::JoinGroup(_) => ApiKey::JoinGroup,
        RequestKind::Heartbeat(_) => ApiKey::Heartbeat,
        RequestKind::LeaveGroup(_) => ApiKey::LeaveGroup,
        RequestKind::SyncGroup(_) => ApiKey::SyncGroup,
        RequestKind::DescribeGroups(_) => ApiKey::DescribeGroups,
        RequestKind::ListGroups(_) => ApiKey::ListGroups,
        RequestKind::DeleteGroups(_) => ApiKey::DeleteGroups,
        RequestKind::OffsetDelete(_) => ApiKey::OffsetDelete,
        RequestKind::InitProducerId(_) => ApiKey::InitProducerId,
        RequestKind::DescribeProducers(_) => ApiKey::DescribeProducers,
        RequestKind::CreatePartitions(_) => ApiKey::CreatePartitions,
        RequestKind::DeleteRecords(_) => ApiKey::DeleteRecords,
        RequestKind::AlterConfigs(_) => ApiKey::AlterConfigs,
        RequestKind::IncrementalAlterConfigs(_) => ApiKey::IncrementalAlterConfigs,
        RequestKind::DescribeCluster(_) => ApiKey::DescribeCluster,
        RequestKind::OffsetForLeaderEpoch(_) => ApiKey::OffsetForLeaderEpoch,
        RequestKind::DescribeLogDirs(_) => ApiKey::DescribeLogDirs,
        RequestKind::ElectLeaders(_) => ApiKey::ElectLeaders,
        RequestKind::AddPartitionsToTxn(_) => ApiKey::AddPartitionsToTxn,
        RequestKind::AddOffsetsToTxn(_) => ApiKey::AddOffsetsToTxn,
        RequestKind::TxnOffsetCommit(_) => ApiKey::TxnOffsetCommit,
        RequestKind::EndTxn(_) => ApiKey::EndTxn,
        RequestKind::WriteTxnMarkers(_) => ApiKey::WriteTxnMarkers,
        RequestKind::DescribeTransactions(_) => ApiKey::DescribeTransactions,
        RequestKind::ListTransactions(_) => ApiKey::ListTransactions,
        RequestKind::SaslHandshake(_) => ApiKey::SaslHandshake,
        RequestKind::SaslAuthenticate(_) => ApiKey::SaslAuthenticate,
        RequestKind::DescribeUserScramCredentials(_) => ApiKey::DescribeUserScramCredentials,
        RequestKind::AlterUserScramCredentials(_) => ApiKey::AlterUserScramCredentials,
        RequestKind::CreateAcls(_) => ApiKey::CreateAcls,
        RequestKind::DescribeAcls(_) => ApiKey::DescribeAcls,
        RequestKind::DeleteAcls(_) => ApiKey::DeleteAcls,
        other => panic!("add {other:?} to api_key_of"),
    }
}

fn topic_name(s: &str) -> messages::TopicName {
    messages::TopicName(StrBytes::from_string(s.to_string()))
}

/// The requests most tests need, at one current version each.
impl RawClient {
    /// CreateTopics v7; returns the topic's error code.
    pub fn create_topic(
        &mut self,
        topic: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &[(&str, &str)],
    ) -> i16 {
        use messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
        let configs = configs
            .iter()
            .map(|(k, v)| {
                CreatableTopicConfig::default()
                    .with_name(StrBytes::from_string(k.to_string()))
                    .with_value(Some(StrBytes::from_string(v.to_string())))
            })
            .collect();
        let req = messages::CreateTopicsRequest::default()
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(topic_name(topic))
                    .with_num_partitions(partitions)
                    .with_replication_factor(replication_factor)
                    .with_configs(configs),
            ])
            .with_timeout_ms(10_000);
        match self.request(ApiKey::CreateTopics, 7, &req) {
            ResponseKind::CreateTopics(r) => r.topics[0].error_code,
            other => panic!("{other:?}"),
        }
    }

    /// OffsetCommit v2 of one offset outside group management; returns its error code.
    pub fn commit_offset(&mut self, group: &str, topic: &str, partition: i32, offset: i64) -> i16 {
        use messages::offset_commit_request::{
            OffsetCommitRequestPartition, OffsetCommitRequestTopic,
        };
        let req = messages::OffsetCommitRequest::default()
            .with_group_id(messages::GroupId(StrBytes::from_string(group.to_string())))
            .with_generation_id_or_member_epoch(-1)
            .with_retention_time_ms(-1)
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(vec![
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(partition)
                            .with_committed_offset(offset),
                    ]),
            ]);
        match self.request(ApiKey::OffsetCommit, 2, &req) {
            ResponseKind::OffsetCommit(r) => r.topics[0].partitions[0].error_code,
            other => panic!("{other:?}"),
        }
    }

    /// Produce v9 with acks=all of `records` to one partition; returns (error code, base offset).
    pub fn produce(&mut self, topic: &str, partition: i32, records: Vec<u8>) -> (i16, i64) {
        self.produce_with(topic, partition, records, -1, 10_000)
    }

    /// Produce v9 with `acks` (1 or -1) and `timeout_ms`; returns (error code, base offset).
    pub fn produce_with(
        &mut self,
        topic: &str,
        partition: i32,
        records: Vec<u8>,
        acks: i16,
        timeout_ms: i32,
    ) -> (i16, i64) {
        use messages::produce_request::{PartitionProduceData, TopicProduceData};
        let req = messages::ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(timeout_ms)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(topic_name(topic))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(partition)
                            .with_records(Some(Bytes::from(records))),
                    ]),
            ]);
        match self.request(ApiKey::Produce, 9, &req) {
            ResponseKind::Produce(r) => {
                let p = &r.responses[0].partition_responses[0];
                (p.error_code, p.base_offset)
            }
            other => panic!("{other:?}"),
        }
    }

    /// Fetch v12 of one partition without waiting; returns that partition's answer.
    pub fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: i32,
    ) -> messages::fetch_response::PartitionData {
        use messages::fetch_request::{FetchPartition, FetchTopic};
        let req = messages::FetchRequest::default()
            .with_max_wait_ms(0)
            .with_max_bytes(max_bytes)
            .with_session_epoch(-1)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(topic_name(topic))
                    .with_partitions(vec![
                        FetchPartition::default()
                            .with_partition(partition)
                            .with_fetch_offset(offset)
                            .with_partition_max_bytes(max_bytes),
                    ]),
            ]);
        match self.request(ApiKey::Fetch, 12, &req) {
            ResponseKind::Fetch(mut r) => r.responses.remove(0).partitions.remove(0),
            other => panic!("{other:?}"),
        }
    }
}
