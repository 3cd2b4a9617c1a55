"""Transactions end to end with confluent-kafka (librdkafka): commits and aborts across
topics and partitions seen by read_committed and read_uncommitted consumers, offsets
committed with a transaction (consume-transform-produce), zombie fencing by a second
producer with the same transactional.id, the coordinator aborting a transaction past
its timeout so that the last stable offset moves on, and a consume-transform-produce
pipeline on a 3-node cluster copying every record exactly once while the coordinator's
node, then a partition leader's, is killed with kill -9.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
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


class Pipeline:
    """A consume-transform-produce service as Kafka's exactly-once guide writes one:
    copies each record of `src` to the same partition of `dst` in transactions of up to
    `batch` records, committing the consumed offsets with them. After an abortable error
    it aborts and rewinds the consumer to the group's committed offsets; after a fatal
    one (fenced, or a producer that lost track) it starts over with a new producer of the
    same transactional.id, which fences the old one. Runs in a thread until `drain()`."""

    def __init__(self, bootstrap: str, src: str, dst: str, partitions: int, batch: int = 20):
        self.bootstrap, self.src, self.dst, self.partitions, self.batch = bootstrap, src, dst, partitions, batch
        self.tid, self.group = unique("eos-tid"), unique("eos-group")
        self.copied = 0  # records in committed transactions
        self.aborted = 0  # transactions aborted after an error
        self.restarts = 0  # producers replaced after a fatal error
        self.failure: BaseException | None = None
        self._until: dict[int, int] | None = None
        self._quit = False
        self._thread = threading.Thread(target=self._guarded, daemon=True)

    def start(self) -> "Pipeline":
        self._thread.start()
        return self

    def wait_copied(self, more: int, timeout: float = 60) -> None:
        target = self.copied + more
        try:
            wait_until(lambda: self.failure or self.copied >= target, timeout, f"{more} more records copied")
        except AssertionError:
            frame = sys._current_frames().get(self._thread.ident)
            print("pipeline stack:\n" + "".join(traceback.format_stack(frame)) if frame else "no pipeline thread", flush=True)
            raise
        assert self.failure is None, self.failure

    def drain(self, until: dict[int, int], timeout: float = 120) -> None:
        """Stops once every partition's committed position has reached `until`."""
        self._until = until
        self._thread.join(timeout)
        alive = self._thread.is_alive()
        self._quit = True
        assert not alive, f"the pipeline did not drain in {timeout}s ({self.copied} copied)"
        assert self.failure is None, self.failure

    def stop(self) -> None:
        self._quit = True
        self._thread.join(30)

    def _guarded(self) -> None:
        try:
            self._run()
        except BaseException as e:  # reported to the test by wait_copied/drain
            self.failure = e

    def _producer(self) -> Producer:
        conf = {
            "bootstrap.servers": self.bootstrap,
            "transactional.id": self.tid,
            "linger.ms": 5,
            "transaction.timeout.ms": 20000,
            "socket.timeout.ms": 5000,
            "reconnect.backoff.max.ms": 500,
            "topic.metadata.refresh.interval.ms": 2000,
        }
        for _ in range(10):
            p = Producer(conf)
            try:
                p.init_transactions(60)
                return p
            except KafkaException as e:
                self._event(f"init_transactions: {e.args[0]}")
                if not e.args[0].retriable() and not e.args[0].fatal():
                    raise
                self.restarts += 1
        raise AssertionError("init_transactions kept failing")

    def _rewind(self, consumer: Consumer) -> None:
        """Assigns every partition at the group's committed offset (the start if none)."""
        parts = [TopicPartition(self.src, p) for p in range(self.partitions)]
        for _ in range(60):
            try:
                at = consumer.committed(parts, timeout=10)
                break
            except KafkaException as e:  # the group's coordinator failing over, or unstable
                self._event(f"committed: {e.args[0]}")
                time.sleep(0.5)
        else:
            raise AssertionError("the group's committed offsets stayed unreadable")
        consumer.assign([TopicPartition(self.src, t.partition, t.offset if t.offset >= 0 else OFFSET_BEGINNING) for t in at])
        self._position = {t.partition: max(t.offset, 0) for t in at}

    def _commit(self, p: Producer) -> None:
        """commit_transaction, retried while librdkafka says a retry may succeed."""
        for _ in range(10):
            try:
                p.commit_transaction(30)
                return
            except KafkaException as e:
                self._event(f"commit_transaction: {e.args[0]}")
                if not e.args[0].retriable():
                    raise
        raise AssertionError("commit_transaction kept failing")

    def _event(self, what: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} pipeline: {what}", flush=True)

    def _run(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group,
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "socket.timeout.ms": 5000,
                "reconnect.backoff.max.ms": 500,
                "topic.metadata.refresh.interval.ms": 2000,
            }
        )
        producer = self._producer()
        self._rewind(consumer)
        try:
            while not self._quit:
                if self._until is not None and all(self._position[p] >= n for p, n in self._until.items()):
                    return
                msgs = [m for m in consumer.consume(self.batch, timeout=0.2) if m.error() is None]
                if not msgs:
                    continue
                try:
                    producer.begin_transaction()
                    for m in msgs:
                        producer.produce(self.dst, value=m.value(), partition=m.partition())
                    positions = [TopicPartition(self.src, p, o) for p, o in self._advanced(msgs).items()]
                    producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
                    self._commit(producer)
                except KafkaException as e:
                    self._event(f"transaction failed: {e.args[0]}")
                    if e.args[0].fatal():
                        self.restarts += 1
                        producer = self._producer()
                    else:
                        try:
                            producer.abort_transaction(30)
                            self.aborted += 1
                        except KafkaException:
                            self.restarts += 1
                            producer = self._producer()
                    self._rewind(consumer)
                    continue
                self._position.update(self._advanced(msgs))
                self.copied += len(msgs)
        finally:
            consumer.close()

    def _advanced(self, msgs) -> dict[int, int]:
        """Each partition's position after `msgs`."""
        out = dict(self._position)
        for m in msgs:
            out[m.partition()] = m.offset() + 1
        return out


