//! The group coordinator's state machine, driven directly with a controlled clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use kafka_protocol::ResponseError;

use super::coordinator::*;

const SESSION: i32 = 10_000;
const REBALANCE: i32 = 30_000;

fn coordinator(initial_delay_ms: i32) -> GroupCoordinator {
    sized_coordinator(initial_delay_ms, usize::MAX)
}

fn sized_coordinator(initial_delay_ms: i32, max_size: usize) -> GroupCoordinator {
    GroupCoordinator::new(GroupConfig {
        min_session_timeout_ms: 6_000,
        max_session_timeout_ms: 60_000,
        initial_rebalance_delay_ms: initial_delay_ms,
        max_size,
    })
}

/// A JoinGroup of `member` ("" for a new one) to `group`, protocol "range".
pub(crate) fn join_request(group: &str, member: &str) -> JoinRequest {
    JoinRequest {
        group_id: group.into(),
        ..join(member, None, &[("range", "m")])
    }
}

fn join(member: &str, instance: Option<&str>, protocols: &[(&str, &str)]) -> JoinRequest {
    JoinRequest {
        group_id: "g".into(),
        member_id: member.into(),
        instance_id: instance.map(str::to_string),
        client_id: "client".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: SESSION,
        rebalance_timeout_ms: REBALANCE,
        protocol_type: "consumer".into(),
        protocols: protocols
            .iter()
            .map(|(n, m)| (n.to_string(), Bytes::from(m.to_string())))
            .collect(),
        require_known_member_id: true,
    }
}

fn now<T: std::fmt::Debug>(r: Reply<T>) -> T {
    match r {
        Reply::Now(t) => t,
        Reply::Later(_) => panic!("expected an immediate answer"),
    }
}

fn later<T>(r: Reply<T>) -> tokio::sync::oneshot::Receiver<T> {
    match r {
        Reply::Later(rx) => rx,
        Reply::Now(_) => panic!("expected to wait"),
    }
}

fn done<T>(rx: &mut tokio::sync::oneshot::Receiver<T>) -> T {
    rx.try_recv().expect("answered by now")
}

/// Joins a new member through the MEMBER_ID_REQUIRED round trip; returns its id and the
/// receiver of its join answer.
fn new_member(
    c: &GroupCoordinator,
    t: i64,
    protocols: &[(&str, &str)],
) -> (String, tokio::sync::oneshot::Receiver<JoinResponse>) {
    let first = now(c.join(join("", None, protocols), t));
    assert_eq!(first.error, Some(ResponseError::MemberIdRequired));
    assert!(first.member_id.starts_with("client-"));
    let rx = later(c.join(join(&first.member_id, None, protocols), t));
    (first.member_id, rx)
}

fn sync(member: &str, generation: i32, assignments: Vec<(&str, &str)>) -> SyncRequest {
    SyncRequest {
        group_id: "g".into(),
        generation,
        member_id: member.into(),
        instance_id: None,
        protocol_type: Some("consumer".into()),
        protocol_name: None,
        assignments: assignments
            .into_iter()
            .map(|(m, a)| (m.to_string(), Bytes::from(a.to_string())))
            .collect(),
    }
}

