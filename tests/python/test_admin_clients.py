"""Admin APIs end to end with both admin clients: confluent-kafka's AdminClient
(librdkafka) and kafka-python's KafkaAdminClient. Every call is checked against the result
it should have (metadata, configs and their sources, offsets, group state), not only for
the absence of an exception.

librdkafka 2.16 re-bootstraps after its broker went away, and an AdminClient that lived
through a broker restart may then never answer some calls (DescribeConsumerGroups was
seen to hang): a new AdminClient is used after each restart.
"""

from __future__ import annotations

import re
import time

import kafka.errors as KpErrors
import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    ConsumerGroupTopicPartitions,
    Consumer,
    ConsumerGroupState,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
    ResourceType,
)
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTP
from kafka.admin import AlterConfigOp, KafkaAdminClient
from kafka.admin import ConfigResource as KConfigResource
from kafka.admin import ConfigResourceType as KConfigResourceType
from kafka.admin import OffsetSpec as KOffsetSpec
from kafka.structs import OffsetAndMetadata

from strata_helpers import HOUR_MS, assign_consumer, file_sizes, now_ms, partition_dirs, unique, wait_until

# confluent-kafka's alter_configs (AlterConfigs, replace semantics) is deprecated in favour
# of incremental_alter_configs, but it is the API under test here
pytestmark = pytest.mark.filterwarnings("ignore:alter_configs has been deprecated:DeprecationWarning")

FAST_GROUPS = {"STRATA_KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0"}
FAST_RETENTION = {"STRATA_KAFKA_LOG_RETENTION_CHECK_INTERVAL_MS": "300"}

DEFAULTS = {
    "cleanup.policy": "delete",
    "retention.ms": "604800000",
    "retention.bytes": "-1",
    "segment.bytes": "1073741824",
    "segment.ms": "604800000",
    "max.message.bytes": "1048588",
    "index.interval.bytes": "4096",
    "min.insync.replicas": "1",
}
BROKER_SYNONYM = {
    "cleanup.policy": "log.cleanup.policy",
    "retention.ms": "log.retention.ms",
    "retention.bytes": "log.retention.bytes",
    "segment.bytes": "log.segment.bytes",
    "segment.ms": "log.roll.ms",
    "max.message.bytes": "message.max.bytes",
    "index.interval.bytes": "log.index.interval.bytes",
    "min.insync.replicas": "min.insync.replicas",
}

# -- confluent-kafka helpers -----------------------------------------------------------------


def ck_admin(broker) -> AdminClient:
    """One AdminClient per broker process (a new one after each restart), kept with the
    broker's clients (dropped at teardown): futures fail with _DESTROY once their client
    is garbage-collected."""
    cached = broker.clients.get("ck_admin")
    if cached is None or cached[0] != broker.starts:
        cached = (broker.starts, AdminClient({"bootstrap.servers": broker.bootstrap}))
        broker.clients["ck_admin"] = cached
    return cached[1]


def ck_create(broker, name: str, partitions: int, config: dict | None = None) -> None:
    a = ck_admin(broker)
    futures = a.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=10,
    )
    futures[name].result(timeout=30)


def ck_error(fut) -> KafkaError:
    with pytest.raises(KafkaException) as exc:
        fut.result(timeout=30)
    return exc.value.args[0]


def ck_partitions(broker, topic: str) -> list[int]:
    t = ck_admin(broker).list_topics(topic, timeout=10).topics[topic]
    assert t.error is None, t.error
    return sorted(t.partitions)


def ck_produce(broker, topic: str, items: list[tuple[int, bytes, int | None]], **extra) -> list[tuple[int, int]]:
    """Produces (partition, value, timestamp) items; returns (partition, offset) of each."""
    conf = {"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "acks": "all"}
    conf.update(extra)
    p = Producer(conf)
    out: list = [None] * len(items)
    errors: list = []

    def cb(i):
        def on_delivery(err, m):
            if err is not None:
                errors.append(err)
            else:
                out[i] = (m.partition(), m.offset())
        return on_delivery

    for i, (part, value, ts) in enumerate(items):
        kwargs = {"timestamp": ts} if ts is not None else {}
        p.produce(topic, value=value, key=b"k%d" % i, partition=part, on_delivery=cb(i), **kwargs)
        if i % 200 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    assert not errors, errors[:5]
    return out


def ck_read(broker, topic: str, partition: int, start: int, end: int, timeout: float = 30) -> list:
    """Messages of one partition from `start` (an offset or OFFSET_BEGINNING) until
    end-of-partition at `end`."""
    c = assign_consumer(broker)
    try:
        c.assign([TopicPartition(topic, partition, start)])
        got = []
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, f"timed out reading {topic}[{partition}]: {len(got)} messages"
            for m in c.consume(500, timeout=0.5):
                if m.error() is None:
                    got.append(m)
                elif m.error().code() == KafkaError._PARTITION_EOF:
                    if m.offset() >= end:
                        return got
                else:
                    raise AssertionError(f"consumer error: {m.error()}")
    finally:
        c.close()


def ck_watermarks(broker, topic: str, partition: int) -> tuple[int, int]:
    c = assign_consumer(broker)
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
    finally:
        c.close()


def ck_describe(broker, topic: str) -> dict:
    res = ConfigResource(ResourceType.TOPIC, topic)
    return ck_admin(broker).describe_configs([res])[res].result(timeout=30)


def src(entry) -> ConfigSource:
    return entry.source if isinstance(entry.source, ConfigSource) else ConfigSource(entry.source)


def ck_effective(broker, topic: str) -> dict[str, tuple[str, ConfigSource]]:
    """The settings in DEFAULTS (the broker may have more) as (value, source)."""
    entries = ck_describe(broker, topic)
    missing = set(DEFAULTS) - set(entries)
    assert not missing, f"DescribeConfigs lacks {missing}"
    return {k: (e.value, src(e)) for k, e in entries.items() if k in DEFAULTS}


def expected_configs(overrides: dict[str, str]) -> dict[str, tuple[str, ConfigSource]]:
    out = {k: (v, ConfigSource.DEFAULT_CONFIG) for k, v in DEFAULTS.items()}
    for k, v in overrides.items():
        out[k] = (v, ConfigSource.DYNAMIC_TOPIC_CONFIG)
    return out


def ck_incremental(broker, topic: str, ops: list[tuple[str, AlterConfigOpType, str | None]],
                   validate_only: bool = False):
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry(name, value, incremental_operation=op) for name, op, value in ops
    ])
    return ck_admin(broker).incremental_alter_configs([res], validate_only=validate_only)[res]


