"""Consumer groups with confluent-kafka (librdkafka): rebalancing with the cooperative and
the eager assignors, members that die without leaving, static membership, committed
offsets across broker restarts, and batched offset commits.

Group members run in their own processes (group_member.py, see group_helpers) so that one
can be SIGKILLed: it then neither leaves the group nor commits again, and only the
broker's session timeout takes its partitions away.
"""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from group_helpers import (
    SESSION_TIMEOUT_MS,
    check_consumed_once,
    committed_offsets,
    create_topic,
    end_offsets,
    kill_and_join_scenario,
    metric,
    produce,
    wait_assignment,
    wait_consumed,
    wait_metric,
)
from strata_helpers import unique, wait_until

# How librdkafka's eager assignors split 6 partitions of one topic (members sorted by
# member id, so which member gets which share is not known in advance).
SHARES = {
    "range": {
        2: {frozenset({0, 1, 2}), frozenset({3, 4, 5})},
        3: {frozenset({0, 1}), frozenset({2, 3}), frozenset({4, 5})},
    },
    "roundrobin": {
        2: {frozenset({0, 2, 4}), frozenset({1, 3, 5})},
        3: {frozenset({0, 3}), frozenset({1, 4}), frozenset({2, 5})},
    },
}


def assert_shares(assignor: str, owned: dict[str, set[int]]) -> None:
    got = {frozenset(v) for v in owned.values()}
    assert got == SHARES[assignor][len(owned)], f"{assignor} assignment: {owned}"


def test_cooperative_sticky_member_killed_and_member_joining(broker, group_members):
    kill_and_join_scenario(broker, group_members, "confluent", "cooperative-sticky", incremental=True)


