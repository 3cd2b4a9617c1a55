"""End-to-end tests of Strata with confluent-kafka (librdkafka).

The single-broker basics: topics, produce and fetch, offsets, retention, restarts and
bad input. Consumers here use assign() with explicit offsets and never commit, and
producers are non-idempotent, so each test sees only what it is about; consumer groups
are in test_groups_confluent.py, idempotence in test_idempotence.py.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    TIMESTAMP_CREATE_TIME,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    ConfigResource,
    ConfigSource,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

from strata_helpers import (
    HOUR_MS,
    Msg,
    assign_consumer,
    by_partition,
    consume_all,
    first_offset_at_or_after,
    make_messages,
    metric_values,
    now_ms,
    partition_dirs,
    unique,
    wait_until,
)

# -- client helpers -------------------------------------------------------------------


def admin(broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def producer(broker, **extra) -> Producer:
    conf = {
        "bootstrap.servers": broker.bootstrap,
        "enable.idempotence": False,
        "linger.ms": 5,
    }
    conf.update(extra)
    return Producer(conf)


def create_topic(broker, name: str, partitions: int, config: dict | None = None) -> None:
    a = admin(broker)  # the futures need their client alive
    futures = a.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=getattr(broker, "replication_factor", 1), config=config or {})],
        operation_timeout=10,
    )
    futures[name].result(timeout=30)


def create_error(broker, topic: NewTopic) -> KafkaError:
    """Creates a topic that must be refused; returns the error."""
    a = admin(broker)
    fut = a.create_topics([topic], operation_timeout=10)[topic.topic]
    with pytest.raises(KafkaException) as exc:
        fut.result(timeout=30)
    return exc.value.args[0]


def produce_all(
    broker, topic: str, msgs: list[Msg], acks: str, **extra
) -> dict[int, list[int]]:
    """Produces `msgs` to their explicit partitions; fails on any delivery error.
    Returns, per partition, the offsets the delivery reports gave (in production order)."""
    p = producer(broker, acks=acks, **extra)
    errors: list = []
    offsets: dict[int, list[int]] = {}

    def on_delivery(err, m):
        if err is not None:
            errors.append(err)
        else:
            offsets.setdefault(m.partition(), []).append(m.offset())

    for i, m in enumerate(msgs):
        while True:
            try:
                p.produce(
                    topic,
                    value=m.value,
                    key=m.key,
                    partition=m.partition,
                    timestamp=m.timestamp,
                    headers=m.headers,
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                p.poll(0.05)
        if i % 500 == 0:
            p.poll(0)
    remaining = p.flush(60)
    assert remaining == 0, f"{remaining} messages still undelivered after flush"
    assert not errors, f"delivery errors: {errors[:5]}"
    assert sum(len(v) for v in offsets.values()) == len(msgs)
    return offsets


def assert_same(topic: str, p: int, want: list[Msg], got: list, first_offset: int = 0) -> None:
    assert len(got) == len(want), (
        f"{topic}[{p}]: {len(got)} messages read, {len(want)} produced "
        f"(offsets read: {[m.offset() for m in got][:10]}...)"
    )
    for i, (w, g) in enumerate(zip(want, got)):
        where = f"{topic}[{p}] offset {g.offset()} (message #{i} of the partition)"
        assert g.offset() == first_offset + i, f"{where}: offset, want {first_offset + i}"
        assert g.key() == w.key, f"{where}: key {g.key()!r} != {w.key!r}"
        assert g.value() == w.value, f"{where}: value {g.value()!r} != {w.value!r}"
        assert (g.headers() or []) == w.headers, f"{where}: headers {g.headers()!r} != {w.headers!r}"
        assert g.timestamp() == (TIMESTAMP_CREATE_TIME, w.timestamp), (
            f"{where}: timestamp {g.timestamp()} != CreateTime {w.timestamp}"
        )


def watermarks(broker, topic: str, partitions: int) -> list[tuple[int, int]]:
    c = assign_consumer(broker)
    try:
        return [
            c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            for p in range(partitions)
        ]
    finally:
        c.close()


def topic_names(broker) -> set[str]:
    return set(admin(broker).list_topics(timeout=10).topics)


# -- tests ----------------------------------------------------------------------------


def test_create_topic_with_partitions_in_metadata(broker):
    topic = unique("meta")
    create_topic(broker, topic, 5)
    md = admin(broker).list_topics(timeout=10)
    assert topic in md.topics, f"{topic} missing from metadata: {list(md.topics)}"
    t = md.topics[topic]
    assert t.error is None, t.error
    assert sorted(t.partitions) == [0, 1, 2, 3, 4]
    assert [b.id for b in md.brokers.values()] == [0]
    assert md.brokers[0].host == "127.0.0.1" and md.brokers[0].port == broker.kafka_port
    for p in t.partitions.values():
        assert p.error is None, (p.id, p.error)
        assert p.leader == 0 and p.replicas == [0] and p.isrs == [0], (p.id, p.leader, p.replicas, p.isrs)
    # the producer and consumer see it the same way
    c = assign_consumer(broker)
    try:
        assert sorted(c.list_topics(topic, timeout=10).topics[topic].partitions) == [0, 1, 2, 3, 4]
    finally:
        c.close()


@pytest.mark.also_on_cluster
@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_produce_consume_roundtrip(broker, acks):
    partitions, count = 4, 3000
    topic = unique(f"rt-acks{acks}")
    create_topic(broker, topic, partitions)
    msgs = make_messages(count, partitions, base_ts=now_ms() - 10 * 60_000, seed=len(acks))
    want = by_partition(msgs, partitions)
    delivered = produce_all(broker, topic, msgs, acks)
    if acks != "0":
        # the broker's produce responses give each batch its base offset
        for p in range(partitions):
            assert delivered[p] == list(range(len(want[p]))), f"partition {p}: delivery offsets"
    got = consume_all(broker, topic, {p: len(want[p]) for p in range(partitions)})
    for p in range(partitions):
        assert_same(topic, p, want[p], got[p])
    assert watermarks(broker, topic, partitions) == [(0, len(want[p])) for p in range(partitions)]


def test_list_offsets_watermarks_and_times(broker):
    topic = unique("offsets")
    create_topic(broker, topic, 3)
    base = now_ms() - HOUR_MS
    msgs = [m for m in make_messages(600, 2, base_ts=base, step_ms=10)]
    # partition 2: timestamps that go back and forth; Kafka's answer is the first offset
    # (in offset order) whose timestamp is >= the target.
    jumbled = [5, 3, 9, 1, 12, 7, 7, 20, 15, 2, 30, 25]
    msgs += [Msg(2, b"j%d" % i, b"v", [], base + t * 100) for i, t in enumerate(jumbled)]
    produce_all(broker, topic, msgs, "all")
    want = by_partition(msgs, 3)

    assert watermarks(broker, topic, 3) == [(0, len(want[p])) for p in range(3)]

    targets: list[tuple[int, int]] = []  # (partition, timestamp)
    for p in range(3):
        ts = [m.timestamp for m in want[p]]
        for t in [0, base - 1, ts[0], ts[0] + 1, ts[len(ts) // 2], ts[len(ts) // 2] + 1,
                  ts[-1], max(ts), max(ts) + 1, now_ms() + HOUR_MS]:
            targets.append((p, t))
    for t in [base + 6 * 100, base + 8 * 100, base + 13 * 100, base + 26 * 100]:
        targets.append((2, t))

    c = assign_consumer(broker)
    try:
        for p, t in targets:
            expected = first_offset_at_or_after(want[p], t)
            res = c.offsets_for_times([TopicPartition(topic, p, t)], timeout=10)
            assert len(res) == 1 and res[0].error is None, res
            # librdkafka reports "no such offset" as OFFSET_END (-1), as the broker's -1
            assert res[0].offset == (expected if expected >= 0 else OFFSET_END), (
                f"offsets_for_times {topic}[{p}] @ {t} (base+{t - base}): "
                f"got {res[0].offset}, want {expected}"
            )
    finally:
        c.close()

    # The same through the admin client (ListOffsets v7+: also max timestamp).
    a = admin(broker)
    specs = {}
    for p in range(3):
        specs[TopicPartition(topic, p)] = OffsetSpec.earliest()
    res = {tp.partition: f.result(timeout=30) for tp, f in a.list_offsets(specs).items()}
    assert {p: r.offset for p, r in res.items()} == {p: 0 for p in range(3)}
    specs = {TopicPartition(topic, p): OffsetSpec.latest() for p in range(3)}
    res = {tp.partition: f.result(timeout=30) for tp, f in a.list_offsets(specs).items()}
    assert {p: r.offset for p, r in res.items()} == {p: len(want[p]) for p in range(3)}
    specs = {TopicPartition(topic, p): OffsetSpec.max_timestamp() for p in range(3)}
    res = {tp.partition: f.result(timeout=30) for tp, f in a.list_offsets(specs).items()}
    for p in range(3):
        ts = [m.timestamp for m in want[p]]
        assert (res[p].offset, res[p].timestamp) == (ts.index(max(ts)), max(ts)), (
            f"max_timestamp of partition {p}"
        )
    for p, t in targets:
        expected = first_offset_at_or_after(want[p], t)
        r = a.list_offsets({TopicPartition(topic, p): OffsetSpec.for_timestamp(t)})
        (info,) = [f.result(timeout=30) for f in r.values()]
        assert info.offset == expected, (
            f"admin list_offsets {topic}[{p}] @ base+{t - base}: got {info.offset}, want {expected}"
        )
        if expected >= 0:
            assert info.timestamp == want[p][expected].timestamp


def test_delete_and_recreate_topic_starts_empty(broker):
    topic = unique("recreate")
    create_topic(broker, topic, 3)
    old = make_messages(300, 3, base_ts=now_ms() - 60_000, seed=7)
    produce_all(broker, topic, old, "all")
    assert watermarks(broker, topic, 3) == [(0, len(v)) for v in by_partition(old, 3).values()]

    a = admin(broker)
    futures = a.delete_topics([topic], operation_timeout=10)
    futures[topic].result(timeout=30)
    wait_until(lambda: topic not in topic_names(broker), 10, f"{topic} to leave the metadata")

    # the old topic's data leaves the disk
    wait_until(lambda: not any(partition_dirs(broker.data_dir, topic, p) for p in range(3)), 10,
               f"the partition directories of the deleted {topic} to be removed")

    create_topic(broker, topic, 3)
    assert watermarks(broker, topic, 3) == [(0, 0)] * 3
    new = [
        Msg(m.partition, b"new-" + (m.key or b""), b"new", [("gen", b"2")], m.timestamp)
        for m in make_messages(60, 3, base_ts=now_ms(), seed=8)
    ]
    produce_all(broker, topic, new, "all")
    want = by_partition(new, 3)
    got = consume_all(broker, topic, {p: len(want[p]) for p in range(3)})
    for p in range(3):
        assert_same(topic, p, want[p], got[p])
    assert watermarks(broker, topic, 3) == [(0, len(want[p])) for p in range(3)]

    # and after a restart (metadata replayed: create, delete, create) still only the new data
    broker.stop()
    broker.restart()
    assert watermarks(broker, topic, 3) == [(0, len(want[p])) for p in range(3)]
    got = consume_all(broker, topic, {p: len(want[p]) for p in range(3)})
    for p in range(3):
        assert_same(topic, p, want[p], got[p])


def test_delete_unknown_topic_fails(broker):
    a = admin(broker)
    fut = a.delete_topics([unique("nope")], operation_timeout=10)
    (f,) = fut.values()
    with pytest.raises(KafkaException) as exc:
        f.result(timeout=30)
    assert exc.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART, exc.value


def src(entry) -> ConfigSource:
    """ConfigEntry.source as a ConfigSource, whether the binding gives an enum or an int."""
    return entry.source if isinstance(entry.source, ConfigSource) else ConfigSource(entry.source)


def describe_topic(broker, topic: str) -> dict:
    res = ConfigResource(ResourceType.TOPIC, topic)
    a = admin(broker)
    return a.describe_configs([res])[res].result(timeout=30)


def test_describe_configs(broker_factory):
    broker = broker_factory(env={"STRATA_KAFKA_LOG_SEGMENT_BYTES": "5000000"})
    topic = unique("cfg")
    create_topic(broker, topic, 2, {"retention.ms": "123456"})
    entries = describe_topic(broker, topic)

    r = entries["retention.ms"]
    assert r.value == "123456"
    assert src(r) == ConfigSource.DYNAMIC_TOPIC_CONFIG
    assert not r.is_default

    defaults = {
        "cleanup.policy": "delete",
        "retention.bytes": "-1",
        "max.message.bytes": "1048588",
        "segment.ms": "604800000",
    }
    for name, value in defaults.items():
        assert name in entries, f"{name} missing from {sorted(entries)}"
        e = entries[name]
        assert e.value == value, (name, e.value)
        assert src(e) == ConfigSource.DEFAULT_CONFIG, (name, src(e))
        assert e.is_default, name
    # a broker-level setting shows through as the topic's value, from the static config
    seg = entries["segment.bytes"]
    assert seg.value == "5000000"
    assert src(seg) == ConfigSource.STATIC_BROKER_CONFIG

    # a topic without overrides shows the defaults everywhere
    plain = unique("cfg-plain")
    create_topic(broker, plain, 1)
    e = describe_topic(broker, plain)["retention.ms"]
    assert (e.value, src(e)) == ("604800000", ConfigSource.DEFAULT_CONFIG)

    # an unknown topic is an error
    res = ConfigResource(ResourceType.TOPIC, unique("missing"))
    a = admin(broker)
    with pytest.raises(KafkaException) as exc:
        a.describe_configs([res])[res].result(timeout=30)
    assert exc.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART, exc.value


def test_create_topic_errors(broker):
    name = unique("bad")
    for cfg in ({"cleanup.policy": "compact"}, {"retention.ms": "-5"}, {"segment.bytes": "13"},
                {"no.such.config": "1"}):
        err = create_error(broker, NewTopic(name, 1, 1, config=cfg))
        assert err.code() == KafkaError.INVALID_CONFIG, (cfg, err)
    assert name not in topic_names(broker), "a refused topic was created anyway"

    create_topic(broker, name, 2)
    err = create_error(broker, NewTopic(name, 2, 1))
    assert err.code() == KafkaError.TOPIC_ALREADY_EXISTS, err

    for bad in ("bad/name", "a" * 250, "..", "sp ace"):
        err = create_error(broker, NewTopic(bad, 1, 1))
        assert err.code() == KafkaError.TOPIC_EXCEPTION, (bad, err)

    err = create_error(broker, NewTopic(unique("zero"), 0, 1))
    assert err.code() == KafkaError.INVALID_PARTITIONS, err
    err = create_error(broker, NewTopic(unique("rf3"), 1, 3))
    assert err.code() == KafkaError.INVALID_REPLICATION_FACTOR, err

    assert topic_names(broker) & {name, "bad/name", "..", "sp ace", "a" * 250} == {name}

    # 249 characters is the longest legal name
    create_topic(broker, "b" * 249, 1)
    assert "b" * 249 in topic_names(broker)


def test_restart_after_sigterm_keeps_data(broker):
    topic = unique("restart")
    create_topic(broker, topic, 3)
    first = make_messages(1500, 3, base_ts=now_ms() - 60_000, seed=11)
    produce_all(broker, topic, first, "all")

    broker.stop()
    broker.restart()

    # the same data, at the same offsets
    want = by_partition(first, 3)
    got = consume_all(broker, topic, {p: len(want[p]) for p in range(3)})
    for p in range(3):
        assert_same(topic, p, want[p], got[p])

    text = broker.metrics()
    for p in range(3):
        assert metric_values(text, "strata_log_end_offset", topic=topic, partition=str(p)) == [
            len(want[p])
        ], f"strata_log_end_offset of partition {p} after the restart"

    # and the log goes on from there
    more = make_messages(300, 3, base_ts=now_ms(), seed=12)
    produce_all(broker, topic, more, "all")
    want = by_partition(first + more, 3)
    got = consume_all(broker, topic, {p: len(want[p]) for p in range(3)})
    for p in range(3):
        assert_same(topic, p, want[p], got[p])


def test_producer_reconnects_across_restart(broker):
    topic = unique("reconnect")
    create_topic(broker, topic, 1)
    p = producer(broker, acks="all", **{"reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 500})
    errors = []
    acked = []

    def cb(err, m):
        (errors if err else acked).append(m.offset() if not err else err)

    p.produce(topic, b"before", partition=0, on_delivery=cb)
    assert p.flush(30) == 0
    broker.stop()
    broker.restart()
    p.produce(topic, b"after", partition=0, on_delivery=cb)
    assert p.flush(60) == 0
    assert not errors, errors
    assert acked == [0, 1]
    got = consume_all(broker, topic, {0: 2})
    assert [m.value() for m in got[0]] == [b"before", b"after"]


@pytest.mark.parametrize("acks", ["1", "all"])
def test_acknowledged_messages_survive_kill_9(broker, acks):
    """acks=1 and acks=all are both acknowledged only after fdatasync."""
    topic = unique(f"kill9-acks{acks}")
    partitions = 3
    create_topic(broker, topic, partitions)
    p = producer(
        broker,
        acks=acks,
        **{
            "linger.ms": 2,
            "batch.num.messages": 200,
            "message.timeout.ms": 60000,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
        },
    )
    lock = threading.Lock()
    acked: dict[tuple[int, int], bytes] = {}  # (partition, offset) -> value
    failed: list = []
    stop = threading.Event()
    produced = [0]

    def on_delivery(err, m):
        with lock:
            if err is None:
                acked[(m.partition(), m.offset())] = m.value()
            else:
                failed.append(err)

    def run():
        i = 0
        while not stop.is_set():
            try:
                p.produce(topic, value=b"m-%07d" % i, key=b"%d" % i, partition=i % partitions,
                          on_delivery=on_delivery)
                i += 1
                produced[0] = i
            except BufferError:
                pass
            p.poll(0.0005 if i % 50 else 0.001)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        wait_until(lambda: len(acked) >= 3000, 60, "3000 acknowledged messages")
        broker.kill()
        killed_at = len(acked)
        # keep producing against the dead broker for a moment
        time.sleep(0.3)
    finally:
        stop.set()
        t.join(30)
    assert not t.is_alive()
    broker.restart()
    # pending messages are retried against the restarted broker
    assert p.flush(90) == 0, "producer could not deliver its queue after the restart"
    with lock:
        acked_now = dict(acked)
    assert len(acked_now) >= killed_at

    wm = watermarks(broker, topic, partitions)
    got = consume_all(broker, topic, {p_: wm[p_][1] for p_ in range(partitions)})
    read = {(m.partition(), m.offset()): m.value() for p_ in got for m in got[p_]}
    missing = [(k, v) for k, v in sorted(acked_now.items()) if read.get(k) != v]
    assert not missing, (
        f"{len(missing)} of {len(acked_now)} acknowledged messages are missing or changed after "
        f"kill -9 + restart, e.g. {[(k, v, read.get(k)) for k, v in missing[:5]]}; "
        f"watermarks {wm}; delivery failures {failed[:3]}"
    )
    # every message sent was either acknowledged or is (maybe twice) in the log
    values = set(read.values())
    assert len(values) >= produced[0] - len(failed)


def test_retention_bytes_moves_log_start(broker_factory):
    broker = broker_factory(env={"STRATA_KAFKA_LOG_RETENTION_CHECK_INTERVAL_MS": "300"})
    topic = unique("ret-bytes")
    create_topic(broker, topic, 1, {"segment.bytes": "2048", "retention.bytes": "8192"})
    count = 400
    msgs = [Msg(0, b"k%05d" % i, b"%05d" % i + b"x" * 495, [], now_ms()) for i in range(count)]
    # small batches, so segments stay near segment.bytes
    produce_all(broker, topic, msgs, "all", **{"batch.size": 1500, "linger.ms": 0})
    assert watermarks(broker, topic, 1)[0][1] == count

    wait_until(lambda: watermarks(broker, topic, 1)[0][0] > 0, 10, "the log start offset to move")
    size = wait_until(
        lambda: (lambda s: s if s < 20_000 else None)(broker.partition_dir_size(topic, 0)),
        10,
        "the partition directory to shrink below 20 KB",
    )
    # Retention may take more than one check to finish: wait until the log start has
    # stayed put for several check intervals.
    history: list[tuple[float, int]] = []

    def settled():
        history.append((time.monotonic(), watermarks(broker, topic, 1)[0][0]))
        since = [t for t, low in history if low != history[-1][1]]
        return history[-1][0] - (since[-1] if since else history[0][0]) >= 1.5

    wait_until(settled, 15, "the log start offset to settle", interval=0.2)
    low, high = watermarks(broker, topic, 1)[0]
    assert 0 < low < high == count
    assert broker.partition_dir_size(topic, 0) < 20_000
    # retention.bytes bounds what is deleted too: at least ~8 KB (less one segment) stays
    assert (high - low) * 500 >= 8192 - 2048, (low, high, size)

    # a consumer asked for offset 0 is reset to the new start
    got = consume_all(
        broker, topic, {0: count}, start=0, **{"auto.offset.reset": "earliest"}
    )
    first = got[0][0].offset()
    assert first == watermarks(broker, topic, 1)[0][0] and first > 0
    assert_same(topic, 0, msgs[first:], got[0], first_offset=first)

    metrics = broker.metrics()
    assert metric_values(metrics, "strata_log_start_offset", topic=topic, partition="0") == [first]

    # the new start survives a restart, and the retained data is intact
    broker.stop()
    broker.restart()
    assert watermarks(broker, topic, 1) == [(first, count)]
    got = consume_all(broker, topic, {0: count}, start=OFFSET_BEGINNING)
    assert_same(topic, 0, msgs[first:], got[0], first_offset=first)


def test_retention_ms_deletes_old_messages(broker_factory):
    broker = broker_factory(env={"STRATA_KAFKA_LOG_RETENTION_CHECK_INTERVAL_MS": "300"})
    topic = unique("ret-ms")
    create_topic(broker, topic, 2, {"retention.ms": "1000"})
    old = [Msg(i % 2, b"k%d" % i, b"old", [], now_ms() - HOUR_MS + i) for i in range(100)]
    produce_all(broker, topic, old, "all")
    wait_until(
        lambda: watermarks(broker, topic, 2) == [(50, 50), (50, 50)],
        15,
        "every old message to expire (earliest == latest == 50)",
    )
    fresh = [Msg(p, b"fresh", b"new", [("h", b"v")], now_ms()) for p in (0, 1)]
    produce_all(broker, topic, fresh, "all")
    got = consume_all(broker, topic, {0: 51, 1: 51}, start=OFFSET_BEGINNING)
    for p in (0, 1):
        assert_same(topic, p, [fresh[p]], got[p], first_offset=50)
    # time lookups only see what is left: the old timestamps now map to the fresh message
    c = assign_consumer(broker)
    try:
        res = c.offsets_for_times([TopicPartition(topic, p, old[0].timestamp) for p in (0, 1)], timeout=10)
        assert [r.offset for r in res] == [50, 50], res
    finally:
        c.close()


def test_metrics_after_traffic(broker):
    topic = unique("metrics")
    create_topic(broker, topic, 2)
    msgs = make_messages(200, 2, base_ts=now_ms(), seed=3)
    before = broker.metrics()
    produce_all(broker, topic, msgs, "1")
    want = by_partition(msgs, 2)
    consume_all(broker, topic, {p: len(want[p]) for p in range(2)})

    text = broker.metrics()
    produce = metric_values(text, "strata_kafka_requests_total", api="Produce")
    assert produce and produce[0] > 0, "no Produce requests counted"
    fetch = metric_values(text, "strata_kafka_requests_total", api="Fetch")
    assert fetch and fetch[0] > 0, "no Fetch requests counted"
    # every request lands in its API's latency histogram
    for api, n in (("Produce", produce[0]), ("Fetch", fetch[0])):
        assert metric_values(text, "strata_kafka_request_duration_seconds_count", api=api) == [n], api
        assert metric_values(text, "strata_kafka_request_duration_seconds_bucket", api=api, le="+Inf") == [n]
    # bytes in and out grew by at least the record bytes that went each way
    payload_bytes = sum(len(m.value or b"") + len(m.key or b"") for m in msgs)

    def grew(name: str) -> float:
        return sum(metric_values(text, name)) - sum(metric_values(before, name))

    assert grew("strata_kafka_network_in_bytes_total") >= payload_bytes
    assert grew("strata_kafka_network_out_bytes_total") >= payload_bytes
    assert grew("strata_kafka_produce_bytes_total") >= payload_bytes
    assert grew("strata_kafka_fetch_bytes_total") >= payload_bytes
    for p in range(2):
        assert metric_values(text, "strata_log_end_offset", topic=topic, partition=str(p)) == [
            len(want[p])
        ], f"strata_log_end_offset of partition {p}"
    status, _ = broker.http_get("/healthz")
    assert status == 200
    status, _ = broker.http_get("/readyz")
    assert status == 200

    # a deleted topic's gauges go away
    a = admin(broker)
    a.delete_topics([topic])[topic].result(timeout=30)
    wait_until(lambda: not metric_values(broker.metrics(), "strata_log_end_offset", topic=topic),
               10, f"the strata_log_end_offset series of the deleted {topic} to go")


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_roundtrip(broker, codec):
    topic = unique(f"z-{codec}")
    create_topic(broker, topic, 2)
    msgs = make_messages(800, 2, base_ts=now_ms() - 5000, seed=hash(codec) % 1000)
    # compressible values too
    msgs += [Msg(i % 2, b"c%d" % i, b"abc" * (50 + i), [("z", codec.encode())], now_ms() + i) for i in range(200)]
    produce_all(broker, topic, msgs, "all", **{"compression.type": codec, "linger.ms": 20})
    want = by_partition(msgs, 2)
    got = consume_all(broker, topic, {p: len(want[p]) for p in range(2)})
    for p in range(2):
        assert_same(topic, p, want[p], got[p])
    # offsets by time work inside compressed batches too
    c = assign_consumer(broker)
    try:
        for i in (0, 1, 137, len(want[0]) - 1):
            res = c.offsets_for_times([TopicPartition(topic, 0, want[0][i].timestamp)], timeout=10)
            assert res[0].offset == first_offset_at_or_after(want[0], want[0][i].timestamp)
    finally:
        c.close()
    # and a consumer can start in the middle of a compressed batch
    got = consume_all(broker, topic, {1: len(want[1])}, start=len(want[1]) - 3)
    assert_same(topic, 1, want[1][-3:], got[1], first_offset=len(want[1]) - 3)


@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_large_batches_are_sent_from_the_segment_files(broker_factory, codec):
    """Batches of 16 KiB and more are sent to a plaintext consumer straight from the
    segment files (sendfile, counted in strata_kafka_fetch_sendfile_bytes_total), across
    segment rolls, beside small batches that are copied; the consumer gets every message
    as produced, from the start and from the middle of the log."""
    # No in-memory tail: every read goes to the segment files.
    broker = broker_factory(env={"STRATA_WAL_CACHE_BYTES": "0"})
    topic = unique(f"sendfile-{codec}")
    create_topic(broker, topic, 2, {"segment.bytes": str(300_000)})
    base = now_ms() - 60_000
    rng = random.Random(11)
    msgs = make_messages(3000, 2, base_ts=base, seed=5)
    msgs += [
        Msg(i % 2, b"big-%d" % i, rng.randbytes(rng.choice([900, 3000, 9000])), [], base + 30_000 + i)
        for i in range(1500)
    ]
    # Big batches (many records each), then a few small ones at the end.
    produce_all(broker, topic, msgs, "all", **{"compression.type": codec, "linger.ms": 200, "batch.size": 1_000_000})
    small = [Msg(i % 2, b"s%d" % i, b"v" * 10, [], base + 40_000 + i) for i in range(20)]
    for m in small:
        produce_all(broker, topic, [m], "all")
    msgs += small
    before = broker.metrics()
    want = by_partition(msgs, 2)
    got = consume_all(broker, topic, {p: len(want[p]) for p in range(2)})
    for p in range(2):
        assert_same(topic, p, want[p], got[p])
    got = consume_all(broker, topic, {1: len(want[1])}, start=len(want[1]) // 2)
    assert_same(topic, 1, want[1][len(want[1]) // 2 :], got[1], first_offset=len(want[1]) // 2)

    def delta(before: str, after: str, name: str) -> float:
        return sum(metric_values(after, name)) - sum(metric_values(before, name))

    def fetched_and_sent(before: str) -> tuple[float, float]:
        after = broker.metrics()
        return (
            delta(before, after, "strata_kafka_fetch_bytes_total"),
            delta(before, after, "strata_kafka_fetch_sendfile_bytes_total"),
        )

    fetched, sent = fetched_and_sent(before)
    assert fetched > 1_000_000, fetched
    assert 0.5 * fetched < sent <= fetched, f"{sent} of {fetched} fetched bytes sent from the files"
    # A read that starts at a small batch is copied.
    before = broker.metrics()
    start = len(want[0]) - 5
    got = consume_all(broker, topic, {0: len(want[0])}, start=start)
    assert_same(topic, 0, want[0][start:], got[0], first_offset=start)
    fetched, sent = fetched_and_sent(before)
    assert fetched > 0 and sent == 0, (fetched, sent)


def test_message_larger_than_topic_max_is_refused(broker):
    topic = unique("maxmsg")
    create_topic(broker, topic, 1, {"max.message.bytes": "2000"})
    p = producer(broker, acks="all", **{"linger.ms": 0})
    results = []
    p.produce(topic, b"x" * 5000, partition=0, on_delivery=lambda err, m: results.append(("big", err)))
    assert p.flush(30) == 0
    p.produce(topic, b"y" * 100, partition=0, on_delivery=lambda err, m: results.append(("small", err)))
    assert p.flush(30) == 0
    (big_err,) = [e for name, e in results if name == "big"]
    (small_err,) = [e for name, e in results if name == "small"]
    assert big_err is not None and big_err.code() == KafkaError.MSG_SIZE_TOO_LARGE, big_err
    assert small_err is None, small_err
    got = consume_all(broker, topic, {0: 1})
    assert [m.value() for m in got[0]] == [b"y" * 100]


def test_consumer_metadata_does_not_auto_create(broker):
    """Metadata v4+ carries allow_auto_topic_creation; librdkafka's consumer sends false."""
    topic = unique("ghost")
    c = assign_consumer(broker)
    try:
        md = c.list_topics(topic, timeout=10)
        assert md.topics[topic].error is not None
        assert md.topics[topic].error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, md.topics[topic].error
    finally:
        c.close()
    assert topic not in topic_names(broker)
    # a producer's metadata request does create it (auto.create.topics.enable=true)
    p = producer(broker, acks="all")
    p.produce(topic, b"v")
    assert p.flush(30) == 0
    assert topic in topic_names(broker)


