//! The Kafka server: connections, request handlers and the long-poll purgatory.
//!
//! This crate owns the Kafka side of a broker: accepting connections, turning request
//! frames into calls on the partition log (`strata-log`) and the metadata service
//! (`strata-meta`), Kafka's configuration names and error codes, auto topic creation,
//! retention scheduling, and orderly shutdown. Wire structs from `kafka-protocol` stop
//! at the handlers: the log and the metadata service only see plain values.
//!
//! Who a connection is (TLS, SASL, principals) is `strata-security`'s to establish;
//! this crate keeps each connection's state and refuses requests before it is known.
//!
//! It must not write segment files itself, decide Raft membership, or serve HTTP.

mod authz;
mod broker;
mod clock;
mod config;
mod connection;
mod errors;
mod fetch_sessions;
mod frame_sink;
mod groups;
pub(crate) mod handlers;
mod lease;
mod markers;
mod producer_ids;
mod server;
mod session;
#[cfg(test)]
mod tests;
mod tiering;
mod txn;

pub use broker::Endpoint;
pub use clock::{Clock, SystemClock};
pub use config::{BROKER_CONFIGS, BrokerConfig, ConfigDef, ConfigError, TOPIC_CONFIGS, closest};
pub use server::{
    BrokerOptions, BrokerView, Health, KafkaListener, PartitionStatus, RunningBroker, StartError,
};
