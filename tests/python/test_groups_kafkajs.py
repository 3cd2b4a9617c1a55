"""Consumer groups with KafkaJS (Node.js, tests/node: `npm ci` in
scripts/install-test-deps.sh). Members run tests/node/group_member.js in their own node
processes and report like the Python members (see group_helpers).

KafkaJS negotiates its own API versions (JoinGroup up to v5, SyncGroup v3, OffsetCommit
v5, OffsetFetch v4, Fetch v11, ...) and rebalances eagerly with its RoundRobinAssigner.
"""

from __future__ import annotations

import time

import pytest

from group_helpers import (
    HEARTBEAT_INTERVAL_MS,
    SESSION_TIMEOUT_MS,
    check_consumed_once,
    committed_offsets,
    create_topic,
    end_offsets,
    metric,
    produce,
    wait_assignment,
    wait_consumed,
    wait_metric,
)
from strata_helpers import unique, wait_until


def check_generation(members, partitions: int) -> dict[str, set[int]]:
    """The members' last GROUP_JOINs are of one generation: distinct member ids, the same
    leader id (one of them), exactly one member told it leads; and what each owns is what
    KafkaJS's RoundRobinAssigner deals (members sorted by member id, partitions dealt in
    turn), so the leader was given every member of the generation. Returns name -> owned."""
    last = {m.name: m.evs("assigned")[-1] for m in members}
    ids = {name: e["member_id"] for name, e in last.items()}
    assert len(set(ids.values())) == len(members), f"member ids: {ids}"
    leader_ids = {e["leader_id"] for e in last.values()}
    assert len(leader_ids) == 1 and leader_ids <= set(ids.values()), (
        f"leader ids {leader_ids}, member ids {ids}"
    )
    leaders = [name for name, e in last.items() if e["leader"]]
    assert len(leaders) == 1, f"members told they lead the last generation: {leaders}"
    assert ids[leaders[0]] in leader_ids, f"{leaders[0]} leads, leader id {leader_ids}"
    for m in members:
        assert last[m.name]["assigner"] == "RoundRobinAssigner", m.summary()
    order = sorted(ids, key=ids.get)
    want = {name: {p for p in range(partitions) if p % len(order) == i} for i, name in enumerate(order)}
    owned = {m.name: m.owned() for m in members}
    assert owned == want, f"round robin over member ids {ids}: want {want}, members own {owned}"
    return owned


