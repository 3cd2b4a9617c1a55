//! SASL over raw frames, where the clients' libraries hide what the broker answers:
//! what a SASL listener admits before authentication, SaslHandshake's errors, the
//! version 0 handshake with bare tokens (Kafka before 1.0), a failed SaslAuthenticate,
//! and start-up refusing security settings that cannot work.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, MetadataRequest, ResponseKind, SaslAuthenticateRequest,
    SaslHandshakeRequest,
};
use kafka_protocol::protocol::StrBytes;
use strata_e2e::{Options, RawClient, Strata, run_strata};

const PASSWORD: &str = "pw-alice-31d9";

fn sasl_broker() -> Strata {
    Strata::with(Options {
        env: vec![
            (
                "STRATA_KAFKA_LISTENERS".into(),
                "SASL_PLAINTEXT://127.0.0.1:0".into(),
            ),
            (
                "STRATA_SCRAM_BOOTSTRAP".into(),
                format!("SCRAM-SHA-256=[name=alice,password={PASSWORD}]"),
            ),
        ],
        ..Options::default()
    })
}

fn handshake(c: &mut RawClient, version: i16, mechanism: &'static str) -> (i16, Vec<String>) {
    let req = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism));
    match c.request(ApiKey::SaslHandshake, version, &req) {
        ResponseKind::SaslHandshake(r) => (
            r.error_code,
            r.mechanisms.iter().map(|m| m.to_string()).collect(),
        ),
        other => panic!("{other:?}"),
    }
}

fn plain_token(password: &str) -> Vec<u8> {
    format!("\0alice\0{password}").into_bytes()
}

