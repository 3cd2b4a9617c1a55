"""A Strata cluster under faults: real processes on loopback (cluster.py), an idempotent
acks=all producer and a consumer group running throughout, and a checker that finds
every acknowledged record exactly once, in order, where it was acknowledged.

Every scenario uses topics of replication factor 3 (2 where only two brokers exist) and
min.insync.replicas=2, with Kafka's timeouts shortened (cluster.FAST) so each takes
seconds: a broker whose lease is not renewed for 3 s is fenced.
"""

from __future__ import annotations

import json
import tarfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cluster import Cluster
from conftest import BrokerStartError
from strata_helpers import consume_all, metric_values, unique, wait_until

SESSION_TIMEOUT_S = 3.0
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def led_by(c: Cluster, leaders: list[int]) -> list[list[int]]:
    """A replica assignment whose partition i is preferably led by `leaders[i]`, the
    other brokers following."""
    brokers = [n.id for n in c.nodes.values() if n.broker]
    return [[lead] + [b for b in brokers if b != lead] for lead in leaders]


def new_topic(c: Cluster, leaders: list[int], assignment=None, **config: str) -> str:
    """A topic with min.insync.replicas=2 whose partition i is led by `leaders[i]` (or
    placed as `assignment` says), once every replica is in sync."""
    topic = unique("faults")
    admin = AdminClient({"bootstrap.servers": c.bootstrap})
    assignment = assignment or led_by(c, leaders)
    spec = NewTopic(
        topic,
        len(assignment),
        replica_assignment=assignment,
        config={"min.insync.replicas": "2", **config},
    )
    admin.create_topics([spec], operation_timeout=30)[topic].result(timeout=60)
    c.wait_isr(topic, len(assignment), len(assignment[0]))
    return topic


def leading_under_load(c: Cluster):
    """A node that leads both partitions of a new topic but not the metadata quorum, the
    topic, and its workload, once 300 records are acknowledged."""
    q = c.quorum_leader()
    a = next(i for i in c.nodes if i != q)
    topic = new_topic(c, [a, a])
    w = c.workload(topic, 2)
    w.wait_acked(300)
    return a, topic, w


@pytest.mark.parametrize("victim", ["partition-leader", "quorum-leader", "both"])
def test_kill_9_loses_nothing_acknowledged(cluster_factory, victim):
    c = cluster_factory()
    q = c.quorum_leader()
    a, b = [i for i in c.nodes if i != q]
    leaders, dead = {
        "partition-leader": ([a, a], a),
        "quorum-leader": ([a, b], q),
        "both": ([q, q], q),
    }[victim]
    topic = new_topic(c, leaders)
    epochs = [c.placement(topic, p)["leader_epoch"] for p in range(2)]
    w = c.workload(topic, 2)
    w.wait_acked(300)

    c.kill(dead)
    survivor = next(i for i in c.nodes if i != dead)
    if dead == q:
        wait_until(
            lambda: c.view(survivor).get("metadata_leader") not in (None, q),
            30,
            "a new metadata quorum leader",
        )
    for p, lead in enumerate(leaders):
        if lead == dead:
            c.wait_leader_moved(topic, p, dead)
            assert c.placement(topic, p)["leader_epoch"] > epochs[p]
    w.wait_acked(300)

    c.restart(dead)
    c.wait_isr(topic, 2, 3)
    w.wait_acked(100)
    w.finish()
    counts = w.verify()
    assert all(n >= 300 for n in counts.values()), counts


def test_a_paused_leader_acknowledges_nothing_that_is_lost_and_rejoins_as_follower(cluster_factory):
    # No automatic move back to the preferred leader, so the test can see it follow.
    c = cluster_factory(env={"STRATA_KAFKA_AUTO_LEADER_REBALANCE_ENABLE": "false"})
    a, topic, w = leading_under_load(c)

    c.pause(a)
    paused_at = time.monotonic()
    for p in range(2):
        c.wait_leader_moved(topic, p, a)
    w.wait_acked(200)
    time.sleep(max(0.0, SESSION_TIMEOUT_S + 1 - (time.monotonic() - paused_at)))
    c.resume(a)

    c.wait_isr(topic, 2, 3)
    for p in range(2):
        placement = c.placement(topic, p)
        assert placement["leader"] != a and a in placement["isr"], placement
    w.wait_acked(200)
    w.finish()
    w.verify()


