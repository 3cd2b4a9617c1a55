//! End-to-end tests of [`MetaNode`] against real files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use openraft::EntryPayload;
use uuid::Uuid;

use crate::codec::scan_records;
use crate::log_store::LOG_FILE;
use crate::log_store::LOG_MAGIC;
use crate::log_store::LogRecord;
use crate::raft::Entry;
use crate::state_machine::SNAPSHOT_FILE;
use crate::*;

fn partitions(n: usize) -> Vec<PartitionMeta> {
    (0..n)
        .map(|i| PartitionMeta {
            leader: 1,
            leader_epoch: 0,
            replicas: vec![1],
            isr: vec![1],
            partition_epoch: 0,
            log_start_offset: i as i64,
            remote_segments: Default::default(),
        })
        .collect()
}

fn create(name: &str, id: u128, n: usize) -> Command {
    Command::CreateTopic {
        name: name.to_string(),
        id: Uuid::from_u128(id),
        partitions: partitions(n),
        configs: BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]),
    }
}

fn config(dir: &Path, snapshot_every: u64) -> MetaConfig {
    MetaConfig {
        snapshot_every,
        ..MetaConfig::new(1, dir)
    }
}

fn snapshot_of(node: &MetaNode) -> ClusterState {
    node.read(|s| s.clone())
}