# -- kafka-python helpers --------------------------------------------------------------------


def kp_admin(broker) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)


class kp:
    """`with kp(broker) as a:` a kafka-python admin client that is closed afterwards."""

    def __init__(self, broker):
        self.broker = broker

    def __enter__(self) -> KafkaAdminClient:
        self.a = kp_admin(self.broker)
        return self.a

    def __exit__(self, *exc):
        self.a.close()


def kp_create(broker, name: str, partitions: int, configs: dict | None = None) -> None:
    with kp(broker) as a:
        res = a.create_topics(
            {name: {"num_partitions": partitions, "replication_factor": 1, "configs": configs or {}}}
        )
    assert res["topics"][0]["error_code"] == 0, res


def kp_configs(broker, topic: str, synonyms: bool = False) -> dict:
    with kp(broker) as a:
        res = a.describe_configs([KConfigResource(KConfigResourceType.TOPIC, topic)],
                                 include_synonyms=synonyms, config_filter="all")
    return res["topic"][topic]


def kp_effective(broker, topic: str) -> dict[str, tuple[str, str]]:
    configs = kp_configs(broker, topic)
    missing = set(DEFAULTS) - set(configs)
    assert not missing, f"DescribeConfigs lacks {missing}"
    return {k: (v["value"], v["config_source"]) for k, v in configs.items() if k in DEFAULTS}


def kp_expected(overrides: dict[str, str]) -> dict[str, tuple[str, str]]:
    out = {k: (v, "DEFAULT_CONFIG") for k, v in DEFAULTS.items()}
    for k, v in overrides.items():
        out[k] = (v, "DYNAMIC_TOPIC_CONFIG")
    return out


def kp_alter(broker, topic: str, configs: dict, **kwargs) -> str:
    """kafka-python's alter_configs; returns its per-resource outcome ('OK' or the error)."""
    with kp(broker) as a:
        res = a.alter_configs([KConfigResource(KConfigResourceType.TOPIC, topic, configs)], **kwargs)
    return res["topic"][topic]


def kp_producer(broker, **extra) -> KafkaProducer:
    conf = dict(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
    conf.update(extra)
    return KafkaProducer(**conf)


def kp_produce(broker, topic: str, items: list[tuple[int, bytes, int | None]], **extra) -> list[tuple[int, int]]:
    p = kp_producer(broker, **extra)
    try:
        futures = [p.send(topic, value=v, key=b"k%d" % i, partition=part, timestamp_ms=ts)
                   for i, (part, v, ts) in enumerate(items)]
        p.flush(timeout=60)
        return [(md.partition, md.offset) for md in (f.get(timeout=30) for f in futures)]
    finally:
        p.close(timeout=10)


def kp_offsets(broker, topic: str, partition: int, spec) -> int:
    tp = KTP(topic, partition)
    with kp(broker) as a:
        return a.list_partition_offsets({tp: spec})[tp].offset


def kp_read_from_beginning(broker, topic: str, partition: int, end: int, timeout: float = 30) -> list:
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False,
                      auto_offset_reset="none")
    try:
        tp = KTP(topic, partition)
        c.assign([tp])
        c.seek_to_beginning(tp)
        got = []
        deadline = time.monotonic() + timeout
        while c.position(tp) < end:
            assert time.monotonic() < deadline, f"timed out reading {tp}: {len(got)} records"
            for records in c.poll(timeout_ms=300).values():
                got.extend(records)
        return got
    finally:
        c.close()


# ============================================================================================
# CreatePartitions
# ============================================================================================


def test_create_partitions_confluent(broker):
    topic = unique("cp-ck")
    ck_create(broker, topic, 3)
    a = ck_admin(broker)
    # validate_only changes nothing
    assert a.create_partitions([NewPartitions(topic, 7)], validate_only=True)[topic].result(timeout=30) is None
    assert ck_partitions(broker, topic) == [0, 1, 2]

    assert a.create_partitions([NewPartitions(topic, 5)])[topic].result(timeout=30) is None
    wait_until(lambda: ck_partitions(broker, topic) == [0, 1, 2, 3, 4], 10, "5 partitions in the metadata")
    md = a.list_topics(topic, timeout=10).topics[topic]
    for p in md.partitions.values():
        assert (p.leader, p.replicas, p.isrs, p.error) == (0, [0], [0], None), (p.id, p.leader, p.replicas, p.isrs)

    # the new partitions take data and give it back
    placed = ck_produce(broker, topic, [(4, b"into-4", None), (3, b"into-3", None), (4, b"again-4", None)])
    assert placed == [(4, 0), (3, 0), (4, 1)]
    assert [m.value() for m in ck_read(broker, topic, 4, OFFSET_BEGINNING, 2)] == [b"into-4", b"again-4"]
    assert ck_watermarks(broker, topic, 4) == (0, 2)

    # fewer or as many partitions as now: INVALID_PARTITIONS
    for count in (4, 5, 1):
        err = ck_error(a.create_partitions([NewPartitions(topic, count)])[topic])
        assert err.code() == KafkaError.INVALID_PARTITIONS, (count, err)
    # an unknown topic
    ghost = unique("ghost")
    err = ck_error(a.create_partitions([NewPartitions(ghost, 2)])[ghost])
    assert err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, err
    assert ck_partitions(broker, topic) == [0, 1, 2, 3, 4]

    # the new count and the data survive a restart
    broker.stop()
    broker.restart()
    assert ck_partitions(broker, topic) == [0, 1, 2, 3, 4]
    assert ck_watermarks(broker, topic, 4) == (0, 2)


