//! The mistakes of a user's first hour, made through the real binary with the exact flags
//! a user types: each ends in one readable message that names what to change, an exit
//! code that is not a panic's, and no data directory created for a configuration that
//! was refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpListener;

use strata_e2e::{Finished, run_strata};

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `strata serve` on free loopback ports and a fresh data directory under `dir`, plus
/// `extra` flags.
fn serve(dir: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Finished {
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    let mut args = vec![
        "serve",
        "--data-dir",
        data,
        "--kafka-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    run_strata(&args, env)
}

fn assert_no_panic(f: &Finished) {
    assert_ne!(f.code, Some(101), "a panic's exit code:\n{}", f.stderr);
    assert!(!f.stderr.contains("panicked"), "{}", f.stderr);
}

const KEYS: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "key"),
    ("AWS_SECRET_ACCESS_KEY", "secret"),
];

#[test]
fn an_ip_address_endpoint_without_path_style_uses_path_style() {
    for host in ["127.0.0.1", "[::1]"] {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = format!("http://{host}:{}", closed_port());
        let f = serve(
            dir.path(),
            &[
                "--object-store",
                "s3://bucket/p",
                "--s3-endpoint",
                &endpoint,
                "--s3-allow-http",
            ],
            KEYS,
        );
        assert_no_panic(&f);
        assert_eq!(f.code, Some(1), "{}", f.stderr);
        assert!(
            f.stderr
                .contains("is an IP address, so requests use path-style"),
            "the switch to path style is logged:\n{}",
            f.stderr
        );
        // Nothing listens there: the start-up check says so (with path style the
        // request went to the endpoint itself, not to "bucket.127.0.0.1").
        assert!(
            f.stderr.contains("the endpoint cannot be reached"),
            "{}",
            f.stderr
        );
    }
}

#[test]
fn a_plain_http_endpoint_needs_allow_http() {
    let dir = tempfile::tempdir().unwrap();
    let f = serve(
        dir.path(),
        &[
            "--object-store",
            "s3://bucket/p",
            "--s3-endpoint",
            "http://minio:9000",
            "--s3-path-style",
        ],
        KEYS,
    );
    assert_no_panic(&f);
    assert_eq!(f.code, Some(2), "{}", f.stderr);
    assert!(f.stderr.contains("is plain HTTP"), "{}", f.stderr);
    assert!(f.stderr.contains("--s3-allow-http"), "{}", f.stderr);
    assert!(!f.stderr.contains("builder error"), "{}", f.stderr);
    assert!(
        !dir.path().join("data").exists(),
        "refused before the data directory was created"
    );
}

#[test]
fn settings_a_dependency_would_panic_on_are_refused() {
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    // (flags, environment, what the error says)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            &["--s3-region", "us east\u{e9}"],
            KEYS,
            "is not a region name",
        ),
        (
            &[],
            &[
                ("AWS_ACCESS_KEY_ID", "cl\u{e9}"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
            ],
            "AWS_ACCESS_KEY_ID contains characters",
        ),
        (
            &["--s3-endpoint", "minio:9000"],
            KEYS,
            "needs http:// or https://",
        ),
        (
            &["--s3-endpoint", "http://exa mple:9000"],
            KEYS,
            "is not a URL",
        ),
    ];
    for (flags, env, says) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--object-store",
            "s3://bucket/p",
            "--s3-allow-http",
            "--s3-path-style",
        ];
        if !flags.contains(&"--s3-endpoint") {
            args.extend(["--s3-endpoint", &endpoint]);
        }
        args.extend_from_slice(flags);
        let f = serve(dir.path(), &args, env);
        assert_no_panic(&f);
        assert_eq!(f.code, Some(2), "{flags:?}: {}", f.stderr);
        assert!(
            f.stderr.contains(says),
            "{flags:?} should say {says:?}:\n{}",
            f.stderr
        );
    }
    // A bucket that cannot be a host name with virtual-hosted requests.
    let dir = tempfile::tempdir().unwrap();
    let f = serve(dir.path(), &["--object-store", "s3://My_Bucket/p"], KEYS);
    assert_no_panic(&f);
    assert_eq!(f.code, Some(2), "{}", f.stderr);
    assert!(f.stderr.contains("--s3-path-style"), "{}", f.stderr);
}

/// An instance-metadata stand-in that refuses everything, as the address does on a
/// machine that is not an EC2 instance with a role.
fn refusing_metadata_service() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    port
}