def test_a_leader_cut_off_by_the_network_loses_nothing_and_rejoins(cluster_factory):
    c = cluster_factory()
    a, topic, w = leading_under_load(c)

    c.cut(a)
    for p in range(2):
        c.wait_leader_moved(topic, p, a)
    # Node a cannot learn where its leadership went, but once its lease has lapsed it
    # knows it may have moved: it reports itself unready (for that, or because as a voter
    # it finds no quorum leader, whichever it sees first) and tells clients that ask it
    # (its metadata is stale) that it leads nothing, so they look elsewhere.
    cut_off = c.nodes[a].process
    readiness = wait_until(
        lambda: (r := cut_off.http_get("/readyz", timeout=2))[0] != 200 and r, 30, "node a to turn unready"
    )
    assert "acts as fenced" in readiness[1] or "no metadata leader" in readiness[1], readiness
    asked_a = AdminClient({"bootstrap.servers": c.nodes[a].kafka_address})
    parts = asked_a.list_topics(topic, timeout=10).topics[topic].partitions
    assert len(parts) == 2 and all(p.leader != a for p in parts.values()), parts
    w.wait_acked(200)
    c.heal()

    c.wait_isr(topic, 2, 3)
    w.wait_acked(200)
    w.finish()
    w.verify()


def test_a_rolling_restart_under_load_shows_clients_only_retriable_errors(cluster_factory):
    c = cluster_factory()
    topic = new_topic(c, [1, 2, 3])
    w = c.workload(topic, 3)
    w.wait_acked(300)
    for i in c.nodes:
        started = time.monotonic()
        c.stop(i)  # SIGTERM: controlled shutdown, exit code 0 checked
        assert time.monotonic() - started < 30
        c.restart(i)
        c.wait_isr(topic, 3, 3)
        w.wait_acked(150)
    w.finish()
    # verify(): no record failed, no fatal producer error, nothing lost or doubled.
    w.verify()
    assert not w.group_errors, w.group_errors[:10]


def test_split_roles_three_voters_two_brokers(cluster_factory):
    c = cluster_factory(roles=["meta", "meta", "meta", "broker", "broker"])
    view = c.view(4)
    assert view["voters"] == [1, 2, 3], view
    assert sorted(b["id"] for b in view["brokers"]) == [4, 5], view
    topic = new_topic(c, [4, 5])
    w = c.workload(topic, 2)
    w.wait_acked(300)

    # The data path keeps going while the quorum elects a new leader.
    q = c.quorum_leader()
    c.kill(q)
    w.wait_acked(200)
    c.restart(q)

    # A broker dies: its partition moves to the other one, whose ISR then stands alone.
    c.kill(4)
    c.wait_leader_moved(topic, 0, 4)
    c.restart(4)
    c.wait_isr(topic, 2, 2)
    w.wait_acked(200)
    w.finish()
    w.verify()


def test_metrics_and_cluster_view_describe_the_cluster(cluster_factory):
    c = cluster_factory(racks=["a", "b", "c"])
    topic = new_topic(c, [1, 2, 3])
    view = c.view(2)
    assert sorted(b["id"] for b in view["brokers"]) == [1, 2, 3]
    assert {b["rack"] for b in view["brokers"]} == {"a", "b", "c"}
    assert all(b["alive"] for b in view["brokers"])
    assert view["voters"] == [1, 2, 3]
    q = view["metadata_leader"]

    def per_node(name):
        return {i: metric_values(c.metrics(i), name) for i in c.nodes}

    # Each broker leads one partition (once it has applied the new topic).
    wait_until(
        lambda: per_node("strata_replication_leader_partitions") == {1: [1], 2: [1], 3: [1]},
        30,
        "each broker to report leading one partition",
    )
    assert per_node("strata_meta_leader") == {i: [q] for i in c.nodes}
    wait_until(
        lambda: all(v == [3] for v in per_node("strata_cluster_brokers_alive").values()),
        10,
        "every node to count three live brokers",
    )
    # A follower stops: its partitions are under-replicated on their leaders.
    c.kill(3)
    wait_until(
        lambda: sum(
            v for i in (1, 2) for v in metric_values(c.metrics(i), "strata_replication_under_replicated_partitions")
        )
        >= 2,
        30,
        "under-replicated partitions to be reported",
    )
    # Partitions led by node 3 change their ISR only once the controller fences it
    # (broker.session.timeout.ms), which may come after the metrics above.
    def isr_without_3():
        parts = [p for p in c.view(1)["partitions"] if p["topic"] == topic]
        return all(3 not in p["isr"] for p in parts) and parts

    wait_until(isr_without_3, 30, "node 3 to leave every ISR")
    assert sum(sum(metric_values(c.metrics(i), "strata_replication_leaderships_total")) for i in (1, 2)) >= 3
    # What it misses shows as lag, in records and bytes, on the partitions' leaders.
    p = Producer({"bootstrap.servers": c.bootstrap, "acks": "all"})
    for i in range(300):
        p.produce(topic, b"v" * 100, partition=i % 2)
    assert p.flush(30) == 0
    for name in ("strata_replication_lag_records", "strata_replication_lag_bytes"):
        wait_until(
            lambda: sum(v for i in (1, 2) for v in metric_values(c.metrics(i), name, follower="3")) >= 300,
            10,
            f"{name} of follower 3",
        )


