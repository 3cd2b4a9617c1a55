//! One request's authorization: the principal and host it comes from, checked against
//! the ACL bindings in the metadata quorum by `strata_security::acl`'s standard
//! authorizer. Every denied check is logged (target `strata::audit`) and counted.
//!
//! Which check each Kafka API makes is `handlers::authorize`'s; this module only
//! answers them.

use std::sync::Arc;

use strata_security::acl::{Acl, Authorizer, CLUSTER_NAME, Operation, ResourceType};
use tracing::info;

use crate::broker::Broker;
use crate::session::Session;

/// Answers a request's authorization checks; open (everything allowed) when no
/// authorizer is configured.
#[derive(Clone)]
pub(crate) struct Authz(Option<Arc<Checker>>);

pub(crate) struct Checker {
    principal: String,
    host: String,
    acls: Arc<Vec<Acl>>,
    authorizer: Arc<Authorizer>,
    api: &'static str,
    denied: prometheus::IntCounterVec,
}

impl Authz {
    /// For one request of `api` on `session`.
    pub fn new(broker: &Broker, session: &Session, api: &'static str) -> Self {
        let Some(authorizer) = &broker.authorizer else {
            return Self(None);
        };
        Self(Some(Arc::new(Checker {
            principal: session
                .principal
                .as_ref()
                .map_or_else(|| "User:ANONYMOUS".to_string(), ToString::to_string),
            // An IPv4 client of a dual-stack listener is ::ffff:a.b.c.d: ACL hosts name
            // it as a.b.c.d.
            host: session.peer.ip().to_canonical().to_string(),
            acls: broker.meta.read(|s| s.acls.clone()),
            authorizer: authorizer.clone(),
            api,
            denied: broker.metrics.kafka.authorization_denied_total.clone(),
        })))
    }

    /// Whether an authorizer is configured at all.
    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    fn check(&self, op: Operation, rt: ResourceType, name: &str, audit: bool) -> bool {
        let Some(c) = &self.0 else { return true };
        let ok = c
            .authorizer
            .authorize(&c.acls, &c.principal, &c.host, op, rt, name);
        if !ok && audit {
            c.denied
                .with_label_values(&[c.api, op.name(), rt.name()])
                .inc();
            info!(
                target: "strata::audit",
                principal = %c.principal,
                host = %c.host,
                api = c.api,
                operation = op.name(),
                resource_type = rt.name(),
                resource = name,
                "authorization denied"
            );
        }
        ok
    }

    pub fn topic(&self, op: Operation, name: &str) -> bool {
        self.check(op, ResourceType::Topic, name, true)
    }

    pub fn group(&self, op: Operation, name: &str) -> bool {
        self.check(op, ResourceType::Group, name, true)
    }

    pub fn txn(&self, op: Operation, id: &str) -> bool {
        self.check(op, ResourceType::TransactionalId, id, true)
    }

    pub fn cluster(&self, op: Operation) -> bool {
        self.check(op, ResourceType::Cluster, CLUSTER_NAME, true)
    }

    /// A check that filters what a listing shows (Metadata of all topics,
    /// ListGroups): not a denied request, so not audited.
    pub fn sees(&self, op: Operation, rt: ResourceType, name: &str) -> bool {
        self.check(op, rt, name, false)
    }

    /// Whether `op` is allowed on some topic (InitProducerId without a transactional id).
    pub fn any_topic(&self, op: Operation) -> bool {
        let Some(c) = &self.0 else { return true };
        c.authorizer
            .authorize_any(&c.acls, &c.principal, &c.host, op, ResourceType::Topic)
    }
}