fn metadata_works(c: &mut RawClient) {
    match c.request(ApiKey::Metadata, 1, &MetadataRequest::default()) {
        ResponseKind::Metadata(r) => assert_eq!(r.brokers.len(), 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_sasl_listener_admits_only_the_handshake_until_a_client_authenticates() {
    let s = sasl_broker();

    // ApiVersions is answered and lists both SASL APIs; anything else closes.
    let mut c = RawClient::connect(s.kafka);
    let ResponseKind::ApiVersions(v) =
        c.request(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
    else {
        panic!("ApiVersions")
    };
    let range = |k: ApiKey| {
        v.api_keys
            .iter()
            .find(|a| a.api_key == k as i16)
            .map(|a| (a.min_version, a.max_version))
    };
    assert_eq!(range(ApiKey::SaslHandshake), Some((0, 1)));
    assert_eq!(range(ApiKey::SaslAuthenticate), Some((0, 2)));
    c.send_raw(&RawClient::frame(
        ApiKey::Metadata,
        1,
        9,
        &MetadataRequest::default(),
    ))
    .unwrap();
    assert!(
        c.is_closed(),
        "Metadata before authenticating must close the connection"
    );

    // A mechanism that is not offered: UNSUPPORTED_SASL_MECHANISM with the ones that are.
    let mut c = RawClient::connect(s.kafka);
    assert_eq!(
        handshake(&mut c, 1, "GSSAPI"),
        (
            33,
            vec![
                "PLAIN".into(),
                "SCRAM-SHA-256".into(),
                "SCRAM-SHA-512".into()
            ]
        )
    );

    // SaslAuthenticate without a handshake: ILLEGAL_SASL_STATE, then closed.
    let mut c = RawClient::connect(s.kafka);
    let auth = SaslAuthenticateRequest::default().with_auth_bytes(plain_token(PASSWORD).into());
    let ResponseKind::SaslAuthenticate(r) = c.request(ApiKey::SaslAuthenticate, 2, &auth) else {
        panic!("SaslAuthenticate")
    };
    assert_eq!(r.error_code, 34);
    assert!(c.is_closed());

    // A wrong password: SASL_AUTHENTICATION_FAILED with Kafka's message, then closed.
    let mut c = RawClient::connect(s.kafka);
    assert_eq!(handshake(&mut c, 1, "PLAIN").0, 0);
    let bad = SaslAuthenticateRequest::default().with_auth_bytes(plain_token("nope").into());
    let ResponseKind::SaslAuthenticate(r) = c.request(ApiKey::SaslAuthenticate, 2, &bad) else {
        panic!("SaslAuthenticate")
    };
    assert_eq!(r.error_code, 58);
    assert!(
        r.error_message
            .as_deref()
            .is_some_and(|m| m.contains("invalid credentials with SASL mechanism PLAIN")),
        "{:?}",
        r.error_message
    );
    assert!(c.is_closed());

    // The right password over SaslAuthenticate v2: served from then on.
    let mut c = RawClient::connect(s.kafka);
    assert_eq!(handshake(&mut c, 1, "PLAIN").0, 0);
    let ResponseKind::SaslAuthenticate(r) = c.request(ApiKey::SaslAuthenticate, 2, &auth) else {
        panic!("SaslAuthenticate")
    };
    assert_eq!((r.error_code, r.session_lifetime_ms), (0, 0));
    metadata_works(&mut c);

    // Version 0 of the handshake: the token follows as a bare size-prefixed frame and
    // the answer (empty for PLAIN) comes back the same way.
    let mut c = RawClient::connect(s.kafka);
    assert_eq!(handshake(&mut c, 0, "PLAIN").0, 0);
    let token = plain_token(PASSWORD);
    let mut bare = (token.len() as i32).to_be_bytes().to_vec();
    bare.extend_from_slice(&token);
    c.send_raw(&bare).unwrap();
    assert_eq!(c.read_frame().unwrap().len(), 0);
    metadata_works(&mut c);
    // A bare token with the wrong password: closed without an answer.
    let mut c = RawClient::connect(s.kafka);
    assert_eq!(handshake(&mut c, 0, "PLAIN").0, 0);
    let token = plain_token("nope");
    let mut bare = (token.len() as i32).to_be_bytes().to_vec();
    bare.extend_from_slice(&token);
    c.send_raw(&bare).unwrap();
    c.set_read_timeout(Duration::from_secs(10));
    assert!(c.is_closed());

    // Before authentication, frames above Kafka's sasl.server.max.receive.size (512 KiB)
    // close the connection: no stranger holds the request memory budget.
    let mut c = RawClient::connect(s.kafka);
    c.send_raw(&(600_000i32).to_be_bytes()).unwrap();
    assert!(c.is_closed());
    let too_large = s
        .metric("strata_kafka_connection_errors_total{reason=\"frame_too_large\"}")
        .unwrap_or(0.0);
    assert_eq!(too_large, 1.0);

    let failures = s
        .metric("strata_kafka_authentications_total{mechanism=\"PLAIN\",result=\"failure\"}")
        .unwrap_or(0.0);
    assert_eq!(failures, 2.0);
    let closed = s
        .metric("strata_kafka_connection_errors_total{reason=\"unauthenticated_request\"}")
        .unwrap_or(0.0);
    assert_eq!(closed, 1.0);
}

#[test]
fn security_settings_that_cannot_work_stop_the_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let cases: [(&[(&str, &str)], &str); 5] = [
        (
            &[("STRATA_KAFKA_LISTENERS", "SSL://127.0.0.1:0")],
            "needs ssl.keystore.location",
        ),
        (
            &[
                ("STRATA_KAFKA_LISTENERS", "PLAINTEXT://127.0.0.1:0"),
                ("STRATA_KAFKA_LISTEN", "127.0.0.1:0"),
            ],
            "both listeners and --kafka-listen",
        ),
        (
            &[("STRATA_KAFKA_LISTENERS", "CLIENT://127.0.0.1:0")],
            "no security protocol for listener \"CLIENT\"",
        ),
        (
            &[
                ("STRATA_KAFKA_LISTENERS", "SSL://127.0.0.1:0"),
                (
                    "STRATA_KAFKA_SSL_KEYSTORE_LOCATION",
                    "/nonexistent/server.pem",
                ),
            ],
            "/nonexistent/server.pem",
        ),
        (
            &[(
                "STRATA_SCRAM_BOOTSTRAP",
                "SCRAM-SHA-1=[name=a,password=hunter2-secret]",
            )],
            "SCRAM-SHA-256 or SCRAM-SHA-512",
        ),
    ];
    for (env, expected) in cases {
        let mut env = env.to_vec();
        env.push(("STRATA_DATA_DIR", &data));
        env.push(("STRATA_HTTP_LISTEN", "127.0.0.1:0"));
        let done = run_strata(&["serve"], &env);
        assert_ne!(done.code, Some(0), "{env:?}");
        assert!(done.stderr.contains(expected), "{env:?}: {}", done.stderr);
        assert!(!done.stderr.contains("hunter2-secret"), "{}", done.stderr);
    }
}
