"""Kafka's topic and broker settings as tools send them: every name Kafka has is
honoured, accepted with a logged warning, or refused with a reason (see
crates/strata-broker/kafka-configs.tsv). Checked with confluent-kafka, kafka-python and
a config file ported from Kafka's server.properties."""

from __future__ import annotations

import struct
import subprocess
import time

import pytest
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, KafkaError
from confluent_kafka.admin import NewTopic

from strata_helpers import now_ms, partition_dirs, unique
from test_confluent_kafka import (
    admin,
    consume_all,
    create_error,
    create_topic,
    describe_topic,
    producer,
)

CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


def stored_codecs(broker, topic: str, partition: int = 0) -> list[str]:
    """The codec of every batch in the partition's segment files, read from the files."""
    (d,) = partition_dirs(broker.data_dir, topic, partition)
    codecs = []
    for f in sorted(d.glob("*.log")):
        data = f.read_bytes()
        pos = 0
        while pos + 61 <= len(data):
            (length,) = struct.unpack_from(">i", data, pos + 8)
            (attributes,) = struct.unpack_from(">h", data, pos + 21)
            codecs.append(CODECS[attributes & 7])
            pos += 12 + length
    return codecs


def produce(broker, topic: str, values: list[bytes], **conf) -> list:
    """Produces `values` to partition 0; returns the delivery errors (None for success)."""
    p = producer(broker, acks="all", **conf)
    results = []
    for v in values:
        p.produce(topic, v, key=v[:4], partition=0, on_delivery=lambda err, m: results.append(err))
    assert p.flush(30) == 0
    return results


@pytest.mark.parametrize("topic_codec,producer_codec", [
    ("gzip", "none"), ("zstd", "lz4"), ("snappy", "zstd"), ("lz4", "gzip"), ("uncompressed", "snappy"),
])
def test_compression_type_recompresses_what_producers_send(broker, topic_codec, producer_codec):
    """A topic whose compression.type names a codec stores every batch in it, whatever
    the producer used; consumers get every record back intact."""
    topic = unique("codec")
    create_topic(broker, topic, 1, {"compression.type": topic_codec, "compression.zstd.level": "5"})
    values = [b"%06d-" % i + b"x" * (i % 300) for i in range(500)]
    assert produce(broker, topic, values, **{"compression.type": producer_codec, "linger.ms": 20}) == [None] * 500
    got = consume_all(broker, topic, {0: len(values)})
    assert [m.value() for m in got[0]] == values
    assert [m.key() for m in got[0]] == [v[:4] for v in values]
    want = "none" if topic_codec == "uncompressed" else topic_codec
    codecs = stored_codecs(broker, topic)
    assert codecs and set(codecs) == {want}, codecs


def test_compression_type_producer_keeps_the_producers_codec(broker):
    topic = unique("keep")
    create_topic(broker, topic, 1)
    assert describe_topic(broker, topic)["compression.type"].value == "producer"
    produce(broker, topic, [b"a" * 100] * 20, **{"compression.type": "lz4"})
    assert set(stored_codecs(broker, topic)) == {"lz4"}


def test_log_append_time_stamps_records_with_the_brokers_clock(broker):
    topic = unique("lat")
    create_topic(broker, topic, 1, {"message.timestamp.type": "LogAppendTime"})
    before = now_ms()
    p = producer(broker, acks="all")
    reports = []
    p.produce(topic, b"old", partition=0, timestamp=1_000_000, on_delivery=lambda e, m: reports.append((e, m)))
    assert p.flush(30) == 0
    after = now_ms()
    (err, m), = reports
    assert err is None, err
    got = consume_all(broker, topic, {0: 1})[0]
    kind, ts = got[0].timestamp()
    assert kind == TIMESTAMP_LOG_APPEND_TIME, kind
    assert before - 1000 <= ts <= after + 1000, (before, ts, after)


def test_timestamps_too_far_ahead_or_behind_are_refused(broker):
    """Kafka 4's defaults: at most an hour ahead of the broker's clock; before.max.ms
    bounds the past when set."""
    topic = unique("ts")
    create_topic(broker, topic, 1, {"message.timestamp.before.max.ms": str(24 * 3600 * 1000)})
    p = producer(broker, acks="all", retries=0)
    results = []
    for ts in (now_ms() + 2 * 3600 * 1000, now_ms() - 2 * 24 * 3600 * 1000, now_ms()):
        p.produce(topic, b"v", partition=0, timestamp=ts, on_delivery=lambda e, m: results.append(e))
        assert p.flush(30) == 0
    ahead, behind, fine = results
    assert ahead is not None and ahead.code() == KafkaError.INVALID_TIMESTAMP, ahead
    assert behind is not None and behind.code() == KafkaError.INVALID_TIMESTAMP, behind
    assert fine is None, fine
    assert len(consume_all(broker, topic, {0: 1})[0]) == 1