#[test]
fn two_members_join_sync_and_get_their_assignments_byte_for_byte() {
    let c = coordinator(0);
    let (a, mut ja) = new_member(&c, 0, &[("range", "meta-a")]);
    // The first member alone completes the join at once (no initial delay here).
    let ra = done(&mut ja);
    assert_eq!(ra.error, None);
    assert_eq!(ra.generation, 1);
    assert_eq!(ra.leader, a);
    assert_eq!(ra.protocol_name.as_deref(), Some("range"));
    assert_eq!(ra.members.len(), 1, "the leader sees the members");

    // A second member triggers a rebalance; the first must rejoin.
    let (b, mut jb) = new_member(&c, 10, &[("roundrobin", "x"), ("range", "meta-b")]);
    assert!(jb.try_recv().is_err(), "waits for the others");
    assert_eq!(
        c.heartbeat("g", 1, &a, None, 20),
        Some(ResponseError::RebalanceInProgress)
    );
    let mut ja = later(c.join(join(&a, None, &[("range", "meta-a")]), 30));
    let ra = done(&mut ja);
    let rb = done(&mut jb);
    assert_eq!((ra.generation, rb.generation), (2, 2));
    assert_eq!(
        ra.protocol_name.as_deref(),
        Some("range"),
        "the only protocol both support"
    );
    assert_eq!(ra.leader, a);
    assert!(rb.members.is_empty(), "followers do not see the members");
    let metas: Vec<_> = ra
        .members
        .iter()
        .map(|m| (m.member_id.clone(), m.metadata.clone()))
        .collect();
    assert_eq!(
        metas,
        vec![
            (a.clone(), Bytes::from("meta-a")),
            (b.clone(), Bytes::from("meta-b"))
        ]
    );

    // The follower syncs first and waits for the leader's assignment.
    let mut sb = later(c.sync(sync(&b, 2, vec![]), 40));
    assert_eq!(c.heartbeat("g", 2, &b, None, 41), None);
    let mut sa = later(c.sync(
        sync(&a, 2, vec![(&a, "\u{0}for-a"), (&b, "for-b\u{ff}")]),
        50,
    ));
    assert_eq!(done(&mut sa).assignment, Bytes::from("\u{0}for-a"));
    let sb = done(&mut sb);
    assert_eq!(sb.error, None);
    assert_eq!(sb.assignment, Bytes::from("for-b\u{ff}"));
    assert_eq!(sb.protocol_name.as_deref(), Some("range"));
    assert_eq!(c.heartbeat("g", 2, &b, None, 60), None);
    assert_eq!(
        c.heartbeat("g", 1, &b, None, 60),
        Some(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        c.heartbeat("g", 2, "nobody", None, 60),
        Some(ResponseError::UnknownMemberId)
    );
    let d = c.describe("g").unwrap();
    assert_eq!(d.state, GroupState::Stable);
    assert_eq!(d.members.len(), 2);
}

#[test]
fn leader_sync_answers_itself_and_everyone_waiting() {
    let c = coordinator(0);
    let (a, mut ja) = new_member(&c, 0, &[("range", "m")]);
    let r = done(&mut ja);
    let mut sa = later(c.sync(sync(&a, r.generation, vec![(&a, "mine")]), 1));
    assert_eq!(done(&mut sa).assignment, Bytes::from("mine"));
    // In Stable, a repeated sync is answered at once with the same assignment.
    assert_eq!(
        now(c.sync(sync(&a, r.generation, vec![]), 2)).assignment,
        Bytes::from("mine")
    );
}

#[test]
fn inconsistent_protocols_and_bad_timeouts_are_refused() {
    let c = coordinator(0);
    let (_a, _ja) = new_member(&c, 0, &[("range", "m")]);
    let r = now(c.join(join("", None, &[("sticky", "m")]), 1));
    assert_eq!(r.error, Some(ResponseError::InconsistentGroupProtocol));
    let mut bad = join("", None, &[("range", "m")]);
    bad.session_timeout_ms = 1000;
    assert_eq!(
        now(c.join(bad, 1)).error,
        Some(ResponseError::InvalidSessionTimeout)
    );
    let mut other_type = join("", None, &[("range", "m")]);
    other_type.protocol_type = "connect".into();
    assert_eq!(
        now(c.join(other_type, 1)).error,
        Some(ResponseError::InconsistentGroupProtocol)
    );
    assert_eq!(
        now(c.join(join("made-up", None, &[("range", "m")]), 1)).error,
        Some(ResponseError::UnknownMemberId)
    );
}

#[test]
fn a_member_whose_session_expires_is_removed_and_the_rest_rebalance() {
    let c = coordinator(0);
    let (a, mut ja) = new_member(&c, 0, &[("range", "m")]);
    done(&mut ja);
    let (b, mut jb) = new_member(&c, 0, &[("range", "m")]);
    let mut ja = later(c.join(join(&a, None, &[("range", "m")]), 0));
    let generation = done(&mut ja).generation;
    done(&mut jb);
    let mut sb = later(c.sync(sync(&b, generation, vec![]), 0));
    now_or_later_sync(&c, &a, generation);
    done(&mut sb);
    // b heartbeats, a goes silent: its session (10 s from its last contact at t=0)
    // lasts until t=10 s.
    for t in (1_000..=10_000).step_by(1_000) {
        assert_eq!(c.heartbeat("g", generation, &b, None, t), None);
        c.tick(t);
    }
    c.tick(10_001);
    assert_eq!(
        c.heartbeat("g", generation, &b, None, 12_100),
        Some(ResponseError::RebalanceInProgress)
    );
    assert_eq!(
        c.heartbeat("g", generation, &a, None, 12_100),
        Some(ResponseError::UnknownMemberId)
    );
    let mut jb = later(c.join(join(&b, None, &[("range", "m")]), 12_200));
    let r = done(&mut jb);
    assert_eq!(r.generation, generation + 1);
    assert_eq!(r.leader, b, "leadership moves to a remaining member");
    assert_eq!(r.members.len(), 1);
    assert_eq!(c.take_events().expired_members, 1);
}

fn now_or_later_sync(c: &GroupCoordinator, member: &str, generation: i32) {
    match c.sync(sync(member, generation, vec![]), 0) {
        Reply::Now(r) => assert_eq!(r.error, None),
        Reply::Later(mut rx) => assert_eq!(done(&mut rx).error, None),
    }
}

#[test]
fn members_that_do_not_rejoin_in_time_are_dropped_at_the_rebalance_timeout() {
    let c = coordinator(0);
    let (a, mut ja) = new_member(&c, 0, &[("range", "m")]);
    let generation = done(&mut ja).generation;
    now_or_later_sync(&c, &a, generation);
    let (_b, mut jb) = new_member(&c, 100, &[("range", "m")]);
    // a keeps heartbeating (REBALANCE_IN_PROGRESS) but never rejoins.
    for t in (1_000..REBALANCE as i64).step_by(1_000) {
        assert_eq!(
            c.heartbeat("g", generation, &a, None, t),
            Some(ResponseError::RebalanceInProgress)
        );
        c.tick(t);
        assert!(jb.try_recv().is_err());
    }
    c.tick(REBALANCE as i64 + 200);
    let r = done(&mut jb);
    assert_eq!(r.error, None);
    assert_eq!(
        r.members.len(),
        1,
        "only the member that rejoined is in the new generation"
    );
}

#[test]
fn leave_group_triggers_a_rebalance_and_an_empty_group_stays_empty() {
    let c = coordinator(0);
    let (a, mut ja) = new_member(&c, 0, &[("range", "m")]);
    let generation = done(&mut ja).generation;
    now_or_later_sync(&c, &a, generation);
    assert_eq!(
        c.leave("g", &[(a.clone(), None), ("ghost".into(), None)], 1)
            .unwrap(),
        vec![None, Some(ResponseError::UnknownMemberId)]
    );
    let d = c.describe("g").unwrap();
    assert_eq!(d.state, GroupState::Empty);
    assert!(!c.is_active("g"));
    // An unknown group: each member is unknown, the request itself is fine (Kafka).
    assert_eq!(
        c.leave("nope", &[(a.clone(), None), ("b".into(), None)], 1),
        Ok(vec![Some(ResponseError::UnknownMemberId); 2])
    );
    assert_eq!(
        c.leave("", &[(a, None)], 1),
        Err(ResponseError::InvalidGroupId)
    );
}

#[test]
fn a_full_group_refuses_new_members() {
    let c = sized_coordinator(0, 2);
    let (_a, _rx_a) = new_member(&c, 0, &[("range", "m")]);
    // A member that asked for its id (pending) counts too.
    let second = now(c.join(join("", None, &[("range", "m")]), 0));
    assert_eq!(second.error, Some(ResponseError::MemberIdRequired));
    assert_eq!(
        now(c.join(join("", None, &[("range", "m")]), 0)).error,
        Some(ResponseError::GroupMaxSizeReached)
    );
    assert_eq!(
        now(c.join(join("", Some("static-1"), &[("range", "m")]), 0)).error,
        Some(ResponseError::GroupMaxSizeReached)
    );
    // The pending member itself still gets in.
    let _rx_b = later(c.join(join(&second.member_id, None, &[("range", "m")]), 0));
}

#[test]
fn an_empty_group_id_is_invalid() {
    let c = coordinator(0);
    assert_eq!(
        now(c.join(join_request("", ""), 0)).error,
        Some(ResponseError::InvalidGroupId)
    );
    let mut s = sync("m", 1, vec![]);
    s.group_id = String::new();
    assert_eq!(now(c.sync(s, 0)).error, Some(ResponseError::InvalidGroupId));
    assert_eq!(
        c.heartbeat("", 1, "m", None, 0),
        Some(ResponseError::InvalidGroupId)
    );
    assert_eq!(
        c.validate_commit("", -1, "", None),
        Err(ResponseError::InvalidGroupId)
    );
}

#[test]
fn a_rebalancing_group_is_described_without_protocol_or_member_metadata() {
    let c = coordinator(0);
    let (a, mut ja) = new_member(&c, 0, &[("range", "meta-a")]);
    let generation = done(&mut ja).generation;
    now_or_later_sync(&c, &a, generation);
    let d = c.describe("g").unwrap();
    assert_eq!(
        (d.state, d.protocol_name.as_str()),
        (GroupState::Stable, "range")
    );
    assert_eq!(d.members[0].metadata, Bytes::from("meta-a"));
    // A second member joins: the group rebalances.
    let (_b, _jb) = new_member(&c, 10, &[("range", "meta-b")]);
    let d = c.describe("g").unwrap();
    assert_eq!(d.state, GroupState::PreparingRebalance);
    assert_eq!(d.protocol_type, "consumer");
    assert_eq!(d.protocol_name, "");
    assert!(
        d.members
            .iter()
            .all(|m| m.metadata.is_empty() && m.assignment.is_empty()),
        "{:?}",
        d.members
    );
}

#[test]
fn static_member_restarting_within_its_session_keeps_its_assignment_without_a_rebalance() {
    let c = coordinator(0);
    let r = join("", Some("instance-1"), &[("range", "m1")]);
    let mut j1 = later(c.join(r, 0));
    let first = done(&mut j1);
    assert!(
        first.member_id.starts_with("instance-1-"),
        "static members skip MEMBER_ID_REQUIRED"
    );
    let (b, mut jb) = new_member(&c, 10, &[("range", "m2")]);
    let mut j1 = later(c.join(
        join(&first.member_id, Some("instance-1"), &[("range", "m1")]),
        20,
    ));
    let g1 = done(&mut j1);
    let gb = done(&mut jb);
    assert_eq!(g1.generation, gb.generation);
    let generation = g1.generation;
    let leader = g1.leader.clone();
    let mut waits = Vec::new();
    for m in [&first.member_id, &b] {
        let assignments = if *m == leader {
            vec![
                (first.member_id.as_str(), "parts-of-1"),
                (b.as_str(), "parts-of-b"),
            ]
        } else {
            vec![]
        };
        waits.push(c.sync(
            SyncRequest {
                instance_id: (m == &first.member_id).then(|| "instance-1".to_string()),
                ..sync(m, generation, assignments)
            },
            30,
        ));
    }
    drop(waits);
    assert_eq!(c.describe("g").unwrap().state, GroupState::Stable);
    let rebalances_before = c.take_events().rebalances;
    assert!(rebalances_before > 0);

    // The static member's process restarts: it comes back with no member id.
    let back = now(c.join(join("", Some("instance-1"), &[("range", "m1")]), 5_000));
    assert_eq!(back.error, None);
    assert_eq!(back.generation, generation, "no new generation");
    assert_ne!(back.member_id, first.member_id);
    let mut s = SyncRequest {
        instance_id: Some("instance-1".into()),
        ..sync(&back.member_id, generation, vec![])
    };
    s.protocol_type = None;
    assert_eq!(now(c.sync(s, 5_001)).assignment, Bytes::from("parts-of-1"));
    assert_eq!(
        c.take_events().rebalances,
        0,
        "the others were not disturbed"
    );
    assert_eq!(c.heartbeat("g", generation, &b, None, 5_002), None);
    // The old incarnation is fenced.
    assert_eq!(
        c.heartbeat("g", generation, &first.member_id, Some("instance-1"), 5_003),
        Some(ResponseError::FencedInstanceId)
    );
    assert_eq!(
        c.validate_commit("g", generation, &first.member_id, Some("instance-1")),
        Err(ResponseError::FencedInstanceId)
    );
    // Also on JoinGroup and SyncGroup, ahead of UNKNOWN_MEMBER_ID (the old member id is
    // gone): a zombie told "unknown member" would rejoin and fence the live process.
    let zombie_join = now(c.join(
        join(&first.member_id, Some("instance-1"), &[("range", "m1")]),
        5_004,
    ));
    assert_eq!(zombie_join.error, Some(ResponseError::FencedInstanceId));
    let zombie_sync = now(c.sync(
        SyncRequest {
            instance_id: Some("instance-1".into()),
            ..sync(&first.member_id, generation, vec![])
        },
        5_005,
    ));
    assert_eq!(zombie_sync.error, Some(ResponseError::FencedInstanceId));
    // An instance id the group has never seen, with a member id: unknown member.
    let stranger = now(c.join(join(&b, Some("instance-9"), &[("range", "m2")]), 5_006));
    assert_eq!(stranger.error, Some(ResponseError::UnknownMemberId));
    assert_eq!(
        c.take_events().rebalances,
        0,
        "fenced and unknown members change nothing"
    );
    assert_eq!(c.heartbeat("g", generation, &b, None, 5_007), None);
}

#[test]
fn a_new_groups_first_rebalance_waits_for_the_initial_delay() {
    let c = coordinator(3_000);
    let (_a, mut ja) = new_member(&c, 0, &[("range", "m")]);
    c.tick(1_000);
    assert!(ja.try_recv().is_err(), "waiting for more members");
    let (_b, mut jb) = new_member(&c, 2_000, &[("range", "m")]);
    c.tick(3_500);
    assert!(
        ja.try_recv().is_err(),
        "a member arriving extends the delay"
    );
    c.tick(5_100);
    let (ra, rb) = (done(&mut ja), done(&mut jb));
    assert_eq!(ra.generation, 1);
    assert_eq!(rb.generation, 1, "both made it into the first generation");
}

#[test]
fn offset_commits_are_checked_against_membership() {
    let c = coordinator(0);
    // No group: only generation -1 ("simple" consumers) may commit.
    assert_eq!(c.validate_commit("g", -1, "", None), Ok(()));
    assert_eq!(
        c.validate_commit("g", 3, "m", None),
        Err(ResponseError::IllegalGeneration)
    );
    let (a, mut ja) = new_member(&c, 0, &[("range", "m")]);
    let generation = done(&mut ja).generation;
    assert_eq!(
        c.validate_commit("g", generation, &a, None),
        Err(ResponseError::RebalanceInProgress)
    );
    now_or_later_sync(&c, &a, generation);
    assert_eq!(c.validate_commit("g", generation, &a, None), Ok(()));
    assert_eq!(
        c.validate_commit("g", generation + 1, &a, None),
        Err(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        c.validate_commit("g", generation, "other", None),
        Err(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        c.validate_commit("g", -1, "", None),
        Err(ResponseError::UnknownMemberId),
        "the group is active"
    );
}

#[test]
fn sync_with_wrong_generation_or_protocol_is_refused() {
    let c = coordinator(0);
    let (a, mut ja) = new_member(&c, 0, &[("range", "m")]);
    let generation = done(&mut ja).generation;
    assert_eq!(
        now(c.sync(sync(&a, generation + 5, vec![]), 1)).error,
        Some(ResponseError::IllegalGeneration)
    );
    let mut wrong = sync(&a, generation, vec![]);
    wrong.protocol_name = Some("roundrobin".into());
    assert_eq!(
        now(c.sync(wrong, 1)).error,
        Some(ResponseError::InconsistentGroupProtocol)
    );
    assert_eq!(
        now(c.sync(sync("who", generation, vec![]), 1)).error,
        Some(ResponseError::UnknownMemberId)
    );
}
