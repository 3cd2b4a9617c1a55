//! SaslHandshake and SaslAuthenticate (the exchange itself is `strata_security`'s), and
//! the SCRAM user APIs, DescribeUserScramCredentials and AlterUserScramCredentials, whose
//! credentials live in the metadata quorum.

use std::collections::BTreeSet;
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use strata_meta::{Command, ScramCredential};
use strata_security::Mechanism;
use strata_security::sasl::{Exchange, Step};
use strata_security::scram::{self, Credential, ScramHash};
use tracing::{info, warn};

use crate::broker::Broker;
use crate::session::{Sasl, Session};

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// A stored credential as the exchange checks it.
fn credential(hash: ScramHash, c: &ScramCredential) -> Credential {
    Credential {
        hash,
        salt: c.salt.clone(),
        stored_key: c.stored_key.clone(),
        server_key: c.server_key.clone(),
        iterations: c.iterations,
    }
}

/// A derived credential as the metadata quorum stores it.
pub(crate) fn stored(c: Credential) -> ScramCredential {
    ScramCredential {
        salt: c.salt,
        stored_key: c.stored_key,
        server_key: c.server_key,
        iterations: c.iterations,
    }
}

pub(super) fn handshake(
    broker: &Broker,
    req: &SaslHandshakeRequest,
    version: i16,
    session: &mut Session,
) -> SaslHandshakeResponse {
    let enabled = broker.config.sasl_enabled_mechanisms();
    let names = enabled.iter().map(|m| s(m.name())).collect();
    let answer = SaslHandshakeResponse::default().with_mechanisms(names);
    if !session.listener.protocol.sasl() {
        return answer.with_error_code(ResponseError::IllegalSaslState.code());
    }
    match Mechanism::parse(&req.mechanism).filter(|m| enabled.contains(m)) {
        Some(m) => {
            session.sasl = match version {
                0 => Sasl::Bare(m, Exchange::new(m)),
                _ => Sasl::Handshaken(m),
            };
            answer
        }
        None => answer.with_error_code(ResponseError::UnsupportedSaslMechanism.code()),
    }
}

/// Takes one token; the answer, and whether the connection closes after it (a failed
/// authentication, as in Kafka).
pub(super) fn authenticate(
    broker: &Broker,
    req: &SaslAuthenticateRequest,
    version: i16,
    session: &mut Session,
) -> (SaslAuthenticateResponse, bool) {
    let (mechanism, exchange) = match std::mem::replace(&mut session.sasl, Sasl::Idle) {
        Sasl::Handshaken(m) => (m, Exchange::new(m)),
        Sasl::Exchanging(m, e) => (m, e),
        other => {
            session.sasl = other;
            let answer = SaslAuthenticateResponse::default()
                .with_error_code(ResponseError::IllegalSaslState.code())
                .with_error_message(Some(s(
                    "SaslAuthenticate without a SaslHandshake (v1) before it",
                )));
            // Before authentication this ends the connection; after it (or on a listener
            // without SASL) it is only an error, as in Kafka.
            return (answer, session.principal.is_none());
        }
    };
    match step(broker, mechanism, exchange, &req.auth_bytes, session) {
        Ok((token, lifetime)) => {
            let mut resp = SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(token));
            if version >= 1 {
                resp = resp.with_session_lifetime_ms(
                    lifetime.map_or(0, |l| i64::try_from(l.as_millis()).unwrap_or(i64::MAX)),
                );
            }
            (resp, false)
        }
        Err(()) => (failure(mechanism), true),
    }
}

/// A bare token after SaslHandshake v0: the answer token, or `None` (close: Kafka
/// sends nothing back on a failed bare exchange).
pub(super) fn bare_token(broker: &Broker, token: &[u8], session: &mut Session) -> Option<Vec<u8>> {
    let Sasl::Bare(mechanism, exchange) = std::mem::replace(&mut session.sasl, Sasl::Idle) else {
        return None;
    };
    let (answer, _) = step(broker, mechanism, exchange, token, session).ok()?;
    // Still mid-exchange: the next bare frame continues it.
    if let Sasl::Exchanging(m, e) = std::mem::replace(&mut session.sasl, Sasl::Idle) {
        session.sasl = Sasl::Bare(m, e);
    }
    Some(answer)
}