@pytest.mark.also_on_cluster
@pytest.mark.parametrize("assignor", ["range", "roundrobin"])
def test_eager_assignor_join_and_leave(broker, group_members, assignor):
    """Two members, a third joins, then leaves with LeaveGroup: every rebalance revokes
    everything first (eager), the assignor chosen is the one the members asked for, and
    with synchronous commits before revocation every message is consumed exactly once."""
    partitions = 6
    topic, group = unique(f"grp-{assignor}"), unique(f"g-{assignor}")
    create_topic(broker, topic, partitions)
    expected = produce(broker, topic, partitions, 240, "first")
    spawn = lambda name: group_members.spawn("confluent", broker, group, topic, assignor, name=name)  # noqa: E731
    a, b = spawn("a"), spawn("b")
    two = wait_assignment([a, b], partitions, what="with two members")
    assert_shares(assignor, two)
    wait_consumed(expected, [a, b])
    rebalances = metric(broker, "strata_group_rebalances_total")

    marks = {m.name: m.mark() for m in (a, b)}
    c = spawn("c")
    expected |= produce(broker, topic, partitions, 120, "three")
    three = wait_assignment([a, b, c], partitions, what="after c joined")
    assert_shares(assignor, three)
    for m in (a, b):
        revoked = [e["parts"] for e in m.evs("revoked", marks[m.name])]
        assert sorted(two[m.name]) in revoked, f"eager: {m.name} did not revoke {two[m.name]}: {revoked}"
    assert metric(broker, "strata_group_rebalances_total") > rebalances

    # DescribeGroups shows the group as the members see it.
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})  # alive until the future is done
    desc = admin.describe_consumer_groups([group])[group].result(timeout=30)
    assert desc.partition_assignor == assignor
    assert desc.state.name == "STABLE", desc.state
    described = {
        mem.client_id: {tp.partition for tp in mem.assignment.topic_partitions if tp.topic == topic}
        for mem in desc.members
    }
    assert described == three, f"DescribeGroups: {described}, members own {three}"
    wait_consumed(expected, [a, b, c])

    c.close()
    expected |= produce(broker, topic, partitions, 120, "after-leave")
    again = wait_assignment([a, b], partitions, what="after c left")
    assert_shares(assignor, again)
    wait_consumed(expected, [a, b, c])
    for m in (a, b):
        m.close()
    for m in (a, b, c):
        assert not m.problems(), m.summary()
        assert not m.evs("commit_error"), m.summary()
    check_consumed_once(expected, [a, b, c])
    assert committed_offsets(broker, group, topic, partitions) == end_offsets(expected, partitions)


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_static_member_restart_keeps_assignment_without_rebalance(broker, group_members, client):
    """Two static members (group.instance.id). Each in turn is SIGKILLed and started
    again with the same instance id before its session times out: it gets the same
    partitions back, resumes at its committed offsets, and the other member sees no
    rebalance at all (no callbacks; the broker counts no rebalance and expires no one),
    whether the restarted member led the group or not.

    librdkafka joins with JoinGroup v5, kafka-python with v7; both get the member list
    back when the restarted member was the leader, and the broker must keep the
    assignment it has rather than the one the leader sends in SyncGroup."""
    partitions = 6
    topic, group = unique("grp-static"), unique("g-static")
    create_topic(broker, topic, partitions)
    expected = produce(broker, topic, partitions, 180, "first")
    ids = {"s1": unique("instance-1"), "s2": unique("instance-2")}

    def spawn(name, instance):
        return group_members.spawn(client, broker, group, topic, "range", name=name,
                                   instance_id=instance)

    members = {"s1": spawn("s1", ids["s1"]), "s2": spawn("s2", ids["s2"])}
    owned = wait_assignment(list(members.values()), partitions, what="with two static members")
    wait_consumed(expected, list(members.values()))
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    desc = admin.describe_consumer_groups([group])[group].result(timeout=30)
    described = {
        mem.client_id: (mem.group_instance_id, {tp.partition for tp in mem.assignment.topic_partitions})
        for mem in desc.members
    }
    assert described == {k: (ids[k], owned[k]) for k in ids}, f"DescribeGroups: {described}"
    rebalances = metric(broker, "strata_group_rebalances_total")
    expired = metric(broker, "strata_group_expired_members_total")
    everyone = list(members.values())

    for victim_key, other_key in (("s1", "s2"), ("s2", "s1")):
        victim, other = members[victim_key], members[other_key]
        parts = victim.owned()
        other_parts = other.owned()
        # Stop committing first, so that nothing is in flight when it dies and what it
        # consumed since is known to be uncommitted.
        victim.nocommit()
        more = produce(broker, topic, partitions, 60, f"before-kill-{victim_key}")
        expected |= more
        wait_until(lambda: {k for k in more if k[0] in parts} <= victim.consumed_keys(), 30,
                   f"{victim.name} consuming before it is killed")
        committed = victim.committed()
        mark = other.mark()
        victim.kill()
        killed_at = time.monotonic()
        new = spawn(f"{victim_key}-restarted", ids[victim_key])
        everyone.append(new)
        members[victim_key] = new
        wait_until(lambda: new.owned() == parts, 30,
                   f"restarted {victim_key} getting {sorted(parts)} back (it has {new.owned()})")
        started_within = time.monotonic() - killed_at
        assert started_within < SESSION_TIMEOUT_MS / 1000, (
            f"the restart took {started_within:.1f}s, longer than the session timeout"
        )
        # It resumes where the killed incarnation had committed.
        wait_until(lambda: {p for p, _, _ in new.deliveries()} == parts, 30,
                   f"restarted {victim_key} consuming all its partitions")
        firsts = {}
        for p, o, _ in new.deliveries():
            firsts.setdefault(p, o)
        assert firsts == {p: committed[p] for p in parts}, (
            f"restarted {victim_key} started at {firsts}, committed were {committed}"
        )
        expected |= produce(broker, topic, partitions, 60, f"after-restart-{victim_key}")
        wait_consumed(expected, everyone)
        # Stay until well past the old incarnation's session timeout: its session must not
        # expire (the new incarnation replaced it) and nothing may rebalance.
        wait_until(lambda: time.monotonic() - killed_at > SESSION_TIMEOUT_MS / 1000 + 2, 30, "time")
        noise = [e for e in other.evs(since=mark) if e["ev"] in ("assigned", "revoked", "lost", "assignment")]
        assert not noise, f"{other.name} saw a rebalance when {victim_key} restarted: {noise}"
        assert other.owned() == other_parts
        assert metric(broker, "strata_group_rebalances_total") == rebalances
        assert metric(broker, "strata_group_expired_members_total") == expired
        assert metric(broker, "strata_group_members") == 2

    for m in members.values():
        m.close()
    for m in everyone:
        assert not m.problems(), m.summary()
    check_consumed_once(expected, everyone)
    assert committed_offsets(broker, group, topic, partitions) == end_offsets(expected, partitions)


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_members_rejoin_after_broker_restart(broker, group_members, how):
    """Membership is in the broker's memory only: running members whose broker restarts
    (SIGTERM or SIGKILL) find their member ids unknown, join again, get the partitions
    back and resume at their committed offsets: nothing is lost or consumed twice."""
    partitions = 4
    topic, group = unique("grp-rejoin"), unique("g-rejoin")
    create_topic(broker, topic, partitions)
    expected = produce(broker, topic, partitions, 80, "before")
    spawn = lambda name: group_members.spawn("confluent", broker, group, topic, "range", name=name)  # noqa: E731
    a, b = spawn("a"), spawn("b")
    wait_assignment([a, b], partitions, what="before the restart")
    wait_consumed(expected, [a, b])
    ends = end_offsets(expected, partitions)
    wait_until(lambda: {**a.committed(), **b.committed()} == ends, 30, "commits up to the end")
    assert metric(broker, "strata_group_rebalances_total") >= 1
    marks = {m.name: m.mark() for m in (a, b)}

    if how == "stop":
        broker.stop()
    else:
        broker.kill()
    broker.restart()
    assert metric(broker, "strata_group_members") == 0
    wait_metric(broker, "strata_group_members", 2, timeout=60)
    # New messages only after the restart: whatever was consumed before was committed.
    expected |= produce(broker, topic, partitions, 80, "after")
    wait_consumed(expected, [a, b], timeout=60, what="after the restart")
    wait_assignment([a, b], partitions, what="after the restart")
    assert metric(broker, "strata_group_rebalances_total") >= 1, "no rebalance after the restart"
    for m in (a, b):
        # After the restart each member read only new messages, from the committed offset.
        again = [(p, o) for e in m.evs("consumed", marks[m.name]) for p, o, _ in e["recs"]]
        assert all(o >= ends[p] for p, o in again), f"{m.name} read old messages again: {again[:10]}"
        m.close()
    check_consumed_once(expected, [a, b])
    assert committed_offsets(broker, group, topic, partitions) == end_offsets(expected, partitions)


