//! The `strata` command as a user runs it: plain `strata` is `strata serve`, with every
//! setting also readable from `STRATA_*` variables.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use strata_e2e::{Options, RawClient, Strata, now_ms};
use strata_protocol::batch::test_util::{TestRecord, build_batch};

#[test]
fn plain_strata_serves_with_its_settings_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("from-env");
    let s = Strata::with(Options {
        data_dir: Some(data_dir.clone()),
        settings_in_env: true,
        env: vec![("STRATA_KAFKA_NUM_PARTITIONS".into(), "3".into())],
    });
    // The listeners are the ones STRATA_KAFKA_LISTEN / STRATA_HTTP_LISTEN asked for
    // (loopback, any free port), not the 9092/9644 defaults.
    assert_ne!(s.kafka.port(), 9092);
    assert_ne!(s.http.port(), 9644);
    assert!(
        s.wait_ready(std::time::Duration::from_secs(20)),
        "{}",
        s.log_tail()
    );

    let mut c = RawClient::connect(s.kafka);
    let batch = build_batch(&[TestRecord {
        key: Some(b"k"),
        value: Some(b"v"),
        timestamp: now_ms(),
    }]);
    // Created with the default STRATA_KAFKA_NUM_PARTITIONS partitions, its log under
    // STRATA_DATA_DIR (`log/<topic id>/topic.name` names the topic).
    assert_eq!(c.create_topic("auto", -1, -1, &[]), 0);
    assert_eq!(c.produce("auto", 2, batch).0, 0);
    let topic_dirs: Vec<_> = std::fs::read_dir(data_dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| std::fs::read_to_string(d.join("topic.name")).is_ok_and(|n| n.trim() == "auto"))
        .collect();
    assert_eq!(topic_dirs.len(), 1, "{topic_dirs:?}");
    assert!(topic_dirs[0].join("2").is_dir());
}