def test_create_partitions_kafka_python(broker):
    topic = unique("cp-kp")
    kp_create(broker, topic, 3)
    with kp(broker) as a:
        res = a.create_partitions({topic: 7}, validate_only=True)
        assert [(r.name, r.error_code) for r in res.results] == [(topic, 0)], res
        (t,) = a.describe_topics([topic])
        assert len(t["partitions"]) == 3, "validate_only added partitions"

        res = a.create_partitions({topic: 5})
        assert [(r.name, r.error_code) for r in res.results] == [(topic, 0)], res
        (t,) = a.describe_topics([topic])
        assert sorted(p["partition_index"] for p in t["partitions"]) == [0, 1, 2, 3, 4], t
        for p in t["partitions"]:
            assert (p["error_code"], p["leader_id"], p["replica_nodes"]) == (0, 0, [0]), p

        for count in (4, 5):
            with pytest.raises(KpErrors.InvalidPartitionsError):
                a.create_partitions({topic: count})
        with pytest.raises(KpErrors.UnknownTopicOrPartitionError):
            a.create_partitions({unique("ghost"): 2})
        # without raising, the per-topic error is in the response
        res = a.create_partitions({topic: 2}, raise_errors=False)
        assert [(r.name, r.error_code) for r in res.results] == [(topic, KpErrors.InvalidPartitionsError.errno)]

    placed = kp_produce(broker, topic, [(4, b"four", None), (4, b"four-2", None), (3, b"three", None)])
    assert placed == [(4, 0), (4, 1), (3, 0)]
    got = kp_read_from_beginning(broker, topic, 4, 2)
    assert [(r.offset, r.value) for r in got] == [(0, b"four"), (1, b"four-2")]
    # a consumer that knows the topic sees the new partitions too
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None)
    try:
        assert c.partitions_for_topic(topic) == {0, 1, 2, 3, 4}
    finally:
        c.close()


# ============================================================================================
# DescribeConfigs / AlterConfigs / IncrementalAlterConfigs
# ============================================================================================


def test_describe_configs_sources_and_synonyms(broker_factory):
    broker = broker_factory(env={"STRATA_KAFKA_LOG_RETENTION_BYTES": "777777"})
    topic = unique("dc")
    ck_create(broker, topic, 1, {"retention.ms": "123456", "max.message.bytes": "5000"})

    # confluent-kafka (librdkafka always asks for synonyms)
    entries = ck_describe(broker, topic)
    want = expected_configs({"retention.ms": "123456", "max.message.bytes": "5000"})
    want["retention.bytes"] = ("777777", ConfigSource.STATIC_BROKER_CONFIG)
    assert ck_effective(broker, topic) == want
    for name in DEFAULTS:
        e = entries[name]
        assert e.is_default == (want[name][1] == ConfigSource.DEFAULT_CONFIG), (name, e.is_default)
        assert not e.is_read_only and not e.is_sensitive, name
        syn = [(s.name, s.value, src(s)) for s in e.synonyms.values()]
        broker_name = BROKER_SYNONYM[name]
        if name in ("retention.ms", "max.message.bytes"):
            # most specific first: the topic override, then the broker default
            assert syn == [(name, want[name][0], ConfigSource.DYNAMIC_TOPIC_CONFIG),
                           (broker_name, DEFAULTS[name], ConfigSource.DEFAULT_CONFIG)], (name, syn)
        elif name == "retention.bytes":
            # the static broker setting and the built-in default share a name, and the
            # binding keeps synonyms in a dict by name: only the last one is left here
            # (kafka-python below shows both)
            assert list(e.synonyms) == ["log.retention.bytes"], syn
        else:
            assert syn == [(broker_name, DEFAULTS[name], ConfigSource.DEFAULT_CONFIG)], (name, syn)

    # kafka-python, with and without synonyms, all or only the modified ones, or named keys
    with kp(broker) as a:
        res = a.describe_configs([KConfigResource(KConfigResourceType.TOPIC, topic)],
                                 include_synonyms=True, config_filter="all")["topic"][topic]
        modified = a.describe_configs([KConfigResource(KConfigResourceType.TOPIC, topic)])["topic"][topic]
        named = a.describe_configs(
            [KConfigResource(KConfigResourceType.TOPIC, topic, ["retention.ms", "segment.ms"])],
            config_filter="all")["topic"][topic]
    assert {k: (v["value"], v["config_source"]) for k, v in res.items() if k in DEFAULTS} == {
        k: (v, s.name) for k, (v, s) in want.items()
    }
    assert [(s["name"], s["value"], s["source"]) for s in res["retention.ms"]["synonyms"]] == [
        ("retention.ms", "123456", "DYNAMIC_TOPIC_CONFIG"), ("log.retention.ms", "604800000", "DEFAULT_CONFIG")
    ]
    assert [(s["name"], s["source"]) for s in res["segment.ms"]["synonyms"]] == [("log.roll.ms", "DEFAULT_CONFIG")]
    assert [(s["name"], s["value"], s["source"]) for s in res["retention.bytes"]["synonyms"]] == [
        ("log.retention.bytes", "777777", "STATIC_BROKER_CONFIG"), ("log.retention.bytes", "-1", "DEFAULT_CONFIG")
    ]
    assert res["retention.ms"]["config_type"] == "LONG" and res["cleanup.policy"]["config_type"] == "LIST"
    assert res["segment.bytes"]["config_type"] == "INT"
    # kafka-python's default filter ("modified") keeps the topic overrides only (it counts
    # a static broker setting as unmodified)
    assert set(modified) == {"retention.ms", "max.message.bytes"}, sorted(modified)
    assert set(named) == {"retention.ms", "segment.ms"}

    # an unknown topic
    res = ConfigResource(ResourceType.TOPIC, unique("nope"))
    err = ck_error(ck_admin(broker).describe_configs([res])[res])
    assert err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, err