/// Decodes every intact record of the log file.
fn log_records(dir: &Path) -> Vec<(u64, u64, LogRecord<Entry>)> {
    let bytes = std::fs::read(dir.join(LOG_FILE)).unwrap();
    assert!(bytes.starts_with(LOG_MAGIC));
    let scan = scan_records(&bytes, LOG_MAGIC.len());
    assert_eq!(scan.corruption, None);
    scan.records
        .iter()
        .map(|r| {
            (
                r.offset,
                r.framed_len(),
                serde_json::from_slice(r.payload).unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_results_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), MetaConfig::DEFAULT_SNAPSHOT_EVERY);
    let node = MetaNode::open(cfg.clone()).await.unwrap();
    let mut applied = node.subscribe();
    let applied_at_open = *applied.borrow_and_update();

    let init = |id: &str| Command::InitCluster {
        cluster_id: id.to_string(),
    };
    assert_eq!(
        node.write(init("cluster-a")).await.unwrap(),
        CommandResult::ClusterId("cluster-a".into())
    );
    assert!(applied.has_changed().unwrap());
    assert!(*applied.borrow_and_update() > applied_at_open);
    assert_eq!(
        node.write(init("cluster-b")).await.unwrap(),
        CommandResult::ClusterId("cluster-a".into())
    );
    let broker = BrokerInfo {
        node_id: 1,
        host: "localhost".into(),
        port: 9092,
        rack: Some("r1".into()),
        epoch: 1,
        fenced: false,
        transaction_version: 2,
        metadata_version: crate::METADATA_VERSION,
        listeners: vec![],
    };
    assert_eq!(
        node.write(Command::RegisterBroker(broker.clone()))
            .await
            .unwrap(),
        CommandResult::BrokerEpoch(1)
    );
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        assert_eq!(
            node.write(create(name, i as u128 + 1, 3)).await.unwrap(),
            CommandResult::Ok
        );
    }
    assert_eq!(
        node.write(create("a", 99, 1)).await.unwrap(),
        CommandResult::TopicAlreadyExists
    );
    let b = node.read(|s| s.topics["b"].clone());
    assert_eq!(
        node.write(Command::DeleteTopic { name: "b".into() })
            .await
            .unwrap(),
        CommandResult::Deleted(b)
    );
    assert_eq!(
        node.write(Command::DeleteTopic { name: "b".into() })
            .await
            .unwrap(),
        CommandResult::UnknownTopic
    );
    let advance = |offset| Command::AdvanceLogStartOffset {
        topic_id: Uuid::from_u128(1),
        partition: 2,
        offset,
    };
    assert_eq!(node.write(advance(100)).await.unwrap(), CommandResult::Ok);
    assert_eq!(node.write(advance(50)).await.unwrap(), CommandResult::Ok);
    assert_eq!(
        node.read(|s| s.topic_by_id(Uuid::from_u128(1)).unwrap().partitions[2].log_start_offset),
        100,
        "log start offset never goes backwards"
    );
    assert_eq!(
        node.write(Command::AdvanceLogStartOffset {
            topic_id: Uuid::from_u128(1),
            partition: 3,
            offset: 1,
        })
        .await
        .unwrap(),
        CommandResult::UnknownPartition
    );
    assert_eq!(
        node.write(Command::AdvanceLogStartOffset {
            topic_id: Uuid::from_u128(2),
            partition: 0,
            offset: 1,
        })
        .await
        .unwrap(),
        CommandResult::UnknownTopic
    );

    let before = snapshot_of(&node);
    assert_eq!(before.cluster_id.as_deref(), Some("cluster-a"));
    assert_eq!(before.brokers[&1], broker);
    assert_eq!(before.topics.keys().collect::<Vec<_>>(), vec!["a", "c"]);
    assert_eq!(*applied.borrow(), node.applied_index());

    // A second process (or node) may not open the same directory.
    let err = MetaNode::open(cfg.clone()).await.unwrap_err();
    assert!(matches!(err, MetaError::Storage { .. }), "{err}");
    assert!(err.to_string().contains("LOCK"), "{err}");

    node.shutdown().await.unwrap();
    let err = node.write(init("x")).await.unwrap_err();
    assert!(matches!(err, MetaError::ShutDown { node_id: 1 }), "{err}");
    drop(node);

    let node = MetaNode::open(cfg).await.unwrap();
    assert_eq!(snapshot_of(&node), before);
    // And it keeps working.
    assert_eq!(
        node.write(create("d", 4, 1)).await.unwrap(),
        CommandResult::Ok
    );
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_purge_and_compact_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 10);
    let node = MetaNode::open(cfg.clone()).await.unwrap();
    let mut payload_bytes = 0u64;
    for i in 0..100u128 {
        let cmd = if i % 4 == 3 {
            Command::SetTopicConfigs {
                name: format!("topic-{}", i - 1),
                configs: BTreeMap::from([("cleanup.policy".into(), "compact".into())]),
            }
        } else {
            create(&format!("topic-{i}"), i + 1, 4)
        };
        payload_bytes += serde_json::to_vec(&cmd).unwrap().len() as u64;
        assert_eq!(node.write(cmd).await.unwrap(), CommandResult::Ok);
    }
    let before = snapshot_of(&node);
    assert_eq!(before.topics.len(), 75);
    assert_eq!(
        before.topics["topic-2"].configs["cleanup.policy"],
        "compact"
    );
    // Snapshots are built in the background; once things settle the last one is within
    // `snapshot_every` of the last entry (index 101) and the log is purged behind it.
    node.raft()
        .wait(Some(std::time::Duration::from_secs(10)))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index > 101 - 10),
            "purged behind the last snapshot",
        )
        .await
        .unwrap();
    node.shutdown().await.unwrap();
    drop(node);

    assert!(dir.path().join(SNAPSHOT_FILE).exists());
    // 100 entry records take more than their command payloads alone; the compacted log
    // holds at most the few entries after the last snapshot.
    let log_len = std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len();
    assert!(
        log_len < payload_bytes / 2,
        "log file is {log_len} bytes; 100 uncompacted entries would be > {payload_bytes}"
    );
    let records = log_records(dir.path());
    let entries = records
        .iter()
        .filter(|(_, _, r)| matches!(r, LogRecord::Entry(_)))
        .count();
    assert!(entries <= 20, "{entries} entry records left in the log");
    let purged: Vec<u64> = records
        .iter()
        .filter_map(|(_, _, r)| match r {
            LogRecord::PurgeUpto(l) => Some(l.index),
            _ => None,
        })
        .collect();
    assert!(
        purged.iter().any(|&p| p > 91),
        "log was purged behind a recent snapshot: {purged:?}, {} records, {log_len} bytes",
        records.len()
    );

    let node = MetaNode::open(cfg).await.unwrap();
    assert_eq!(snapshot_of(&node), before);
    node.shutdown().await.unwrap();
}