/// Runs one step of `exchange`; on success the token to send back and, once
/// authenticated, the session's lifetime (`connections.max.reauth.ms`). The session
/// moves on; on failure it is left idle and the connection is to be closed.
fn step(
    broker: &Broker,
    mechanism: Mechanism,
    mut exchange: Exchange,
    token: &[u8],
    session: &mut Session,
) -> Result<(Vec<u8>, Option<std::time::Duration>), ()> {
    let lookup = |user: &str, hash: ScramHash| {
        broker.meta.read(|st| {
            st.scram
                .get(user)
                .and_then(|m| m.get(hash.mechanism()))
                .map(|c| credential(hash, c))
        })
    };
    let counter = |result: &str| {
        broker
            .metrics
            .kafka
            .authentications_total
            .with_label_values(&[mechanism.name(), result])
            .inc();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let verifiers = strata_security::sasl::Verifiers {
        credentials: &lookup,
        tokens: broker.oauth.as_deref(),
        now_s: now,
    };
    match exchange.step(token, &verifiers) {
        Step::Challenge(token) => {
            session.sasl = Sasl::Exchanging(mechanism, exchange);
            Ok((token, None))
        }
        Step::Done {
            principal,
            answer,
            expires_s,
        } => {
            // Re-authentication (KIP-368) may renew the session, not change who it is or
            // how it logs in.
            let other_mechanism = session.mechanism.is_some_and(|m| m != mechanism);
            if let Some(before) = &session.principal
                && (*before != principal || other_mechanism)
            {
                counter("failure");
                warn!(peer = %session.peer, %before, after = %principal, "re-authentication as another principal refused");
                return Err(());
            }
            counter("success");
            info!(peer = %session.peer, %principal, mechanism = mechanism.name(), "authenticated");
            // With re-authentication on, a session also ends when its token does (KIP-368).
            let lifetime = broker.config.connections_max_reauth().map(|l| {
                let left = expires_s
                    .map(|e| std::time::Duration::from_secs(e.saturating_sub(now).max(0) as u64));
                left.map_or(l, |left| l.min(left))
            });
            session.expires = lifetime.map(|l| Instant::now() + l);
            session.principal = Some(principal);
            session.mechanism = Some(mechanism);
            Ok((answer, lifetime))
        }
        Step::Failed(reason) => {
            counter("failure");
            if let Some(held_back) = broker.log_throttle.allow("sasl_failure") {
                warn!(peer = %session.peer, mechanism = mechanism.name(), reason, held_back, "SASL authentication failed");
            }
            Err(())
        }
    }
}

/// Kafka's answer to a failed authentication: the same whatever went wrong, so that
/// it tells nothing about which users exist.
fn failure(mechanism: Mechanism) -> SaslAuthenticateResponse {
    SaslAuthenticateResponse::default()
        .with_error_code(ResponseError::SaslAuthenticationFailed.code())
        .with_error_message(Some(s(format!(
            "Authentication failed during authentication due to invalid credentials with SASL mechanism {}",
            mechanism.name()
        ))))
}

pub(super) fn describe_scram(
    broker: &Broker,
    req: &DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let users = broker.meta.read(|st| st.scram.clone());
    let describe = |user: &str| {
        let result = DescribeUserScramCredentialsResult::default().with_user(s(user));
        match users.get(user) {
            Some(creds) => result.with_credential_infos(
                creds
                    .iter()
                    .filter_map(|(m, c)| {
                        let hash = ScramHash::from_mechanism(m)?;
                        Some(
                            CredentialInfo::default()
                                .with_mechanism(hash.code())
                                .with_iterations(i32::try_from(c.iterations).unwrap_or(i32::MAX)),
                        )
                    })
                    .collect(),
            ),
            None => result
                .with_error_code(ResponseError::ResourceNotFound.code())
                .with_error_message(Some(s(format!(
                    "Attempt to describe nonexistent credential for user {user}"
                )))),
        }
    };
    let results = match req.users.as_deref() {
        None | Some([]) => users.keys().map(|u| describe(u)).collect(),
        Some(asked) => {
            let mut seen = BTreeSet::new();
            let dup: BTreeSet<&str> = asked
                .iter()
                .filter(|u| !seen.insert(u.name.as_str()))
                .map(|u| u.name.as_str())
                .collect();
            let mut out = Vec::new();
            let mut answered = BTreeSet::new();
            for u in asked {
                if !answered.insert(u.name.as_str()) {
                    continue;
                }
                out.push(match dup.contains(u.name.as_str()) {
                    true => DescribeUserScramCredentialsResult::default()
                        .with_user(u.name.clone())
                        .with_error_code(ResponseError::DuplicateResource.code())
                        .with_error_message(Some(s("Cannot describe SCRAM credentials for the same user twice in a single request"))),
                    false => describe(&u.name),
                });
            }
            out
        }
    };
    DescribeUserScramCredentialsResponse::default().with_results(results)
}

/// One change AlterUserScramCredentials asks for.
#[derive(Clone)]
enum Op {
    Upsert(String, String, ScramCredential),
    Delete(String, String),
}

/// Why a change is refused: the code and message of its user's result.
type Refused = (ResponseError, String);

/// What AlterUserScramCredentials asks for one user, checked.
type Checked = Result<Vec<Op>, Refused>;

pub(super) async fn alter_scram(
    broker: &Broker,
    req: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    // Per user, as Kafka: one refused change of a user refuses all of that user's.
    let mut seen: BTreeSet<(String, i8)> = BTreeSet::new();
    let existing = broker.meta.read(|st| st.scram.clone());
    let mut ops: Vec<(String, Result<Op, Refused>)> = Vec::new();
    for d in &req.deletions {
        let op = (|| {
            let hash = mechanism(d.name.as_str(), d.mechanism)?;
            if !seen.insert((d.name.to_string(), d.mechanism)) {
                return Err(duplicate());
            }
            if !existing
                .get(d.name.as_str())
                .is_some_and(|m| m.contains_key(hash.mechanism()))
            {
                return Err((
                    ResponseError::ResourceNotFound,
                    "Attempt to delete a user credential that does not exist".to_string(),
                ));
            }
            Ok(Op::Delete(d.name.to_string(), hash.mechanism().to_string()))
        })();
        ops.push((d.name.to_string(), op));
    }
    for u in &req.upsertions {
        let op = (|| {
            let hash = mechanism(u.name.as_str(), u.mechanism)?;
            if !seen.insert((u.name.to_string(), u.mechanism)) {
                return Err(duplicate());
            }
            let unacceptable =
                |e: scram::CredentialError| (ResponseError::UnacceptableCredential, e.to_string());
            let iterations =
                scram::check_iterations(i64::from(u.iterations)).map_err(unacceptable)?;
            let c = Credential::from_salted_password(
                hash,
                u.salt.to_vec(),
                &u.salted_password,
                iterations,
            )
            .map_err(unacceptable)?;
            Ok(Op::Upsert(
                u.name.to_string(),
                hash.mechanism().to_string(),
                stored(c),
            ))
        })();
        ops.push((u.name.to_string(), op));
    }
    let mut by_user: std::collections::BTreeMap<String, Checked> = Default::default();
    for (user, op) in ops {
        let e = by_user.entry(user).or_insert_with(|| Ok(Vec::new()));
        match (op, e.as_mut()) {
            (Ok(op), Ok(list)) => list.push(op),
            (Err(err), Ok(_)) => *e = Err(err),
            (_, Err(_)) => {}
        }
    }
    let (mut upserts, mut deletions) = (Vec::new(), Vec::new());
    for op in by_user.values().flatten().flatten() {
        match op.clone() {
            Op::Upsert(user, m, c) => upserts.push((user, m, c)),
            Op::Delete(user, m) => deletions.push((user, m)),
        }
    }
    let written = if upserts.is_empty() && deletions.is_empty() {
        Ok(())
    } else {
        broker
            .meta
            .write(Command::AlterScram {
                upserts,
                deletions,
                bootstrap: false,
            })
            .await
            .map(|_| ())
    };
    let results = by_user
        .into_iter()
        .map(|(user, checked)| {
            let r = AlterUserScramCredentialsResult::default().with_user(s(user));
            match (checked, &written) {
                (Err((code, msg)), _) => r
                    .with_error_code(code.code())
                    .with_error_message(Some(s(msg))),
                (Ok(_), Err(e)) => r
                    .with_error_code(crate::errors::meta_error(e).code())
                    .with_error_message(Some(s(e.to_string()))),
                (Ok(_), Ok(())) => r,
            }
        })
        .collect();
    AlterUserScramCredentialsResponse::default().with_results(results)
}

fn mechanism(user: &str, code: i8) -> Result<ScramHash, Refused> {
    if user.is_empty() {
        return Err((
            ResponseError::UnacceptableCredential,
            "Username must not be empty".to_string(),
        ));
    }
    ScramHash::from_code(code).ok_or_else(|| {
        (
            ResponseError::UnsupportedSaslMechanism,
            format!("Unknown SCRAM mechanism {code}"),
        )
    })
}

fn duplicate() -> Refused {
    (
        ResponseError::DuplicateResource,
        "A user credential cannot be altered twice in the same request".to_string(),
    )
}
