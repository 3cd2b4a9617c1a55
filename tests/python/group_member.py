"""One consumer-group member in its own process, driven by the group tests.

Run as `python group_member.py '<json config>'`. The member subscribes to one topic with
confluent-kafka or kafka-python and reports everything it does on stdout, one JSON
object per line (`ev` names the event):

    started    {client, name, pid}
    assigned   {parts, owned, protocol}   parts: what this callback added; owned: after it
    revoked    {parts, owned, protocol}
    assignment {owned}                    (confluent-kafka) Consumer.assignment() changed
    lost       {parts, owned}             (confluent-kafka: assignment lost, not revoked)
    consumed   {recs: [[partition, offset, value], ...]}
    committed  {offsets: {partition: next offset}}   a commit the broker acknowledged
    commit_error {offsets, error}
    error      {error}                    a consumer error reported by the client
    nocommit   {}                         acknowledges the `nocommit` command
    closed     {}                         last line before a clean exit

Commands, one per line on stdin:
    nocommit  stop committing (what was consumed from then on stays uncommitted)
    close     commit what was consumed (unless `nocommit`), leave the group, exit 0

Offsets are committed synchronously after every batch (and, for partitions being
revoked, in the revocation callback): a message is committed before its partition can
move to another member, so only a member that dies may leave consumed but uncommitted
messages behind.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import time


def emit(ev: str, **fields) -> None:
    fields = {"ev": ev, "t": time.time(), **fields}
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def stdin_commands() -> "queue.Queue[str]":
    q: queue.Queue[str] = queue.Queue()

    def read():
        for line in sys.stdin:
            q.put(line.strip())
        q.put("eof")

    threading.Thread(target=read, daemon=True).start()
    return q


class Offsets:
    """What this member consumed and committed, per partition (next offset to read)."""

    def __init__(self):
        self.position: dict[int, int] = {}
        self.committed: dict[int, int] = {}
        self.enabled = True

    def consumed(self, partition: int, offset: int) -> None:
        self.position[partition] = offset + 1

    def pending(self, partitions) -> dict[int, int]:
        if not self.enabled:
            return {}
        return {
            p: self.position[p]
            for p in sorted(partitions)
            if p in self.position and self.position[p] > self.committed.get(p, -1)
        }

    def done(self, offsets: dict[int, int]) -> None:
        self.committed.update(offsets)
        emit("committed", offsets={str(p): o for p, o in offsets.items()})


def run_confluent(cfg: dict, commands: "queue.Queue[str]") -> None:
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    topic = cfg["topic"]
    conf = {
        "bootstrap.servers": cfg["bootstrap"],
        "group.id": cfg["group"],
        "client.id": cfg["name"],
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "partition.assignment.strategy": cfg["assignor"],
        "session.timeout.ms": cfg.get("session_timeout_ms", 6000),
        "heartbeat.interval.ms": cfg.get("heartbeat_interval_ms", 1000),
        "max.poll.interval.ms": cfg.get("max_poll_interval_ms", 30000),
        "fetch.wait.max.ms": 100,
    }
    if cfg.get("instance_id"):
        conf["group.instance.id"] = cfg["instance_id"]
    c = Consumer(conf)
    offsets = Offsets()
    owned: set[int] = set()

    def commit(partitions) -> None:
        todo = offsets.pending(partitions)
        if not todo:
            return
        try:
            res = c.commit(
                offsets=[TopicPartition(topic, p, o) for p, o in todo.items()],
                asynchronous=False,
            )
        except KafkaException as e:
            emit("commit_error", offsets={str(p): o for p, o in todo.items()}, error=str(e))
            return
        failed = [str(tp) for tp in res or [] if tp.error is not None]
        if failed:
            emit("commit_error", offsets={str(p): o for p, o in todo.items()}, error=failed)
            return
        offsets.done(todo)

    # librdkafka rebalances incrementally (KIP-429) with cooperative-sticky: the callbacks
    # then get only the partitions that move.
    proto = "COOPERATIVE" if cfg["assignor"] == "cooperative-sticky" else "EAGER"

    def on_assign(consumer, parts):
        new = {tp.partition for tp in parts}
        if proto == "COOPERATIVE":
            owned.update(new)
        else:
            owned.clear()
            owned.update(new)
        emit("assigned", parts=sorted(new), owned=sorted(owned), protocol=proto)

    def on_revoke(consumer, parts):
        gone = {tp.partition for tp in parts}
        commit(gone)
        owned.difference_update(gone)
        emit("revoked", parts=sorted(gone), owned=sorted(owned), protocol=proto)

    def on_lost(consumer, parts):
        gone = {tp.partition for tp in parts}
        owned.difference_update(gone)
        emit("lost", parts=sorted(gone), owned=sorted(owned))

    c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
    emit("started", client="confluent", name=cfg["name"], pid=os.getpid())
    reported: set[int] = set()
    while True:
        # The assignment as librdkafka has it (after the callbacks ran).
        current = {tp.partition for tp in c.assignment()}
        if current != reported:
            reported = current
            emit("assignment", owned=sorted(current))
        while not commands.empty():
            cmd = commands.get()
            if cmd == "nocommit":
                offsets.enabled = False
                emit("nocommit")
            elif cmd in ("close", "eof"):
                commit(owned)
                c.close()  # revokes (committing in on_revoke), leaves the group
                emit("closed")
                return
        # One message per poll(), each recorded before the next poll() can run a
        # rebalance callback: Consumer.consume(num_messages=N) may hand out messages it
        # collected before a revocation callback ran, which that callback could not
        # commit.
        recs = []
        m = c.poll(0.2)
        while m is not None:
            err = m.error()
            if err is None:
                offsets.consumed(m.partition(), m.offset())
                recs.append([m.partition(), m.offset(), (m.value() or b"").decode()])
            elif err.code() != KafkaError._PARTITION_EOF:
                emit("error", error=str(err))
            m = c.poll(0) if len(recs) < 200 else None
        if recs:
            emit("consumed", recs=recs)
            commit(owned)


def run_kafka_python(cfg: dict, commands: "queue.Queue[str]") -> None:
    from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
    from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
    from kafka.coordinator.assignors.range import RangePartitionAssignor
    from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
    from kafka.structs import OffsetAndMetadata

    # kafka-python logs through `logging`: to stderr, which a failing test shows.
    logging.basicConfig(level=getattr(logging, cfg.get("log_level", "INFO")), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    assignors = {
        "range": RangePartitionAssignor,
        "roundrobin": RoundRobinPartitionAssignor,
        "cooperative-sticky": CooperativeStickyAssignor,
    }
    # kafka-python 3 rebalances incrementally (KIP-429) when every assignor it is given
    # is cooperative: its listener then gets only the partitions that move.
    proto = "COOPERATIVE" if cfg["assignor"] == "cooperative-sticky" else "EAGER"
    topic = cfg["topic"]
    conf = dict(
        bootstrap_servers=cfg["bootstrap"],
        group_id=cfg["group"],
        client_id=cfg["name"],
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        partition_assignment_strategy=[assignors[a] for a in cfg["assignor"].split(",")],
        session_timeout_ms=cfg.get("session_timeout_ms", 6000),
        heartbeat_interval_ms=cfg.get("heartbeat_interval_ms", 1000),
        max_poll_interval_ms=cfg.get("max_poll_interval_ms", 30000),
        fetch_max_wait_ms=100,
    )
    if cfg.get("instance_id"):
        conf["group_instance_id"] = cfg["instance_id"]
    c = KafkaConsumer(**conf)
    offsets = Offsets()
    owned: set[int] = set()

    def commit(partitions) -> None:
        todo = offsets.pending(partitions)
        if not todo:
            return
        try:
            c.commit({TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in todo.items()})
        except Exception as e:  # kafka-python raises its KafkaError subclasses
            emit("commit_error", offsets={str(p): o for p, o in todo.items()}, error=repr(e))
            return
        offsets.done(todo)

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            gone = {tp.partition for tp in revoked}
            commit(gone)
            owned.difference_update(gone)
            emit("revoked", parts=sorted(gone), owned=sorted(owned), protocol=proto)

        def on_partitions_assigned(self, assigned):
            new = {tp.partition for tp in assigned}
            if proto == "EAGER":
                owned.clear()
            owned.update(new)
            emit("assigned", parts=sorted(new), owned=sorted(owned), protocol=proto)

    c.subscribe(topics=[topic], listener=Listener())
    # Have the topic's partitions in the metadata before the first poll() joins.
    # Otherwise a (static) leader that joins a stable group at once assigns from a
    # metadata snapshot without them, sees the metadata change right after, and rejoins;
    # and a leader's JoinGroup always makes the group rebalance (as in Kafka).
    wait_until = time.monotonic() + 30
    while not c.partitions_for_topic(topic):
        if time.monotonic() > wait_until:
            raise SystemExit(f"no metadata for {topic}")
        time.sleep(0.1)
    emit("started", client="kafka-python", name=cfg["name"], pid=os.getpid())
    while True:
        while not commands.empty():
            cmd = commands.get()
            if cmd == "nocommit":
                offsets.enabled = False
                emit("nocommit")
            elif cmd in ("close", "eof"):
                commit(owned)
                c.close(autocommit=False)  # leaves the group
                emit("closed")
                return
        recs = []
        for tp, records in c.poll(timeout_ms=200, max_records=500).items():
            for r in records:
                offsets.consumed(tp.partition, r.offset)
                recs.append([tp.partition, r.offset, (r.value or b"").decode()])
        if recs:
            emit("consumed", recs=recs)
            commit(owned)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    commands = stdin_commands()
    if cfg["client"] == "confluent":
        run_confluent(cfg, commands)
    elif cfg["client"] == "kafka-python":
        run_kafka_python(cfg, commands)
    else:
        raise SystemExit(f"unknown client {cfg['client']!r}")


if __name__ == "__main__":
    main()