def test_consumer_waiting_at_the_end_gets_new_messages_quickly(broker):
    topic = unique("tail")
    create_topic(broker, topic, 1)
    p = producer(broker, acks="1", **{"linger.ms": 0})
    p.produce(topic, b"first", partition=0)
    assert p.flush(10) == 0
    c = assign_consumer(broker, **{"fetch.wait.max.ms": 10000})
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got = []
        deadline = time.monotonic() + 15
        while not got:
            assert time.monotonic() < deadline, "the first message never came"
            got = [m for m in c.consume(10, timeout=0.2) if m.error() is None]
        assert [m.value() for m in got] == [b"first"]
        # Give the consumer a moment to send its next fetch, which then waits at the end of
        # the log for up to fetch.wait.max.ms (10 s). (librdkafka reports end-of-partition
        # only when such a fetch comes back empty, so there is no event to wait for.)
        time.sleep(1.0)
        start = time.monotonic()
        p.produce(topic, b"hello", partition=0)
        assert p.flush(10) == 0
        got = []
        deadline = time.monotonic() + 15
        while not got and time.monotonic() < deadline:
            got = [m for m in c.consume(10, timeout=0.1) if m.error() is None]
        elapsed = time.monotonic() - start
        assert [m.value() for m in got] == [b"hello"]
        # a long-polling fetch must be answered when data arrives, not at fetch.wait.max.ms
        assert elapsed < 3.0, f"new message took {elapsed:.2f}s to reach a waiting consumer"
    finally:
        c.close()


