//! A whole broker in process, on a temporary directory, with a clock the test moves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use strata_meta::{Command, CommittedOffset, MetaConfig, MetaNode, OffsetCommit};
use strata_telemetry::Metrics;
use strata_tier::StoreConfig;
use tokio::net::TcpListener;

use crate::{BrokerConfig, BrokerOptions, Clock, RunningBroker};

struct ManualClock(AtomicI64);

impl ManualClock {
    fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

async fn start(dir: &Path, clock: Arc<ManualClock>, config: &[(&str, &str)]) -> RunningBroker {
    let meta = MetaNode::open(MetaConfig::new(0, dir.join("meta")))
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    RunningBroker::start(
        BrokerOptions {
            node_id: 0,
            log_dir: dir.join("log"),
            inter_broker_listener: "PLAINTEXT".into(),
            tls: None,
            oauth: None,
            config: BrokerConfig::from_pairs(config.iter().copied()).unwrap(),
            metrics: Metrics::new().unwrap(),
            clock,
            object_store: StoreConfig {
                url: format!("file://{}", dir.join("objects").display()),
                ..StoreConfig::default()
            },
            cache_dir: dir.join("cache"),
            rack: None,
        },
        meta,
        vec![crate::KafkaListener {
            socket: listener,
            name: "PLAINTEXT".into(),
            protocol: strata_security::SecurityProtocol::Plaintext,
            advertised: None,
        }],
    )
    .await
    .unwrap()
}

fn commit(group: &str, partition: i32, at_ms: i64) -> OffsetCommit {
    OffsetCommit {
        group: group.into(),
        topic: "t".into(),
        partition,
        committed: CommittedOffset {
            offset: 42,
            leader_epoch: 0,
            metadata: String::new(),
            commit_timestamp_ms: at_ms,
        },
        protocol_type: "consumer".into(),
    }
}

/// `offsets.retention.minutes`: offsets of a group without members go once they are
/// older than the retention (counted from the later of the commit and the moment the
/// group became empty); groups with members keep theirs however old.
// Current-thread: the broker's own tasks run only while the test awaits, so the group
// joined below is still joining when the expiry pass looks at it.
#[tokio::test(flavor = "current_thread")]
async fn committed_offsets_of_empty_groups_expire_after_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = 1_800_000_000_000;
    let clock = Arc::new(ManualClock(AtomicI64::new(t0)));
    let running = start(
        dir.path(),
        clock.clone(),
        &[("offsets.retention.minutes", "1")],
    )
    .await;
    let b = running.broker.clone();
    let t = b.check_new_topic("t", 2, 1, &BTreeMap::new()).unwrap();
    b.create_topic(t).await.unwrap();
    b.meta
        .write(Command::CommitOffsets {
            commits: vec![
                commit("old", 0, t0),
                commit("old", 1, t0 + 30_000),
                commit("busy", 0, t0),
            ],
        })
        .await
        .unwrap();
    let offsets = |group: &str| -> Vec<i32> {
        b.meta.read(|s| {
            s.groups
                .get(group)
                .map(|topics| topics["t"].keys().copied().collect())
                .unwrap_or_default()
        })
    };
    let expired = || b.metrics.group.expired_offsets_total.get();

    clock.set(t0 + 59_000);
    b.expire_offsets().await;
    assert_eq!(offsets("old"), vec![0, 1], "not a minute old yet");
    assert_eq!(expired(), 0);

    // A member joins "busy" (it is still joining: members hold their offsets).
    clock.set(t0 + 61_000);
    let join = crate::groups::tests::join_request("busy", "");
    let _ = b.groups.join(join, clock.now_ms());
    b.expire_offsets().await;
    assert_eq!(
        offsets("old"),
        vec![1],
        "the offset committed at t0 expired"
    );
    assert_eq!(
        offsets("busy"),
        vec![0],
        "a group with members keeps its offsets"
    );
    assert_eq!(expired(), 1);

    clock.set(t0 + 91_000);
    b.expire_offsets().await;
    assert!(offsets("old").is_empty());
    assert!(
        b.meta.read(|s| !s.groups.contains_key("old")),
        "a group left without offsets is forgotten"
    );
    assert_eq!(expired(), 2);
    running.shutdown(Duration::from_secs(5)).await;
}

/// Transaction markers are written as acks=all data is: a partition with fewer in-sync
/// replicas than its `min.insync.replicas` refuses them with NOT_ENOUGH_REPLICAS and
/// writes nothing (the coordinator retries); others take them.
#[tokio::test]
async fn markers_are_refused_below_min_insync_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock(AtomicI64::new(1_800_000_000_000)));
    let running = start(dir.path(), clock, &[]).await;
    let b = running.broker.clone();
    let strict = BTreeMap::from([("min.insync.replicas".to_string(), "2".to_string())]);
    for (name, configs) in [("strict", strict), ("plain", BTreeMap::new())] {
        let t = b.check_new_topic(name, 1, 1, &configs).unwrap();
        b.create_topic(t).await.unwrap();
    }
    let marker = crate::txn::Marker {
        producer_id: 7,
        producer_epoch: 0,
        commit: true,
    };
    let log_end = |name: &str| {
        let topic = b.topic(name).unwrap();
        b.partition_log(&topic, 0).unwrap().offsets().log_end
    };
    let refused = b.write_local_markers(marker, "strict", &[0]).await;
    assert!(
        matches!(
            refused.as_slice(),
            [(0, Err(kafka_protocol::ResponseError::NotEnoughReplicas))]
        ),
        "{refused:?}"
    );
    assert_eq!(log_end("strict"), 0);
    let written = b.write_local_markers(marker, "plain", &[0]).await;
    assert!(matches!(written.as_slice(), [(0, Ok(()))]), "{written:?}");
    assert_eq!(log_end("plain"), 1);
}