def test_alter_configs_replaces_overrides_confluent(broker):
    topic = unique("ac-ck")
    ck_create(broker, topic, 1, {"retention.ms": "123456", "max.message.bytes": "2000"})
    a = ck_admin(broker)

    # max.message.bytes=2000 is enforced ...
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
    results = []
    p.produce(topic, b"x" * 5000, partition=0, on_delivery=lambda err, m: results.append(err))
    assert p.flush(30) == 0
    assert results[0] is not None and results[0].code() == KafkaError.MSG_SIZE_TOO_LARGE, results

    # validate_only: nothing changes
    res = ConfigResource(ResourceType.TOPIC, topic, set_config={"retention.bytes": "99999"})
    assert a.alter_configs([res], validate_only=True)[res].result(timeout=30) is None
    assert ck_effective(broker, topic) == expected_configs({"retention.ms": "123456", "max.message.bytes": "2000"})

    # AlterConfigs replaces the whole set: overrides not named go back to their defaults
    res = ConfigResource(ResourceType.TOPIC, topic, set_config={"retention.bytes": "99999"})
    assert a.alter_configs([res])[res].result(timeout=30) is None
    assert ck_effective(broker, topic) == expected_configs({"retention.bytes": "99999"})

    # ... and the default max.message.bytes applies at once, without a restart
    results.clear()
    p.produce(topic, b"y" * 5000, partition=0, on_delivery=lambda err, m: results.append(err))
    assert p.flush(30) == 0
    assert results == [None], results

    # an invalid value or an unknown name refuses the whole change
    for bad in ({"retention.bytes": "1", "retention.ms": "soon"}, {"segment.bytes": "13"},
                {"no.such.config": "1"}, {"cleanup.policy": "compact"}):
        res = ConfigResource(ResourceType.TOPIC, topic, set_config=bad)
        err = ck_error(a.alter_configs([res])[res])
        assert err.code() == KafkaError.INVALID_CONFIG, (bad, err)
    assert ck_effective(broker, topic) == expected_configs({"retention.bytes": "99999"})

    # the empty set removes every override
    res = ConfigResource(ResourceType.TOPIC, topic, set_config={})
    assert a.alter_configs([res])[res].result(timeout=30) is None
    assert ck_effective(broker, topic) == expected_configs({})

    # an unknown topic; broker settings are static
    res = ConfigResource(ResourceType.TOPIC, unique("ghost"), set_config={"retention.ms": "1000"})
    assert ck_error(a.alter_configs([res])[res]).code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    res = ConfigResource(ResourceType.BROKER, "0", set_config={"log.retention.ms": "1000"})
    assert ck_error(a.alter_configs([res])[res]).code() == KafkaError.INVALID_CONFIG

    # the overrides are in the metadata: they survive a restart
    res = ConfigResource(ResourceType.TOPIC, topic, set_config={"segment.ms": "3600000"})
    assert a.alter_configs([res])[res].result(timeout=30) is None
    broker.stop()
    broker.restart()
    assert ck_effective(broker, topic) == expected_configs({"segment.ms": "3600000"})


def test_incremental_alter_configs_confluent(broker):
    topic = unique("iac-ck")
    ck_create(broker, topic, 1, {"retention.ms": "123456"})
    SET, DELETE, APPEND, SUBTRACT = (AlterConfigOpType.SET, AlterConfigOpType.DELETE,
                                     AlterConfigOpType.APPEND, AlterConfigOpType.SUBTRACT)

    # SET adds to the overrides, keeping the others
    assert ck_incremental(broker, topic, [("retention.bytes", SET, "500000"),
                                          ("segment.bytes", SET, "100000")]).result(timeout=30) is None
    overrides = {"retention.ms": "123456", "retention.bytes": "500000", "segment.bytes": "100000"}
    assert ck_effective(broker, topic) == expected_configs(overrides)

    # DELETE removes one override (back to the default); deleting a missing one is fine
    assert ck_incremental(broker, topic, [("retention.ms", DELETE, None),
                                          ("segment.ms", DELETE, None)]).result(timeout=30) is None
    del overrides["retention.ms"]
    assert ck_effective(broker, topic) == expected_configs(overrides)

    # validate_only: checked, not applied
    assert ck_incremental(broker, topic, [("retention.ms", SET, "1000")], validate_only=True).result(timeout=30) is None
    err = ck_error(ck_incremental(broker, topic, [("retention.ms", SET, "-7")], validate_only=True))
    assert err.code() == KafkaError.INVALID_CONFIG, err
    assert ck_effective(broker, topic) == expected_configs(overrides)

    # invalid values, unknown names, and APPEND/SUBTRACT on a non-list: INVALID_CONFIG,
    # and nothing of the request is applied
    for ops in ([("retention.ms", SET, "abc")],
                [("retention.ms", SET, "1000"), ("segment.bytes", SET, "10")],
                [("max.message.bytes", SET, "-1")],
                [("no.such.config", SET, "1")],
                [("retention.ms", APPEND, "5")],
                [("retention.bytes", SUBTRACT, "500000")],
                [("cleanup.policy", SET, "compact")]):
        err = ck_error(ck_incremental(broker, topic, ops))
        assert err.code() == KafkaError.INVALID_CONFIG, (ops, err)
    assert ck_effective(broker, topic) == expected_configs(overrides)

    # APPEND to the list cleanup.policy: "delete" is already there, so the value stays
    # "delete" but becomes an override (as in Kafka); "compact" is not supported
    assert ck_incremental(broker, topic, [("cleanup.policy", APPEND, "delete")]).result(timeout=30) is None
    overrides["cleanup.policy"] = "delete"
    assert ck_effective(broker, topic) == expected_configs(overrides)
    err = ck_error(ck_incremental(broker, topic, [("cleanup.policy", APPEND, "compact")]))
    assert err.code() == KafkaError.INVALID_CONFIG, err
    # SUBTRACT of "delete" would leave an empty policy, which Strata refuses (Kafka accepts
    # an empty cleanup.policy, meaning neither deletion nor compaction)
    err = ck_error(ck_incremental(broker, topic, [("cleanup.policy", SUBTRACT, "delete")]))
    assert err.code() == KafkaError.INVALID_CONFIG, err
    # SUBTRACT of something not in the list changes nothing
    assert ck_incremental(broker, topic, [("cleanup.policy", SUBTRACT, "compact")]).result(timeout=30) is None
    assert ck_effective(broker, topic) == expected_configs(overrides)

    # broker settings are static; unknown topics are unknown
    res = ConfigResource(ResourceType.BROKER, "0", incremental_configs=[
        ConfigEntry("log.retention.ms", "1000", incremental_operation=SET)])
    err = ck_error(ck_admin(broker).incremental_alter_configs([res])[res])
    assert err.code() == KafkaError.INVALID_CONFIG, err
    ghost = unique("ghost")
    err = ck_error(ck_incremental(broker, ghost, [("retention.ms", SET, "1000")]))
    assert err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, err

    # kafka-python sees the same
    assert kp_effective(broker, topic) == kp_expected(overrides)