@pytest.mark.also_on_cluster
def test_kafkajs_group_leave_join_and_killed_member(broker, group_members):
    """Three KafkaJS members share 6 partitions; one disconnects (LeaveGroup) and the
    other two take its partitions over at once; a new member joins the stable pair and,
    the rebalance being eager, everyone is reassigned and the newcomer gets its share;
    then one of the first members is SIGKILLed with consumed-but-uncommitted messages and
    the two others take its partitions after the session timeout. Every message is
    consumed, exactly once except the killed member's uncommitted tail, and the group's
    committed offsets end at the log end."""
    partitions = 6
    topic, group = unique("grp-kafkajs"), unique("g-kafkajs")
    create_topic(broker, topic, partitions)
    expected = produce(broker, topic, partitions, 240, "first")
    spawn = lambda name: group_members.spawn("kafkajs", broker, group, topic, "roundrobin", name=name)  # noqa: E731
    a, b, c = spawn("a"), spawn("b"), spawn("c")
    wait_assignment([a, b, c], partitions, what="with three KafkaJS members")
    check_generation([a, b, c], partitions)
    for m in (a, b, c):
        assert {e["assigner"] for e in m.evs("assigned")} == {"RoundRobinAssigner"}, m.summary()
    wait_consumed(expected, [a, b, c], what="by three members")
    wait_metric(broker, "strata_group_members", 3)

    # c disconnects: LeaveGroup, its partitions move right away (no session timeout).
    left_at = time.monotonic()
    c.close()
    expected |= produce(broker, topic, partitions, 120, "after-leave")
    wait_assignment([a, b], partitions, what="after c disconnected")
    assert time.monotonic() - left_at < SESSION_TIMEOUT_MS / 1000, "LeaveGroup did not rebalance at once"
    two = check_generation([a, b], partitions)
    wait_consumed(expected, [a, b, c], what="after c disconnected")
    wait_metric(broker, "strata_group_members", 2)

    # d joins the stable group of a and b. Eager: a and b each rejoin and get a new
    # assignment (2 partitions instead of 3), d gets its 2.
    marks = {m.name: m.mark() for m in (a, b)}
    d = spawn("d")
    expected |= produce(broker, topic, partitions, 120, "while-joining")
    wait_assignment([a, b, d], partitions, what="after d joined")
    three = check_generation([a, b, d], partitions)
    wait_metric(broker, "strata_group_members", 3)
    for m in (a, b):
        new = [set(e["parts"]) for e in m.evs("assigned", marks[m.name])]
        assert new and new[-1] == three[m.name] != two[m.name], (
            f"{m.name} owned {two[m.name]}; assignments since d joined: {new}"
        )
    # With the assignment settled, each partition is read by its owner alone, and the new
    # messages of d's partitions go to d.
    settled = {m.name: m.mark() for m in (a, b, d)}
    joined = produce(broker, topic, partitions, 120, "after-join")
    expected |= joined
    wait_consumed(expected, [a, b, c, d], what="after d joined")
    for m in (a, b, d):
        got = {(p, o) for e in m.evs("consumed", settled[m.name]) for (p, o, _) in e["recs"]}
        mine = {k for k in joined if k[0] in three[m.name]}
        foreign = sorted(k for k in got if k[0] not in three[m.name])
        assert mine and mine <= got and not foreign, (
            f"{m.name} owns {sorted(three[m.name])}: consumed {foreign[:10]} of partitions it "
            f"does not own, missed {sorted(mine - got)[:10]} of its own"
        )
        assert not m.evs("assigned", settled[m.name]), f"another rebalance: {m.summary()}"

    # b stops committing, consumes more, and is killed without leaving.
    b.nocommit()
    b_parts = b.owned()
    more = produce(broker, topic, partitions, 60, "tail")
    expected |= more
    b_tail = {k for k in more if k[0] in b_parts}
    wait_until(lambda: b_tail <= b.consumed_keys(), 30, "b consuming its uncommitted tail")
    # Where b's partitions will resume: the group's committed offsets (b's own commits,
    # or, for a partition b got but never committed, its previous owner's).
    resume = committed_offsets(broker, group, topic, partitions)
    for p, o in b.committed().items():
        if p in b_parts:
            assert resume[p] == o, f"partition {p}: group committed {resume[p]}, b committed {o}"
    expired = metric(broker, "strata_group_expired_members_total")
    marks = {m.name: m.mark() for m in (a, d)}
    killed_at = time.monotonic()
    b.kill()
    expected |= produce(broker, topic, partitions, 60, "after-kill")
    wait_assignment([a, d], partitions, timeout=45, what="after b was killed")
    took = time.monotonic() - killed_at
    assert took >= (SESSION_TIMEOUT_MS - HEARTBEAT_INTERVAL_MS) / 1000 - 0.5, (
        f"b's partitions moved {took:.1f}s after it was killed, before its session timed out"
    )
    check_generation([a, d], partitions)
    assert metric(broker, "strata_group_expired_members_total") == expired + 1
    wait_metric(broker, "strata_group_members", 2)
    wait_consumed(expected, [a, b, c, d], what="after b was killed")
    for p in b_parts:
        firsts = [
            o for m in (a, d) for e in m.evs("consumed", marks[m.name])
            for (q, o, _) in e["recs"] if q == p
        ]
        assert firsts and min(firsts) == resume[p], (
            f"partition {p}: resumed at {min(firsts, default=None)}, committed was {resume[p]}"
        )
    a.close()
    d.close()
    wait_metric(broker, "strata_group_members", 0)
    for m in (a, b, c, d):
        assert not m.problems(), m.summary()
        assert not m.evs("commit_error"), m.summary()
    check_consumed_once(expected, [a, b, c, d])
    assert committed_offsets(broker, group, topic, partitions) == end_offsets(expected, partitions)