/// The record of the last `CreateTopic` entry in the log: (offset, framed length, name).
fn last_create_record(dir: &Path) -> (u64, u64, String) {
    log_records(dir)
        .into_iter()
        .filter_map(|(offset, len, r)| match r {
            LogRecord::Entry(Entry {
                payload: EntryPayload::Normal(Command::CreateTopic { name, .. }),
                ..
            }) => Some((offset, len, name)),
            _ => None,
        })
        .next_back()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_discarded_and_earlier_entries_survive() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), MetaConfig::DEFAULT_SNAPSHOT_EVERY);
    let node = MetaNode::open(cfg.clone()).await.unwrap();
    for i in 0..20u128 {
        assert_eq!(
            node.write(create(&format!("t{i}"), i + 1, 2))
                .await
                .unwrap(),
            CommandResult::Ok
        );
    }
    let all = snapshot_of(&node);
    node.shutdown().await.unwrap();
    drop(node);

    let log_path = dir.path().join(LOG_FILE);
    let clean = std::fs::read(&log_path).unwrap();
    let (offset, len, name) = last_create_record(dir.path());
    assert_eq!(name, "t19");
    let mut without_last = all.clone();
    without_last.topics.remove("t19");
    without_last.topics_epoch -= 1;

    // Cut inside the last entry record: header, checksum, payload, last byte.
    let cuts = [1, 3, 4, 7, 8, 9, len / 2, len - 1].map(|c| (offset + c) as usize);
    for cut in cuts {
        std::fs::write(&log_path, &clean[..cut]).unwrap();
        let node = MetaNode::open(cfg.clone()).await.unwrap();
        assert_eq!(snapshot_of(&node), without_last, "cut at byte {cut}");
        node.shutdown().await.unwrap();
    }

    // Garbage (or zeros) after intact records: every written entry survives.
    let mut tails: Vec<Vec<u8>> = vec![vec![0u8; 4096], b"\x07\x00\x00\x00garbage".to_vec()];
    let mut x = 12345u32;
    tails.push(
        (0..1000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect(),
    );
    for tail in tails {
        let mut bytes = clean.clone();
        bytes.extend_from_slice(&tail);
        std::fs::write(&log_path, &bytes).unwrap();
        let node = MetaNode::open(cfg.clone()).await.unwrap();
        assert_eq!(snapshot_of(&node), all);
        node.shutdown().await.unwrap();
    }

    // After recovering from a cut, the node accepts writes that survive the next restart.
    std::fs::write(&log_path, &clean[..(offset + len / 2) as usize]).unwrap();
    let node = MetaNode::open(cfg.clone()).await.unwrap();
    assert_eq!(
        node.write(create("after", 1000, 1)).await.unwrap(),
        CommandResult::Ok
    );
    let expected = snapshot_of(&node);
    assert!(expected.topics.contains_key("after"));
    assert!(!expected.topics.contains_key("t19"));
    node.shutdown().await.unwrap();
    drop(node);
    let node = MetaNode::open(cfg).await.unwrap();
    assert_eq!(snapshot_of(&node), expected);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 5);
    let node = MetaNode::open(cfg.clone()).await.unwrap();
    for i in 0..12u128 {
        node.write(create(&format!("t{i}"), i + 1, 1))
            .await
            .unwrap();
    }
    node.shutdown().await.unwrap();
    drop(node);

    // A record with a valid checksum that this version cannot decode is not a crash
    // artifact: refuse to open, naming the file.
    let log_path = dir.path().join(LOG_FILE);
    let clean_log = std::fs::read(&log_path).unwrap();
    let mut bytes = clean_log.clone();
    crate::codec::encode_record(br#"{"FutureRecord":1}"#, &mut bytes).unwrap();
    std::fs::write(&log_path, &bytes).unwrap();
    let err = MetaNode::open(cfg.clone()).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, MetaError::Storage { .. }), "{msg}");
    assert!(msg.contains(&log_path.display().to_string()), "{msg}");
    assert!(msg.contains("offset"), "{msg}");
    std::fs::write(&log_path, &clean_log).unwrap();

    // A foreign file.
    std::fs::write(&log_path, b"definitely not a raft log").unwrap();
    let err = MetaNode::open(cfg.clone()).await.unwrap_err();
    assert!(
        err.to_string().contains("not a strata-meta raft log"),
        "{err}"
    );
    std::fs::write(&log_path, &clean_log).unwrap();

    // A damaged snapshot.
    let snap_path = dir.path().join(SNAPSHOT_FILE);
    let clean_snap = std::fs::read(&snap_path).unwrap();
    let mut bytes = clean_snap.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&snap_path, &bytes).unwrap();
    let err = MetaNode::open(cfg.clone()).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&snap_path.display().to_string()), "{msg}");
    assert!(msg.contains("snapshot is damaged"), "{msg}");
    std::fs::write(&snap_path, &clean_snap).unwrap();

    // Restored files open fine.
    let node = MetaNode::open(cfg).await.unwrap();
    assert_eq!(node.read(|s| s.topics.len()), 12);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_config_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let err = MetaNode::open(config(dir.path(), 0)).await.unwrap_err();
    assert!(matches!(err, MetaError::Config(_)), "{err}");
}

