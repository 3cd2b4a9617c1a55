//! Kafka's ACL model and the decisions of its standard authorizer: resource types,
//! pattern types (literal, prefixed), operations with their implications, allow and
//! deny with deny winning, super users, and what happens when no ACL names a resource
//! (`allow.everyone.if.no.acl.found`).
//!
//! Pure logic over a list of bindings; where the bindings are kept (the metadata
//! quorum) and which check each Kafka API makes (the broker) are decided elsewhere.

use serde::{Deserialize, Serialize};

/// Generates an enum with Kafka's i8 codes.
macro_rules! coded {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $code:expr),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn code(self) -> i8 {
                match self { $(Self::$variant => $code),+ }
            }

            pub fn from_code(code: i8) -> Option<Self> {
                match code { $($code => Some(Self::$variant),)+ _ => None }
            }
        }
    };
}

coded!(
    /// What an ACL is about.
    ResourceType {
        Any = 1,
        Topic = 2,
        Group = 3,
        Cluster = 4,
        TransactionalId = 5,
        DelegationToken = 6,
        User = 7,
    }
);

coded!(
    /// How an ACL's resource name matches (`Any` and `Match` only in filters).
    PatternType {
        Any = 1,
        Match = 2,
        Literal = 3,
        Prefixed = 4,
    }
);

coded!(
    /// What a principal may do (`Any` only in filters; `All` is every operation).
    Operation {
        Any = 1,
        All = 2,
        Read = 3,
        Write = 4,
        Create = 5,
        Delete = 6,
        Alter = 7,
        Describe = 8,
        ClusterAction = 9,
        DescribeConfigs = 10,
        AlterConfigs = 11,
        IdempotentWrite = 12,
        CreateTokens = 13,
        DescribeTokens = 14,
    }
);

coded!(
    /// Allow or deny (`Any` only in filters).
    Permission {
        Any = 1,
        Deny = 2,
        Allow = 3,
    }
);

impl Operation {
    /// Kafka's upper-case name, for audit lines and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Any => "ANY",
            Self::All => "ALL",
            Self::Read => "READ",
            Self::Write => "WRITE",
            Self::Create => "CREATE",
            Self::Delete => "DELETE",
            Self::Alter => "ALTER",
            Self::Describe => "DESCRIBE",
            Self::ClusterAction => "CLUSTER_ACTION",
            Self::DescribeConfigs => "DESCRIBE_CONFIGS",
            Self::AlterConfigs => "ALTER_CONFIGS",
            Self::IdempotentWrite => "IDEMPOTENT_WRITE",
            Self::CreateTokens => "CREATE_TOKENS",
            Self::DescribeTokens => "DESCRIBE_TOKENS",
        }
    }

    /// Whether an ALLOW for `self` also allows `wanted`: ALL allows everything, and
    /// as in Kafka, READ, WRITE, DELETE and ALTER imply DESCRIBE, ALTER_CONFIGS implies
    /// DESCRIBE_CONFIGS.
    fn allows(self, wanted: Operation) -> bool {
        self == wanted
            || self == Self::All
            || (wanted == Self::Describe
                && matches!(self, Self::Read | Self::Write | Self::Delete | Self::Alter))
            || (wanted == Self::DescribeConfigs && self == Self::AlterConfigs)
    }
}

impl ResourceType {
    pub fn name(self) -> &'static str {
        match self {
            Self::Any => "ANY",
            Self::Topic => "TOPIC",
            Self::Group => "GROUP",
            Self::Cluster => "CLUSTER",
            Self::TransactionalId => "TRANSACTIONAL_ID",
            Self::DelegationToken => "DELEGATION_TOKEN",
            Self::User => "USER",
        }
    }
}

/// The one cluster resource's name.
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// The literal resource name (and principal name, and host) matching every one.
pub const WILDCARD: &str = "*";

/// One ACL binding: `principal` from `host` is allowed or denied `operation` on the
/// resources `name` matches.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Acl {
    pub resource_type: ResourceType,
    pub name: String,
    pub pattern: PatternType,
    /// `User:alice`, or `User:*` for everyone.
    pub principal: String,
    /// An IP address, or `*`.
    pub host: String,
    pub operation: Operation,
    pub permission: Permission,
}

