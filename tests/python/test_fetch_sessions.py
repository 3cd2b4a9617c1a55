"""Fetch sessions (KIP-227) with a real client: kafka-python keeps incremental fetch
sessions (librdkafka does not), so a consumer of many partitions sends them once and
then only what changed. Checked from the client's side (every record arrives, nothing
from partitions it stopped fetching) and from the broker's metrics."""

from __future__ import annotations

import time
from types import SimpleNamespace

from kafka import KafkaConsumer, TopicPartition

from strata_helpers import metric_values, unique, wait_until
from test_kafka_python import create_topic, producer

PARTITIONS = 24


def m(broker, name: str) -> float:
    return sum(metric_values(broker.metrics(), name))


def produce_to(broker, topic: str, partitions, per_partition: int, tag: str) -> None:
    p = producer(broker, "all")
    try:
        for part in partitions:
            for i in range(per_partition):
                p.send(topic, value=f"{tag}-{part}-{i}".encode(), partition=part)
        p.flush(timeout=60)
    finally:
        p.close(timeout=10)


def read(c: KafkaConsumer, want: dict[int, int], timeout: float = 60) -> dict[int, list[bytes]]:
    """Polls until each partition in `want` reached that many records (more is an error
    the caller sees)."""
    got: dict[int, list[bytes]] = {}
    deadline = time.monotonic() + timeout
    while any(len(got.get(p, [])) < n for p, n in want.items()):
        assert time.monotonic() < deadline, f"have { {p: len(v) for p, v in got.items()} }, want {want}"
        for tp, records in c.poll(timeout_ms=300, max_records=5000).items():
            got.setdefault(tp.partition, []).extend(r.value for r in records)
    # Anything else already on its way arrives too.
    for tp, records in c.poll(timeout_ms=1000).items():
        got.setdefault(tp.partition, []).extend(r.value for r in records)
    return got


def session_consumer(broker, **extra) -> KafkaConsumer:
    return KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False,
                         auto_offset_reset="earliest", fetch_max_wait_ms=200, **extra)


def test_a_consumer_of_many_partitions_fetches_incrementally(broker):
    """24 partitions read through one session: every record arrives once and in order,
    the broker served incremental fetches, and records produced later to a few
    partitions arrive through the same session."""
    topic = unique("sessions")
    create_topic(broker, topic, PARTITIONS)
    produce_to(broker, topic, range(PARTITIONS), 20, "a")
    before = m(broker, "strata_kafka_incremental_fetches_total")
    c = session_consumer(broker)
    try:
        c.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        got = read(c, {p: 20 for p in range(PARTITIONS)})
        for p in range(PARTITIONS):
            assert got[p] == [f"a-{p}-{i}".encode() for i in range(20)], p
        assert m(broker, "strata_kafka_fetch_sessions") >= 1
        assert m(broker, "strata_kafka_fetch_session_partitions") >= PARTITIONS
        # Idle polls are incremental fetches of the session.
        wait_until(lambda: m(broker, "strata_kafka_incremental_fetches_total") > before + 3, 20,
                   "incremental fetches")
        produce_to(broker, topic, [3, 17], 5, "b")
        more = read(c, {3: 5, 17: 5})
        assert more == {3: [f"b-3-{i}".encode() for i in range(5)], 17: [f"b-17-{i}".encode() for i in range(5)]}
    finally:
        c.close()
    assert m(broker, "strata_kafka_incremental_fetches_total") > before + 3


def test_a_partition_removed_from_the_session_is_no_longer_fetched(broker):
    """The consumer drops partitions from its assignment (the session forgets them):
    records produced to them afterwards never arrive; the rest keep coming."""
    topic = unique("forget")
    create_topic(broker, topic, 6)
    produce_to(broker, topic, range(6), 3, "a")
    c = session_consumer(broker)
    try:
        c.assign([TopicPartition(topic, p) for p in range(6)])
        read(c, {p: 3 for p in range(6)})
        incremental = m(broker, "strata_kafka_incremental_fetches_total")
        c.assign([TopicPartition(topic, p) for p in range(3)])
        for p in range(3):
            c.seek(TopicPartition(topic, p), 3)
        produce_to(broker, topic, range(6), 4, "b")
        got = read(c, {p: 4 for p in range(3)})
        assert set(got) == {0, 1, 2}, f"records of forgotten partitions arrived: {sorted(got)}"
        for p in range(3):
            assert got[p] == [f"b-{p}-{i}".encode() for i in range(4)], p
        assert m(broker, "strata_kafka_incremental_fetches_total") > incremental
    finally:
        c.close()