def test_alter_configs_kafka_python(broker):
    topic = unique("ac-kp")
    kp_create(broker, topic, 1, {"retention.ms": "123456", "segment.ms": "7200000"})

    # incremental (the default on a broker with IncrementalAlterConfigs): SET keeps the rest
    assert kp_alter(broker, topic, {"retention.bytes": "4242"}) == "OK"
    overrides = {"retention.ms": "123456", "segment.ms": "7200000", "retention.bytes": "4242"}
    assert kp_effective(broker, topic) == kp_expected(overrides)
    assert kp_alter(broker, topic, {"retention.ms": (AlterConfigOp.DELETE, None),
                                    "retention.bytes": (AlterConfigOp.SET, "8484")}) == "OK"
    overrides = {"segment.ms": "7200000", "retention.bytes": "8484"}
    assert kp_effective(broker, topic) == kp_expected(overrides)
    assert kp_alter(broker, topic, {"cleanup.policy": (AlterConfigOp.APPEND, "delete")}) == "OK"
    overrides["cleanup.policy"] = "delete"
    assert kp_effective(broker, topic) == kp_expected(overrides)

    # errors come back as the outcome text
    for configs in ({"retention.ms": "abc"}, {"segment.bytes": (AlterConfigOp.APPEND, "5")},
                    {"cleanup.policy": (AlterConfigOp.SUBTRACT, "delete")}, {"cleanup.policy": "compact"}):
        outcome = kp_alter(broker, topic, configs)
        assert "InvalidConfigurationError" in outcome, (configs, outcome)
    outcome = kp_alter(broker, topic, {"retention.ms": "1"}, validate_only=True)
    assert outcome == "OK"
    assert kp_effective(broker, topic) == kp_expected(overrides)

    # non-incremental AlterConfigs: kafka-python first copies the other modified settings
    # into the request (AlterConfigs replaces them all otherwise) ...
    assert kp_alter(broker, topic, {"retention.ms": "5555"}, incremental=False) == "OK"
    overrides["retention.ms"] = "5555"
    assert kp_effective(broker, topic) == kp_expected(overrides)
    # ... and reset_configs without IncrementalAlterConfigs relies on the broker replacing
    # the set: the reset key is simply left out of it
    with kp(broker) as a:
        res = a.reset_configs([KConfigResource(KConfigResourceType.TOPIC, topic, ["segment.ms"])],
                              incremental=False)
    assert res["topic"][topic] == "OK", res
    del overrides["segment.ms"]
    assert kp_effective(broker, topic) == kp_expected(overrides)
    # and through IncrementalAlterConfigs DELETE
    with kp(broker) as a:
        res = a.reset_configs([KConfigResource(KConfigResourceType.TOPIC, topic, ["retention.bytes"])])
    assert res["topic"][topic] == "OK", res
    del overrides["retention.bytes"]
    assert kp_effective(broker, topic) == kp_expected(overrides)
    with kp(broker) as a:  # everything (configs=None trips a TypeError in kafka-python 3.0.12)
        res = a.reset_configs([KConfigResource(KConfigResourceType.TOPIC, topic, {})])
    assert res["topic"][topic] == "OK", res
    assert kp_effective(broker, topic) == kp_expected({})

    # broker resources are static
    with kp(broker) as a:
        res = a.alter_configs([KConfigResource(KConfigResourceType.BROKER, "0", {"log.retention.ms": "1000"})],
                              raise_on_unknown=False)
    assert "InvalidConfigurationError" in res["broker"]["0"], res


def test_lower_retention_ms_deletes_old_data_without_restart(broker_factory):
    broker = broker_factory(env=FAST_RETENTION)
    topic = unique("ret-ms-alter")
    ck_create(broker, topic, 2)
    old_ts = now_ms() - HOUR_MS
    ck_produce(broker, topic, [(i % 2, b"old-%d" % i, old_ts + i) for i in range(200)])
    # the default retention (7 days) keeps hour-old data through several retention passes
    time.sleep(1.5)
    assert [ck_watermarks(broker, topic, p) for p in (0, 1)] == [(0, 100), (0, 100)]

    assert ck_incremental(broker, topic, [("retention.ms", AlterConfigOpType.SET, "60000")]).result(timeout=30) is None
    wait_until(lambda: [ck_watermarks(broker, topic, p) for p in (0, 1)] == [(100, 100), (100, 100)], 15,
               "the hour-old data to be deleted after retention.ms was lowered to 60 s")
    # ListOffsets earliest says the same
    a = ck_admin(broker)
    res = a.list_offsets({TopicPartition(topic, p): OffsetSpec.earliest() for p in (0, 1)})
    assert {tp.partition: f.result(timeout=30).offset for tp, f in res.items()} == {0: 100, 1: 100}

    # fresh data is within the new retention and stays
    ck_produce(broker, topic, [(p, b"fresh", None) for p in (0, 1)])
    time.sleep(1.5)
    assert [ck_watermarks(broker, topic, p) for p in (0, 1)] == [(100, 101), (100, 101)]
    assert [m.value() for m in ck_read(broker, topic, 0, OFFSET_BEGINNING, 101)] == [b"fresh"]