def test_describe_broker_configs(broker_factory):
    broker = broker_factory(env={"STRATA_KAFKA_NUM_PARTITIONS": "3"})
    res = ConfigResource(ResourceType.BROKER, "0")
    a = admin(broker)
    entries = a.describe_configs([res])[res].result(timeout=30)
    assert entries["num.partitions"].value == "3"
    assert src(entries["num.partitions"]) == ConfigSource.STATIC_BROKER_CONFIG
    assert entries["log.retention.ms"].value == "604800000"
    assert src(entries["log.retention.ms"]) == ConfigSource.DEFAULT_CONFIG
    assert entries["auto.create.topics.enable"].value == "true"
    # and auto-created topics get num.partitions
    p = producer(broker, acks="all")
    p.produce("auto-three", b"v")
    assert p.flush(30) == 0
    assert sorted(admin(broker).list_topics(timeout=10).topics["auto-three"].partitions) == [0, 1, 2]


def test_fetch_returns_a_batch_larger_than_the_fetch_limits(broker):
    """KIP-74: the first batch is returned even if it exceeds max.partition.fetch.bytes
    and fetch.max.bytes, so a consumer never gets stuck."""
    topic = unique("bigbatch")
    create_topic(broker, topic, 1)
    msgs = [Msg(0, b"k%d" % i, bytes([i]) * 20_000, [], now_ms() + i) for i in range(6)]
    for m in msgs:  # one batch each
        produce_all(broker, topic, [m], "all", **{"linger.ms": 0})
    got = consume_all(broker, topic, {0: 6}, timeout=20, **{"max.partition.fetch.bytes": 1024,
                                                  "fetch.max.bytes": 1024, "message.max.bytes": 1000,
                                                  "receive.message.max.bytes": 100_000})
    assert_same(topic, 0, msgs, got[0])


