"""Consumer groups with KafkaJS (Node.js, tests/node: `npm ci` in
scripts/install-test-deps.sh). Members run tests/node/group_member.js in their own node
processes and report like the Python members (see group_helpers).

KafkaJS negotiates its own API versions (JoinGroup up to v5, SyncGroup v3, OffsetCommit
v5, OffsetFetch v4, Fetch v11, ...) and rebalances eagerly with its RoundRobinAssigner.
"""

from __future__ import annotations

import time

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

# KafkaJS's RoundRobinAssigner: members sorted by member id, partitions dealt in turn.
ROUND_ROBIN = {
    1: {frozenset(range(6))},
    2: {frozenset({0, 2, 4}), frozenset({1, 3, 5})},
    3: {frozenset({0, 3}), frozenset({1, 4}), frozenset({2, 5})},
}


def test_kafkajs_group_join_disconnect_and_killed_member(broker, group_members):
    """Three KafkaJS members share 6 partitions; one disconnects (LeaveGroup) and the
    other two take its partitions over at once; then one of those is SIGKILLed with
    consumed-but-uncommitted messages and the last one takes everything after the session
    timeout. Every message is consumed, exactly once except the killed member's
    uncommitted tail, and the group's committed offsets end at the log end."""
    partitions = 6
    topic, group = unique("grp-kafkajs"), unique("g-kafkajs")
    create_topic(broker, topic, partitions)
    expected = produce(broker, topic, partitions, 240, "first")
    spawn = lambda name: group_members.spawn("kafkajs", broker, group, topic, "roundrobin", name=name)  # noqa: E731
    a, b, c = spawn("a"), spawn("b"), spawn("c")
    three = wait_assignment([a, b, c], partitions, what="with three KafkaJS members")
    assert {frozenset(v) for v in three.values()} == ROUND_ROBIN[3], three
    for m in (a, b, c):
        assert {e["assigner"] for e in m.evs("assigned")} == {"RoundRobinAssigner"}, m.summary()
    leaders = [m.name for m in (a, b, c) if m.evs("assigned")[-1]["leader"]]
    assert len(leaders) == 1, f"leaders in the last generation: {leaders}"
    wait_consumed(expected, [a, b, c], what="by three members")
    wait_metric(broker, "strata_group_members", 3)

    # c disconnects: LeaveGroup, its partitions move right away (no session timeout).
    left_at = time.monotonic()
    c.close()
    expected |= produce(broker, topic, partitions, 120, "after-leave")
    two = wait_assignment([a, b], partitions, what="after c disconnected")
    assert time.monotonic() - left_at < SESSION_TIMEOUT_MS / 1000, "LeaveGroup did not rebalance at once"
    assert {frozenset(v) for v in two.values()} == ROUND_ROBIN[2], two
    wait_consumed(expected, [a, b, c], what="after c disconnected")
    wait_metric(broker, "strata_group_members", 2)

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
    mark = a.mark()
    killed_at = time.monotonic()
    b.kill()
    expected |= produce(broker, topic, partitions, 60, "after-kill")
    wait_assignment([a], partitions, timeout=45, what="after b was killed")
    took = time.monotonic() - killed_at
    assert took >= (SESSION_TIMEOUT_MS - HEARTBEAT_INTERVAL_MS) / 1000 - 0.5, (
        f"b's partitions moved {took:.1f}s after it was killed, before its session timed out"
    )
    assert metric(broker, "strata_group_expired_members_total") == expired + 1
    wait_consumed(expected, [a, b, c], what="after b was killed")
    for p in b_parts:
        firsts = [o for e in a.evs("consumed", mark) for (q, o, _) in e["recs"] if q == p]
        assert firsts and min(firsts) == resume[p], (
            f"partition {p}: a resumed at {min(firsts, default=None)}, committed was {resume[p]}"
        )
    a.close()
    wait_metric(broker, "strata_group_members", 0)
    for m in (a, b, c):
        assert not m.problems(), m.summary()
        assert not m.evs("commit_error"), m.summary()
    check_consumed_once(expected, [a, b, c])
    assert committed_offsets(broker, group, topic, partitions) == end_offsets(expected, partitions)