def test_lower_retention_bytes_deletes_segments_without_restart(broker_factory):
    broker = broker_factory(env=FAST_RETENTION)
    topic = unique("ret-bytes-alter")
    kp_create(broker, topic, 1, {"segment.bytes": "2048"})
    value = b"r" * 200
    for chunk in range(10):  # 10 produce calls, several batches and segments
        kp_produce(broker, topic, [(0, value, None)] * 10, linger_ms=0)
    end = 100
    time.sleep(1.5)
    assert kp_offsets(broker, topic, 0, KOffsetSpec.EARLIEST) == 0
    with kp(broker) as a:
        before = a.describe_log_dirs({topic: [0]})[0]["log_dirs"][0]["topics"][0]["partitions"][0]["partition_size"]
    assert before > 100 * 200, before

    assert kp_alter(broker, topic, {"retention.bytes": "4096"}) == "OK"
    low = wait_until(lambda: kp_offsets(broker, topic, 0, KOffsetSpec.EARLIEST) or None, 15,
                     "the log start offset to move after retention.bytes was lowered")
    assert 0 < low < end
    assert kp_offsets(broker, topic, 0, KOffsetSpec.LATEST) == end
    # what is left is near retention.bytes (plus the active segment)
    wait_until(lambda: broker.partition_dir_size(topic, 0) < 4096 + 2 * 2048 + 2048, 15,
               "the partition to shrink")
    got = kp_read_from_beginning(broker, topic, 0, end)
    low = kp_offsets(broker, topic, 0, KOffsetSpec.EARLIEST)
    assert [r.offset for r in got] == list(range(low, end))


# ============================================================================================
# DeleteRecords
# ============================================================================================


def test_delete_records_confluent(broker):
    topic = unique("dr-ck")
    ck_create(broker, topic, 2)
    ck_produce(broker, topic, [(i % 2, b"v%d" % i, None) for i in range(100)], **{"linger.ms": 0})
    a = ck_admin(broker)

    res = a.delete_records([TopicPartition(topic, 0, 20)])
    ((tp, fut),) = res.items()
    assert fut.result(timeout=30).low_watermark == 20
    assert ck_watermarks(broker, topic, 0) == (20, 50)
    assert ck_watermarks(broker, topic, 1) == (0, 50)
    lo = a.list_offsets({TopicPartition(topic, 0): OffsetSpec.earliest()})
    assert [f.result(timeout=30).offset for f in lo.values()] == [20]
    # consuming from the beginning starts at the new low watermark
    got = ck_read(broker, topic, 0, OFFSET_BEGINNING, 50)
    assert [m.offset() for m in got] == list(range(20, 50))
    assert got[0].value() == b"v40"  # message 40 was the 21st of partition 0

    # below the current start: nothing moves, the answer is the current start
    (fut,) = a.delete_records([TopicPartition(topic, 0, 5)]).values()
    assert fut.result(timeout=30).low_watermark == 20
    # OFFSET_END (-1): up to the high watermark
    (fut,) = a.delete_records([TopicPartition(topic, 1, OFFSET_END)]).values()
    assert fut.result(timeout=30).low_watermark == 50
    assert ck_watermarks(broker, topic, 1) == (50, 50)
    # beyond the high watermark
    (fut,) = a.delete_records([TopicPartition(topic, 0, 51)]).values()
    assert ck_error(fut).code() == KafkaError.OFFSET_OUT_OF_RANGE
    assert ck_watermarks(broker, topic, 0) == (20, 50)

    # fetching below the start is out of range
    c = assign_consumer(broker)
    try:
        c.assign([TopicPartition(topic, 0, 10)])
        err = None
        deadline = time.monotonic() + 15
        while err is None:
            assert time.monotonic() < deadline, "no error for a fetch below the log start"
            for m in c.consume(10, timeout=0.2):
                assert m.error() is not None, f"got a deleted message at offset {m.offset()}"
                if m.error().code() != KafkaError._PARTITION_EOF:
                    err = m.error()
        assert err.code() == KafkaError._AUTO_OFFSET_RESET, err
    finally:
        c.close()

    # the new start survives a restart; new data goes on after the old end
    broker.stop()
    broker.restart()
    assert ck_watermarks(broker, topic, 0) == (20, 50)
    assert ck_watermarks(broker, topic, 1) == (50, 50)
    assert ck_produce(broker, topic, [(1, b"after", None)]) == [(1, 50)]
    assert [m.value() for m in ck_read(broker, topic, 1, OFFSET_BEGINNING, 51)] == [b"after"]


def test_delete_records_kafka_python(broker):
    topic = unique("dr-kp")
    kp_create(broker, topic, 1)
    kp_produce(broker, topic, [(0, b"v%d" % i, None) for i in range(40)])
    tp = KTP(topic, 0)
    with kp(broker) as a:
        res = a.delete_records({tp: 15})
        assert res[tp]["low_watermark"] == 15 and res[tp]["error_code"] == 0, res
        assert a.list_partition_offsets({tp: KOffsetSpec.EARLIEST})[tp].offset == 15
        assert a.list_partition_offsets({tp: KOffsetSpec.LATEST})[tp].offset == 40
        with pytest.raises(KpErrors.OffsetOutOfRangeError):
            a.delete_records({tp: 41})
        # an unknown partition, asked of the broker directly (kafka-python would refuse it
        # from its metadata)
        with pytest.raises(KpErrors.UnknownTopicOrPartitionError):
            a.delete_records({KTP(topic, 9): 1}, partition_leader_id=0)
        res = a.delete_records({tp: 3})
        assert res[tp]["low_watermark"] == 15, res
        res = a.delete_records({tp: 40})  # everything
        assert res[tp]["low_watermark"] == 40, res
        assert a.list_partition_offsets({tp: KOffsetSpec.EARLIEST})[tp].offset == 40
    # (the consumer check on the deleted range is done with confluent-kafka above); new data
    kp_produce(broker, topic, [(0, b"new", None)])
    got = kp_read_from_beginning(broker, topic, 0, 41)
    assert [(r.offset, r.value) for r in got] == [(40, b"new")]


# ============================================================================================
# DescribeCluster
# ============================================================================================


