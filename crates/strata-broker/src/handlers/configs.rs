//! DescribeConfigs for topics and for this broker.

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;

use crate::broker::Broker;
use crate::config::{ConfigDef, ConfigSource, ignored_topic_config};

const TOPIC: i8 = 2;
const BROKER: i8 = 4;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn synonym(name: &str, value: &str, source: ConfigSource) -> DescribeConfigsSynonym {
    DescribeConfigsSynonym::default()
        .with_name(s(name))
        .with_value(Some(s(value)))
        .with_source(source as i8)
}

fn entry(
    d: &ConfigDef,
    value: &str,
    source: ConfigSource,
    read_only: bool,
    doc: bool,
) -> DescribeConfigsResourceResult {
    // Kafka never shows a sensitive value, set or not.
    let sensitive = d.is_sensitive();
    DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_static_str(d.name))
        .with_value((!sensitive).then(|| s(value)))
        .with_is_sensitive(sensitive)
        .with_read_only(read_only)
        .with_config_source(source as i8)
        .with_config_type(d.ty as i8)
        .with_documentation(doc.then(|| StrBytes::from_static_str(d.doc)))
}

fn wanted(keys: &Option<Vec<StrBytes>>, name: &str) -> bool {
    keys.as_ref()
        .is_none_or(|k| k.is_empty() || k.iter().any(|x| x.as_str() == name))
}

pub(super) fn describe(
    broker: &Arc<Broker>,
    req: &DescribeConfigsRequest,
    _version: i16,
) -> DescribeConfigsResponse {
    let results = req
        .resources
        .iter()
        .map(|r| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            let fail = |code: ResponseError, msg: String| {
                result
                    .clone()
                    .with_error_code(code.code())
                    .with_error_message(Some(s(&msg)))
            };
            match r.resource_type {
                TOPIC => {
                    let Some(topic) = broker.topic(&r.resource_name) else {
                        return fail(
                            ResponseError::UnknownTopicOrPartition,
                            format!("topic {:?} does not exist", r.resource_name.as_str()),
                        );
                    };
                    // Settings Kafka has and Strata accepts without effect are shown as
                    // set, so tools that read back what they wrote see no difference.
                    let ignored: Vec<DescribeConfigsResourceResult> = topic
                        .configs
                        .iter()
                        .filter(|(name, _)| wanted(&r.configuration_keys, name))
                        .filter_map(|(name, value)| {
                            let k = ignored_topic_config(name)?;
                            Some(
                                DescribeConfigsResourceResult::default()
                                    .with_name(s(name))
                                    .with_value(Some(s(value)))
                                    .with_config_source(ConfigSource::TopicConfig as i8)
                                    .with_config_type(k.config_type() as i8)
                                    .with_documentation(
                                        req.include_documentation
                                            .then(|| StrBytes::from_static_str(k.why)),
                                    ),
                            )
                        })
                        .collect();
                    let configs = broker
                        .topic_config(&topic)
                        .entries()
                        .filter(|(d, _, _, _)| wanted(&r.configuration_keys, d.name))
                        .map(|(d, broker_name, value, source)| {
                            let mut e = entry(d, value, source, false, req.include_documentation);
                            if req.include_synonyms {
                                if source == ConfigSource::TopicConfig {
                                    e.synonyms.push(synonym(d.name, value, source));
                                }
                                if let Some(broker_name) = broker_name {
                                    if let Some((bv, bs)) = broker.config.get(broker_name)
                                        && bs == ConfigSource::StaticBroker
                                    {
                                        e.synonyms.push(synonym(broker_name, bv, bs));
                                    }
                                    e.synonyms.push(synonym(
                                        broker_name,
                                        d.default,
                                        ConfigSource::Default,
                                    ));
                                }
                            }
                            e
                        })
                        .chain(ignored)
                        .collect();
                    result.with_configs(configs)
                }
                BROKER => {
                    if r.resource_name.as_str() != broker.node_id.to_string()
                        && !r.resource_name.is_empty()
                    {
                        return fail(
                            ResponseError::InvalidRequest,
                            format!(
                                "this is broker {}, not {:?}",
                                broker.node_id,
                                r.resource_name.as_str()
                            ),
                        );
                    }
                    if r.resource_name.is_empty() {
                        // Cluster-wide dynamic defaults: Strata has none.
                        return result;
                    }
                    let configs = broker
                        .config
                        .entries()
                        .filter(|(d, _, _)| wanted(&r.configuration_keys, d.name))
                        .map(|(d, value, source)| {
                            let mut e = entry(d, value, source, true, req.include_documentation);
                            if req.include_synonyms && !d.is_sensitive() {
                                e.synonyms.push(synonym(d.name, value, source));
                            }
                            e
                        })
                        .collect();
                    result.with_configs(configs)
                }
                other => fail(
                    ResponseError::InvalidRequest,
                    format!("resource type {other} is not supported"),
                ),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}
