//! `strata bench` against a real broker, and the admin API's view of what it wrote,
//! including data that moved to the object store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use strata_e2e::{Options, Strata, strata_bin};

fn bench(s: &Strata, extra: &[&str]) -> String {
    let out = Command::new(strata_bin())
        .args(["bench", "--bootstrap", &s.bootstrap(), "--topic", "b"])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log_tail()
    );
    stdout
}

fn partitions(s: &Strata) -> Vec<serde_json::Value> {
    let (status, body) = s.http_get("/api/v1/partitions");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Vec<serde_json::Value>>(&body).unwrap()
}

fn sum(ps: &[serde_json::Value], field: &str) -> i64 {
    ps.iter().map(|p| p[field].as_i64().unwrap_or(0)).sum()
}

#[test]
fn bench_round_trip_and_partitions_api_through_the_object_store() {
    let s = Strata::with(Options {
        env: vec![(
            "STRATA_KAFKA_LOG_RETENTION_CHECK_INTERVAL_MS".into(),
            "300".into(),
        )],
        ..Options::default()
    });
    let out = bench(
        &s,
        &[
            "--messages",
            "6000",
            "--size",
            "200",
            "--partitions",
            "3",
            "--batch-bytes",
            "8000",
            "--topic-config",
            "segment.bytes=20000",
            "--topic-config",
            "local.retention.bytes=40000",
        ],
    );
    assert!(out.contains("produce: 6000 msgs of 200 B"), "{out}");
    assert!(out.contains("consume: 6000 msgs"), "{out}");

    let ps = partitions(&s);
    assert_eq!(ps.len(), 3);
    assert!(ps.iter().all(|p| p["topic"] == "b"));
    assert_eq!(sum(&ps, "log_end_offset"), 6000);
    assert_eq!(sum(&ps, "high_watermark"), 6000);

    // Sealed segments reach the object store and leave local disk.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ps = partitions(&s);
        let moved = ps.iter().all(|p| {
            p["remote_segments"].as_i64().unwrap_or(0) > 0
                && p["local_log_start_offset"].as_i64().unwrap_or(0) > 0
        });
        if moved {
            assert_eq!(sum(&ps, "log_start_offset"), 0, "the log still starts at 0");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "data never moved to the object store: {ps:?}\n{}",
            s.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = s
        .metric("strata_tier_read_bytes_total{source=\"object_store\"}")
        .unwrap_or(0.0);
    let out = bench(&s, &["--consume-only"]);
    assert!(out.contains("consume: 6000 msgs"), "{out}");
    let after = s
        .metric("strata_tier_read_bytes_total{source=\"object_store\"}")
        .unwrap_or(0.0);
    assert!(
        after > before,
        "the replay read from the object store ({before} -> {after})"
    );
}

/// Record bytes fetches were served from `source`, per strata_tier_read_bytes_total.
fn read_bytes(s: &Strata, source: &str) -> f64 {
    s.metric(&format!(
        "strata_tier_read_bytes_total{{source=\"{source}\"}}"
    ))
    .unwrap_or(0.0)
}

#[test]
fn recent_appends_are_served_from_memory_unless_the_tail_cache_is_off() {
    let args = [
        "--messages",
        "3000",
        "--size",
        "300",
        "--partitions",
        "2",
        "--topic-config",
        "segment.bytes=100000",
    ];
    let on = Strata::start();
    let out = bench(&on, &args);
    assert!(out.contains("consume: 3000 msgs"), "{out}");
    assert!(
        read_bytes(&on, "memory") >= 900_000.0,
        "{} bytes from memory",
        read_bytes(&on, "memory")
    );
    assert_eq!(read_bytes(&on, "local"), 0.0, "no segment file was read");
    assert!(on.metric("strata_log_tail_cache_bytes").unwrap_or(0.0) > 0.0);

    let off = Strata::with(Options {
        env: vec![("STRATA_WAL_CACHE_BYTES".into(), "0".into())],
        ..Options::default()
    });
    let out = bench(&off, &args);
    assert!(out.contains("consume: 3000 msgs"), "{out}");
    assert_eq!(read_bytes(&off, "memory"), 0.0);
    assert!(read_bytes(&off, "local") >= 900_000.0);
}

/// `strata bench` with its own arguments only (no `--topic b`): (success, stdout, stderr).
fn bench_raw(s: &Strata, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(strata_bin())
        .args(["bench", "--bootstrap", &s.bootstrap()])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The value of `label: <value>` on a line of `text`.
fn field<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .map(str::trim)
}

#[test]
fn bench_runs_twice_in_a_row_each_on_its_own_data() {
    let s = Strata::start();
    let small = ["--messages", "2000", "--size", "100", "--partitions", "2"];
    // No topic named: each run makes a fresh one and reads back exactly its messages.
    let mut topics = Vec::new();
    for _ in 0..2 {
        let (ok, out, err) = bench_raw(&s, &small);
        assert!(ok, "{out}{err}");
        assert!(out.contains("consume: 2000 msgs"), "{out}");
        topics.push(field(&err, "topic:").unwrap().to_string());
    }
    assert_ne!(topics[0], topics[1], "each run uses a new topic");
    // A named topic is reused, and a second run still reads back only its own messages.
    for _ in 0..2 {
        let (ok, out, err) = bench_raw(&s, &[&small[..], &["--topic", "named"]].concat());
        assert!(ok, "{out}{err}");
        assert!(out.contains("consume: 2000 msgs"), "{out}");
    }
    // --consume-only replays the whole named topic: both runs.
    let (ok, out, err) = bench_raw(&s, &["--topic", "named", "--consume-only"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("consume: 4000 msgs"), "{out}");
    // The progress line's final time is the result line's.
    let bar = err.rsplit('\r').next().unwrap_or("");
    let secs = |s: &str| -> String {
        s.split_whitespace()
            .find_map(|w| w.strip_suffix('s').filter(|n| n.parse::<f64>().is_ok()))
            .unwrap_or("")
            .to_string()
    };
    let result = out.lines().find(|l| l.starts_with("consume:")).unwrap();
    let in_secs = result
        .split(" in ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap();
    assert_eq!(
        secs(bar),
        format!("{:.1}", in_secs.parse::<f64>().unwrap()),
        "{bar} vs {result}"
    );

    // Consuming a topic that does not exist is an error, and does not create it.
    let (ok, out, err) = bench_raw(&s, &["--topic", "nope", "--consume-only"]);
    assert!(!ok, "{out}{err}");
    assert!(err.contains("topic nope does not exist"), "{err}");
    let (_, body) = s.http_get("/api/v1/partitions");
    assert!(!body.contains("\"nope\""), "{body}");
    let (ok, _, err) = bench_raw(&s, &["--consume-only"]);
    assert!(!ok && err.contains("--topic"), "{err}");
}

#[test]
fn bench_latency_mode_reports_ack_and_consume_percentiles_for_every_message() {
    let s = Strata::start();
    let args = ["--rate", "500", "--messages", "300", "--partitions", "3"];
    let (ok, out, err) = bench_raw(&s, &args);
    assert!(ok, "{out}{err}");
    assert!(out.contains("latency at 500 msgs/s, 300 msgs"), "{out}");
    for label in ["produce-to-ack", "produce-to-consume"] {
        let line = field(&out, &format!("  {label}")).unwrap_or_else(|| panic!("{out}"));
        assert!(line.contains("p99 ") && line.contains("p99.9 "), "{line}");
    }
    // Every message went out as its own request, and the consumer saw all of them.
    let topic = field(&err, "topic:").unwrap().to_string();
    let (ok, out, err) = bench_raw(&s, &["--topic", &topic, "--consume-only"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("consume: 300 msgs"), "{out}");
    assert!(
        s.metric("strata_kafka_requests_total{api=\"Produce\"}")
            .unwrap()
            >= 300.0
    );
    // Values too small to carry a send time are refused before anything is sent.
    let (ok, _, err) = bench_raw(&s, &["--rate", "10", "--size", "4"]);
    assert!(!ok);
    assert!(err.contains("--size of at least 8"), "{err}");
}
