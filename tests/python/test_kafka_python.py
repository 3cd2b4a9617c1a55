"""End-to-end tests of Strata with kafka-python (pure-Python client).

kafka-python 3.x enables idempotence by default (KIP-679); producers here set
enable_idempotence=False so each test sees only what it is about (idempotence is in
test_idempotence.py). Consumers use assign() without a group (group_id=None) and never
commit; groups are in test_groups_kafka_python.py.
"""

from __future__ import annotations

import time
import uuid

import kafka.errors as Errors
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, OffsetSpec

from strata_helpers import (
    HOUR_MS,
    Msg,
    by_partition,
    first_offset_at_or_after,
    make_messages,
    metric_values,
    now_ms,
    unique,
    wait_until,
)

ACKS = {"0": 0, "1": 1, "all": "all"}


# -- client helpers -------------------------------------------------------------------


def admin(broker) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)


def producer(broker, acks, **extra) -> KafkaProducer:
    conf = dict(bootstrap_servers=broker.bootstrap, acks=acks, enable_idempotence=False, linger_ms=5)
    conf.update(extra)
    return KafkaProducer(**conf)


def consumer(broker, **extra) -> KafkaConsumer:
    conf = dict(
        bootstrap_servers=broker.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    conf.update(extra)
    return KafkaConsumer(**conf)


def create_topic(broker, name: str, partitions: int, configs: dict | None = None) -> dict:
    a = admin(broker)
    try:
        res = a.create_topics(
            {name: {
                "num_partitions": partitions,
                "replication_factor": getattr(broker, "replication_factor", 1),
                "configs": configs or {},
            }}
        )
    finally:
        a.close()
    (t,) = res["topics"]
    assert (t["name"], t["error_code"], t["num_partitions"]) == (name, 0, partitions), t
    return t


def create_error(broker, name: str, **spec) -> Errors.KafkaError:
    a = admin(broker)
    try:
        with pytest.raises(Errors.KafkaError) as exc:
            a.create_topics({name: spec})
    finally:
        a.close()
    return exc.value


def produce_all(broker, topic: str, msgs: list[Msg], acks) -> dict[int, list[int]]:
    p = producer(broker, acks)
    try:
        futures = [
            (m, p.send(topic, value=m.value, key=m.key, headers=m.headers, partition=m.partition,
                       timestamp_ms=m.timestamp))
            for m in msgs
        ]
        p.flush(timeout=60)
        offsets: dict[int, list[int]] = {}
        for m, f in futures:
            md = f.get(timeout=30)  # raises on a delivery error
            assert (md.topic, md.partition) == (topic, m.partition)
            offsets.setdefault(m.partition, []).append(md.offset)
        return offsets
    finally:
        p.close(timeout=10)


def consume_all(broker, topic: str, expected: dict[int, int], timeout: float = 60,
                start: int | None = 0, **extra) -> dict[int, list]:
    """Reads each partition from offset `start` (None: seek_to_beginning) until the
    consumer's position reaches the expected end offset."""
    c = consumer(broker, **extra)
    try:
        tps = [TopicPartition(topic, p) for p in expected]
        c.assign(tps)
        for tp in tps:
            if start is None:
                c.seek_to_beginning(tp)
            else:
                c.seek(tp, start)
        got: dict[int, list] = {p: [] for p in expected}
        deadline = time.monotonic() + timeout
        while any(c.position(tp) < expected[tp.partition] for tp in tps):
            assert time.monotonic() < deadline, (
                f"timed out reading {topic}: have { {p: len(v) for p, v in got.items()} }, "
                f"want {expected}"
            )
            for tp, records in c.poll(timeout_ms=500, max_records=2000).items():
                got[tp.partition].extend(records)
        return got
    finally:
        c.close()


def assert_same(topic: str, p: int, want: list[Msg], got: list, first_offset: int = 0) -> None:
    assert len(got) == len(want), f"{topic}[{p}]: {len(got)} messages read, {len(want)} produced"
    for i, (w, g) in enumerate(zip(want, got)):
        where = f"{topic}[{p}] offset {g.offset} (message #{i} of the partition)"
        assert g.offset == first_offset + i, f"{where}: offset, want {first_offset + i}"
        assert g.key == w.key, f"{where}: key {g.key!r} != {w.key!r}"
        assert g.value == w.value, f"{where}: value {g.value!r} != {w.value!r}"
        assert list(g.headers) == w.headers, f"{where}: headers {g.headers!r} != {w.headers!r}"
        assert (g.timestamp_type, g.timestamp) == (0, w.timestamp), (
            f"{where}: timestamp {g.timestamp_type}/{g.timestamp} != CreateTime {w.timestamp}"
        )


def watermarks(broker, topic: str, partitions: int) -> list[tuple[int, int]]:
    c = consumer(broker)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        lo, hi = c.beginning_offsets(tps), c.end_offsets(tps)
        return [(lo[tp], hi[tp]) for tp in tps]
    finally:
        c.close()


def topic_names(broker) -> set[str]:
    a = admin(broker)
    try:
        return set(a.list_topics())
    finally:
        a.close()


# -- tests ----------------------------------------------------------------------------


def test_create_topic_with_partitions_in_metadata(broker):
    topic = unique("meta")
    create_topic(broker, topic, 6)
    a = admin(broker)
    try:
        (t,) = a.describe_topics([topic])
        cluster = a.describe_cluster()
    finally:
        a.close()
    assert t["error_code"] == 0 and t["name"] == topic, t
    parts = sorted(t["partitions"], key=lambda p: p["partition_index"])
    assert [p["partition_index"] for p in parts] == list(range(6))
    for p in parts:
        assert (p["error_code"], p["leader_id"], p["replica_nodes"], p["isr_nodes"]) == (0, 0, [0], [0]), p
    assert [(b["broker_id"], b["host"], b["port"]) for b in cluster["brokers"]] == [
        (0, "127.0.0.1", broker.kafka_port)
    ], cluster
    c = consumer(broker)
    try:
        assert c.partitions_for_topic(topic) == set(range(6))
    finally:
        c.close()


@pytest.mark.also_on_cluster
@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_produce_consume_roundtrip(broker, acks):
    partitions, count = 4, 2500
    topic = unique(f"rt-acks{acks}")
    create_topic(broker, topic, partitions)
    msgs = make_messages(count, partitions, base_ts=now_ms() - 10 * 60_000, seed=10 + len(acks),
                         null_header_values=False)  # kafka-python has no null header values
    want = by_partition(msgs, partitions)
    delivered = produce_all(broker, topic, msgs, ACKS[acks])
    for p in range(partitions):
        # With acks=0 there is no response: kafka-python 3.0.12 then makes offsets up from a
        # synthetic base offset of 0 (the Java client reports -1), so only acks>0 is checked.
        if acks != "0":
            assert delivered[p] == list(range(len(want[p]))), f"partition {p}: delivery offsets"
    got = consume_all(broker, topic, {p: len(want[p]) for p in range(partitions)})
    for p in range(partitions):
        assert_same(topic, p, want[p], got[p])
    assert watermarks(broker, topic, partitions) == [(0, len(want[p])) for p in range(partitions)]


def test_list_offsets_watermarks_and_times(broker):
    topic = unique("offsets")
    create_topic(broker, topic, 2)
    base = now_ms() - HOUR_MS
    msgs = make_messages(500, 2, base_ts=base, step_ms=10, seed=5, null_header_values=False)
    produce_all(broker, topic, msgs, "all")
    want = by_partition(msgs, 2)
    tps = [TopicPartition(topic, p) for p in range(2)]

    assert watermarks(broker, topic, 2) == [(0, len(want[p])) for p in range(2)]

    c = consumer(broker)
    try:
        for p in range(2):
            ts = [m.timestamp for m in want[p]]
            tp = tps[p]
            for t in [0, base - 1, ts[0], ts[0] + 1, ts[len(ts) // 3], ts[len(ts) // 3] + 5,
                      ts[-1], ts[-1] + 1, now_ms() + HOUR_MS]:
                expected = first_offset_at_or_after(want[p], t)
                found = c.offsets_for_times({tp: t})[tp]
                if expected < 0:
                    # kafka-python (like the Java client) reports "no such offset" as None
                    assert found is None, f"{tp} @ base+{t - base}: {found}, want None"
                else:
                    assert found is not None, f"{tp} @ base+{t - base}: None, want {expected}"
                    assert (found.offset, found.timestamp) == (expected, want[p][expected].timestamp), (
                        f"{tp} @ base+{t - base}"
                    )
    finally:
        c.close()

    a = admin(broker)
    try:
        res = a.list_partition_offsets({tp: OffsetSpec.EARLIEST for tp in tps})
        assert {tp.partition: r.offset for tp, r in res.items()} == {0: 0, 1: 0}
        res = a.list_partition_offsets({tp: OffsetSpec.LATEST for tp in tps})
        assert {tp.partition: r.offset for tp, r in res.items()} == {p: len(want[p]) for p in range(2)}
        res = a.list_partition_offsets({tp: OffsetSpec.MAX_TIMESTAMP for tp in tps})
        assert {tp.partition: (r.offset, r.timestamp) for tp, r in res.items()} == {
            p: (len(want[p]) - 1, want[p][-1].timestamp) for p in range(2)
        }
        t = want[0][10].timestamp - 3
        res = a.list_partition_offsets({tps[0]: t})
        assert res[tps[0]].offset == first_offset_at_or_after(want[0], t) == 10
        res = a.list_partition_offsets({tps[1]: now_ms() + HOUR_MS})
        assert res[tps[1]].offset == -1, res  # the broker's "none" as-is
    finally:
        a.close()


def test_delete_and_recreate_topic_starts_empty(broker):
    topic = unique("recreate")
    create_topic(broker, topic, 2)
    old = make_messages(200, 2, base_ts=now_ms() - 60_000, seed=21, null_header_values=False)
    produce_all(broker, topic, old, 1)
    assert watermarks(broker, topic, 2) == [(0, len(v)) for v in by_partition(old, 2).values()]

    a = admin(broker)
    try:
        res = a.delete_topics([topic])
    finally:
        a.close()
    assert [(t["name"], t["error_code"]) for t in res["topics"]] == [(topic, 0)], res
    wait_until(lambda: topic not in topic_names(broker), 10, f"{topic} to leave the metadata")

    create_topic(broker, topic, 2)
    assert watermarks(broker, topic, 2) == [(0, 0), (0, 0)]
    new = [Msg(p, b"fresh-%d" % i, b"v2-%d" % i, [("gen", b"2")], now_ms() + i)
           for i, p in enumerate([0, 1, 1, 0, 1])]
    produce_all(broker, topic, new, "all")
    want = by_partition(new, 2)
    got = consume_all(broker, topic, {0: 2, 1: 3})
    for p in range(2):
        assert_same(topic, p, want[p], got[p])


def test_describe_configs(broker):
    topic = unique("cfg")
    created = create_topic(broker, topic, 1, {"retention.ms": "123456"})
    # CreateTopics v5+ returns the resulting configs too
    assert created["configs"]["retention.ms"]["value"] == "123456"
    assert created["configs"]["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"

    a = admin(broker)
    try:
        res = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
        modified = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        only = a.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, ["retention.ms", "cleanup.policy"])],
            config_filter="all",
        )
    finally:
        a.close()
    configs = res["topic"][topic]
    assert configs["retention.ms"]["value"] == "123456"
    assert configs["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
    assert configs["retention.ms"]["read_only"] is False
    for name, value in {"cleanup.policy": "delete", "retention.bytes": "-1",
                        "segment.bytes": "1073741824", "max.message.bytes": "1048588"}.items():
        assert configs[name]["value"] == value, (name, configs[name])
        assert configs[name]["config_source"] == "DEFAULT_CONFIG", (name, configs[name])
    assert configs["retention.ms"]["config_type"] == "LONG"
    assert configs["cleanup.policy"]["config_type"] == "LIST"
    # the default filter keeps only what differs from the defaults
    assert set(modified["topic"][topic]) == {"retention.ms"}
    # asking for given keys returns just those
    assert set(only["topic"][topic]) == {"retention.ms", "cleanup.policy"}


def test_create_topic_errors(broker):
    name = unique("bad")
    err = create_error(broker, name, num_partitions=1, configs={"cleanup.policy": "compact"})
    assert isinstance(err, Errors.InvalidConfigurationError), repr(err)
    err = create_error(broker, name, num_partitions=1, configs={"retention.ms": "-5"})
    assert isinstance(err, Errors.InvalidConfigurationError), repr(err)
    err = create_error(broker, name, num_partitions=1, configs={"max.message.bytes": "lots"})
    assert isinstance(err, Errors.InvalidConfigurationError), repr(err)
    assert name not in topic_names(broker)

    create_topic(broker, name, 1)
    err = create_error(broker, name, num_partitions=1)
    assert isinstance(err, Errors.TopicAlreadyExistsError), repr(err)

    for bad in ("bad/name", "x" * 250, "."):
        err = create_error(broker, bad, num_partitions=1)
        assert isinstance(err, Errors.InvalidTopicError), (bad, repr(err))

    # partition count / replication factor left to the broker: num.partitions (default 1)
    dflt = unique("dflt")
    a = admin(broker)
    try:
        res = a.create_topics({dflt: {}})
    finally:
        a.close()
    assert res["topics"][0]["num_partitions"] == 1 and res["topics"][0]["replication_factor"] == 1, res
    assert topic_names(broker) >= {name, dflt}


def test_metrics_count_kafka_python_traffic(broker):
    topic = unique("metrics")
    create_topic(broker, topic, 1)
    produce_all(broker, topic, [Msg(0, b"k", b"v%d" % i, [], now_ms()) for i in range(25)], 1)
    text = broker.metrics()
    assert metric_values(text, "strata_kafka_requests_total", api="Produce")[0] > 0
    assert metric_values(text, "strata_kafka_requests_total", api="CreateTopics")[0] >= 1
    assert metric_values(text, "strata_log_end_offset", topic=topic, partition="0") == [25]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_roundtrip(broker, codec):
    topic = unique(f"z-{codec}")
    create_topic(broker, topic, 2)
    msgs = make_messages(600, 2, base_ts=now_ms() - 5000, seed=len(codec), null_header_values=False)
    msgs += [Msg(i % 2, b"c%d" % i, b"xyz" * (40 + i), [("z", codec.encode())], now_ms() + i) for i in range(150)]
    p = producer(broker, "all", compression_type=codec, linger_ms=20)
    try:
        futures = [p.send(topic, value=m.value, key=m.key, headers=m.headers, partition=m.partition,
                          timestamp_ms=m.timestamp) for m in msgs]
        p.flush(timeout=60)
        for f in futures:
            f.get(timeout=30)
    finally:
        p.close(timeout=10)
    want = by_partition(msgs, 2)
    got = consume_all(broker, topic, {p_: len(want[p_]) for p_ in range(2)})
    for p_ in range(2):
        assert_same(topic, p_, want[p_], got[p_])
    # start in the middle of a compressed batch
    got = consume_all(broker, topic, {0: len(want[0])}, start=len(want[0]) - 4)
    assert_same(topic, 0, want[0][-4:], got[0], first_offset=len(want[0]) - 4)


def test_fetch_returns_a_batch_larger_than_the_fetch_limits(broker):
    """KIP-74: the first batch comes back even if it exceeds the fetch size limits."""
    topic = unique("bigbatch")
    create_topic(broker, topic, 1)
    msgs = [Msg(0, b"k%d" % i, bytes([i + 1]) * 30_000, [("i", b"%d" % i)], now_ms() + i) for i in range(5)]
    for m in msgs:  # one batch each
        produce_all(broker, topic, [m], 1)
    got = consume_all(broker, topic, {0: 5}, timeout=20, max_partition_fetch_bytes=1000,
                      fetch_max_bytes=1000)
    assert_same(topic, 0, msgs, got[0])


def test_batches_sent_from_the_segment_files(broker_factory):
    """Batches of 30 KB reach kafka-python straight from the segment files (sendfile),
    also one per fetch when each exceeds the fetch limits (KIP-74), as produced."""
    # No in-memory tail: every read goes to the segment files.
    broker = broker_factory(env={"STRATA_WAL_CACHE_BYTES": "0"})
    topic = unique("files")
    create_topic(broker, topic, 1, {"segment.bytes": "200000"})
    msgs = [Msg(0, b"k%d" % i, bytes([i % 250 + 1]) * 30_000, [("i", b"%d" % i)], now_ms() + i) for i in range(40)]
    produce_all(broker, topic, msgs, 1)
    before = broker.metrics()
    got = consume_all(broker, topic, {0: len(msgs)}, timeout=30)
    assert_same(topic, 0, msgs, got[0])
    got = consume_all(broker, topic, {0: len(msgs)}, timeout=30, start=7, max_partition_fetch_bytes=1000,
                      fetch_max_bytes=1000)
    assert_same(topic, 0, msgs[7:], got[0], first_offset=7)
    after = broker.metrics()
    fetched, sent = (
        sum(metric_values(after, n)) - sum(metric_values(before, n))
        for n in ("strata_kafka_fetch_bytes_total", "strata_kafka_fetch_sendfile_bytes_total")
    )
    assert fetched > 2_000_000 and sent > 0.9 * fetched, (fetched, sent)


def test_validate_only_and_delete_by_topic_id(broker):
    topic = unique("vonly")
    a = admin(broker)
    try:
        res = a.create_topics({topic: {"num_partitions": 3, "replication_factor": 1,
                                       "configs": {"retention.bytes": "100000"}}},
                              validate_only=True)
        assert res["topics"][0]["error_code"] == 0 and res["topics"][0]["num_partitions"] == 3, res
        with pytest.raises(Errors.InvalidConfigurationError):
            a.create_topics({topic: {"num_partitions": 1, "configs": {"segment.bytes": "1"}}},
                            validate_only=True)
    finally:
        a.close()
    assert topic not in topic_names(broker), "validate_only created the topic"

    created = create_topic(broker, topic, 2)
    topic_id = created["topic_id"]
    assert topic_id is not None
    a = admin(broker)
    try:
        res = a.delete_topics([uuid.UUID(str(topic_id))])
        assert [(t["name"], t["error_code"]) for t in res["topics"]] == [(topic, 0)], res
        with pytest.raises(Errors.UnknownTopicOrPartitionError):
            a.delete_topics([topic])
    finally:
        a.close()
    assert topic not in topic_names(broker)


def test_describe_broker_configs(broker_factory):
    broker = broker_factory(env={"STRATA_KAFKA_LOG_RETENTION_BYTES": "777777"})
    a = admin(broker)
    try:
        res = a.describe_configs([ConfigResource(ConfigResourceType.BROKER, "0")], config_filter="all")
        topic = unique("inherit")
        a.create_topics({topic: {"num_partitions": 1}})
        tres = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, ["retention.bytes"])],
                                  config_filter="all")
    finally:
        a.close()
    cfg = res["broker"]["0"]
    assert cfg["log.retention.bytes"]["value"] == "777777"
    assert cfg["log.retention.bytes"]["config_source"] == "STATIC_BROKER_CONFIG"
    assert cfg["num.partitions"]["value"] == "1"
    assert cfg["num.partitions"]["config_source"] == "DEFAULT_CONFIG"
    # a topic without an override inherits the broker's value
    rb = tres["topic"][topic]["retention.bytes"]
    assert (rb["value"], rb["config_source"]) == ("777777", "STATIC_BROKER_CONFIG")