def test_sessions_are_evicted_and_clients_recover(broker_factory):
    """One session slot: a consumer with more partitions evicts a smaller session; the
    evicted consumer is told FETCH_SESSION_ID_NOT_FOUND, starts over with a full fetch,
    and both still read everything."""
    broker = broker_factory(env={"STRATA_KAFKA_MAX_INCREMENTAL_FETCH_SESSION_CACHE_SLOTS": "1"})
    topic = unique("evict")
    create_topic(broker, topic, 8)
    produce_to(broker, topic, range(8), 5, "a")
    small, big = session_consumer(broker), session_consumer(broker)
    try:
        small.assign([TopicPartition(topic, p) for p in range(2)])
        read(small, {p: 5 for p in range(2)})
        big.assign([TopicPartition(topic, p) for p in range(8)])
        read(big, {p: 5 for p in range(8)})
        assert m(broker, "strata_kafka_fetch_session_evictions_total") >= 1
        assert m(broker, "strata_kafka_fetch_sessions") == 1
        produce_to(broker, topic, range(8), 2, "b")
        got_small = read(small, {p: 2 for p in range(2)})
        got_big = read(big, {p: 2 for p in range(8)})
        for p in range(2):
            assert got_small[p] == [f"b-{p}-{i}".encode() for i in range(2)]
        for p in range(8):
            assert got_big[p] == [f"b-{p}-{i}".encode() for i in range(2)]
    finally:
        small.close()
        big.close()


def test_no_session_slots_means_full_fetches_only(broker_factory):
    """max.incremental.fetch.session.cache.slots = 0: no session is created, consumers
    are served by full fetches."""
    broker = broker_factory(env={"STRATA_KAFKA_MAX_INCREMENTAL_FETCH_SESSION_CACHE_SLOTS": "0"})
    topic = unique("nosessions")
    create_topic(broker, topic, 4)
    produce_to(broker, topic, range(4), 5, "a")
    c = session_consumer(broker)
    try:
        c.assign([TopicPartition(topic, p) for p in range(4)])
        got = read(c, {p: 5 for p in range(4)})
        assert all(len(got[p]) == 5 for p in range(4))
    finally:
        c.close()
    assert m(broker, "strata_kafka_fetch_sessions") == 0
    assert m(broker, "strata_kafka_incremental_fetches_total") == 0


def test_followers_replicate_through_fetch_sessions(cluster_factory):
    """In a 3-node cluster, followers open a fetch session with each leader and then
    fetch incrementally; what they copy is complete (every replica back in sync after
    more records)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    c = cluster_factory()
    topic = unique("replicated")
    admin = AdminClient({"bootstrap.servers": c.bootstrap})
    admin.create_topics([NewTopic(topic, 6, replication_factor=3)], operation_timeout=30)[topic].result(60)
    c.wait_isr(topic, 6, 3)

    def total(name: str) -> float:
        return sum(sum(metric_values(c.metrics(n.id), name)) for n in c.running())

    wait_until(lambda: total("strata_kafka_fetch_sessions") >= 2, 30, "followers' fetch sessions")
    before = total("strata_kafka_incremental_fetches_total")
    p = producer(SimpleNamespace(bootstrap=c.bootstrap), "all")
    try:
        for i in range(600):
            p.send(topic, value=f"r{i}".encode(), partition=i % 6)
        p.flush(timeout=60)
    finally:
        p.close(timeout=10)
    c.wait_isr(topic, 6, 3)
    wait_until(lambda: total("strata_kafka_incremental_fetches_total") > before + 10, 30,
               "incremental replica fetches")