/// Why a binding cannot be created (CreateAcls' INVALID_REQUEST and friends).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    #[error(
        "the resource type must be TOPIC, GROUP, CLUSTER, TRANSACTIONAL_ID, DELEGATION_TOKEN or USER"
    )]
    ResourceType,
    #[error("the pattern type must be LITERAL or PREFIXED")]
    PatternType,
    #[error("the operation must be a specific one or ALL")]
    Operation,
    #[error("the permission type must be ALLOW or DENY")]
    Permission,
    #[error("the principal {0:?} is not TYPE:NAME")]
    Principal(String),
    #[error("the resource name must not be empty")]
    EmptyName,
    #[error("the cluster resource is named kafka-cluster, not {0:?}")]
    ClusterName(String),
    #[error("the host must not be empty")]
    EmptyHost,
    #[error("operation {op} does not apply to {resource} resources")]
    NotApplicable {
        op: &'static str,
        resource: &'static str,
    },
}

impl Acl {
    /// Checks a binding as CreateAcls must.
    pub fn validate(&self) -> Result<(), AclError> {
        if self.resource_type == ResourceType::Any {
            return Err(AclError::ResourceType);
        }
        if !matches!(self.pattern, PatternType::Literal | PatternType::Prefixed) {
            return Err(AclError::PatternType);
        }
        if self.operation == Operation::Any {
            return Err(AclError::Operation);
        }
        if self.permission == Permission::Any {
            return Err(AclError::Permission);
        }
        if !self
            .principal
            .split_once(':')
            .is_some_and(|(t, n)| !t.is_empty() && !n.is_empty())
        {
            return Err(AclError::Principal(self.principal.clone()));
        }
        if self.name.is_empty() {
            return Err(AclError::EmptyName);
        }
        if self.resource_type == ResourceType::Cluster && self.name != CLUSTER_NAME {
            return Err(AclError::ClusterName(self.name.clone()));
        }
        if self.host.is_empty() {
            return Err(AclError::EmptyHost);
        }
        if !applies(self.operation, self.resource_type) {
            return Err(AclError::NotApplicable {
                op: self.operation.name(),
                resource: self.resource_type.name(),
            });
        }
        Ok(())
    }

    /// Whether this binding names resource `name` of `resource_type`.
    fn names(&self, resource_type: ResourceType, name: &str) -> bool {
        self.resource_type == resource_type
            && match self.pattern {
                PatternType::Literal => self.name == name || self.name == WILDCARD,
                PatternType::Prefixed => name.starts_with(&self.name),
                PatternType::Any | PatternType::Match => false,
            }
    }

    fn concerns(&self, principal: &str, host: &str) -> bool {
        (self.principal == principal || self.principal == "User:*")
            && (self.host == WILDCARD || self.host == host)
    }
}

/// Which operations Kafka defines for each resource type.
fn applies(op: Operation, rt: ResourceType) -> bool {
    use Operation::*;
    if op == All {
        return true;
    }
    match rt {
        ResourceType::Topic => matches!(
            op,
            Read | Write | Create | Delete | Alter | Describe | DescribeConfigs | AlterConfigs
        ),
        ResourceType::Group => matches!(op, Read | Delete | Describe),
        ResourceType::Cluster => matches!(
            op,
            Create
                | Alter
                | Describe
                | ClusterAction
                | DescribeConfigs
                | AlterConfigs
                | IdempotentWrite
                | CreateTokens
                | DescribeTokens
        ),
        ResourceType::TransactionalId => matches!(op, Write | Describe),
        ResourceType::DelegationToken => matches!(op, Describe),
        ResourceType::User => matches!(op, CreateTokens | DescribeTokens),
        ResourceType::Any => false,
    }
}

/// A DescribeAcls or DeleteAcls filter; `None` fields match anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclFilter {
    pub resource_type: ResourceType,
    pub name: Option<String>,
    pub pattern: PatternType,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: Operation,
    pub permission: Permission,
}

