//! The classic group membership protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup),
//! as Kafka's group coordinator runs it.
//!
//! Membership lives in memory; committed offsets live in the metadata service (see the
//! `offsets` module). Everything here is synchronous and driven by the handlers and by a
//! periodic [`GroupCoordinator::tick`]: a request that must wait for a rebalance to
//! finish gets a receiver that is completed when it does. Time comes in as arguments.
//!
//! States, as in Kafka: `Empty` (no members) → `PreparingRebalance` (waiting for members
//! to join) → `CompletingRebalance` (waiting for the leader's assignment) → `Stable`.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tracing::info;

/// Settings of the coordinator (Kafka's `group.*` broker configs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupConfig {
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    pub initial_rebalance_delay_ms: i32,
    /// `group.max.size`: members a group may have.
    pub max_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// The name Kafka uses in DescribeGroups and ListGroups.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Empty => "Empty",
            Self::PreparingRebalance => "PreparingRebalance",
            Self::CompletingRebalance => "CompletingRebalance",
            Self::Stable => "Stable",
        }
    }
}

/// A JoinGroup request, in the coordinator's terms.
#[derive(Debug, Clone)]
pub(crate) struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new member first gets MEMBER_ID_REQUIRED with its id.
    pub require_known_member_id: bool,
}

/// One member as the leader sees it in a JoinGroup response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoinResponse {
    pub error: Option<ResponseError>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    pub members: Vec<JoinedMember>,
    pub skip_assignment: bool,
}

