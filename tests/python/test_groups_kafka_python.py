"""Consumer groups with kafka-python 3.x (KafkaConsumer with group_id and subscribe), and
groups that mix kafka-python and confluent-kafka members.

Members run in their own processes (group_member.py, see group_helpers). kafka-python
producers set enable_idempotence=False: what is tested here is the group, not the
idempotent producer.
"""

from __future__ import annotations

import time

import kafka.errors as Errors
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from group_helpers import (
    check_consumed_once,
    create_topic,
    end_offsets,
    kill_and_join_scenario,
    metric,
    produce as confluent_produce,
    wait_assignment,
    wait_consumed,
    wait_metric,
)
from strata_helpers import unique


def kp_produce(broker, topic: str, partitions: int, count: int, tag: str) -> dict[tuple[int, int], str]:
    """Like group_helpers.produce, with a kafka-python producer."""
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=False,
                      linger_ms=5)
    try:
        futures = [
            p.send(topic, value=f"{tag}-{i}".encode(), partition=i % partitions) for i in range(count)
        ]
        p.flush(timeout=30)
        out = {}
        for i, f in enumerate(futures):
            md = f.get(timeout=30)
            assert md.partition == i % partitions
            out[(md.partition, md.offset)] = f"{tag}-{i}"
        return out
    finally:
        p.close(timeout=10)


def kp_committed(broker, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets, through kafka-python's admin client (OffsetFetch)."""
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)
    try:
        res = a.list_group_offsets({group: None})[group]
    finally:
        a.close()
    return {tp.partition: om.offset for tp, om in res.items() if tp.topic == topic}


def kp_describe(broker, group: str) -> dict:
    """DescribeGroups through kafka-python's admin client (which decodes the members'
    subscriptions and assignments)."""
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)
    try:
        return a.describe_groups([group])[group]
    finally:
        a.close()


@pytest.mark.also_on_cluster
def test_kafka_python_member_killed_and_member_joining(broker, group_members):
    """kafka-python 3 with its cooperative-sticky assignor (KIP-429): the shared
    kill-and-join scenario (see group_helpers.kill_and_join_scenario)."""
    kill_and_join_scenario(broker, group_members, "kafka-python", "cooperative-sticky",
                           incremental=True, produce_fn=kp_produce, committed_fn=kp_committed)


def test_kafka_python_eager_member_killed_and_member_joining(broker, group_members):
    """The same scenario with kafka-python's default eager assignor (range)."""
    kill_and_join_scenario(broker, group_members, "kafka-python", "range",
                           incremental=False, produce_fn=kp_produce, committed_fn=kp_committed)


# Members sorted by member id: which member gets which share is not known in advance.
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


@pytest.mark.parametrize(
    "leader,assignor",
    [("kafka-python", "range"), ("confluent", "roundrobin")],
    ids=["kafka-python-leads-range", "confluent-leads-roundrobin"],
)
def test_mixed_clients_in_one_group(broker, group_members, leader, assignor):
    """kafka-python and confluent-kafka members in one group (both "consumer" protocol
    type, one assignor both know by the same name). The first member to join leads and
    computes the assignment from the others' subscriptions, so each client gets to decode
    the other's metadata: both get partitions, a member of the other client leaves, and
    every message is consumed exactly once."""
    partitions = 6
    other = "confluent" if leader == "kafka-python" else "kafka-python"
    topic, group = unique("grp-mixed"), unique("g-mixed")
    create_topic(broker, topic, partitions)
    expected = kp_produce(broker, topic, partitions, 180, "first")
    spawn = lambda client, name: group_members.spawn(client, broker, group, topic, assignor, name=name)  # noqa: E731
    lead = spawn(leader, "lead")
    wait_assignment([lead], partitions, what=f"{leader} alone")
    x = spawn(other, "other")
    y = spawn(leader, "same")
    three = wait_assignment([lead, x, y], partitions, what="with three members")
    assert {frozenset(v) for v in three.values()} == SHARES[assignor][3], three
    desc = kp_describe(broker, group)
    assert (desc["group_state"], desc["protocol_type"], desc["protocol_data"]) == (
        "Stable", "consumer", assignor), desc
    described = {
        m["client_id"]: {p for a in m["member_assignment"]["assigned_partitions"]
                         if a["topic"] == topic for p in a["partitions"]}
        for m in desc["members"]
    }
    assert described == three, f"DescribeGroups: {described}, members own {three}"
    assert all(m["member_metadata"]["topics"] == [topic] for m in desc["members"]), desc
    expected |= confluent_produce(broker, topic, partitions, 120, "three")
    wait_consumed(expected, [lead, x, y])

    x.close()
    expected |= kp_produce(broker, topic, partitions, 120, "after-leave")
    two = wait_assignment([lead, y], partitions, what=f"after the {other} member left")
    assert {frozenset(v) for v in two.values()} == SHARES[assignor][2], two
    wait_consumed(expected, [lead, x, y])
    lead.close()
    y.close()
    wait_metric(broker, "strata_group_members", 0)
    for m in (lead, x, y):
        assert not m.problems(), m.summary()
        assert m.deliveries(), f"{m.name} consumed nothing"
    check_consumed_once(expected, [lead, x, y])
    assert kp_committed(broker, group, topic, partitions) == end_offsets(expected, partitions)


def test_member_without_a_common_assignor_is_refused(broker, group_members):
    """A kafka-python member offering only roundrobin cannot join a group whose member
    (confluent-kafka) offers only range: JoinGroup answers INCONSISTENT_GROUP_PROTOCOL,
    kafka-python raises it, and the group goes on undisturbed."""
    topic, group = unique("grp-noproto"), unique("g-noproto")
    create_topic(broker, topic, 4)
    member = group_members.spawn("confluent", broker, group, topic, "range", name="range-only")
    wait_assignment([member], 4, what="range member alone")
    rebalances = metric(broker, "strata_group_rebalances_total")
    mark = member.mark()
    c = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=group,
                      partition_assignment_strategy=[RoundRobinPartitionAssignor],
                      session_timeout_ms=6000, heartbeat_interval_ms=1000)
    try:
        deadline = time.monotonic() + 20
        with pytest.raises(Errors.InconsistentGroupProtocolError):
            while time.monotonic() < deadline:
                c.poll(timeout_ms=200)
        assert not c.assignment()
    finally:
        c.close(autocommit=False)
    assert metric(broker, "strata_group_members") == 1
    assert metric(broker, "strata_group_rebalances_total") == rebalances
    noise = [e for e in member.evs(since=mark) if e["ev"] in ("assigned", "revoked", "lost", "assignment")]
    assert not noise, f"the range member saw a rebalance: {noise}"
    member.close()