def test_describe_cluster_both_clients(broker):
    log_ids = re.findall(r"cluster_id=(\S+)", broker.log_text())
    assert log_ids, "the broker log names no cluster id"
    cluster_id = log_ids[-1]

    def check(when: str):
        r = ck_admin(broker).describe_cluster(request_timeout=30).result(timeout=30)
        assert r.cluster_id == cluster_id, (when, r.cluster_id)
        assert r.controller is not None and r.controller.id == 0, (when, r.controller)
        assert [(n.id, n.host, n.port) for n in r.nodes] == [(0, "127.0.0.1", broker.kafka_port)], when
        assert ck_admin(broker).list_topics(timeout=10).cluster_id == cluster_id
        with kp(broker) as a:
            d = a.describe_cluster()
        assert d["cluster_id"] == cluster_id and d["controller_id"] == 0, (when, d)
        assert [(b["broker_id"], b["host"], b["port"], b["rack"]) for b in d["brokers"]] == [
            (0, "127.0.0.1", broker.kafka_port, None)
        ], (when, d)

    check("at start")
    broker.stop()
    broker.restart()
    check("after a restart")
    broker.kill()
    broker.restart()
    check("after kill -9")
    assert re.findall(r"cluster_id=(\S+)", broker.log_text()) == [cluster_id] * 3


# ============================================================================================
# Consumer groups: list / describe / delete / committed offsets
# ============================================================================================


def make_group_confluent(broker, topic: str, group: str, count: int) -> Consumer:
    """A subscribing consumer that has read `count` messages and committed; left open."""
    c = Consumer({
        "bootstrap.servers": broker.bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 10000,
    })
    c.subscribe([topic])
    n = 0
    deadline = time.monotonic() + 30
    while n < count:
        assert time.monotonic() < deadline, f"the group consumer read {n} of {count}"
        for m in c.consume(200, timeout=0.5):
            assert m.error() is None, m.error()
            n += 1
    committed = c.commit(asynchronous=False)
    assert all(tp.error is None for tp in committed), committed
    return c


def test_groups_confluent(broker_factory):
    broker = broker_factory(env=FAST_GROUPS)
    topic = unique("grp-ck")
    ck_create(broker, topic, 2)
    ck_produce(broker, topic, [(i % 2, b"m%d" % i, None) for i in range(60)])
    group = unique("g-ck")
    c = make_group_confluent(broker, topic, group, 60)
    try:
        # an active member: Stable, and it cannot be deleted
        r = ck_admin(broker).list_consumer_groups(request_timeout=30).result(timeout=30)
        assert not r.errors, r.errors
        listed = {g.group_id: g for g in r.valid}
        assert group in listed, list(listed)
        assert listed[group].state == ConsumerGroupState.STABLE
        assert listed[group].is_simple_consumer_group is False
        d = ck_admin(broker).describe_consumer_groups([group])[group].result(timeout=30)
        assert (d.state, d.is_simple_consumer_group, d.partition_assignor) == (
            ConsumerGroupState.STABLE, False, "range"), (d.state, d.partition_assignor)
        assert len(d.members) == 1
        assert sorted(tp.partition for tp in d.members[0].assignment.topic_partitions) == [0, 1]
        assert d.coordinator.id == 0
        err = ck_error(ck_admin(broker).delete_consumer_groups([group])[group])
        assert err.code() == KafkaError.NON_EMPTY_GROUP, err
    finally:
        c.close()

    # members gone, offsets kept: Empty, without members
    r = ck_admin(broker).list_consumer_groups(request_timeout=30).result(timeout=30)
    listed = {g.group_id: g for g in r.valid}
    assert group in listed and listed[group].state == ConsumerGroupState.EMPTY, listed.get(group)
    r = ck_admin(broker).list_consumer_groups(states={ConsumerGroupState.STABLE}, request_timeout=30).result(timeout=30)
    assert group not in {g.group_id for g in r.valid}, "the state filter let an Empty group through"
    d = ck_admin(broker).describe_consumer_groups([group])[group].result(timeout=30)
    assert d.state == ConsumerGroupState.EMPTY and d.members == [], (d.state, d.members)
    off = ck_admin(broker).list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(timeout=30)
    assert sorted((tp.topic, tp.partition, tp.offset) for tp in off.topic_partitions) == [
        (topic, 0, 30), (topic, 1, 30)
    ]

    # ... also after a restart (new clients: see the module docstring)
    broker.stop()
    broker.restart()
    r = ck_admin(broker).list_consumer_groups(request_timeout=30).result(timeout=30)
    assert {g.group_id: g.state for g in r.valid}.get(group) == ConsumerGroupState.EMPTY
    off = ck_admin(broker).list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(timeout=30)
    assert sorted((tp.partition, tp.offset) for tp in off.topic_partitions) == [(0, 30), (1, 30)]

    # delete: works once, then GROUP_ID_NOT_FOUND; the offsets are gone
    assert ck_admin(broker).delete_consumer_groups([group])[group].result(timeout=30) is None
    err = ck_error(ck_admin(broker).delete_consumer_groups([group])[group])
    assert err.code() == KafkaError.GROUP_ID_NOT_FOUND, err
    r = ck_admin(broker).list_consumer_groups(request_timeout=30).result(timeout=30)
    assert group not in {g.group_id for g in r.valid}
    off = ck_admin(broker).list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(timeout=30)
    assert off.topic_partitions == [], off.topic_partitions
    # a new consumer of the deleted group starts from auto.offset.reset, not the old commit
    c = assign_consumer(broker, **{"group.id": group, "auto.offset.reset": "earliest"})
    try:
        committed = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
        assert [tp.offset for tp in committed] == [-1001, -1001], committed
    finally:
        c.close()


