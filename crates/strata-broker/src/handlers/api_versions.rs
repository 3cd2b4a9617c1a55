//! ApiVersions: what this broker speaks.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::api_versions_response::{
    ApiVersion, FinalizedFeatureKey, SupportedFeatureKey,
};
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::StrBytes;

use strata_protocol::frame::SUPPORTED;

use crate::txn::TRANSACTION_VERSION;

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

/// ApiVersions, with Kafka's `transaction.version` feature: supported up to
/// [`TRANSACTION_VERSION`], finalized at `finalized` (the cluster's, see
/// `Broker::transaction_version`) once that is 2. Clients that know the feature (Apache
/// Kafka's Java client 4.0+) then end every transaction with an epoch bump (EndTxn v5)
/// and add partitions and groups with Produce v12 and TxnOffsetCommit v5; the others
/// (librdkafka, kafka-python, KafkaJS today) keep version 1.
pub(super) fn handle(
    req: &ApiVersionsRequest,
    version: i16,
    finalized: i16,
) -> ApiVersionsResponse {
    let finalized_features: Vec<FinalizedFeatureKey> = (finalized >= 2)
        .then(|| {
            FinalizedFeatureKey::default()
                .with_name(feature_name())
                .with_min_version_level(finalized)
                .with_max_version_level(finalized)
        })
        .into_iter()
        .collect();
    // The epoch must grow when the finalized level does (clients keep the features of
    // the highest epoch they saw): -1 before, the level after.
    let epoch = if finalized_features.is_empty() {
        -1
    } else {
        i64::from(finalized)
    };
    let resp = ApiVersionsResponse::default()
        .with_api_keys(all_versions())
        .with_supported_features(vec![
            SupportedFeatureKey::default()
                .with_name(feature_name())
                .with_min_version(0)
                .with_max_version(TRANSACTION_VERSION),
        ])
        .with_finalized_features(finalized_features)
        .with_finalized_features_epoch(epoch);
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

    #[test]
    fn transaction_version_2_is_finalized_only_once_every_broker_has_it() {
        let req = ApiVersionsRequest::default();
        let mixed = handle(&req, 2, 0);
        assert!(mixed.finalized_features.is_empty());
        assert_eq!(mixed.finalized_features_epoch, -1);
        assert_eq!(mixed.supported_features[0].max_version, TRANSACTION_VERSION);
        let upgraded = handle(&req, 2, TRANSACTION_VERSION);
        assert_eq!(upgraded.finalized_features[0].max_version_level, 2);
        assert!(upgraded.finalized_features_epoch > mixed.finalized_features_epoch);
    }
}
