//! CreateAcls, DescribeAcls and DeleteAcls: ACL bindings kept in the metadata quorum
//! (so every broker enforces the same ones, across restarts and failovers). Without
//! an authorizer they answer SECURITY_DISABLED, as Kafka does.

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;
use strata_meta::Command;
use strata_security::acl::{Acl, AclFilter, Operation, PatternType, Permission, ResourceType};

use crate::authz::Authz;
use crate::broker::Broker;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// Why the whole request is refused: no authorizer, or no permission to manage ACLs.
fn refusal(authz: &Authz, op: Operation) -> Option<(i16, &'static str)> {
    if !authz.enabled() {
        return Some((
            ResponseError::SecurityDisabled.code(),
            "No Authorizer is configured (set authorizer.class.name)",
        ));
    }
    (!authz.cluster(op)).then_some((
        ResponseError::ClusterAuthorizationFailed.code(),
        "Cluster authorization failed.",
    ))
}

fn invalid(what: &str) -> String {
    format!("invalid {what}")
}

/// A binding from CreateAcls' wire codes.
fn binding(c: &kafka_protocol::messages::create_acls_request::AclCreation) -> Result<Acl, String> {
    let acl = Acl {
        resource_type: ResourceType::from_code(c.resource_type)
            .ok_or_else(|| invalid("resource type"))?,
        name: c.resource_name.to_string(),
        pattern: PatternType::from_code(c.resource_pattern_type)
            .ok_or_else(|| invalid("pattern type"))?,
        principal: c.principal.to_string(),
        host: c.host.to_string(),
        operation: Operation::from_code(c.operation).ok_or_else(|| invalid("operation"))?,
        permission: Permission::from_code(c.permission_type)
            .ok_or_else(|| invalid("permission type"))?,
    };
    acl.validate().map_err(|e| e.to_string())?;
    Ok(acl)
}

/// A filter from DescribeAcls' or DeleteAcls' wire codes.
fn filter(
    resource_type: i8,
    name: Option<&StrBytes>,
    pattern: i8,
    principal: Option<&StrBytes>,
    host: Option<&StrBytes>,
    operation: i8,
    permission: i8,
) -> Result<AclFilter, String> {
    Ok(AclFilter {
        resource_type: ResourceType::from_code(resource_type)
            .ok_or_else(|| invalid("resource type filter"))?,
        name: name.map(ToString::to_string),
        pattern: PatternType::from_code(pattern).ok_or_else(|| invalid("pattern type filter"))?,
        principal: principal.map(ToString::to_string),
        host: host.map(ToString::to_string),
        operation: Operation::from_code(operation).ok_or_else(|| invalid("operation filter"))?,
        permission: Permission::from_code(permission)
            .ok_or_else(|| invalid("permission type filter"))?,
    })
}

/// Commits a change of `acls` (nothing to do for none); the error code and message of
/// a failed write.
async fn write(
    broker: &Broker,
    acls: Vec<Acl>,
    command: impl FnOnce(Vec<Acl>) -> Command,
) -> Result<(), (i16, String)> {
    if acls.is_empty() {
        return Ok(());
    }
    broker
        .meta
        .write(command(acls))
        .await
        .map(|_| ())
        .map_err(|e| (crate::errors::meta_error(&e).code(), e.to_string()))
}