def check_random_access(broker, topic: str, want: list[Msg], rng) -> None:
    """Starts a consumer at assorted offsets and looks up assorted timestamps."""
    n = len(want)
    for start in sorted({0, n - 1, *(rng.randrange(n) for _ in range(3))}):
        got = consume_all(broker, topic, {0: n}, start=start)
        assert_same(topic, 0, want[start:], got[0], first_offset=start)
    c = assign_consumer(broker)
    try:
        for _ in range(40):
            t = rng.randrange(want[0].timestamp - 10, want[-1].timestamp + 10)
            res = c.offsets_for_times([TopicPartition(topic, 0, t)], timeout=10)
            expected = first_offset_at_or_after(want, t)
            assert res[0].offset == (expected if expected >= 0 else OFFSET_END), (
                f"offsets_for_times @ {t}: got {res[0].offset}, want {expected}"
            )
    finally:
        c.close()


def test_many_segments_random_access_survives_restarts(broker):
    """Small segments and a dense index: reads from any offset and time lookups work,
    before and after an orderly restart and after kill -9."""
    rng = random.Random(42)
    topic = unique("segments")
    create_topic(broker, topic, 1, {"segment.bytes": "4096", "index.interval.bytes": "100"})
    base = now_ms() - 30 * 60_000
    msgs = [Msg(0, b"k%04d" % i, bytes([i % 251]) * rng.randrange(0, 300), [("i", b"%d" % i)],
                base + i * 3 + rng.randrange(3)) for i in range(1500)]
    # several produce calls, so there are many batches and segments
    for chunk in range(0, len(msgs), 100):
        produce_all(broker, topic, msgs[chunk:chunk + 100], "all", **{"batch.size": 3000})
    segments = [f for d in partition_dirs(broker.data_dir, topic, 0) for f in d.iterdir()
                if f.suffix == ".log"]
    assert len(segments) > 20, f"expected many segments, found {len(segments)}"
    check_random_access(broker, topic, msgs, rng)

    broker.stop()
    broker.restart()
    assert watermarks(broker, topic, 1) == [(0, len(msgs))]
    check_random_access(broker, topic, msgs, rng)

    broker.kill()
    broker.restart()
    assert watermarks(broker, topic, 1) == [(0, len(msgs))]
    check_random_access(broker, topic, msgs, rng)