def test_a_replacement_with_an_empty_disk_copies_only_what_the_store_lacks(cluster_factory, rgw):
    """Node `victim` leads a topic whose data is mostly in radosgw; it dies and comes back
    with an empty data directory (a replacement pod): it rejoins the metadata quorum
    under its id, rebuilds the partition from the manifest, copies only the tail from
    the new leader, rejoins the ISR, leads again as the preferred replica and serves
    the whole partition, most of it from the object store."""
    bucket = f"cluster-{uuid.uuid4().hex[:12]}"
    rgw.s3_client().create_bucket(Bucket=bucket)
    c = cluster_factory(env={
        "STRATA_OBJECT_STORE": f"s3://{bucket}/strata",
        "STRATA_S3_ENDPOINT": rgw.endpoint,
        "STRATA_S3_REGION": rgw.region,
        "STRATA_S3_ALLOW_HTTP": "true",
        "STRATA_S3_PATH_STYLE": "true",
        "AWS_ACCESS_KEY_ID": rgw.access_key,
        "AWS_SECRET_ACCESS_KEY": rgw.secret_key,
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    q = c.quorum_leader()
    victim, other = [i for i in c.nodes if i != q]
    bulk = new_topic(c, [], assignment=[[victim, other, q]], **{"segment.bytes": str(256 << 10)})
    topic = new_topic(c, [other, other])
    w = c.workload(topic, 2)

    records, size = 800, 10_000
    p = Producer({"bootstrap.servers": c.bootstrap, "acks": "all", "linger.ms": 20})
    for i in range(records):
        p.produce(bulk, value=b"%06d" % i + bytes([i % 251]) * size, partition=0)
        p.poll(0)
    assert p.flush(60) == 0
    total = records * (size + 6)

    def uploaded():
        for part in json.loads(c.nodes[victim].process.http_get("/api/v1/partitions")[1]):
            if part["topic"] == bulk:
                end = part["remote_log_end_offset"] or 0
                return end >= records - 100 and end
        return False

    wait_until(uploaded, 60, "most of the partition to be in the object store", 0.5)
    c.kill(victim)
    c.wait_leader_moved(bulk, 0, victim)
    c.wipe(victim)
    c.restart(victim)
    c.wait_isr(bulk, 1, 3)
    c.wait_isr(topic, 2, 3)
    copied = sum(metric_values(c.metrics(victim), "strata_replication_fetched_bytes_total"))
    assert 0 < copied < total / 4, f"copied {copied} bytes of a {total}-byte partition"

    # Back in sync, the preferred replica leads again and serves everything.
    wait_until(lambda: c.placement(bulk, 0)["leader"] == victim, 30, "the replacement to lead again")
    read = consume_all(SimpleNamespace(bootstrap=c.bootstrap), bulk, {0: records})[0]
    assert [m.value()[:6] for m in read] == [b"%06d" % i for i in range(records)]
    assert all(m.value()[6:] == bytes([i % 251]) * size for i, m in enumerate(read))
    w.wait_acked(100)
    w.finish()
    w.verify()


def test_a_node_refuses_an_object_store_that_belongs_to_another_cluster(broker_factory, tmp_path):
    shared = {"STRATA_OBJECT_STORE": f"file://{tmp_path / 'shared-objects'}"}
    first = broker_factory(env=shared)
    first.stop()
    second = broker_factory(env=shared, start=False)
    with pytest.raises(BrokerStartError) as refused:
        second.start()
    message = str(refused.value)
    assert "belongs to cluster" in message and "exited with code 1" in message, message
    # The first cluster still owns it and starts as before.
    first.start()


def test_a_node_refuses_a_voters_list_the_quorum_has_not_committed(broker_factory):
    node = broker_factory(env={"STRATA_NODE_ID": "1"})
    node.stop()
    node.args = [
        "--meta-listen", "127.0.0.1:0",
        "--meta-advertised", "127.0.0.1:1",
        "--meta-voters", "1@127.0.0.1:1,2@127.0.0.2:1,3@127.0.0.3:1",
    ]
    with pytest.raises(BrokerStartError) as refused:
        node.start()
    assert "every node must be given the same list" in str(refused.value), str(refused.value)


def test_a_single_node_with_no_new_flags_keeps_an_existing_data_directory(broker_factory):
    """A data directory written by the last single-node release (tests/fixtures): today's
    broker, started exactly as before, serves it unchanged and runs as a cluster of one
    (no metadata listener, its own controller)."""
    node = broker_factory(start=False)
    with tarfile.open(FIXTURES / "single-node-data-4713538.tar.gz") as tar:
        tar.extractall(node.root, filter="data")
    node.start()
    assert "metadata listener ready" not in node.log_text()
    view = json.loads(node.http_get("/api/v1/cluster")[1])
    assert view["voters"] == [0] and [b["id"] for b in view["brokers"]] == [0], view

    admin = AdminClient({"bootstrap.servers": node.bootstrap})
    md = admin.list_topics(timeout=10)
    assert [b.id for b in md.brokers.values()] == [0]
    legacy = md.topics["legacy"].partitions
    assert sorted(legacy) == [0, 1, 2]
    assert all(p.leader == 0 and p.replicas == [0] and p.isrs == [0] for p in legacy.values())
    assert admin.describe_cluster().result(timeout=10).controller.id == 0

    read = consume_all(node, "legacy", {p: 100 for p in range(3)})
    for p in range(3):
        assert [m.value() for m in read[p]] == [b"legacy-%04d" % i for i in range(p, 300, 3)]
    c = Consumer({"bootstrap.servers": node.bootstrap, "group.id": "legacy-group"})
    try:
        committed = c.committed([TopicPartition("legacy", p) for p in range(3)], timeout=10)
    finally:
        c.close()
    assert [tp.offset for tp in committed] == [50, 50, 50]

    # It takes writes as before (acks=all with one replica), and keeps them.
    p = Producer({"bootstrap.servers": node.bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(30):
        p.produce("legacy", value=b"after-%02d" % i, partition=i % 3)
    assert p.flush(30) == 0
    node.restart()
    again = consume_all(node, "legacy", {p: 110 for p in range(3)})
    assert [m.value() for m in again[0][100:]] == [b"after-%02d" % i for i in range(0, 30, 3)]


def test_elect_leaders_and_describe_cluster_from_a_kafka_admin_client(cluster_factory):
    """A preferred replica back in sync after a crash gets its leadership back through
    ElectLeaders (automatic rebalance off); DescribeCluster names the controller."""
    from confluent_kafka import ElectionType

    c = cluster_factory(env={"STRATA_KAFKA_AUTO_LEADER_REBALANCE_ENABLE": "false"})
    q = c.quorum_leader()
    a = next(i for i in c.nodes if i != q)
    topic = new_topic(c, [a, q])
    admin = AdminClient({"bootstrap.servers": c.bootstrap})
    cluster = admin.describe_cluster().result(timeout=10)
    assert cluster.controller.id == q and sorted(n.id for n in cluster.nodes) == [1, 2, 3]

    # Nothing to do while the preferred replicas lead.
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    result = admin.elect_leaders(ElectionType.PREFERRED, tps).result(timeout=30)
    assert {tp.partition: e.code() for tp, e in result.items()} == {
        0: KafkaError.ELECTION_NOT_NEEDED, 1: KafkaError.ELECTION_NOT_NEEDED,
    }, result

    c.kill(a)
    c.wait_leader_moved(topic, 0, a)
    # The preferred replica is down: it cannot be elected.
    result = admin.elect_leaders(ElectionType.PREFERRED, tps[:1]).result(timeout=30)
    assert [e.code() for e in result.values()] == [KafkaError.PREFERRED_LEADER_NOT_AVAILABLE], result
    c.restart(a)
    c.wait_isr(topic, 2, 3)
    assert c.placement(topic, 0)["leader"] != a
    result = admin.elect_leaders(ElectionType.PREFERRED, tps[:1]).result(timeout=30)
    assert [e for e in result.values()] == [None], result
    wait_until(lambda: c.placement(topic, 0)["leader"] == a, 10, "the preferred replica to lead")
    # Readiness: every node is registered, unfenced, with a metadata leader.
    for n in c.nodes.values():
        assert n.process.http_get("/readyz")[0] == 200, n.id


def test_a_consumer_with_client_rack_reads_from_the_replica_in_its_rack(cluster_factory):
    """KIP-392: node 1 (rack a) leads; a consumer in rack c is sent to node 3's replica,
    which serves the records; node 2 (rack b) serves none."""
    c = cluster_factory(racks=["a", "b", "c"])
    topic = new_topic(c, [1])
    records, size = 200, 1000
    p = Producer({"bootstrap.servers": c.bootstrap, "acks": "all"})
    for i in range(records):
        p.produce(topic, b"%04d" % i + b"r" * (size - 4), partition=0)
    assert p.flush(30) == 0

    def served(i):
        return sum(metric_values(c.metrics(i), "strata_kafka_fetch_bytes_total"))

    before = {i: served(i) for i in (2, 3)}
    read = consume_all(SimpleNamespace(bootstrap=c.bootstrap), topic, {0: records}, **{"client.rack": "c"})[0]
    assert [m.value()[:4] for m in read] == [b"%04d" % i for i in range(records)]
    assert served(3) - before[3] >= records * size, (before, served(3))
    assert served(2) == before[2]


def test_acks_all_needs_min_insync_replicas_in_sync(cluster_factory):
    """min.insync.replicas=3 and a follower down: once the ISR has shrunk, acks=all is
    refused with NOT_ENOUGH_REPLICAS while acks=1 goes on; with the follower back in
    sync, acks=all works again."""
    c = cluster_factory()
    topic = new_topic(c, [1], **{"min.insync.replicas": "3"})
    c.kill(3)
    wait_until(lambda: 3 not in c.placement(topic, 0)["isr"], 30, "the ISR to shrink")

    def produce(acks: str):
        outcome = []
        p = Producer({"bootstrap.servers": c.bootstrap, "acks": acks, "retries": 0,
                      "enable.idempotence": False, "message.timeout.ms": 10000})
        p.produce(topic, b"v", partition=0, on_delivery=lambda err, m: outcome.append(err))
        assert p.flush(30) == 0
        return outcome[0]

    err = produce("all")
    assert err is not None and err.code() == KafkaError.NOT_ENOUGH_REPLICAS, err
    assert produce("1") is None
    c.restart(3)
    c.wait_isr(topic, 1, 3)
    assert produce("all") is None


def test_a_voter_back_with_an_empty_disk_catches_up_from_a_snapshot(cluster_factory):
    """With snapshots every 20 entries, the quorum's log no longer starts at its first
    entry once a few hundred offset commits went through: a voter that comes back with an
    empty data directory is sent the snapshot, and then has the committed offsets."""
    c = cluster_factory(env={"STRATA_META_SNAPSHOT_EVERY": "20"})
    q = c.quorum_leader()
    victim = next(i for i in c.nodes if i != q)
    topic = new_topic(c, [q])
    group = unique("snapshot")
    consumer = Consumer({"bootstrap.servers": c.bootstrap, "group.id": group})
    try:
        for offset in range(1, 201):  # one metadata entry each
            consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        consumer.close()

    c.kill(victim)
    c.wipe(victim)
    c.restart(victim)
    assert "installed metadata snapshot" in c.nodes[victim].process.log_text()
    # It has what the purged log held (the topic) and catches up with the leader.
    assert any(p["topic"] == topic for p in c.view(victim)["partitions"])
    wait_until(
        lambda: c.view(victim)["metadata_applied"] >= c.view(q)["metadata_applied"],
        30,
        "the replacement to apply everything the leader has",
    )
    # It came back as a learner; the leader promotes it to voter again once it caught up
    # (its membership check runs every 500 ms).
    wait_until(lambda: c.view(victim)["voters"] == [1, 2, 3], 30,
               "the replacement to be a voter again")