#[test]
fn api_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let cfg = MetaConfig::new(1, "/nonexistent");
    send(&MetaNode::open(cfg));
    let _ = |n: MetaNode| {
        send_sync(&n);
        send(&n.write(Command::DeleteTopic { name: "x".into() }));
        send(&n.shutdown());
    };
}

/// Environment variable that makes [`acknowledged_writes_survive_kill_9`] run as the child and names its directory.
const KILL9_DIR_ENV: &str = "STRATA_META_KILL9_DIR";

/// The child half of [`acknowledged_writes_survive_kill_9`]: writes topics forever and prints
/// `ACK <name>` after each write returns, until it is killed.
fn kill9_child(dir: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let node = MetaNode::open(config(Path::new(dir), 25)).await.unwrap();
        let start = node.read(|s| s.topics.len()) as u128;
        for i in start.. {
            let name = format!("k{i}");
            let result = node.write(create(&name, i + 1, 1)).await.unwrap();
            assert_eq!(result, CommandResult::Ok);
            println!("ACK {name}");
        }
    });
}

/// Real crash test: a child process writes as fast as it can and is killed with SIGKILL at
/// some point; every write it saw acknowledged must be there after reopening.
#[test]
fn acknowledged_writes_survive_kill_9() {
    use std::io::BufRead;
    use std::process::Stdio;

    // The same test binary, started by this test with the variable set, is the child.
    if let Ok(dir) = std::env::var(KILL9_DIR_ENV) {
        kill9_child(&dir);
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: Vec<String> = Vec::new();
    for round in 0..3 {
        let mut child = std::process::Command::new(&exe)
            .args([
                "tests::acknowledged_writes_survive_kill_9",
                "--exact",
                "--nocapture",
            ])
            .env(KILL9_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let kill_after = 40 + round * 17;
        let mut this_round = 0;
        for line in stdout.lines() {
            let line = line.unwrap();
            if let Some(name) = line.strip_prefix("ACK ") {
                acked.push(name.to_string());
                this_round += 1;
                if this_round == kill_after {
                    child.kill().unwrap(); // SIGKILL
                }
            }
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "child was killed, not finished");
        assert!(
            this_round >= kill_after,
            "round {round}: child acked only {this_round}"
        );

        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let node = MetaNode::open(config(dir.path(), 25)).await.unwrap();
            let missing: Vec<&String> = node.read(|s| {
                acked
                    .iter()
                    .filter(|n| !s.topics.contains_key(n.as_str()))
                    .collect()
            });
            assert!(
                missing.is_empty(),
                "round {round}: lost acknowledged writes {missing:?}"
            );
            node.shutdown().await.unwrap();
        });
    }
}