def coordinators(c, pipe: Pipeline) -> tuple[int, int]:
    """The nodes coordinating the pipeline's transactional id and its consumer group."""
    from kafka import KafkaAdminClient

    ka = KafkaAdminClient(bootstrap_servers=c.bootstrap.split(","))
    try:
        txn = ka.describe_transactions([pipe.tid])[pipe.tid].coordinator_id
    finally:
        ka.close()
    admin = AdminClient({"bootstrap.servers": c.bootstrap})
    [f] = admin.describe_consumer_groups([pipe.group]).values()
    return txn, f.result(10).coordinator.id


def test_exactly_once_when_the_coordinator_then_a_partition_leader_is_killed(cluster_factory):
    """A pipeline copies a topic that a producer keeps writing to while the transaction
    coordinator's node, then the node leading an output partition, dies by kill -9 (and
    comes back); the output read with read_committed holds every input record exactly
    once, in order.

    Neither victim is the node coordinating the pipeline's consumer group: librdkafka
    (2.16) can wait forever in send_offsets_to_transaction, past its timeout, when the
    group's coordinator is a broker that left the cluster's metadata
    (confluentinc/librdkafka#5511 and #5456). The transactional id and group are drawn
    again until their coordinators differ. For the same reason the session timeout is
    Kafka's 9 s rather than cluster.FAST's 3 s: when the victim leads the metadata quorum,
    the survivors would otherwise act as fenced during the election (their leases
    lapse), leave themselves out of Metadata, and librdkafka would drop them too."""
    from cluster import high_watermarks
    from test_cluster import new_topic

    c = cluster_factory(env={"STRATA_KAFKA_BROKER_SESSION_TIMEOUT_MS": "9000"})
    src = new_topic(c, [1, 2])
    feed = c.workload(src, 2, rate=200)
    pipes: list[Pipeline] = []
    try:
        for _ in range(8):
            # Output partitions led by two different nodes: one of them is not the group's
            # coordinator.
            dst = new_topic(c, [2, 3])
            pipe = Pipeline(c.bootstrap, src, dst, 2).start()
            pipes.append(pipe)
            pipe.wait_copied(100)
            txn_node, group_node = coordinators(c, pipe)
            if txn_node != group_node:
                break
            pipe.stop()
        else:
            raise AssertionError("no transactional id whose coordinator is not its group's")

        def outage(node: int) -> None:
            c.kill(node)
            wait_until(
                lambda: not any(b["id"] == node and b["alive"] for b in c.view()["brokers"]),
                30,
                f"node {node} to be fenced",
            )
            pipe.wait_copied(200)
            c.restart(node)
            for t in (src, dst):
                c.wait_isr(t, 2, 3)
            pipe.wait_copied(200)

        outage(txn_node)
        # Leadership back where it was placed (the preferred leaders are restored).
        wait_until(lambda: [c.leader_of(dst, p) for p in range(2)] == [2, 3], 30, "preferred leaders")
        outage(next(n for n in (2, 3) if n != group_node))

        feed.finish()
        feed.verify()
        ends = high_watermarks(c.bootstrap, src, 2)
        pipe.drain(ends)
    finally:
        for p in pipes:
            p.stop()
    inp = read(c, src, 2, "read_uncommitted")
    out = read(c, dst, 2, "read_committed")
    for p in range(2):
        assert len(inp[p]) == ends[p]
        dupes = len(out[p]) - len(set(out[p]))
        assert dupes == 0, f"partition {p}: {dupes} records copied twice"
        missing = set(inp[p]) - set(out[p])
        assert not missing, f"partition {p}: {len(missing)} records never copied, e.g. {sorted(missing)[:5]}"
        assert out[p] == inp[p], f"partition {p}: copied out of order"
    print(f"{len(pipes)} pipeline(s); copied {pipe.copied}, {pipe.aborted} transactions aborted, {pipe.restarts} producers replaced")


