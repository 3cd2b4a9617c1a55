"""Transactional produce beside plain idempotent produce, with confluent-kafka
(librdkafka) against a running broker; called by scripts/bench-txn.sh, which starts the
broker and says what the modes are. Prints one line per mode: messages/s, MB/s, and for
transactional modes the number of transactions and the p50/p99 of commit_transaction."""

from __future__ import annotations

import sys
import time
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, messages, size, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
PARTITIONS = 4

topic = f"bench-txn-{mode}-{uuid.uuid4().hex[:8]}"
admin = AdminClient({"bootstrap.servers": bootstrap})
admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)

conf = {
    "bootstrap.servers": bootstrap,
    "enable.idempotence": True,
    "linger.ms": 5,
    "acks": "all",
    # Room for the whole run, so that no mode is held back by a full local queue.
    "queue.buffering.max.messages": messages,
    "queue.buffering.max.kbytes": 2**21,
}
if mode != "idempotent":
    conf["transactional.id"] = topic
producer = Producer(conf)
value = b"x" * size
commits: list[float] = []


def commit() -> None:
    t = time.perf_counter()
    producer.commit_transaction(60)
    commits.append(time.perf_counter() - t)


def produce(i: int) -> None:
    while True:
        try:
            producer.produce(topic, value=value, partition=i % PARTITIONS)
            return
        except BufferError:  # the local queue is full (more than 2 GiB outstanding)
            producer.poll(0.01)


if mode == "idempotent":
    start = time.perf_counter()
    for i in range(messages):
        produce(i)
    assert producer.flush(120) == 0, "records left unacknowledged"
elif mode == "txn-1000":
    producer.init_transactions(30)
    start = time.perf_counter()
    for i in range(messages):
        if i % 1000 == 0:
            if i:
                commit()
            producer.begin_transaction()
        produce(i)
    commit()
elif mode == "txn-100ms":
    producer.init_transactions(30)
    start = time.perf_counter()
    producer.begin_transaction()
    due = start + 0.1
    for i in range(messages):
        if time.perf_counter() >= due:
            commit()
            producer.begin_transaction()
            due = time.perf_counter() + 0.1
        produce(i)
    commit()
else:
    sys.exit(f"unknown mode {mode}")
elapsed = time.perf_counter() - start
line = f"{mode:<11} {messages / elapsed:>9,.0f} msg/s  {messages * size / elapsed / 1e6:>7.1f} MB/s"
if commits:
    c = sorted(commits)
    pct = lambda q: c[round((len(c) - 1) * q)] * 1000
    line += f"  {len(c)} transactions, commit p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms"
print(line, flush=True)
admin.delete_topics([topic])[topic].result(30)
