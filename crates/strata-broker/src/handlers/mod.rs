//! Request dispatch: from a request frame to a response frame (or a reason to close the
//! connection), with per-API metrics.
//!
//! Each handler converts between Kafka's wire structs and the log/metadata calls at this
//! boundary; nothing below it sees wire types.

mod acls;
mod admin;
mod api_versions;
mod authorize;
mod configs;
mod elect;
mod fetch;
mod groups;
mod list_offsets;
mod metadata;
mod produce;
pub(crate) mod producers;
pub(crate) mod sasl;
mod spans;
mod topics;
mod txn;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use strata_protocol::frame::{self, RequestPrefix};
use strata_protocol::vectored::{self, FileRecords, Frame};
use tracing::{Instrument, debug};

use crate::authz::Authz;
use crate::broker::Broker;
use crate::session::{ListenerInfo, Session};
use strata_security::SecurityProtocol;

/// Who sent a request.
pub(crate) struct RequestCtx {
    pub client_id: String,
    pub client_host: String,
    /// The listener it came in on: the broker addresses it is answered with are that
    /// listener's.
    pub listener: Arc<ListenerInfo>,
}

/// What the connection should do with a request.
pub(crate) enum Outcome {
    /// Write this frame back.
    Respond(Frame),
    /// A produce request is appended and its answer waits for durability: the
    /// connection may read the requests behind it meanwhile, and writes this outcome
    /// when it resolves, in request order.
    Later(BoxFuture<'static, Outcome>),
    /// Nothing to send (Produce with acks=0).
    Silent,
    /// Write this frame back, then close the connection (a failed authentication).
    Last { frame: Frame, reason: &'static str },
    /// Close the connection; `reason` is a metric label, `detail` goes to the log.
    Close {
        reason: &'static str,
        detail: String,
    },
}

fn close(reason: &'static str, detail: impl ToString) -> Outcome {
    Outcome::Close {
        reason,
        detail: detail.to_string(),
    }
}

/// Whether the request in `frame` may be read while earlier answers are still waiting
/// (see [`Outcome::Later`]): produce requests only.
pub(crate) fn may_overlap(frame: &[u8]) -> bool {
    RequestPrefix::parse(frame).is_ok_and(|p| p.api().is_ok_and(|api| api == ApiKey::Produce))
}

/// Handles one request frame (without its size prefix).
pub(crate) async fn handle(broker: &Arc<Broker>, frame: Bytes, session: &mut Session) -> Outcome {
    if matches!(session.sasl, crate::session::Sasl::Bare(..)) {
        return match sasl::bare_token(broker, &frame, session) {
            Some(token) => Outcome::Respond(vectored::Frame::from(frame::size_prefixed(&token))),
            None => close(
                "authentication_failed",
                "SASL exchange after SaslHandshake v0 failed",
            ),
        };
    }
    let prefix = match RequestPrefix::parse(&frame) {
        Ok(p) => p,
        Err(e) => return close("malformed_header", e),
    };
    let api = match prefix.api() {
        Ok(api) => api,
        Err(e) => return close("unknown_api_key", e),
    };
    if let Err((reason, detail)) = session.admits(api, Instant::now()) {
        return close(reason, detail);
    }
    let version = prefix.api_version;
    let Some((min, max)) = frame::supported(api) else {
        return close("unsupported_api", format!("{api:?} is not implemented"));
    };
    if version < min || version > max {
        if api == ApiKey::ApiVersions {
            // Kafka's fallback: answer in v0 with the supported ranges so the client can
            // retry with a version both sides know.
            return encode(
                broker,
                prefix.correlation_id,
                api,
                0,
                api_versions::unsupported_version(),
                FileRecords::default(),
            );
        }
        return close(
            "unsupported_version",
            format!("{api:?} v{version} is outside the supported range {min}..={max}"),
        );
    }
    let started = Instant::now();
    let (header, request) = match frame::decode_request(frame, api, version) {
        Ok(x) => x,
        Err(e) => return close("malformed_request", e),
    };
    let client = header.client_id.unwrap_or_else(StrBytes::new);
    debug!(api = ?api, version, correlation_id = prefix.correlation_id, client = %client, "request");
    let ctx = RequestCtx {
        client_id: client.to_string(),
        // Kafka shows the client's address as "/<ip>".
        client_host: format!("/{}", session.peer.ip()),
        listener: session.listener.clone(),
    };
    let authz = Authz::new(broker, session, api_label(api));
    let (request, after) = match authorize::gate(broker, &authz, request, version) {
        Ok(gated) => gated,
        Err(authorize::Refused::Respond(resp)) => {
            return finish(
                broker,
                prefix.correlation_id,
                api,
                version,
                started,
                Some(*resp),
                FileRecords::default(),
            );
        }
        Err(authorize::Refused::Close(detail)) => return close("acks0_produce_error", detail),
    };
    let mut files = FileRecords::default();
    let mut response = match request {
        RequestKind::ApiVersions(r) => {
            let finalized = broker.transaction_version();
            Some(ResponseKind::ApiVersions(api_versions::handle(
                &r, version, finalized,
            )))
        }
        RequestKind::Metadata(r) => Some(ResponseKind::Metadata(
            metadata::handle(broker, r, version, &ctx).await,
        )),
        RequestKind::SaslHandshake(r) => Some(ResponseKind::SaslHandshake(sasl::handshake(
            broker, &r, version, session,
        ))),
        RequestKind::SaslAuthenticate(r) => {
            let (resp, failed) = sasl::authenticate(broker, &r, version, session);
            let body = Some(ResponseKind::SaslAuthenticate(resp));
            let files = FileRecords::default();
            let outcome = finish(
                broker,
                prefix.correlation_id,
                api,
                version,
                started,
                body,
                files,
            );
            return match (failed, outcome) {
                (true, Outcome::Respond(frame)) => Outcome::Last {
                    frame,
                    reason: "authentication_failed",
                },
                (_, outcome) => outcome,
            };
        }
        RequestKind::DescribeUserScramCredentials(r) => Some(
            ResponseKind::DescribeUserScramCredentials(sasl::describe_scram(broker, &r)),
        ),
        RequestKind::AlterUserScramCredentials(r) => Some(ResponseKind::AlterUserScramCredentials(
            sasl::alter_scram(broker, r).await,
        )),
        RequestKind::CreateTopics(r) => Some(ResponseKind::CreateTopics(
            topics::create(broker, r, version).await,
        )),
        RequestKind::DeleteTopics(r) => Some(ResponseKind::DeleteTopics(
            topics::delete(broker, r, version).await,
        )),
        RequestKind::Produce(r) => {
            let span = spans::produce(broker, &ctx, version, &r);
            match produce::handle(broker, r, version)
                .instrument(span.clone())
                .await
            {
                Ok(Some(answer)) => {
                    let (broker, correlation_id) = (broker.clone(), prefix.correlation_id);
                    return Outcome::Later(
                        async move {
                            let resp = answer.instrument(span.clone()).await;
                            spans::produce_done(&span, Some(&resp));
                            let mut body = ResponseKind::Produce(resp);
                            if let Some(after) = after {
                                after(&mut body);
                            }
                            let (body, files) = (Some(body), FileRecords::default());
                            finish(&broker, correlation_id, api, version, started, body, files)
                        }
                        .boxed(),
                    );
                }
                Ok(None) => {
                    spans::produce_done(&span, None);
                    None
                }
                // acks=0 and a partition failed: closing is the only signal such a producer gets.
                Err(detail) => return close("acks0_produce_error", detail),
            }
        }
        RequestKind::Fetch(r) => {
            let span = spans::fetch(broker, &ctx, version, &r);
            // Batches stay in their segment files for sendfile, which TLS cannot use.
            let plaintext = matches!(
                session.listener.protocol,
                SecurityProtocol::Plaintext | SecurityProtocol::SaslPlaintext
            );
            let (resp, in_files) = fetch::handle(broker, r, version, &span, plaintext).await;
            spans::fetch_done(&span, &resp, &in_files);
            files = in_files;
            Some(ResponseKind::Fetch(resp))
        }
        RequestKind::ListOffsets(r) => Some(ResponseKind::ListOffsets(
            list_offsets::handle(broker, r, version).await,
        )),
        RequestKind::DescribeConfigs(r) => Some(ResponseKind::DescribeConfigs(configs::describe(
            broker, &r, version,
        ))),
        RequestKind::FindCoordinator(r) => Some(ResponseKind::FindCoordinator(
            groups::find_coordinator(broker, r, version, &ctx),
        )),
        RequestKind::JoinGroup(r) => Some(ResponseKind::JoinGroup(
            groups::join(broker, r, version, &ctx).await,
        )),
        RequestKind::SyncGroup(r) => Some(ResponseKind::SyncGroup(
            groups::sync(broker, r, version).await,
        )),
        RequestKind::Heartbeat(r) => Some(ResponseKind::Heartbeat(groups::heartbeat(broker, r))),
        RequestKind::LeaveGroup(r) => {
            Some(ResponseKind::LeaveGroup(groups::leave(broker, r, version)))
        }
        RequestKind::OffsetCommit(r) => Some(ResponseKind::OffsetCommit(
            groups::offset_commit(broker, r, version).await,
        )),
        RequestKind::OffsetFetch(r) => Some(ResponseKind::OffsetFetch(groups::offset_fetch(
            broker, r, version,
        ))),
        RequestKind::OffsetDelete(r) => Some(ResponseKind::OffsetDelete(
            groups::offset_delete(broker, r).await,
        )),
        RequestKind::ListGroups(r) => Some(ResponseKind::ListGroups(groups::list_groups(
            broker, r, version,
        ))),
        RequestKind::DescribeGroups(r) => Some(ResponseKind::DescribeGroups(
            groups::describe_groups(broker, r, version),
        )),
        RequestKind::DeleteGroups(r) => Some(ResponseKind::DeleteGroups(
            groups::delete_groups(broker, r).await,
        )),
        RequestKind::InitProducerId(r) => Some(ResponseKind::InitProducerId(
            producers::init_producer_id(broker, r).await,
        )),
        RequestKind::DescribeProducers(r) => Some(ResponseKind::DescribeProducers(
            producers::describe_producers(broker, r),
        )),
        RequestKind::CreatePartitions(r) => Some(ResponseKind::CreatePartitions(
            admin::create_partitions(broker, r).await,
        )),
        RequestKind::DeleteRecords(r) => Some(ResponseKind::DeleteRecords(
            admin::delete_records(broker, r).await,
        )),
        RequestKind::AlterConfigs(r) => Some(ResponseKind::AlterConfigs(
            admin::alter_configs(broker, r).await,
        )),
        RequestKind::IncrementalAlterConfigs(r) => Some(ResponseKind::IncrementalAlterConfigs(
            admin::incremental_alter_configs(broker, r).await,
        )),
        RequestKind::DescribeCluster(r) => Some(ResponseKind::DescribeCluster(
            admin::describe_cluster(broker, r, version, &ctx),
        )),
        RequestKind::OffsetForLeaderEpoch(r) => Some(ResponseKind::OffsetForLeaderEpoch(
            admin::offset_for_leader_epoch(broker, r),
        )),
        RequestKind::DescribeLogDirs(r) => Some(ResponseKind::DescribeLogDirs(
            admin::describe_log_dirs(broker, r, version),
        )),
        RequestKind::ElectLeaders(r) => Some(ResponseKind::ElectLeaders(
            elect::elect_leaders(broker, r, version).await,
        )),
        RequestKind::AddPartitionsToTxn(r) => Some(ResponseKind::AddPartitionsToTxn(
            txn::add_partitions(broker, r, version).await,
        )),
        RequestKind::AddOffsetsToTxn(r) => Some(ResponseKind::AddOffsetsToTxn(
            txn::add_offsets(broker, r).await,
        )),
        RequestKind::TxnOffsetCommit(r) => Some(ResponseKind::TxnOffsetCommit(
            txn::txn_offset_commit(broker, r, version).await,
        )),
        RequestKind::EndTxn(r) => {
            Some(ResponseKind::EndTxn(txn::end_txn(broker, r, version).await))
        }
        RequestKind::WriteTxnMarkers(r) => Some(ResponseKind::WriteTxnMarkers(
            txn::write_txn_markers(broker, r).await,
        )),
        RequestKind::DescribeTransactions(r) => Some(ResponseKind::DescribeTransactions(
            txn::describe_transactions(broker, r),
        )),
        RequestKind::ListTransactions(r) => Some(ResponseKind::ListTransactions(
            txn::list_transactions(broker, r),
        )),
        RequestKind::CreateAcls(r) => Some(ResponseKind::CreateAcls(
            acls::create(broker, &authz, r).await,
        )),
        RequestKind::DescribeAcls(r) => Some(ResponseKind::DescribeAcls(acls::describe(
            broker, &authz, &r,
        ))),
        RequestKind::DeleteAcls(r) => Some(ResponseKind::DeleteAcls(
            acls::delete(broker, &authz, r).await,
        )),
        other => return close("unsupported_api", format!("{other:?} has no handler")),
    };
    if let (Some(after), Some(resp)) = (after, response.as_mut()) {
        after(resp);
    }
    finish(
        broker,
        prefix.correlation_id,
        api,
        version,
        started,
        response,
        files,
    )
}

/// Counts a handled request (its duration from `started`, its error codes) and encodes
/// its response, if it has one (a Fetch response's records may be markers of `files`).
fn finish(
    broker: &Broker,
    correlation_id: i32,
    api: ApiKey,
    version: i16,
    started: Instant,
    response: Option<ResponseKind>,
    files: FileRecords,
) -> Outcome {
    let label = api_label(api);
    let m = &broker.metrics.kafka;
    m.requests_total.with_label_values(&[label]).inc();
    m.request_duration_seconds
        .with_label_values(&[label])
        .observe(started.elapsed().as_secs_f64());
    match response {
        None => Outcome::Silent,
        Some(body) => {
            for code in error_codes(&body) {
                let name = ResponseError::try_from_code(code)
                    .map_or_else(|| "NONE".to_string(), |e| e.to_string());
                m.request_errors_total
                    .with_label_values(&[label, &name])
                    .inc();
            }
            encode(broker, correlation_id, api, version, body, files)
        }
    }
}

fn encode(
    broker: &Broker,
    correlation_id: i32,
    api: ApiKey,
    version: i16,
    body: ResponseKind,
    files: FileRecords,
) -> Outcome {
    // Fetch responses are mostly record bytes: they are written from where they are,
    // beside the encoded fields (vectored I/O), not copied into the response.
    let encoded = match body {
        ResponseKind::Fetch(r) => {
            vectored::encode_fetch_response(correlation_id, version, r, files)
        }
        body => frame::encode_response(correlation_id, api, version, &body).map(Frame::from),
    };
    match encoded {
        Ok(frame) => Outcome::Respond(frame),
        Err(e) => {
            broker
                .metrics
                .kafka
                .request_errors_total
                .with_label_values(&[api_label(api), "ENCODE_FAILED"])
                .inc();
            close("encode_failed", e)
        }
    }
}

/// A static metric label per API (no allocation per request).
fn api_label(api: ApiKey) -> &'static str {
    match api {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::DeleteGroups => "DeleteGroups",
        ApiKey::OffsetDelete => "OffsetDelete",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::DescribeProducers => "DescribeProducers",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::DeleteRecords => "DeleteRecords",
        ApiKey::AlterConfigs => "AlterConfigs",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        ApiKey::DescribeCluster => "DescribeCluster",
        ApiKey::OffsetForLeaderEpoch => "OffsetForLeaderEpoch",
        ApiKey::DescribeLogDirs => "DescribeLogDirs",
        ApiKey::ElectLeaders => "ElectLeaders",
        ApiKey::SaslHandshake => "SaslHandshake",
        ApiKey::SaslAuthenticate => "SaslAuthenticate",
        ApiKey::DescribeUserScramCredentials => "DescribeUserScramCredentials",
        ApiKey::AlterUserScramCredentials => "AlterUserScramCredentials",
        ApiKey::AddPartitionsToTxn => "AddPartitionsToTxn",
        ApiKey::AddOffsetsToTxn => "AddOffsetsToTxn",
        ApiKey::TxnOffsetCommit => "TxnOffsetCommit",
        ApiKey::EndTxn => "EndTxn",
        ApiKey::WriteTxnMarkers => "WriteTxnMarkers",
        ApiKey::DescribeTransactions => "DescribeTransactions",
        ApiKey::ListTransactions => "ListTransactions",
        ApiKey::CreateAcls => "CreateAcls",
        ApiKey::DescribeAcls => "DescribeAcls",
        ApiKey::DeleteAcls => "DeleteAcls",
        _ => "Other",
    }
}

/// The non-zero error codes in a response, for the error metric.
fn error_codes(body: &ResponseKind) -> Vec<i16> {
    let codes: Vec<i16> = match body {
        ResponseKind::ApiVersions(r) => vec![r.error_code],
        ResponseKind::Metadata(r) => r
            .topics
            .iter()
            .flat_map(|t| {
                std::iter::once(t.error_code).chain(t.partitions.iter().map(|p| p.error_code))
            })
            .collect(),
        ResponseKind::CreateTopics(r) => r.topics.iter().map(|t| t.error_code).collect(),
        ResponseKind::DeleteTopics(r) => r.responses.iter().map(|t| t.error_code).collect(),
        ResponseKind::Produce(r) => r
            .responses
            .iter()
            .flat_map(|t| t.partition_responses.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::Fetch(r) => std::iter::once(r.error_code)
            .chain(
                r.responses
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
            )
            .collect(),
        ResponseKind::ListOffsets(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::DescribeConfigs(r) => r.results.iter().map(|x| x.error_code).collect(),
        ResponseKind::FindCoordinator(r) => std::iter::once(r.error_code)
            .chain(r.coordinators.iter().map(|c| c.error_code))
            .collect(),
        ResponseKind::JoinGroup(r) => vec![r.error_code],
        ResponseKind::SyncGroup(r) => vec![r.error_code],
        ResponseKind::Heartbeat(r) => vec![r.error_code],
        ResponseKind::LeaveGroup(r) => std::iter::once(r.error_code)
            .chain(r.members.iter().map(|m| m.error_code))
            .collect(),
        ResponseKind::OffsetCommit(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::OffsetFetch(r) => std::iter::once(r.error_code)
            .chain(r.groups.iter().map(|g| g.error_code))
            .collect(),
        ResponseKind::OffsetDelete(r) => std::iter::once(r.error_code)
            .chain(
                r.topics
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
            )
            .collect(),
        ResponseKind::ListGroups(r) => vec![r.error_code],
        ResponseKind::DescribeGroups(r) => r.groups.iter().map(|g| g.error_code).collect(),
        ResponseKind::DeleteGroups(r) => r.results.iter().map(|g| g.error_code).collect(),
        ResponseKind::InitProducerId(r) => vec![r.error_code],
        ResponseKind::DescribeProducers(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::CreatePartitions(r) => r.results.iter().map(|x| x.error_code).collect(),
        ResponseKind::DeleteRecords(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::AlterConfigs(r) => r.responses.iter().map(|x| x.error_code).collect(),
        ResponseKind::IncrementalAlterConfigs(r) => {
            r.responses.iter().map(|x| x.error_code).collect()
        }
        ResponseKind::DescribeCluster(r) => vec![r.error_code],
        ResponseKind::SaslHandshake(r) => vec![r.error_code],
        ResponseKind::SaslAuthenticate(r) => vec![r.error_code],
        ResponseKind::DescribeUserScramCredentials(r) => std::iter::once(r.error_code)
            .chain(r.results.iter().map(|x| x.error_code))
            .collect(),
        ResponseKind::AlterUserScramCredentials(r) => {
            r.results.iter().map(|x| x.error_code).collect()
        }
        ResponseKind::CreateAcls(r) => r.results.iter().map(|x| x.error_code).collect(),
        ResponseKind::DescribeAcls(r) => vec![r.error_code],
        ResponseKind::DeleteAcls(r) => r.filter_results.iter().map(|x| x.error_code).collect(),
        ResponseKind::OffsetForLeaderEpoch(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::DescribeLogDirs(r) => std::iter::once(r.error_code)
            .chain(r.results.iter().map(|x| x.error_code))
            .collect(),
        _ => Vec::new(),
    };
    codes.into_iter().filter(|&c| c != 0).collect()
}