def test_an_idle_transactional_id_expires_and_one_in_use_does_not(broker_factory):
    """transactional.id.expiration.ms: an id with no transaction open and no request for
    that long is forgotten (ListTransactions no longer lists it, DescribeTransactions
    answers TRANSACTIONAL_ID_NOT_FOUND) and starts afresh with InitProducerId; an id that
    keeps committing transactions stays."""
    from kafka import KafkaAdminClient
    from kafka.errors import TransactionalIdNotFoundError

    broker = broker_factory(env={
        "STRATA_KAFKA_TRANSACTIONAL_ID_EXPIRATION_MS": "3000",
        "STRATA_KAFKA_TRANSACTION_REMOVE_EXPIRED_TRANSACTION_CLEANUP_INTERVAL_MS": "200",
        "STRATA_KAFKA_TRANSACTION_ABORT_TIMED_OUT_TRANSACTION_CLEANUP_INTERVAL_MS": "200",
    })
    topic = unique("expiry")
    create(broker, (topic, 1))
    idle, busy = unique("idle"), unique("busy")
    first = txn_producer(broker, idle)
    first.begin_transaction()
    send(first, topic, 1, "first", 3)
    first.commit_transaction(30)
    old_id = None
    ka = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        old_id = ka.describe_transactions([idle])[idle].producer_id
        # `busy` commits a transaction every half second, well within the expiration.
        keeper = txn_producer(broker, busy)
        expired = lambda: sum(metric_values(broker.metrics(), "strata_txn_expired_ids_total"))  # noqa: E731
        deadline = time.monotonic() + 30
        while expired() < 1:
            assert time.monotonic() < deadline, "the idle transactional id did not expire"
            keeper.begin_transaction()
            send(keeper, topic, 1, "keep", 1)
            keeper.commit_transaction(30)
            time.sleep(0.5)
        assert expired() == 1, "only the idle id expires"
        listed = {t.transactional_id for ts in ka.list_transactions().values() for t in ts}
        assert busy in listed and idle not in listed, listed
        with pytest.raises(TransactionalIdNotFoundError):
            ka.describe_transactions([idle])
        keeper.begin_transaction()
        send(keeper, topic, 1, "keep", 1)
        keeper.commit_transaction(30)
        # The id starts afresh: a new producer id, and transactions work under it.
        again = txn_producer(broker, idle)
        again.begin_transaction()
        send(again, topic, 1, "again", 2)
        again.commit_transaction(30)
        described = ka.describe_transactions([idle])[idle]
        assert described.producer_id != old_id and described.producer_epoch == 0, described
    finally:
        ka.close()
    values = read(broker, topic, 1, "read_committed")[0]
    assert [v for v in values if v.startswith(b"first")] == [b"first-0-0", b"first-0-1", b"first-0-2"]
    assert [v for v in values if v.startswith(b"again")] == [b"again-0-0", b"again-0-1"]