def test_fetch_outside_the_log_is_out_of_range(broker):
    topic = unique("range")
    create_topic(broker, topic, 1)
    produce_all(broker, topic, [Msg(0, b"k", b"v%d" % i, [], now_ms()) for i in range(5)], "all")
    c = assign_consumer(broker)  # auto.offset.reset=error
    try:
        c.assign([TopicPartition(topic, 0, 9)])
        deadline = time.monotonic() + 15
        err = None
        while err is None:
            assert time.monotonic() < deadline, "no error for a fetch beyond the end"
            for m in c.consume(10, timeout=0.2):
                assert m.error() is not None, f"got a message at offset {m.offset()}"
                if m.error().code() != KafkaError._PARTITION_EOF:
                    err = m.error()
        assert err.code() == KafkaError._AUTO_OFFSET_RESET, err
        assert "out of range" in err.str().lower(), err
    finally:
        c.close()
    # offset == end is fine: nothing yet, then new data
    got = consume_all(broker, topic, {0: 5}, start=5)
    assert got[0] == []


def test_sigterm_with_busy_clients_exits_promptly(broker):
    """An orderly shutdown must not wait for long-polling fetches (fetch.wait.max.ms=10 s)
    or hang on producers that keep sending."""
    topic = unique("busy")
    create_topic(broker, topic, 2)
    c = assign_consumer(broker, **{"fetch.wait.max.ms": 10000})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(2)])
    p = producer(broker, acks="all")
    stop = threading.Event()

    def produce():
        while not stop.is_set():
            try:
                p.produce(topic, b"x" * 100, partition=0)
            except BufferError:
                pass
            p.poll(0.001)

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    try:
        wait_until(lambda: watermarks(broker, topic, 2)[0][1] > 100, 15, "some traffic")
        c.consume(10, timeout=0.5)  # the consumer is fetching
        start = time.monotonic()
        broker.stop()  # asserts exit code 0
        took = time.monotonic() - start
    finally:
        stop.set()
        t.join(10)
        c.close()
    assert took < 8.0, f"SIGTERM took {took:.1f}s"
    assert "shutdown complete" in broker.log_text()