#[test]
fn no_credentials_says_where_strata_looked() {
    let dir = tempfile::tempdir().unwrap();
    let imds = format!("http://127.0.0.1:{}", refusing_metadata_service());
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let f = serve(
        dir.path(),
        &[
            "--object-store",
            "s3://bucket/p",
            "--s3-endpoint",
            &endpoint,
            "--s3-allow-http",
            "--s3-path-style",
        ],
        &[("AWS_METADATA_ENDPOINT", &imds)],
    );
    assert_no_panic(&f);
    assert_eq!(f.code, Some(1), "{}", f.stderr);
    for says in [
        "no credentials were found",
        "AWS_ACCESS_KEY_ID",
        "~/.aws/credentials",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "instance metadata service at",
    ] {
        assert!(
            f.stderr.contains(says),
            "should say {says:?}:\n{}",
            f.stderr
        );
    }
    assert!(!f.stderr.contains("were refused"), "{}", f.stderr);
}

/// The lines of `stderr` that contain `text`.
fn lines_with(stderr: &str, text: &str) -> usize {
    stderr.lines().filter(|l| l.contains(text)).count()
}

#[test]
fn startup_errors_are_said_once_before_anything_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let f = serve(dir.path(), &["--object-store", "ftp://bucket/p"], &[]);
    assert_eq!(f.code, Some(2), "{}", f.stderr);
    assert_eq!(
        lines_with(&f.stderr, "expected file:///path or s3://bucket/prefix"),
        1,
        "{}",
        f.stderr
    );
    assert_eq!(
        f.stderr.matches("ftp://bucket/p").count(),
        1,
        "{}",
        f.stderr
    );
    assert!(
        f.stderr.starts_with("strata: "),
        "a message, not a log record:\n{}",
        f.stderr
    );
    assert!(
        !dir.path().join("data").exists(),
        "the data directory (and the metadata log in it) is not created"
    );

    // A failure after start-up began (the Kafka port is taken): the cause once, too.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = dir.path().join("d2");
    let f = run_strata(
        &[
            "serve",
            "--data-dir",
            data.to_str().unwrap(),
            "--kafka-listen",
            &addr,
            "--http-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(f.code, Some(1), "{}", f.stderr);
    let last: Vec<&str> = f
        .stderr
        .lines()
        .skip_while(|l| !l.starts_with("strata: "))
        .collect();
    assert_eq!(
        last.first().copied(),
        Some(format!("strata: binding the Kafka listener to {addr}").as_str()),
        "{}",
        f.stderr
    );
    assert_eq!(
        lines_with(&f.stderr, "Address already in use"),
        1,
        "{}",
        f.stderr
    );
}

#[test]
fn unknown_settings_name_their_source_and_the_closest_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("strata.toml");
    let file_s = file.to_str().unwrap();
    for (text, says) in [
        (
            "data_dri = \"/x\"\n",
            "unknown key \"data_dri\" (did you mean \"data_dir\"?)",
        ),
        (
            "[kafka]\nnum.partitionz = 3\n",
            "unknown config \"num.partitionz\" (did you mean \"num.partitions\"?)",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let f = serve(dir.path(), &["--config", file_s], &[]);
        assert_eq!(f.code, Some(2), "{}", f.stderr);
        assert!(
            f.stderr.contains(says),
            "should say {says:?}:\n{}",
            f.stderr
        );
        assert!(f.stderr.contains(file_s), "names the file:\n{}", f.stderr);
    }
    let f = serve(dir.path(), &[], &[("STRATA_KAFKA_NUM_PARTITIONZ", "3")]);
    assert_eq!(f.code, Some(2), "{}", f.stderr);
    assert!(
        f.stderr.contains("STRATA_KAFKA_NUM_PARTITIONZ")
            && f.stderr
                .contains("did you mean STRATA_KAFKA_NUM_PARTITIONS?"),
        "{}",
        f.stderr
    );
    // A value that does not fit names where it came from.
    let f = serve(dir.path(), &[], &[("STRATA_KAFKA_NUM_PARTITIONS", "zero")]);
    assert_eq!(f.code, Some(2), "{}", f.stderr);
    assert!(
        f.stderr
            .contains("environment variable STRATA_KAFKA_NUM_PARTITIONS"),
        "{}",
        f.stderr
    );
}