def test_settings_without_meaning_here_are_accepted_logged_and_shown(broker):
    """What admin tools, Terraform providers and MirrorMaker send (message.format.version,
    flush.ms, segment.jitter.ms) is accepted, logged with its reason, and read back."""
    topic = unique("ign")
    create_topic(broker, topic, 1, {"message.format.version": "2.8-IV1", "flush.ms": "1000",
                                    "segment.jitter.ms": "10"})
    entries = describe_topic(broker, topic)
    assert entries["message.format.version"].value == "2.8-IV1"
    assert entries["flush.ms"].value == "1000"
    log = broker.log_text()
    assert "topic setting accepted but has no effect" in log and "message.format.version" in log
    # A name Kafka does not have is still refused, with a suggestion.
    err = create_error(broker, NewTopic(unique("bad"), 1, 1, config={"retention.msx": "1"}))
    assert err.code() == KafkaError.INVALID_CONFIG and "retention.ms" in err.str(), err


def test_kafka_python_creates_topics_with_kafka_settings(broker):
    from kafka.admin import KafkaAdminClient, NewTopic as KNewTopic

    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        name = unique("kp")
        a.create_topics([KNewTopic(name, 1, 1, topic_configs={
            "compression.type": "gzip", "message.format.version": "3.0", "cleanup.policy": "delete"})])
        produce(broker, name, [b"hello"] * 10)
        assert set(stored_codecs(broker, name)) == {"gzip"}
    finally:
        a.close()


def test_remote_log_copy_disable_stops_uploads(broker_factory):
    broker = broker_factory(env={"STRATA_KAFKA_LOG_RETENTION_CHECK_INTERVAL_MS": "500"})
    topic = unique("nocopy")
    create_topic(broker, topic, 1, {"segment.bytes": "4096", "remote.log.copy.disable": "true"})
    produce(broker, topic, [b"x" * 500] * 100)
    time.sleep(3)  # several uploader ticks
    code, body = broker.http_get(f"/api/v1/partitions/{topic}/0/remote-segments")
    assert code == 200 and body.strip() == "[]", body


def test_delete_topic_enable_false_refuses_deletion(broker_factory):
    broker = broker_factory(env={"STRATA_KAFKA_DELETE_TOPIC_ENABLE": "false"})
    topic = unique("keep")
    create_topic(broker, topic, 1)
    a = admin(broker)  # the futures need their client alive
    fut = a.delete_topics([topic], operation_timeout=10)[topic]
    with pytest.raises(Exception) as e:
        fut.result(timeout=30)
    assert e.value.args[0].code() == KafkaError.TOPIC_DELETION_DISABLED, e.value
    assert topic in a.list_topics(timeout=10).topics


def test_a_server_properties_ported_from_kafka_starts(broker_factory, tmp_path):
    """The settings of Kafka's own config/server.properties, as a [kafka] table: the
    broker starts, honours what it implements (log.retention.hours), warns about the
    rest; a ZooKeeper setting is refused with its reason."""
    cfg = tmp_path / "ported.toml"
    cfg.write_text("""
[kafka]
"num.network.threads" = 3
"num.io.threads" = 8
"socket.send.buffer.bytes" = 102400
"socket.receive.buffer.bytes" = 102400
"socket.request.max.bytes" = 104857600
"num.partitions" = 2
"num.recovery.threads.per.data.dir" = 1
"offsets.topic.replication.factor" = 1
"transaction.state.log.replication.factor" = 1
"transaction.state.log.min.isr" = 1
"log.retention.hours" = 1
"log.segment.bytes" = 1073741824
"log.retention.check.interval.ms" = 300000
"group.initial.rebalance.delay.ms" = 0
""")
    broker = broker_factory(env={"STRATA_CONFIG": str(cfg)})
    from confluent_kafka.admin import ConfigResource, ResourceType

    res = ConfigResource(ResourceType.BROKER, "0")
    a = admin(broker)
    entries = a.describe_configs([res])[res].result(timeout=30)
    assert entries["log.retention.ms"].value == "3600000"
    assert entries["num.partitions"].value == "2"
    log = broker.log_text()
    for name in ("num.network.threads", "transaction.state.log.replication.factor"):
        assert f"config={name}" in log or name in log, name
    assert "Kafka setting accepted but has no effect" in log

    zk = tmp_path / "zk.toml"
    zk.write_text('[kafka]\n"zookeeper.connect" = "zk:2181"\n')
    r = subprocess.run([str(broker.binary), "serve", "--config", str(zk), "--data-dir", str(tmp_path / "zk")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "zookeeper.connect" in r.stderr and "ZooKeeper" in r.stderr and str(zk) in r.stderr, r.stderr