pub(super) async fn create(
    broker: &Broker,
    authz: &Authz,
    req: CreateAclsRequest,
) -> CreateAclsResponse {
    let result = |code: i16, msg: &str| {
        AclCreationResult::default()
            .with_error_code(code)
            .with_error_message((!msg.is_empty()).then(|| s(msg)))
    };
    if let Some((code, msg)) = refusal(authz, Operation::Alter) {
        return CreateAclsResponse::default()
            .with_results(req.creations.iter().map(|_| result(code, msg)).collect());
    }
    let checked: Vec<Result<Acl, String>> = req.creations.iter().map(binding).collect();
    let valid: Vec<Acl> = checked
        .iter()
        .filter_map(|c| c.as_ref().ok().cloned())
        .collect();
    let written = write(broker, valid, |acls| Command::CreateAcls { acls }).await;
    let results = checked
        .into_iter()
        .map(|c| match (c, &written) {
            (Err(msg), _) => result(ResponseError::InvalidRequest.code(), &msg),
            (Ok(_), Err((code, msg))) => result(*code, msg),
            (Ok(_), Ok(())) => result(0, ""),
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}

pub(super) fn describe(
    broker: &Broker,
    authz: &Authz,
    req: &DescribeAclsRequest,
) -> DescribeAclsResponse {
    let fail = |code: i16, msg: &str| {
        DescribeAclsResponse::default()
            .with_error_code(code)
            .with_error_message((!msg.is_empty()).then(|| s(msg)))
    };
    if let Some((code, msg)) = refusal(authz, Operation::Describe) {
        return fail(code, msg);
    }
    let f = match filter(
        req.resource_type_filter,
        req.resource_name_filter.as_ref(),
        req.pattern_type_filter,
        req.principal_filter.as_ref(),
        req.host_filter.as_ref(),
        req.operation,
        req.permission_type,
    ) {
        Ok(f) => f,
        Err(msg) => return fail(ResponseError::InvalidRequest.code(), &msg),
    };
    let acls = broker.meta.read(|st| st.acls.clone());
    let mut by_resource: BTreeMap<(i8, String, i8), Vec<AclDescription>> = BTreeMap::new();
    for a in acls.iter().filter(|a| f.matches(a)) {
        by_resource
            .entry((a.resource_type.code(), a.name.clone(), a.pattern.code()))
            .or_default()
            .push(
                AclDescription::default()
                    .with_principal(s(&a.principal))
                    .with_host(s(&a.host))
                    .with_operation(a.operation.code())
                    .with_permission_type(a.permission.code()),
            );
    }
    DescribeAclsResponse::default().with_resources(
        by_resource
            .into_iter()
            .map(|((rt, name, pattern), acls)| {
                DescribeAclsResource::default()
                    .with_resource_type(rt)
                    .with_resource_name(s(&name))
                    .with_pattern_type(pattern)
                    .with_acls(acls)
            })
            .collect(),
    )
}

pub(super) async fn delete(
    broker: &Broker,
    authz: &Authz,
    req: DeleteAclsRequest,
) -> DeleteAclsResponse {
    let failed = |code: i16, msg: &str| {
        DeleteAclsFilterResult::default()
            .with_error_code(code)
            .with_error_message((!msg.is_empty()).then(|| s(msg)))
    };
    if let Some((code, msg)) = refusal(authz, Operation::Alter) {
        return DeleteAclsResponse::default()
            .with_filter_results(req.filters.iter().map(|_| failed(code, msg)).collect());
    }
    let acls = broker.meta.read(|st| st.acls.clone());
    let matched: Vec<Result<Vec<Acl>, String>> = req
        .filters
        .iter()
        .map(|f| {
            let f = filter(
                f.resource_type_filter,
                f.resource_name_filter.as_ref(),
                f.pattern_type_filter,
                f.principal_filter.as_ref(),
                f.host_filter.as_ref(),
                f.operation,
                f.permission_type,
            )?;
            Ok(acls.iter().filter(|a| f.matches(a)).cloned().collect())
        })
        .collect();
    let mut doomed: Vec<Acl> = matched.iter().flatten().flatten().cloned().collect();
    doomed.sort();
    doomed.dedup();
    let written = write(broker, doomed, |acls| Command::DeleteAcls { acls }).await;
    let results = matched
        .into_iter()
        .map(|m| match (m, &written) {
            (Err(msg), _) => failed(ResponseError::InvalidRequest.code(), &msg),
            (Ok(_), Err((code, msg))) => failed(*code, msg),
            (Ok(acls), Ok(())) => DeleteAclsFilterResult::default().with_matching_acls(
                acls.iter()
                    .map(|a| {
                        DeleteAclsMatchingAcl::default()
                            .with_resource_type(a.resource_type.code())
                            .with_resource_name(s(&a.name))
                            .with_pattern_type(a.pattern.code())
                            .with_principal(s(&a.principal))
                            .with_host(s(&a.host))
                            .with_operation(a.operation.code())
                            .with_permission_type(a.permission.code())
                    })
                    .collect(),
            ),
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}
