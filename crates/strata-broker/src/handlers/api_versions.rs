//! ApiVersions: what this broker speaks.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::api_versions_response::{
    ApiVersion, FinalizedFeatureKey, SupportedFeatureKey,
};
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::StrBytes;

use strata_protocol::frame::SUPPORTED;

fn all_versions() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|&(api, min, max)| {
            ApiVersion::default()
                .with_api_key(api as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect()
}

/// Kafka's `transaction.version` feature, finalized at 2 (KIP-890 part 2): clients that
/// know it end every transaction with an epoch bump (EndTxn v5), add partitions with
/// their produce requests (Produce v12) and groups with their offsets (TxnOffsetCommit
/// v5). Clients that do not (librdkafka, kafka-python, KafkaJS today) keep version 1.
const TRANSACTION_VERSION: i16 = 2;

fn feature_name() -> StrBytes {
    StrBytes::from_static_str("transaction.version")
}

/// Kafka's rule for `client_software_name` and `_version` (v3+).
fn valid_software_field(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.')
}

pub(super) fn handle(req: &ApiVersionsRequest, version: i16) -> ApiVersionsResponse {
    let resp = ApiVersionsResponse::default()
        .with_api_keys(all_versions())
        .with_supported_features(vec![
            SupportedFeatureKey::default()
                .with_name(feature_name())
                .with_min_version(0)
                .with_max_version(TRANSACTION_VERSION),
        ])
        .with_finalized_features(vec![
            FinalizedFeatureKey::default()
                .with_name(feature_name())
                .with_min_version_level(TRANSACTION_VERSION)
                .with_max_version_level(TRANSACTION_VERSION),
        ])
        .with_finalized_features_epoch(0);
    if version >= 3
        && !(valid_software_field(&req.client_software_name)
            && valid_software_field(&req.client_software_version))
    {
        return resp.with_error_code(ResponseError::InvalidRequest.code());
    }
    resp
}

/// The v0 answer to an ApiVersions request of a version this broker does not know.
pub(super) fn unsupported_version() -> kafka_protocol::messages::ResponseKind {
    kafka_protocol::messages::ResponseKind::ApiVersions(
        ApiVersionsResponse::default()
            .with_error_code(ResponseError::UnsupportedVersion.code())
            .with_api_keys(all_versions()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_fields_follow_kafkas_pattern() {
        assert!(valid_software_field("librdkafka"));
        assert!(valid_software_field("2.12.1-RC1"));
        assert!(!valid_software_field(""));
        assert!(!valid_software_field("-x"));
        assert!(!valid_software_field("a b"));
    }
}