impl JoinResponse {
    fn error(error: ResponseError, member_id: &str) -> Self {
        Self {
            error: Some(error),
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
            skip_assignment: false,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct SyncRequest {
    pub group_id: String,
    pub generation: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncResponse {
    pub error: Option<ResponseError>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResponse {
    fn error(error: ResponseError) -> Self {
        Self {
            error: Some(error),
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

/// An answer now, or one to wait for.
pub(crate) enum Reply<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

/// A member as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub(crate) struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone)]
pub(crate) struct GroupDescription {
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol_name: String,
    pub members: Vec<MemberDescription>,
}

struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    join_waiter: Option<oneshot::Sender<JoinResponse>>,
    sync_waiter: Option<oneshot::Sender<SyncResponse>>,
    last_heartbeat_ms: i64,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn respond_join(&mut self, r: JoinResponse) {
        if let Some(tx) = self.join_waiter.take() {
            let _ = tx.send(r);
        }
    }

    fn respond_sync(&mut self, r: SyncResponse) {
        if let Some(tx) = self.sync_waiter.take() {
            let _ = tx.send(r);
        }
    }
}

struct Group {
    id: String,
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader: Option<String>,
    /// In join order: the first member to join leads a new group.
    members: Vec<Member>,
    /// Static members: instance id → current member id.
    static_members: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, and when they lapse.
    pending: HashMap<String, i64>,
    /// When PreparingRebalance gives up on members that have not rejoined.
    rebalance_deadline_ms: i64,
    /// A new group's first rebalance waits `group.initial.rebalance.delay.ms` for more
    /// members (extended as they come, up to the rebalance timeout).
    initial_delay: Option<(i64, i64)>,
    /// When CompletingRebalance gives up on members that have not synced.
    sync_deadline_ms: i64,
    empty_since_ms: i64,
}

impl Group {
    fn new(id: &str, now: i64) -> Self {
        Self {
            id: id.to_string(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: Vec::new(),
            static_members: HashMap::new(),
            pending: HashMap::new(),
            rebalance_deadline_ms: 0,
            initial_delay: None,
            sync_deadline_ms: 0,
            empty_since_ms: now,
        }
    }

    fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    fn member_mut(&mut self, id: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.id == id)
    }

    fn is_leader(&self, id: &str) -> bool {
        self.leader.as_deref() == Some(id)
    }

    /// FENCED_INSTANCE_ID if `instance_id` is registered to another member id.
    fn check_instance(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), ResponseError> {
        match instance_id.and_then(|i| self.static_members.get(i)) {
            Some(current) if current != member_id => Err(ResponseError::FencedInstanceId),
            _ => Ok(()),
        }
    }

    /// Whether a member with these protocols may join: same protocol type, and at least
    /// one protocol every member (this one included) supports.
    fn supports(
        &self,
        protocol_type: &str,
        protocols: &[(String, Bytes)],
        ignoring: Option<&str>,
    ) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        let others: Vec<&Member> = self
            .members
            .iter()
            .filter(|m| Some(m.id.as_str()) != ignoring)
            .collect();
        if others.is_empty() {
            return true;
        }
        if self
            .protocol_type
            .as_deref()
            .is_some_and(|t| t != protocol_type)
        {
            return false;
        }
        protocols.iter().any(|(name, _)| {
            others
                .iter()
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    /// Kafka's protocol selection: among the protocols every member supports, each member
    /// votes for the first one in its own preference order; the most votes win.
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.first()?;
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| {
                self.members
                    .iter()
                    .all(|m| m.protocols.iter().any(|(x, _)| x == n))
            })
            .collect();
        let mut votes: Vec<(&str, usize)> = candidates.iter().map(|c| (*c, 0)).collect();
        for m in &self.members {
            if let Some(choice) = m
                .protocols
                .iter()
                .find(|(n, _)| candidates.contains(&n.as_str()))
                && let Some(v) = votes.iter_mut().find(|(c, _)| *c == choice.0)
            {
                v.1 += 1;
            }
        }
        // Ties go to the protocol listed first by the longest-standing member.
        let best = votes.iter().map(|(_, n)| *n).max()?;
        votes
            .into_iter()
            .find(|(_, n)| *n == best)
            .map(|(c, _)| c.to_string())
    }

    fn current_members(&self) -> Vec<JoinedMember> {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        self.members
            .iter()
            .map(|m| JoinedMember {
                member_id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                metadata: m.metadata_for(&protocol),
            })
            .collect()
    }

    /// The JoinGroup answer for `member_id` in the current generation.
    fn join_response(&self, member_id: &str, skip_assignment: bool) -> JoinResponse {
        JoinResponse {
            error: None,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if self.is_leader(member_id) {
                self.current_members()
            } else {
                Vec::new()
            },
            skip_assignment,
        }
    }

    fn sync_ok(&self, assignment: Bytes) -> SyncResponse {
        SyncResponse {
            error: None,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment,
        }
    }

    fn add_member(&mut self, m: Member) {
        if self.leader.is_none() {
            self.leader = Some(m.id.clone());
        }
        if let Some(i) = &m.instance_id {
            self.static_members.insert(i.clone(), m.id.clone());
        }
        if self.members.is_empty() {
            // An empty group takes the protocol type of whoever joins first.
            self.protocol_type = Some(m.protocol_type.clone());
        }
        self.members.push(m);
    }

    fn remove_member(&mut self, id: &str, now: i64) -> Option<Member> {
        let pos = self.members.iter().position(|m| m.id == id)?;
        let m = self.members.remove(pos);
        if let Some(i) = &m.instance_id
            && self.static_members.get(i) == Some(&m.id)
        {
            self.static_members.remove(i);
        }
        if self.is_leader(id) {
            self.leader = self.members.first().map(|m| m.id.clone());
        }
        if self.members.is_empty() {
            // Like Kafka, an empty group keeps its protocol type.
            self.empty_since_ms = now;
        }
        Some(m)
    }

    /// Removes the members `doomed` picks; returns their ids.
    fn remove_members_where(&mut self, doomed: impl Fn(&Member) -> bool, now: i64) -> Vec<String> {
        let ids: Vec<String> = self
            .members
            .iter()
            .filter(|m| doomed(m))
            .map(|m| m.id.clone())
            .collect();
        for id in &ids {
            self.remove_member(id, now);
        }
        ids
    }

    fn max_rebalance_timeout(&self) -> i64 {
        self.members
            .iter()
            .map(|m| i64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    /// Starts (or restarts) a rebalance: everyone must rejoin.
    fn prepare_rebalance(&mut self, now: i64, delay_ms: i32, reason: &str) {
        if self.state == GroupState::CompletingRebalance {
            // The leader's assignment for the old generation will never come into force.
            for m in &mut self.members {
                m.respond_sync(SyncResponse::error(ResponseError::RebalanceInProgress));
            }
        }
        let was_empty = self.state == GroupState::Empty;
        self.state = GroupState::PreparingRebalance;
        self.rebalance_deadline_ms = now + self.max_rebalance_timeout();
        self.initial_delay = (was_empty && delay_ms > 0).then(|| {
            (
                now + i64::from(delay_ms),
                now + self.max_rebalance_timeout(),
            )
        });
        info!(group = %self.id, generation = self.generation, reason, "preparing rebalance");
    }

    fn all_joined(&self) -> bool {
        self.pending.is_empty() && self.members.iter().all(|m| m.join_waiter.is_some())
    }

    /// Completes the join phase if every member is back (or `force`, at the deadline).
    fn maybe_complete_join(&mut self, now: i64, force: bool) -> bool {
        if self.state != GroupState::PreparingRebalance || self.initial_delay.is_some() {
            return false;
        }
        if !force && !self.all_joined() {
            return false;
        }
        for id in self.remove_members_where(|m| m.join_waiter.is_none(), now) {
            info!(group = %self.id, member = %id, "removed member that did not rejoin in time");
        }
        self.pending.clear();
        self.generation += 1;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol_name = None;
            self.leader = None;
            info!(group = %self.id, generation = self.generation, "group is empty");
            return true;
        }
        self.protocol_name = self.select_protocol();
        self.state = GroupState::CompletingRebalance;
        self.sync_deadline_ms = now + self.max_rebalance_timeout();
        let ids: Vec<String> = self.members.iter().map(|m| m.id.clone()).collect();
        for id in ids {
            let resp = self.join_response(&id, false);
            if let Some(m) = self.member_mut(&id) {
                m.assignment = Bytes::new();
                m.last_heartbeat_ms = now;
                m.respond_join(resp);
            }
        }
        info!(
            group = %self.id,
            generation = self.generation,
            protocol = self.protocol_name.as_deref().unwrap_or(""),
            members = self.members.len(),
            leader = self.leader.as_deref().unwrap_or(""),
            "rebalance: join phase complete"
        );
        true
    }
}

fn new_member_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

/// Counts of what the coordinator did, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Events {
    pub rebalances: u64,
    pub expired_members: u64,
}

pub(crate) struct GroupCoordinator {
    config: GroupConfig,
    groups: Mutex<HashMap<String, Group>>,
    events: Mutex<Events>,
}

impl GroupCoordinator {
    pub(crate) fn new(config: GroupConfig) -> Self {
        Self {
            config,
            groups: Mutex::new(HashMap::new()),
            events: Mutex::new(Events::default()),
        }
    }

    /// Takes the event counts accumulated since the last call.
    pub(crate) fn take_events(&self) -> Events {
        std::mem::take(&mut *self.events.lock())
    }

    fn rebalance(&self, g: &mut Group, now: i64, reason: &str) {
        g.prepare_rebalance(now, self.config.initial_rebalance_delay_ms, reason);
        self.events.lock().rebalances += 1;
    }

    pub(crate) fn join(&self, req: JoinRequest, now: i64) -> Reply<JoinResponse> {
        let fail = |e: ResponseError| Reply::Now(JoinResponse::error(e, &req.member_id));
        if req.group_id.is_empty() {
            return fail(ResponseError::InvalidGroupId);
        }
        if req.session_timeout_ms < self.config.min_session_timeout_ms
            || req.session_timeout_ms > self.config.max_session_timeout_ms
        {
            return fail(ResponseError::InvalidSessionTimeout);
        }
        let mut groups = self.groups.lock();
        if !req.member_id.is_empty() && !groups.contains_key(&req.group_id) {
            return fail(ResponseError::UnknownMemberId);
        }
        let g = groups
            .entry(req.group_id.clone())
            .or_insert_with(|| Group::new(&req.group_id, now));
        let known = !req.member_id.is_empty();
        let ignoring = known.then_some(req.member_id.as_str());
        if !g.supports(&req.protocol_type, &req.protocols, ignoring) {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        let (tx, rx) = oneshot::channel();
        if !known {
            if let Some(instance) = &req.instance_id {
                if let Some(old) = g.static_members.get(instance).cloned() {
                    return self.rejoin_static(g, req, old, tx, rx, now);
                }
                if g.members.len() + g.pending.len() >= self.config.max_size {
                    return fail(ResponseError::GroupMaxSizeReached);
                }
                let id = new_member_id(instance);
                self.add_and_rebalance(g, &req, id, tx, now);
                return Reply::Later(rx);
            }
            if g.members.len() + g.pending.len() >= self.config.max_size {
                return fail(ResponseError::GroupMaxSizeReached);
            }
            let id = new_member_id(&req.client_id);
            if req.require_known_member_id {
                let lapse = now + i64::from(req.session_timeout_ms);
                g.pending.insert(id.clone(), lapse);
                return Reply::Now(JoinResponse::error(ResponseError::MemberIdRequired, &id));
            }
            self.add_and_rebalance(g, &req, id, tx, now);
            return Reply::Later(rx);
        }
        if g.pending.remove(&req.member_id).is_some() {
            let id = req.member_id.clone();
            self.add_and_rebalance(g, &req, id, tx, now);
            return Reply::Later(rx);
        }
        // As in Kafka: a fenced incarnation of a static member learns that first, so it
        // stops instead of rejoining under a new member id and fencing the live one.
        if let Err(e) = g.check_instance(&req.member_id, req.instance_id.as_deref()) {
            return fail(e);
        }
        let unknown_instance = req
            .instance_id
            .as_deref()
            .is_some_and(|i| !g.static_members.contains_key(i));
        if unknown_instance || g.member(&req.member_id).is_none() {
            return fail(ResponseError::UnknownMemberId);
        }
        let state = g.state;
        let is_leader = g.is_leader(&req.member_id);
        let Some(m) = g.member_mut(&req.member_id) else {
            return fail(ResponseError::UnknownMemberId);
        };
        let unchanged = m.protocols == req.protocols;
        m.protocols = req.protocols.clone();
        m.session_timeout_ms = req.session_timeout_ms;
        m.rebalance_timeout_ms = req.rebalance_timeout_ms;
        m.client_id = req.client_id.clone();
        m.client_host = req.client_host.clone();
        m.last_heartbeat_ms = now;
        match state {
            GroupState::PreparingRebalance => {
                m.respond_join(JoinResponse::error(
                    ResponseError::RebalanceInProgress,
                    &req.member_id,
                ));
                m.join_waiter = Some(tx);
                g.maybe_complete_join(now, false);
                Reply::Later(rx)
            }
            GroupState::CompletingRebalance if unchanged => {
                Reply::Now(g.join_response(&req.member_id, false))
            }
            GroupState::Stable if unchanged && !is_leader => {
                Reply::Now(g.join_response(&req.member_id, false))
            }
            GroupState::CompletingRebalance | GroupState::Stable | GroupState::Empty => {
                m.join_waiter = Some(tx);
                self.rebalance(
                    g,
                    now,
                    "a member rejoined with new metadata, or the leader rejoined",
                );
                g.maybe_complete_join(now, false);
                Reply::Later(rx)
            }
        }
    }

    fn add_and_rebalance(
        &self,
        g: &mut Group,
        req: &JoinRequest,
        id: String,
        tx: oneshot::Sender<JoinResponse>,
        now: i64,
    ) {
        g.add_member(Member {
            id: id.clone(),
            instance_id: req.instance_id.clone(),
            client_id: req.client_id.clone(),
            client_host: req.client_host.clone(),
            session_timeout_ms: req.session_timeout_ms,
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            protocol_type: req.protocol_type.clone(),
            protocols: req.protocols.clone(),
            assignment: Bytes::new(),
            join_waiter: Some(tx),
            sync_waiter: None,
            last_heartbeat_ms: now,
        });
        if g.state == GroupState::PreparingRebalance {
            // A member arriving during a new group's initial delay extends it.
            if let Some((deadline, max)) = g.initial_delay {
                let extended =
                    (now + i64::from(self.config.initial_rebalance_delay_ms)).min(max.max(now));
                g.initial_delay = Some((deadline.max(extended), max));
            }
            g.rebalance_deadline_ms = g
                .rebalance_deadline_ms
                .max(now + i64::from(req.rebalance_timeout_ms));
        } else {
            self.rebalance(g, now, &format!("member {id} joined"));
        }
        g.maybe_complete_join(now, false);
    }

    /// A static member rejoining with a new member id replaces its old identity; in a
    /// stable group whose protocol would not change, without a rebalance (KIP-345).
    #[allow(clippy::too_many_arguments)]
    fn rejoin_static(
        &self,
        g: &mut Group,
        req: JoinRequest,
        old_id: String,
        tx: oneshot::Sender<JoinResponse>,
        rx: oneshot::Receiver<JoinResponse>,
        now: i64,
    ) -> Reply<JoinResponse> {
        let Some(instance) = req.instance_id.clone() else {
            return Reply::Now(JoinResponse::error(ResponseError::UnknownMemberId, ""));
        };
        let new_id = new_member_id(&instance);
        let was_leader = g.is_leader(&old_id);
        let Some(m) = g.member_mut(&old_id) else {
            return Reply::Now(JoinResponse::error(ResponseError::UnknownMemberId, ""));
        };
        // Whoever still waits under the old id is a zombie now.
        m.respond_join(JoinResponse::error(
            ResponseError::FencedInstanceId,
            &old_id,
        ));
        m.respond_sync(SyncResponse::error(ResponseError::FencedInstanceId));
        m.id = new_id.clone();
        m.protocols = req.protocols.clone();
        m.session_timeout_ms = req.session_timeout_ms;
        m.rebalance_timeout_ms = req.rebalance_timeout_ms;
        m.client_id = req.client_id.clone();
        m.client_host = req.client_host.clone();
        m.last_heartbeat_ms = now;
        g.static_members.insert(instance.clone(), new_id.clone());
        if was_leader {
            g.leader = Some(new_id.clone());
        }
        info!(group = %g.id, instance = %instance, old = %old_id, new = %new_id, "static member rejoined");
        match g.state {
            GroupState::Stable if g.select_protocol() == g.protocol_name => {
                let resp = g.join_response(&new_id, was_leader);
                Reply::Now(resp)
            }
            GroupState::PreparingRebalance => {
                if let Some(m) = g.member_mut(&new_id) {
                    m.join_waiter = Some(tx);
                }
                g.maybe_complete_join(now, false);
                Reply::Later(rx)
            }
            _ => {
                if let Some(m) = g.member_mut(&new_id) {
                    m.join_waiter = Some(tx);
                }
                self.rebalance(g, now, &format!("static member {instance} rejoined"));
                g.maybe_complete_join(now, false);
                Reply::Later(rx)
            }
        }
    }

    pub(crate) fn sync(&self, req: SyncRequest, now: i64) -> Reply<SyncResponse> {
        let fail = |e: ResponseError| Reply::Now(SyncResponse::error(e));
        if req.group_id.is_empty() {
            return fail(ResponseError::InvalidGroupId);
        }
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(&req.group_id) else {
            return fail(ResponseError::UnknownMemberId);
        };
        if let Err(e) = g.check_instance(&req.member_id, req.instance_id.as_deref()) {
            return fail(e);
        }
        if g.member(&req.member_id).is_none() {
            return fail(ResponseError::UnknownMemberId);
        }
        if req.generation != g.generation {
            return fail(ResponseError::IllegalGeneration);
        }
        let mismatch =
            |given: &Option<String>, ours: &Option<String>| given.is_some() && given != ours;
        if mismatch(&req.protocol_type, &g.protocol_type)
            || mismatch(&req.protocol_name, &g.protocol_name)
        {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        match g.state {
            GroupState::Empty => fail(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => fail(ResponseError::RebalanceInProgress),
            GroupState::Stable => {
                let assignment = g
                    .member(&req.member_id)
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default();
                if let Some(m) = g.member_mut(&req.member_id) {
                    m.last_heartbeat_ms = now;
                }
                Reply::Now(g.sync_ok(assignment))
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = g.member_mut(&req.member_id) {
                    m.respond_sync(SyncResponse::error(ResponseError::RebalanceInProgress));
                    m.sync_waiter = Some(tx);
                    m.last_heartbeat_ms = now;
                }
                if g.is_leader(&req.member_id) {
                    let assigned: HashMap<String, Bytes> = req.assignments.into_iter().collect();
                    for m in &mut g.members {
                        m.assignment = assigned.get(&m.id).cloned().unwrap_or_default();
                    }
                    g.state = GroupState::Stable;
                    info!(group = %g.id, generation = g.generation, "rebalance complete: group is stable");
                    let ok: Vec<(String, SyncResponse)> = g
                        .members
                        .iter()
                        .map(|m| (m.id.clone(), g.sync_ok(m.assignment.clone())))
                        .collect();
                    for (id, resp) in ok {
                        if let Some(m) = g.member_mut(&id) {
                            m.respond_sync(resp);
                        }
                    }
                }
                Reply::Later(rx)
            }
        }
    }

    pub(crate) fn heartbeat(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        now: i64,
    ) -> Option<ResponseError> {
        if group_id.is_empty() {
            return Some(ResponseError::InvalidGroupId);
        }
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(group_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        if let Err(e) = g.check_instance(member_id, instance_id) {
            return Some(e);
        }
        if g.member(member_id).is_none() {
            return Some(ResponseError::UnknownMemberId);
        }
        if generation != g.generation {
            return Some(ResponseError::IllegalGeneration);
        }
        let state = g.state;
        if let Some(m) = g.member_mut(member_id) {
            m.last_heartbeat_ms = now;
        }
        match state {
            GroupState::Empty => Some(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
            GroupState::CompletingRebalance | GroupState::Stable => None,
        }
    }

    /// LeaveGroup: the per-member results, or a group-level error.
    pub(crate) fn leave(
        &self,
        group_id: &str,
        members: &[(String, Option<String>)],
        now: i64,
    ) -> Result<Vec<Option<ResponseError>>, ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(group_id) else {
            // As Kafka: no error for the request, each member is unknown.
            return Ok(vec![Some(ResponseError::UnknownMemberId); members.len()]);
        };
        let mut results = Vec::with_capacity(members.len());
        let mut left = Vec::new();
        for (member_id, instance_id) in members {
            let target: Result<String, ResponseError> = match instance_id {
                Some(instance) => match g.static_members.get(instance) {
                    None => Err(ResponseError::UnknownMemberId),
                    Some(current) if !member_id.is_empty() && current != member_id => {
                        Err(ResponseError::FencedInstanceId)
                    }
                    Some(current) => Ok(current.to_string()),
                },
                None if g.pending.remove(member_id).is_some() => {
                    results.push(None);
                    continue;
                }
                None if g.member(member_id).is_some() => Ok(member_id.to_string()),
                None => Err(ResponseError::UnknownMemberId),
            };
            match target {
                Ok(id) => {
                    if let Some(mut m) = g.remove_member(&id, now) {
                        m.respond_join(JoinResponse::error(ResponseError::UnknownMemberId, &id));
                        m.respond_sync(SyncResponse::error(ResponseError::UnknownMemberId));
                    }
                    left.push(id);
                    results.push(None);
                }
                Err(e) => results.push(Some(e)),
            }
        }
        if !left.is_empty() {
            info!(group = %g.id, members = ?left, "members left the group");
            self.after_departure(g, now, "members left");
        }
        Ok(results)
    }

    /// What a group does after members are gone: rebalance, or finish the one under way.
    fn after_departure(&self, g: &mut Group, now: i64, reason: &str) {
        match g.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                if g.members.is_empty() {
                    g.state = GroupState::Empty;
                    g.generation += 1;
                    g.protocol_name = None;
                    g.leader = None;
                } else {
                    self.rebalance(g, now, reason);
                }
            }
            GroupState::PreparingRebalance => {
                g.maybe_complete_join(now, false);
            }
            GroupState::Empty => {}
        }
    }

    /// Expires members whose session lapsed, new members that never came back, and
    /// rebalances whose deadline passed.
    pub(crate) fn tick(&self, now: i64) {
        let mut groups = self.groups.lock();
        for g in groups.values_mut() {
            g.pending.retain(|_, lapse| *lapse > now);
            let expired = g.remove_members_where(
                |m| {
                    m.join_waiter.is_none()
                        && m.sync_waiter.is_none()
                        && now - m.last_heartbeat_ms > i64::from(m.session_timeout_ms)
                },
                now,
            );
            for id in &expired {
                info!(group = %g.id, member = %id, "member session expired");
            }
            if !expired.is_empty() {
                self.events.lock().expired_members += expired.len() as u64;
                self.after_departure(g, now, "member session expired");
            }
            match g.state {
                GroupState::PreparingRebalance => {
                    if let Some((deadline, max)) = g.initial_delay {
                        if now >= deadline || now >= max {
                            g.initial_delay = None;
                            g.maybe_complete_join(now, true);
                        }
                    } else if now >= g.rebalance_deadline_ms {
                        g.maybe_complete_join(now, true);
                    } else {
                        g.maybe_complete_join(now, false);
                    }
                }
                GroupState::CompletingRebalance if now >= g.sync_deadline_ms => {
                    // The leader never sent its assignment: start over without the members
                    // that are not waiting for it.
                    g.remove_members_where(|m| m.sync_waiter.is_none(), now);
                    self.after_departure(g, now, "members did not sync in time");
                }
                _ => {}
            }
        }
    }

    /// Forgets empty groups for which `keep` says no (they have no committed offsets
    /// either), as Kafka turns such groups `Dead`.
    pub(crate) fn forget_empty(&self, keep: impl Fn(&str) -> bool) {
        self.groups
            .lock()
            .retain(|id, g| !(g.members.is_empty() && g.pending.is_empty()) || keep(id));
    }

    /// Checks an OffsetCommit against the group's membership (Kafka's rules). `Ok(())`:
    /// the offsets may be stored.
    pub(crate) fn validate_commit(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let groups = self.groups.lock();
        let Some(g) = groups.get(group_id) else {
            // No members: only a commit outside group management (generation -1) is valid.
            return if generation < 0 {
                Ok(())
            } else {
                Err(ResponseError::IllegalGeneration)
            };
        };
        if generation < 0 && g.state == GroupState::Empty {
            return Ok(());
        }
        g.check_instance(member_id, instance_id)?;
        if g.member(member_id).is_none() {
            return Err(ResponseError::UnknownMemberId);
        }
        if generation != g.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        if g.state == GroupState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        Ok(())
    }

    pub(crate) fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let groups = self.groups.lock();
        let g = groups.get(group_id)?;
        // As Kafka: only a Stable group shows its protocol and each member's metadata and
        // assignment; during a rebalance they are empty.
        let stable = g.state == GroupState::Stable;
        let protocol = match &g.protocol_name {
            Some(p) if stable => p.clone(),
            _ => String::new(),
        };
        Some(GroupDescription {
            state: g.state,
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            members: g
                .members
                .iter()
                .map(|m| MemberDescription {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: if stable {
                        m.metadata_for(&protocol)
                    } else {
                        Bytes::new()
                    },
                    assignment: if stable {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
            protocol_name: protocol,
        })
    }

    /// (group id, protocol type, state) of every group with members.
    pub(crate) fn list(&self) -> Vec<(String, String, GroupState)> {
        self.groups
            .lock()
            .values()
            .map(|g| {
                (
                    g.id.clone(),
                    g.protocol_type.clone().unwrap_or_default(),
                    g.state,
                )
            })
            .collect()
    }

    /// Whether the group has members (or members joining).
    pub(crate) fn is_active(&self, group_id: &str) -> bool {
        self.groups
            .lock()
            .get(group_id)
            .is_some_and(|g| !g.members.is_empty() || !g.pending.is_empty())
    }

    /// Since when the group has had no members, if it is known and empty.
    pub(crate) fn empty_since(&self, group_id: &str) -> Option<i64> {
        let groups = self.groups.lock();
        let g = groups.get(group_id)?;
        g.members.is_empty().then_some(g.empty_since_ms)
    }

    /// The group's protocol type (`consumer`, ...), if it is known here.
    pub(crate) fn protocol_type(&self, group_id: &str) -> Option<String> {
        self.groups
            .lock()
            .get(group_id)
            .and_then(|g| g.protocol_type.clone())
    }

    /// Topics the group's consumers subscribe to, from their `consumer` protocol
    /// metadata; `None` if the group does not use the consumer protocol.
    pub(crate) fn subscribed_topics(&self, group_id: &str) -> Option<BTreeSet<String>> {
        use kafka_protocol::messages::ConsumerProtocolSubscription;
        use kafka_protocol::protocol::Decodable;
        let groups = self.groups.lock();
        let g = groups.get(group_id)?;
        if g.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let mut topics = BTreeSet::new();
        for m in &g.members {
            let mut meta = m.metadata_for(g.protocol_name.as_deref().unwrap_or_default());
            if meta.len() < 2 {
                continue;
            }
            let version = i16::from_be_bytes([meta[0], meta[1]]);
            bytes::Buf::advance(&mut meta, 2);
            if let Ok(sub) = ConsumerProtocolSubscription::decode(&mut meta, version.clamp(0, 3)) {
                topics.extend(sub.topics.iter().map(|t| t.to_string()));
            }
        }
        Some(topics)
    }

    /// Forgets an empty group (DeleteGroups). Errors: NON_EMPTY_GROUP.
    pub(crate) fn delete(&self, group_id: &str) -> Result<(), ResponseError> {
        let mut groups = self.groups.lock();
        match groups.get(group_id) {
            Some(g) if !g.members.is_empty() || !g.pending.is_empty() => {
                Err(ResponseError::NonEmptyGroup)
            }
            _ => {
                groups.remove(group_id);
                Ok(())
            }
        }
    }

    /// Number of members across all groups.
    pub(crate) fn member_count(&self) -> usize {
        self.groups.lock().values().map(|g| g.members.len()).sum()
    }
}
