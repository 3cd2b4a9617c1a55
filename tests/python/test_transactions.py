"""Transactions end to end with confluent-kafka (librdkafka): commits and aborts across
topics and partitions seen by read_committed and read_uncommitted consumers, offsets
committed with a transaction (consume-transform-produce), zombie fencing by a second
producer with the same transactional.id, and the coordinator aborting a transaction
past its timeout so that the last stable offset moves on.
"""

from __future__ import annotations


import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from strata_helpers import assign_consumer, consume_all, metric_values, unique, wait_until


def create(broker, *topics: tuple[str, int]) -> None:
    rf = getattr(broker, "replication_factor", 1)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for f in admin.create_topics([NewTopic(t, n, rf) for t, n in topics]).values():
        f.result(30)


def txn_producer(broker, tid: str, **extra) -> Producer:
    p = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": tid, "linger.ms": 5, **extra})
    p.init_transactions(60)
    return p


def read(broker, topic: str, partitions: int, isolation: str) -> dict[int, list[bytes]]:
    """Every record of `topic` a consumer with `isolation` sees, up to the end offset such
    a consumer is told (the last stable offset for read_committed)."""
    level = {"isolation.level": isolation}
    probe = assign_consumer(broker, **level)
    try:
        ends = {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
    finally:
        probe.close()
    got = consume_all(broker, topic, ends, **level)
    return {p: [m.value() for m in msgs] for p, msgs in got.items()}


def send(p: Producer, topic: str, partitions: int, tag: str, n: int) -> None:
    for part in range(partitions):
        for i in range(n):
            p.produce(topic, value=f"{tag}-{part}-{i}".encode(), partition=part)
    assert p.flush(30) == 0, "records left unacknowledged"


@pytest.mark.also_on_cluster
def test_committed_and_aborted_transactions_across_topics(broker):
    a, b = unique("txn-a"), unique("txn-b")
    create(broker, (a, 3), (b, 2))
    p = txn_producer(broker, unique("tid"))
    for tag, n, commit in [("one", 10, True), ("two", 5, False), ("three", 3, True)]:
        p.begin_transaction()
        send(p, a, 3, tag, n)
        send(p, b, 2, tag, n)
        if commit:
            p.commit_transaction(30)
        else:
            p.abort_transaction(30)

    def values(topic, part, tags):
        return [f"{tag}-{part}-{i}".encode() for tag, n in tags for i in range(n)]

    metrics = broker.metrics()  # every node's, on a cluster
    assert sum(metric_values(metrics, "strata_txn_completed_total", result="commit")) == 2
    assert sum(metric_values(metrics, "strata_txn_completed_total", result="abort")) == 1
    for topic, parts in [(a, 3), (b, 2)]:
        committed = read(broker, topic, parts, "read_committed")
        uncommitted = read(broker, topic, parts, "read_uncommitted")
        for part in range(parts):
            assert committed[part] == values(topic, part, [("one", 10), ("three", 3)]), (topic, part)
            assert uncommitted[part] == values(topic, part, [("one", 10), ("two", 5), ("three", 3)])


def test_offsets_sent_to_a_transaction_commit_with_it(broker):
    src, dst = unique("txn-in"), unique("txn-out")
    create(broker, (src, 1), (dst, 1))
    feed = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(40):
        feed.produce(src, value=f"in-{i}".encode(), partition=0)
    feed.flush(30)
    group = unique("ctp")
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    p = txn_producer(broker, unique("tid"))
    try:
        consumer.subscribe([src])
        seen = 0

        def transform(batch_size: int, commit: bool) -> None:
            nonlocal seen
            p.begin_transaction()
            taken = 0
            while taken < batch_size:
                m = consumer.poll(10)
                assert m is not None and m.error() is None, m and m.error()
                p.produce(dst, value=m.value().upper(), partition=0)
                taken += 1
            p.send_offsets_to_transaction(
                consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 30
            )
            # Until the transaction ends, the group's committed offset has not moved, and a
            # read_committed consumer asking for it (require_stable, KIP-447) is told to wait.
            assert committed() == (seen if seen else None)
            with pytest.raises(KafkaException):
                consumer.committed([TopicPartition(src, 0)], timeout=3)
            if commit:
                p.commit_transaction(30)
                seen += taken
            else:
                p.abort_transaction(30)

        admin = AdminClient({"bootstrap.servers": broker.bootstrap})

        def committed():
            # The admin client does not ask for stable offsets: it sees what is committed.
            [f] = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)]).values()
            offsets = {tp.partition: tp.offset for tp in f.result(10).topic_partitions if tp.topic == src}
            return offsets.get(0) if offsets.get(0, -1) >= 0 else None

        transform(25, commit=True)
        assert committed() == 25
        transform(15, commit=False)
        assert committed() == 25, "an aborted transaction commits no offsets"
        out = read(broker, dst, 1, "read_committed")[0]
        assert out == [f"IN-{i}".encode() for i in range(25)]
    finally:
        consumer.close()


def test_a_second_producer_with_the_same_id_fences_the_first(broker):
    topic = unique("txn-zombie")
    create(broker, (topic, 2))
    tid = unique("tid")
    old = txn_producer(broker, tid)
    old.begin_transaction()
    send(old, topic, 2, "zombie", 4)  # written, transaction open

    new = txn_producer(broker, tid)  # aborts the old instance's transaction
    with pytest.raises(KafkaException) as fenced:
        old.commit_transaction(30)
    assert fenced.value.args[0].fatal() or fenced.value.args[0].code() in (
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
    ), fenced.value

    new.begin_transaction()
    send(new, topic, 2, "new", 3)
    new.commit_transaction(30)
    committed = read(broker, topic, 2, "read_committed")
    for part in range(2):
        assert committed[part] == [f"new-{part}-{i}".encode() for i in range(3)]
    assert sum(len(v) for v in read(broker, topic, 2, "read_uncommitted").values()) == 2 * 4 + 2 * 3


def test_a_transaction_left_open_is_aborted_after_its_timeout(broker_factory):
    broker = broker_factory(env={"STRATA_KAFKA_TRANSACTION_ABORT_TIMED_OUT_TRANSACTION_CLEANUP_INTERVAL_MS": "200"})
    topic = unique("txn-timeout")
    create(broker, (topic, 1))
    stuck = txn_producer(broker, unique("stuck"), **{"transaction.timeout.ms": 3000})
    stuck.begin_transaction()
    send(stuck, topic, 1, "stuck", 5)  # then the producer goes quiet

    other = txn_producer(broker, unique("other"))
    other.begin_transaction()
    send(other, topic, 1, "later", 4)
    other.commit_transaction(30)

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("lso"), "isolation.level": "read_committed"})
    try:
        tp = TopicPartition(topic, 0)
        # The open transaction holds the last stable offset at its first record...
        assert c.get_watermark_offsets(tp, timeout=10)[1] == 0
        # ...until the coordinator aborts it; then the committed records behind it show.
        wait_until(lambda: c.get_watermark_offsets(tp, timeout=10)[1] > 0, 30, "the LSO to move past the timed-out transaction")
    finally:
        c.close()
    assert read(broker, topic, 1, "read_committed")[0] == [f"later-0-{i}".encode() for i in range(4)]
    assert metric_values(broker.metrics(), "strata_txn_timed_out_total") == [1]
    with pytest.raises(KafkaException):
        stuck.commit_transaction(10)
