"""Kafka rules a broker enforces beyond plain produce/consume, checked with confluent-kafka.

(Kept in their own file, after the per-client files, so a `-x` run exercises every
client before stopping here.)
"""

from __future__ import annotations

from confluent_kafka import KafkaError
from confluent_kafka.admin import NewTopic

from strata_helpers import unique
from test_confluent_kafka import (
    consume_all,
    create_error,
    create_topic,
    describe_topic,
    producer,
    topic_names,
)


def test_topic_names_colliding_on_dot_and_underscore_are_refused(broker):
    """Kafka refuses a topic whose name differs from an existing one only by '.' vs '_'
    (their metric names would collide): INVALID_TOPIC_EXCEPTION."""
    stem = unique("coll")
    create_topic(broker, f"{stem}_x", 1)
    err = create_error(broker, NewTopic(f"{stem}.x", 1, 1))
    assert err.code() == KafkaError.TOPIC_EXCEPTION, err
    assert f"{stem}.x" not in topic_names(broker)


def test_min_insync_replicas_above_isr_refuses_acks_all(broker):
    """min.insync.replicas=2 on a single-replica topic: Kafka refuses acks=all writes with
    NOT_ENOUGH_REPLICAS (the ISR has 1 member) and still takes acks=1 writes."""
    topic = unique("minisr")
    create_topic(broker, topic, 1, {"min.insync.replicas": "2"})
    assert describe_topic(broker, topic)["min.insync.replicas"].value == "2"
    results = []
    p = producer(broker, acks="all", **{"retries": 0, "message.timeout.ms": 10000})
    p.produce(topic, b"all", partition=0, on_delivery=lambda err, m: results.append(err))
    assert p.flush(30) == 0
    p1 = producer(broker, acks="1")
    p1.produce(topic, b"one", partition=0, on_delivery=lambda err, m: results.append(err))
    assert p1.flush(30) == 0
    all_err, one_err = results
    assert one_err is None, one_err
    assert all_err is not None and all_err.code() == KafkaError.NOT_ENOUGH_REPLICAS, (
        f"acks=all with min.insync.replicas=2 > ISR size 1: got {all_err}"
    )
    got = consume_all(broker, topic, {0: 1})
    assert [m.value() for m in got[0]] == [b"one"]