impl AclFilter {
    pub fn matches(&self, acl: &Acl) -> bool {
        let resource_type =
            self.resource_type == ResourceType::Any || self.resource_type == acl.resource_type;
        let pattern = match (self.pattern, &self.name) {
            (PatternType::Any, None) => true,
            (PatternType::Any, Some(n)) => acl.name == *n,
            (PatternType::Match, None) => true,
            // MATCH: every binding that would apply to the resource named.
            (PatternType::Match, Some(n)) => match acl.pattern {
                PatternType::Literal => acl.name == *n || acl.name == WILDCARD,
                PatternType::Prefixed => n.starts_with(&acl.name),
                _ => false,
            },
            (p, name) => acl.pattern == p && name.as_ref().is_none_or(|n| acl.name == *n),
        };
        resource_type
            && pattern
            && self.principal.as_ref().is_none_or(|p| *p == acl.principal)
            && self.host.as_ref().is_none_or(|h| *h == acl.host)
            && (self.operation == Operation::Any || self.operation == acl.operation)
            && (self.permission == Permission::Any || self.permission == acl.permission)
    }
}

/// The standard authorizer's settings: `super.users` and
/// `allow.everyone.if.no.acl.found`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Authorizer {
    pub super_users: Vec<String>,
    pub allow_if_no_acl: bool,
}

impl Authorizer {
    /// Kafka's `super.users`: `User:a;User:b`.
    pub fn new(super_users: &str, allow_if_no_acl: bool) -> Self {
        Self {
            super_users: crate::list_entries(super_users, ';')
                .map(str::to_string)
                .collect(),
            allow_if_no_acl,
        }
    }

    pub fn is_super(&self, principal: &str) -> bool {
        self.super_users.iter().any(|u| u == principal)
    }

    /// Whether `principal` connecting from `host` may do `op` on resource `name` of
    /// `resource_type`: a matching DENY wins, then a matching ALLOW (or one that implies
    /// the operation); with neither, allowed only if no binding names the resource at
    /// all and `allow.everyone.if.no.acl.found` is true.
    pub fn authorize(
        &self,
        acls: &[Acl],
        principal: &str,
        host: &str,
        op: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        if self.is_super(principal) {
            return true;
        }
        let mut named = false;
        let mut allowed = false;
        for acl in acls.iter().filter(|a| a.names(resource_type, name)) {
            named = true;
            if !acl.concerns(principal, host) {
                continue;
            }
            match acl.permission {
                Permission::Deny if acl.operation == op || acl.operation == Operation::All => {
                    return false;
                }
                Permission::Allow if acl.operation.allows(op) => allowed = true,
                _ => {}
            }
        }
        allowed || (!named && self.allow_if_no_acl)
    }

