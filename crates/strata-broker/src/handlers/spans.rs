//! Request spans for OpenTelemetry export (see `strata_telemetry::Otel`): one span per
//! Produce and Fetch request, with the client id, the topics and partitions, the record
//! bytes moved and the first error code. Kafka's wire carries no trace context, so each
//! request is the root of its own trace (sampled by the standard `OTEL_TRACES_SAMPLER`).
//! Nothing is built while export is off.

use kafka_protocol::messages::{FetchRequest, FetchResponse, ProduceRequest, ProduceResponse};
use strata_protocol::vectored::FileRecords;
use tracing::Span;
use tracing::field::Empty;
use uuid::Uuid;

use super::RequestCtx;
use crate::broker::Broker;

/// How many partitions a span lists by name; the rest are counted.
const LISTED: usize = 16;

/// The topics (`a,b`) and partitions (`a[0,1],b[3]`) of a request, listed up to
/// [`LISTED`] partitions, and the single partition if there is just one.
struct Targets {
    topics: String,
    partitions: String,
    only_partition: Option<i32>,
}

fn targets(topics: impl Iterator<Item = (String, Vec<i32>)>) -> Targets {
    let (mut names, mut listed, mut count, mut only) = (Vec::new(), Vec::new(), 0usize, None);
    for (topic, partitions) in topics {
        let shown: Vec<String> = partitions
            .iter()
            .take(LISTED.saturating_sub(count))
            .map(i32::to_string)
            .collect();
        if !shown.is_empty() {
            listed.push(format!("{topic}[{}]", shown.join(",")));
        }
        count += partitions.len();
        only = partitions.first().copied();
        names.push(topic);
    }
    let mut partitions = listed.join(",");
    if count > LISTED {
        partitions.push_str(&format!(" and {} more", count - LISTED));
    }
    Targets {
        topics: names.join(","),
        partitions,
        only_partition: (count == 1).then_some(only).flatten(),
    }
}

fn topic_name(broker: &Broker, name: &str, id: Uuid) -> String {
    if name.is_empty() {
        broker
            .topic_by_id(id)
            .map_or_else(|| id.to_string(), |t| t.name)
    } else {
        name.to_string()
    }
}

fn span(operation: &'static str, ctx: &RequestCtx, version: i16, t: Targets) -> Span {
    // One span definition; `otel.name` names the exported span after the operation.
    let span = tracing::info_span!(
        parent: None,
        "kafka.request",
        otel.name = operation,
        messaging.system = "kafka",
        messaging.operation.name = operation,
        messaging.client.id = %ctx.client_id,
        messaging.destination.name = %t.topics,
        messaging.destination.partition.id = Empty,
        strata.partitions = %t.partitions,
        strata.bytes = Empty,
        kafka.api_version = version,
        kafka.error_code = Empty,
    );
    if let Some(p) = t.only_partition {
        span.record("messaging.destination.partition.id", p);
    }
    span
}

/// Records the first error code of the answer (0 if none).
fn record_error(span: &Span, mut codes: impl Iterator<Item = i16>) {
    span.record("kafka.error_code", codes.find(|c| *c != 0).unwrap_or(0));
}

pub(super) fn produce(
    broker: &Broker,
    ctx: &RequestCtx,
    version: i16,
    req: &ProduceRequest,
) -> Span {
    if !strata_telemetry::tracing_enabled() {
        return Span::none();
    }
    let span = span(
        "produce",
        ctx,
        version,
        targets(req.topic_data.iter().map(|t| {
            (
                topic_name(broker, &t.name, t.topic_id),
                t.partition_data.iter().map(|p| p.index).collect(),
            )
        })),
    );
    let bytes: usize = req
        .topic_data
        .iter()
        .flat_map(|t| &t.partition_data)
        .map(|p| p.records.as_ref().map_or(0, |r| r.len()))
        .sum();
    span.record("strata.bytes", bytes as i64);
    span
}

pub(super) fn produce_done(span: &Span, resp: Option<&ProduceResponse>) {
    if span.is_none() {
        return;
    }
    if let Some(resp) = resp {
        let partitions = resp.responses.iter().flat_map(|t| &t.partition_responses);
        record_error(span, partitions.map(|p| p.error_code));
    }
}

pub(super) fn fetch(broker: &Broker, ctx: &RequestCtx, version: i16, req: &FetchRequest) -> Span {
    if !strata_telemetry::tracing_enabled() {
        return Span::none();
    }
    span(
        "fetch",
        ctx,
        version,
        targets(req.topics.iter().map(|t| {
            (
                topic_name(broker, &t.topic, t.topic_id),
                t.partitions.iter().map(|p| p.partition).collect(),
            )
        })),
    )
}

pub(super) fn fetch_done(span: &Span, resp: &FetchResponse, files: &FileRecords) {
    if span.is_none() {
        return;
    }
    let partitions = || resp.responses.iter().flat_map(|t| &t.partitions);
    let bytes: usize = partitions()
        .map(|p| p.records.as_ref().map_or(0, |r| files.records_len(r)))
        .sum();
    span.record("strata.bytes", bytes as i64);
    record_error(
        span,
        std::iter::once(resp.error_code).chain(partitions().map(|p| p.error_code)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_partitions_up_to_the_limit() {
        let few = targets([("a".to_string(), vec![0, 1]), ("b".to_string(), vec![3])].into_iter());
        assert_eq!(few.topics, "a,b");
        assert_eq!(few.partitions, "a[0,1],b[3]");
        assert_eq!(few.only_partition, None);
        let one = targets([("a".to_string(), vec![7])].into_iter());
        assert_eq!(one.only_partition, Some(7));
        let lots = targets([("t".to_string(), (0..20).collect())].into_iter());
        assert!(
            lots.partitions.ends_with(" and 4 more"),
            "{}",
            lots.partitions
        );
        assert!(lots.partitions.starts_with("t[0,1,"));
    }
}