def test_groups_kafka_python(broker_factory):
    broker = broker_factory(env=FAST_GROUPS)
    topic = unique("grp-kp")
    kp_create(broker, topic, 2)
    kp_produce(broker, topic, [(i % 2, b"m%d" % i, None) for i in range(40)])
    group = unique("g-kp")
    c = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=group,
                      auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        n = 0
        deadline = time.monotonic() + 30
        while n < 40:
            assert time.monotonic() < deadline, f"read {n} of 40"
            n += sum(len(v) for v in c.poll(timeout_ms=500).values())
        c.commit()
        with kp(broker) as a:
            listed = {g["group_id"]: g for g in a.list_groups()}
            assert listed[group]["group_state"] == "Stable" and listed[group]["protocol_type"] == "consumer", listed[group]
            d = a.describe_groups([group])[group]
            assert (d["group_state"], d["protocol_type"], d["protocol_data"], d["error"]) == (
                "Stable", "consumer", "range", None), d
            assert len(d["members"]) == 1
            assert a.delete_groups([group]) == {group: "NonEmptyGroupError"}
            # committed offsets while the member is there
            offs = a.list_group_offsets(group)[group]
            assert {tp.partition: o.offset for tp, o in offs.items()} == {0: 20, 1: 20}
            # OffsetDelete: not for a topic a member is subscribed to
            res = a.delete_group_offsets(group, [KTP(topic, 0)])
            assert res == {KTP(topic, 0): KpErrors.GroupSubscribedToTopicError}, res
            with pytest.raises(KpErrors.GroupIdNotFoundError):
                a.delete_group_offsets(unique("g-none"), [KTP(topic, 0)])
    finally:
        c.close()

    with kp(broker) as a:
        listed = {g["group_id"]: g for g in a.list_groups()}
        assert listed[group]["group_state"] == "Empty", listed[group]
        assert group in {g["group_id"] for g in a.list_groups(states_filter=["Empty"])}
        assert group not in {g["group_id"] for g in a.list_groups(states_filter=["Stable"])}
        d = a.describe_groups([group])[group]
        assert (d["group_state"], d["members"], d["error"]) == ("Empty", [], None), d
        offs = a.list_group_offsets(group)[group]
        assert {(tp.topic, tp.partition): o.offset for tp, o in offs.items()} == {(topic, 0): 20, (topic, 1): 20}
        # the admin client can move the committed offsets of an empty group
        res = a.alter_group_offsets(group, {KTP(topic, 0): OffsetAndMetadata(5, "", -1)})
        assert res == {KTP(topic, 0): KpErrors.NoError}, res
        offs = a.list_group_offsets(group)[group]
        assert {tp.partition: o.offset for tp, o in offs.items()} == {0: 5, 1: 20}
        # with no member subscribed, OffsetDelete removes just the partitions it names
        res = a.delete_group_offsets(group, [KTP(topic, 0), KTP("no-such-topic", 0)])
        assert res == {
            KTP(topic, 0): KpErrors.NoError,
            KTP("no-such-topic", 0): KpErrors.UnknownTopicOrPartitionError,
        }, res
        offs = a.list_group_offsets(group)[group]
        assert {tp.partition: o.offset for tp, o in offs.items()} == {1: 20}

        assert a.delete_groups([group]) == {group: "OK"}
        assert a.delete_groups([group]) == {group: "GroupIdNotFoundError"}
        assert group not in {g["group_id"] for g in a.list_groups()}
        d = a.describe_groups([group])[group]
        assert d["group_state"] == "Dead" and d["members"] == [], d
        assert "GroupIdNotFound" in (d["error"] or ""), d
        assert a.list_group_offsets(group)[group] == {}


def test_empty_group_keeps_its_protocol_type(broker_factory):
    """In Kafka a classic group whose last member left stays a "consumer" group (Empty,
    protocol type "consumer", no protocol), also across a restart: the group metadata
    record keeps the protocol type. librdkafka derives is_simple_consumer_group from an
    empty protocol type."""
    broker = broker_factory(env=FAST_GROUPS)
    topic = unique("grp-pt")
    ck_create(broker, topic, 1)
    ck_produce(broker, topic, [(0, b"x", None)] * 5)
    group = unique("g-pt")
    make_group_confluent(broker, topic, group, 5).close()

    def check(when: str):
        with kp(broker) as a:
            listed = {g["group_id"]: g for g in a.list_groups()}
            d = a.describe_groups([group])[group]
        assert (listed[group]["group_state"], listed[group]["protocol_type"]) == ("Empty", "consumer"), (
            when, listed[group])
        assert (d["group_state"], d["protocol_type"], d["protocol_data"], d["members"]) == (
            "Empty", "consumer", "", []), (when, d)
        r = ck_admin(broker).list_consumer_groups(request_timeout=30).result(timeout=30)
        (g,) = [g for g in r.valid if g.group_id == group]
        assert g.is_simple_consumer_group is False, (when, "listed as a simple consumer group")

    check("after the member left")
    broker.stop()
    broker.restart()
    check("after a restart")


# ============================================================================================
# DescribeLogDirs (kafka-python; confluent-kafka 2.16 has no binding)
# ============================================================================================


def test_describe_log_dirs_kafka_python(broker):
    topic = unique("logdirs")
    kp_create(broker, topic, 3)
    kp_produce(broker, topic, [(0, b"a" * 100, None)] * 30 + [(1, b"b" * 10, None)] * 3)
    with kp(broker) as a:
        res = a.describe_log_dirs()
        only = a.describe_log_dirs({topic: [1]})
    ((entry,),) = [[r for r in res if r["broker"] == 0]]
    (log_dir,) = entry["log_dirs"]
    assert log_dir["error_code"] == 0
    assert log_dir["log_dir"].startswith(str(broker.data_dir)), log_dir["log_dir"]
    assert log_dir["total_bytes"] > 0 and 0 < log_dir["usable_bytes"] <= log_dir["total_bytes"], log_dir
    (t,) = [t for t in log_dir["topics"] if t["name"] == topic]
    sizes = {p["partition_index"]: p["partition_size"] for p in t["partitions"]}
    assert set(sizes) == {0, 1, 2}, sizes
    assert sizes[0] > 3000 and sizes[1] > 30 and sizes[0] > sizes[1], sizes
    assert sizes[2] == 0, sizes
    # the size is that of the partition's segment files
    for p in (0, 1, 2):
        on_disk = sum(sum(file_sizes(d, "*.log").values()) for d in partition_dirs(broker.data_dir, topic, p))
        assert sizes[p] == on_disk, (p, sizes[p], on_disk)
    # asking for one partition gives just that one
    ((only_dir,),) = [e["log_dirs"] for e in only]
    assert [(t["name"], [(p["partition_index"], p["partition_size"]) for p in t["partitions"]])
            for t in only_dir["topics"]] == [(topic, [(1, sizes[1])])]