    /// Whether `principal` may do `op` on some resource of `resource_type` (Kafka's
    /// authorizeByResourceType, as InitProducerId asks for WRITE on any topic): some
    /// ALLOW binding of that type grants it and its own resource is not denied.
    pub fn authorize_any(
        &self,
        acls: &[Acl],
        principal: &str,
        host: &str,
        op: Operation,
        resource_type: ResourceType,
    ) -> bool {
        if self.is_super(principal) {
            return true;
        }
        let of_type = || acls.iter().filter(|a| a.resource_type == resource_type);
        if of_type().next().is_none() {
            return self.allow_if_no_acl;
        }
        of_type().any(|a| {
            a.permission == Permission::Allow
                && a.concerns(principal, host)
                && a.operation.allows(op)
                && self.authorize(acls, principal, host, op, resource_type, &a.name)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn acl(
        rt: ResourceType,
        name: &str,
        pattern: PatternType,
        principal: &str,
        op: Operation,
        permission: Permission,
    ) -> Acl {
        Acl {
            resource_type: rt,
            name: name.into(),
            pattern,
            principal: principal.into(),
            host: "*".into(),
            operation: op,
            permission,
        }
    }

    use Operation::*;
    use PatternType::*;
    use Permission::*;
    use ResourceType::*;

    #[test]
    fn deny_wins_allow_implies_describe_and_no_acl_means_the_default() {
        let acls = vec![
            acl(Topic, "a", Literal, "User:alice", Read, Allow),
            acl(Group, "g", Literal, "User:alice", Read, Allow),
            acl(Topic, "logs-", Prefixed, "User:bob", Write, Allow),
            acl(Topic, "logs-secret", Literal, "User:bob", All, Deny),
            acl(Topic, "*", Literal, "User:*", Describe, Allow),
        ];
        let strict = Authorizer::new("User:admin", false);
        let a = |p: &str, op, rt, n: &str| strict.authorize(&acls, p, "10.0.0.1", op, rt, n);
        assert!(a("User:alice", Read, Topic, "a"));
        assert!(
            a("User:alice", Describe, Topic, "a"),
            "READ implies DESCRIBE"
        );
        assert!(!a("User:alice", Write, Topic, "a"));
        assert!(a("User:alice", Read, Group, "g"));
        assert!(
            !a("User:alice", Read, Group, "h"),
            "no ACL names h: denied by default"
        );
        assert!(a("User:bob", Write, Topic, "logs-app"), "prefixed");
        assert!(
            !a("User:bob", Write, Topic, "logs-secret"),
            "deny wins over the prefix"
        );
        assert!(!a("User:bob", Describe, Topic, "logs-secret"), "DENY ALL");
        assert!(
            a("User:carol", Describe, Topic, "anything"),
            "wildcard name and principal"
        );
        assert!(!a("User:carol", Read, Topic, "anything"));
        assert!(a("User:admin", Alter, Cluster, CLUSTER_NAME), "super user");
        let open = Authorizer::new("", true);
        assert!(
            open.authorize(&acls, "User:x", "h", Read, Group, "h"),
            "no ACL: allowed"
        );
        assert!(
            !open.authorize(&acls, "User:x", "h", Read, Group, "g"),
            "g has ACLs"
        );
        // Hosts.
        let host = vec![Acl {
            host: "10.0.0.1".into(),
            ..acl(Topic, "t", Literal, "User:alice", Read, Allow)
        }];
        assert!(strict.authorize(&host, "User:alice", "10.0.0.1", Read, Topic, "t"));
        assert!(!strict.authorize(&host, "User:alice", "10.0.0.2", Read, Topic, "t"));
        // By resource type.
        assert!(strict.authorize_any(&acls, "User:bob", "h", Write, Topic));
        assert!(!strict.authorize_any(&acls, "User:alice", "h", Write, Topic));
    }

    #[test]
    fn filters_and_validation_follow_kafka() {
        let lit = acl(Topic, "orders", Literal, "User:alice", Read, Allow);
        let pre = acl(Topic, "ord", Prefixed, "User:bob", Write, Deny);
        let any = AclFilter {
            resource_type: ResourceType::Any,
            name: None,
            pattern: PatternType::Any,
            principal: None,
            host: None,
            operation: Operation::Any,
            permission: Permission::Any,
        };
        assert!(any.matches(&lit) && any.matches(&pre));
        let matching = AclFilter {
            name: Some("orders".into()),
            pattern: Match,
            ..any.clone()
        };
        assert!(matching.matches(&lit) && matching.matches(&pre));
        let literal = AclFilter {
            name: Some("orders".into()),
            pattern: Literal,
            ..any.clone()
        };
        assert!(literal.matches(&lit) && !literal.matches(&pre));
        let bob = AclFilter {
            principal: Some("User:bob".into()),
            ..any
        };
        assert!(!bob.matches(&lit) && bob.matches(&pre));

        assert!(lit.validate().is_ok());
        let bad = |f: fn(&mut Acl)| {
            let mut a = lit.clone();
            f(&mut a);
            a.validate().unwrap_err()
        };
        assert_eq!(bad(|a| a.pattern = Match), AclError::PatternType);
        assert_eq!(
            bad(|a| a.principal = "alice".into()),
            AclError::Principal("alice".into())
        );
        assert_eq!(bad(|a| a.operation = Operation::Any), AclError::Operation);
        assert!(matches!(
            bad(|a| a.operation = ClusterAction),
            AclError::NotApplicable { .. }
        ));
        assert_eq!(
            bad(|a| {
                a.resource_type = Cluster;
                a.operation = Alter;
            }),
            AclError::ClusterName("orders".into())
        );
    }
}