def _consume_firsts(c: Consumer, topic: str, partitions: set[int], timeout: float = 30) -> dict[int, int]:
    """Polls until a message of each partition arrived; returns the first offset of each."""
    firsts: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while set(firsts) != partitions:
        assert time.monotonic() < deadline, f"only got messages of {sorted(firsts)} of {sorted(partitions)}"
        m = c.poll(0.2)
        if m is None:
            continue
        assert m.error() is None or m.error().code() == KafkaError._PARTITION_EOF, m.error()
        if m.error() is None and m.topic() == topic:
            firsts.setdefault(m.partition(), m.offset())
    return firsts


def _group_consumer(broker, group: str, topic: str) -> Consumer:
    c = Consumer({
        "bootstrap.servers": broker.bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": 1000,
        "fetch.wait.max.ms": 100,
    })
    c.subscribe([topic])
    return c


def _committed(c: Consumer, topic: str, partitions: int) -> dict[int, tuple[int, str | None]]:
    res = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=20)
    assert all(tp.error is None for tp in res), res
    return {tp.partition: (tp.offset, tp.metadata) for tp in res}


def test_committed_offsets_and_metadata_survive_broker_restarts(broker_factory):
    """Committed offsets (with their metadata strings) survive a graceful restart and a
    kill -9 right after the commit was acknowledged; a consumer started afterwards
    resumes exactly there. Group membership itself does not survive (it is in memory)."""
    broker = broker_factory(env={"STRATA_KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "500"})
    partitions = 3
    topic, group = unique("grp-restart"), unique("g-restart")
    create_topic(broker, topic, partitions)
    produce(broker, topic, partitions, 90, "m")  # 30 per partition

    c1 = _group_consumer(broker, group, topic)
    _consume_firsts(c1, topic, set(range(partitions)))
    first = {0: (7, "zero: checkpoint ✓"), 1: (13, '{"json": [1, 2]}'), 2: (25, "")}
    c1.commit(offsets=[TopicPartition(topic, p, o, metadata=md) for p, (o, md) in first.items()],
              asynchronous=False)
    assert _committed(c1, topic, partitions) == first
    wait_metric(broker, "strata_group_members", 1)
    c1.close()
    wait_metric(broker, "strata_group_members", 0)

    broker.stop()
    broker.restart()
    assert metric(broker, "strata_group_members") == 0
    c2 = _group_consumer(broker, group, topic)
    assert _committed(c2, topic, partitions) == first
    assert _consume_firsts(c2, topic, set(range(partitions))) == {p: o for p, (o, _) in first.items()}
    second = {0: (10, "after graceful restart"), 1: (29, "x" * 1000), 2: (30, "end of partition 2")}
    c2.commit(offsets=[TopicPartition(topic, p, o, metadata=md) for p, (o, md) in second.items()],
              asynchronous=False)
    broker.kill()  # right after the commit was acknowledged
    broker.restart()
    assert metric(broker, "strata_group_members") == 0, "group membership survived a restart"
    c2.close()

    produce(broker, topic, partitions, 3, "later")  # one more message in each partition
    c3 = _group_consumer(broker, group, topic)
    try:
        assert _committed(c3, topic, partitions) == second
        assert _consume_firsts(c3, topic, set(range(partitions))) == {p: o for p, (o, _) in second.items()}
    finally:
        c3.close()
    assert committed_offsets(broker, group, topic, partitions) == {p: o for p, (o, _) in second.items()}


def test_offset_commits_are_batched_into_metadata_writes(broker_factory):
    """Many members of one group committing one partition each, synchronously and as fast
    as they can: every acknowledged commit is counted, and concurrent commits share Raft
    writes (far fewer writes than commits)."""
    broker = broker_factory(env={"STRATA_KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "1000"})
    members, rounds = 16, 40
    topic, group = unique("grp-batch"), unique("g-batch")
    create_topic(broker, topic, members)
    produce(broker, topic, members, members * rounds, "m")
    consumers = [
        Consumer({
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "client.id": f"committer-{i}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "roundrobin",
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 1000,
        })
        for i in range(members)
    ]
    stop = threading.Event()
    failures: list[str] = []
    commits_done = [0] * members
    ready = threading.Barrier(members + 1, timeout=90)

    def run(i: int) -> None:
        c = consumers[i]
        try:
            c.subscribe([topic])
            deadline = time.monotonic() + 60
            while len(c.assignment()) != 1 or not all(len(x.assignment()) == 1 for x in consumers):
                assert time.monotonic() < deadline, f"committer-{i}: assignment {c.assignment()}"
                c.poll(0.1)
            (tp,) = c.assignment()
            ready.wait()
            for offset in range(1, rounds + 1):
                res = c.commit(offsets=[TopicPartition(topic, tp.partition, offset)], asynchronous=False)
                assert all(r.error is None for r in res), res
                commits_done[i] += 1
        except Exception as e:  # reported by the main thread
            failures.append(f"committer-{i}: {e!r}")
            ready.abort()
        finally:
            stop.wait(5)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(members)]
    for t in threads:
        t.start()
    try:
        # Nobody commits before this thread reaches the barrier too.
        commits0 = metric(broker, "strata_group_offset_commits_total")
        writes0 = metric(broker, "strata_group_offset_commit_writes_total")
        try:
            ready.wait()
        except threading.BrokenBarrierError:
            raise AssertionError(f"committers failed before committing: {failures}") from None
        started = time.monotonic()
        wait_until(lambda: failures or sum(commits_done) == members * rounds, 120, "all commits")
        elapsed = time.monotonic() - started
        assert not failures, failures
        commits = metric(broker, "strata_group_offset_commits_total") - commits0
        writes = metric(broker, "strata_group_offset_commit_writes_total") - writes0
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        for c in consumers:
            c.close()
    assert commits == members * rounds, f"{commits} offset commits counted, {members * rounds} acknowledged"
    assert 1 <= writes < commits / 2, (
        f"{writes} metadata writes for {commits} single-partition commits from {members} "
        f"concurrent committers in {elapsed:.1f}s: commits are not batched"
    )
    assert committed_offsets(broker, group, topic, members) == {p: rounds for p in range(members)}


def test_session_timeout_outside_broker_limits_is_refused(broker):
    """JoinGroup with a session timeout outside [group.min.session.timeout.ms,
    group.max.session.timeout.ms] (6000, 1800000) gets INVALID_SESSION_TIMEOUT, which
    librdkafka reports to the application; the member gets no partitions."""
    topic = unique("grp-session")
    create_topic(broker, topic, 2)
    for session_ms in (5999, 1800001):
        c = Consumer({
            "bootstrap.servers": broker.bootstrap,
            "group.id": unique("g-session"),
            "session.timeout.ms": session_ms,
            "heartbeat.interval.ms": 1000,
            "max.poll.interval.ms": max(session_ms, 300000),
        })
        try:
            c.subscribe([topic])
            deadline = time.monotonic() + 20
            err = None
            while err is None:
                assert time.monotonic() < deadline, f"session.timeout.ms={session_ms}: no error reported"
                m = c.poll(0.2)
                if m is not None and m.error() is not None:
                    err = m.error()
            assert err.code() == KafkaError.INVALID_SESSION_TIMEOUT, (session_ms, err)
            assert c.assignment() == []
        finally:
            c.close()
    assert metric(broker, "strata_group_members") == 0
