"""How long a partition takes to accept writes again when its leader goes away.

Run by scripts/bench-cluster.sh against the cluster scripts/cluster.sh started in DIR:

    .venv/bin/python scripts/failover_probe.py DIR kill|stop

It creates a topic of one partition (replication factor 3), keeps one acks=all
produce request in flight at a time, then kills (SIGKILL) or stops (SIGTERM, a
controlled shutdown) the partition's leader and reports the time from the signal to the
first acknowledgement of a record sent after it. The node is started again at the end.
Needs the Python clients of scripts/install-test-deps.sh.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

BOOTSTRAP = "127.0.0.1:19091,127.0.0.1:19092,127.0.0.1:19093"
SCRIPT = Path(__file__).resolve().parent / "cluster.sh"


def cluster_view() -> dict:
    for port in (19291, 19292, 19293):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/cluster", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            continue
    raise SystemExit("no node answers /api/v1/cluster")


def placement(topic: str) -> dict:
    return next(p for p in cluster_view()["partitions"] if p["topic"] == topic)


def main() -> None:
    directory, how = Path(sys.argv[1]), sys.argv[2]
    topic = f"failover-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    admin.create_topics([NewTopic(topic, 1, 3)])[topic].result(30)
    while len(placement(topic)["isr"]) < 3:
        time.sleep(0.1)
    producer = Producer({
        "bootstrap.servers": BOOTSTRAP,
        "acks": "all",
        "linger.ms": 0,
        "enable.idempotence": True,
        "socket.timeout.ms": 3000,
        "topic.metadata.refresh.interval.ms": 500,
        "retry.backoff.ms": 20,
        "retry.backoff.max.ms": 100,
        "reconnect.backoff.ms": 20,
        "reconnect.backoff.max.ms": 100,
    })
    acked: list[float] = []

    def send() -> float:
        sent = time.monotonic()
        producer.produce(topic, b"x" * 100, partition=0, on_delivery=lambda err, m: err or acked.append(sent))
        return sent

    for _ in range(200):
        send()
        producer.flush(10)
    leader = placement(topic)["leader"]
    pid = int((directory / f"node{leader}" / "pid").read_text())
    signalled = time.monotonic()
    os.kill(pid, signal.SIGKILL if how == "kill" else signal.SIGTERM)
    deadline = signalled + 60
    first = None
    while first is None and time.monotonic() < deadline:
        send()
        producer.poll(0.01)
        first = next((t for t in acked if t >= signalled), None)
    if first is None:
        raise SystemExit("no record was acknowledged within 60 s of losing the leader")
    # The acknowledgement callback runs on poll(); the record was sent at `first`, and
    # acknowledged no later than now.
    print(f"{how}: first acknowledged produce {time.monotonic() - signalled:.2f} s after the signal "
          f"(new leader {placement(topic)['leader']}, was {leader})")
    producer.flush(30)
    while True:
        try:
            os.kill(pid, 0)
            time.sleep(0.1)
        except ProcessLookupError:
            break
    subprocess.run(["bash", str(SCRIPT), "start", str(directory)], check=True, capture_output=True)


if __name__ == "__main__":
    main()
