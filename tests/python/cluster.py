"""A Strata cluster of real processes on loopback, with fault injection, and a checker
that proves no acknowledged record is lost or duplicated.

`Cluster` runs N `strata` processes, node i on its own address 127.0.0.(10+i) with its
own data directory, all on one object store. Every listener a peer or a client uses (the
metadata quorum's and the Kafka one) is reached through `netproxy.py`, so `cut(i)` can
cut node i off from the others (a network partition) while the test's clients, on
127.0.0.1, still reach everyone. Faults: `kill(i)` (SIGKILL), `pause(i)`/`resume(i)`
(SIGSTOP/SIGCONT: a long GC pause or a frozen VM), `stop(i)` (SIGTERM: a controlled
shutdown), `wipe(i)` (an empty data directory, as a replacement pod has).

`Workload` runs an idempotent acks=all producer and a consumer group on a topic while
the test injects faults, numbering every record; `Workload.verify()` then reads every
partition back and checks that each acknowledged record is present exactly once, in
order, at the offset it was acknowledged at.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import StrataBroker
from strata_helpers import unique, wait_until

HERE = Path(__file__).resolve().parent

# Short timeouts, so that each scenario takes seconds (Kafka's defaults are for real
# networks): a broker whose lease has not been renewed for 3 s is fenced.
FAST = {
    "STRATA_KAFKA_BROKER_SESSION_TIMEOUT_MS": "3000",
    "STRATA_KAFKA_BROKER_HEARTBEAT_INTERVAL_MS": "500",
    "STRATA_KAFKA_REPLICA_LAG_TIME_MAX_MS": "3000",
    "STRATA_KAFKA_LEADER_IMBALANCE_CHECK_INTERVAL_SECONDS": "2",
    "STRATA_KAFKA_DEFAULT_REPLICATION_FACTOR": "3",
    "STRATA_KAFKA_MIN_INSYNC_REPLICAS": "2",
}


class NetProxy:
    """The netproxy.py process: listeners on the nodes' addresses, cut and heal."""

    def __init__(self, log_path: Path):
        self._log = open(log_path, "ab", buffering=0)
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "netproxy.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,
        )
        self._lock = threading.Lock()

    def _call(self, **cmd) -> dict:
        with self._lock:
            assert self.proc.poll() is None, "netproxy exited"
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
            reply = json.loads(self.proc.stdout.readline())
        assert reply.get("ok"), f"netproxy refused {cmd}: {reply}"
        return reply

    def listen(self, host: str) -> int:
        return self._call(op="listen", host=host)["port"]

    def target(self, host: str, port: int, to: str) -> None:
        self._call(op="target", host=host, port=port, to=to)

    def cut(self, hosts: list[str]) -> None:
        self._call(op="cut", hosts=hosts)

    def heal(self) -> None:
        self._call(op="heal")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


@dataclass
class Node:
    id: int
    host: str
    roles: str
    meta_port: int
    kafka_port: int | None
    process: StrataBroker

    @property
    def broker(self) -> bool:
        return "broker" in self.roles

    @property
    def kafka_address(self) -> str:
        return f"{self.host}:{self.kafka_port}"


class Cluster:
    """N strata processes on 127.0.0.11, .12, ...; see the module docs."""

    def __init__(
        self,
        binary: Path,
        root: Path,
        roles: list[str],
        env: dict[str, str] | None = None,
        racks: list[str] | None = None,
        client_conf: dict | None = None,
    ):
        self.root = root
        # Settings every client the harness makes gets (TLS, SASL: a secured cluster).
        self.client_conf = dict(client_conf or {})
        root.mkdir(parents=True, exist_ok=True)
        self.proxy = NetProxy(root / "netproxy.log")
        self.nodes: dict[int, Node] = {}
        self.workloads: list[Workload] = []
        plan = []
        for i, r in enumerate(roles, start=1):
            host = f"127.0.0.{10 + i}"
            meta_port = self.proxy.listen(host)
            kafka_port = self.proxy.listen(host) if "broker" in r else None
            plan.append((i, host, r, meta_port, kafka_port))
        voters = ",".join(
            f"{i}@{host}:{meta}" for i, host, r, meta, _ in plan if "meta" in r
        )
        for i, host, r, meta_port, kafka_port in plan:
            args = [
                "--node-id", str(i),
                "--roles", r,
                "--meta-listen", f"{host}:0",
                "--meta-advertised", f"{host}:{meta_port}",
                "--meta-voters", voters,
            ]
            if kafka_port is not None:
                args += ["--advertised-listener", f"{host}:{kafka_port}"]
            if racks:
                args += ["--rack", racks[i - 1]]
            node_env = {
                **FAST,
                "STRATA_OBJECT_STORE": f"file://{root / 'objects'}",
                **(env or {}),
            }
            process = StrataBroker(
                binary,
                root / f"node{i}",
                node_env,
                host=host,
                args=args,
                kafka="broker" in r,
                on_listen=self._router(host, meta_port, kafka_port),
            )
            (root / f"node{i}").mkdir(parents=True, exist_ok=True)
            self.nodes[i] = Node(i, host, r, meta_port, kafka_port, process)

    def _router(self, host: str, meta_port: int, kafka_port: int | None):
        def route(kind: str, port: int) -> None:
            front = meta_port if kind == "meta" else kafka_port
            if front is not None:
                self.proxy.target(host, front, f"{host}:{port}")

        return route

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, ids: list[int] | None = None) -> "Cluster":
        """Starts the nodes (all by default) together: a voter is only ready once the
        quorum has formed, which needs the others."""
        ids = ids or list(self.nodes)
        with ThreadPoolExecutor(len(ids)) as pool:
            for f in [pool.submit(self.nodes[i].process.start) for i in ids]:
                f.result()
        return self

    def kill(self, i: int) -> None:
        self.nodes[i].process.kill()

    def stop(self, i: int) -> None:
        self.nodes[i].process.stop()

    def restart(self, i: int) -> None:
        self.nodes[i].process.start()

    def pause(self, i: int) -> None:
        os.kill(self.nodes[i].process.pid, signal.SIGSTOP)

    def resume(self, i: int) -> None:
        os.kill(self.nodes[i].process.pid, signal.SIGCONT)

    def wipe(self, i: int) -> None:
        """Deletes a stopped node's data directory: it comes back as a new pod would."""
        assert not self.nodes[i].process.running()
        shutil.rmtree(self.nodes[i].process.data_dir)

    def cut(self, *ids: int) -> None:
        self.proxy.cut([self.nodes[i].host for i in ids])

    def heal(self) -> None:
        self.proxy.heal()

    def workload(self, topic: str, partitions: int, **kwargs) -> "Workload":
        """A started Workload on `topic`, stopped at cleanup if the test did not."""
        w = Workload(self.bootstrap, topic, partitions, client_conf=self.client_conf, **kwargs)
        self.workloads.append(w)
        return w.start()

    def stop_workloads(self) -> None:
        for w in self.workloads:
            w.abort()

    def cleanup(self) -> None:
        self.stop_workloads()
        for n in self.nodes.values():
            if n.process.running():
                try:
                    os.kill(n.process.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            n.process.cleanup()
        self.proxy.close()

    # -- looking at it -----------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return ",".join(n.kafka_address for n in self.nodes.values() if n.broker)

    def running(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.process.running()]

    def view(self, i: int | None = None) -> dict:
        """`/api/v1/cluster` from node i; by default the most current one (the largest
        applied metadata index) among the running nodes that answer within a second (a
        paused node does not)."""

        def ask(n: Node) -> dict | None:
            try:
                status, body = n.process.http_get("/api/v1/cluster", timeout=1)
            except OSError:
                return None
            return json.loads(body) if status == 200 else None

        if i is not None:
            found = ask(self.nodes[i])
            assert found is not None, f"node {i} did not answer /api/v1/cluster"
            return found
        nodes = self.running()
        with ThreadPoolExecutor(len(nodes) or 1) as pool:
            views = [v for v in pool.map(ask, nodes) if v]
        assert views, "no node answered /api/v1/cluster"
        return max(views, key=lambda v: v.get("metadata_applied") or 0)

    def placement(self, topic: str, partition: int, i: int | None = None) -> dict:
        for p in self.view(i)["partitions"]:
            if p["topic"] == topic and p["partition"] == partition:
                return p
        raise AssertionError(f"{topic}-{partition} is not in the cluster view")

    def leader_of(self, topic: str, partition: int) -> int:
        return self.placement(topic, partition)["leader"]

    def quorum_leader(self) -> int:
        return wait_until(
            lambda: self.view().get("metadata_leader"), 30, "a metadata quorum leader"
        )

    def wait_isr(self, topic: str, partitions: int, size: int, timeout: float = 60) -> None:
        """Waits until every partition has a leader and `size` replicas in sync."""

        def ok():
            parts = [p for p in self.view()["partitions"] if p["topic"] == topic]
            return len(parts) == partitions and all(
                p["leader"] is not None and p["leader"] >= 0 and len(p["isr"]) >= size
                for p in parts
            ) and parts

        wait_until(ok, timeout, f"{topic}: every partition with {size} in-sync replicas", 0.2)

    def wait_leader_moved(self, topic: str, partition: int, away_from: int, timeout: float = 30) -> int:
        def moved():
            p = self.placement(topic, partition)
            return p["leader"] not in (None, -1, away_from) and p["leader"]

        return wait_until(moved, timeout, f"{topic}-{partition}'s leadership to leave node {away_from}", 0.1)

    def metrics(self, i: int) -> str:
        return self.nodes[i].process.metrics()

    def create_topic(self, topic: str, partitions: int, rf: int = 3, **config: str) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap, **self.client_conf})
        futures = admin.create_topics(
            [NewTopic(topic, partitions, rf, config={"min.insync.replicas": "2", **config})],
            operation_timeout=30,
        )
        futures[topic].result(timeout=60)


# --- the checker ----------------------------------------------------------------------


@dataclass
class Ack:
    seq: int
    # None when the client knows the record was written but not where: librdkafka
    # reports a retried batch as delivered without an offset when the broker's answers
    # prove it was persisted (a later batch of the producer was acknowledged).
    offset: int | None


@dataclass
class Workload:
    """An idempotent acks=all producer numbering records per partition, and a consumer
    group reading them, both running in the background until `finish()`."""

    bootstrap: str
    topic: str
    partitions: int
    rate: float = 300.0  # records per second over all partitions
    acks: dict[int, list[Ack]] = field(default_factory=dict)
    failed: list[tuple[int, int, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    group_seen: dict[int, set[int]] = field(default_factory=dict)
    group_errors: list[str] = field(default_factory=list)
    client_conf: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.acks = {p: [] for p in range(self.partitions)}
        self.group_seen = {p: set() for p in range(self.partitions)}
        self._next = {p: 0 for p in range(self.partitions)}
        self._stop = threading.Event()
        self._produced = threading.Event()
        self._group_deadline = float("inf")
        self._lock = threading.Lock()
        self.group = unique("checker")
        self._threads = [
            threading.Thread(target=self._produce, daemon=True),
            threading.Thread(target=self._consume, daemon=True),
        ]

    def start(self) -> "Workload":
        for t in self._threads:
            t.start()
        return self

    def acked(self) -> int:
        with self._lock:
            return sum(len(a) for a in self.acks.values())

    def wait_acked(self, more: int, timeout: float = 60) -> None:
        """Waits until `more` records beyond the current count are acknowledged."""
        target = self.acked() + more
        wait_until(lambda: self.acked() >= target, timeout, f"{more} more acknowledged records", 0.1)

    def _produce(self) -> None:
        def fatal(err):
            # Lost connections during faults are expected; a fatal error never is.
            if err.fatal():
                self.errors.append(str(err))

        producer = Producer(
            {
                **self.client_conf,
                "bootstrap.servers": self.bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": 120000,
                "request.timeout.ms": 4000,
                # How long a request to a silent broker (paused, cut off) is waited for.
                "socket.timeout.ms": 5000,
                "retry.backoff.ms": 100,
                "retry.backoff.max.ms": 500,
                "topic.metadata.refresh.interval.ms": 2000,
                "reconnect.backoff.max.ms": 500,
                "error_cb": fatal,
            }
        )

        def delivered(err, msg):
            p, seq = (int(x) for x in msg.value().split(b":"))
            with self._lock:
                if err is None:
                    self.acks[p].append(Ack(seq, msg.offset()))
                else:
                    self.failed.append((p, seq, str(err)))

        interval = 1.0 / self.rate
        p = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            seq = self._next[p]
            self._next[p] += 1
            while True:
                try:
                    producer.produce(self.topic, value=f"{p}:{seq}".encode(), partition=p, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.1)
            p = (p + 1) % self.partitions
            next_at += interval
            producer.poll(max(0.0, next_at - time.monotonic()))
        if self._group_deadline == 0.0:  # aborted: drop what is still outstanding
            producer.purge()
        remaining = producer.flush(150)
        if remaining:
            self.errors.append(f"{remaining} records still unanswered at the end")
        self._produced.set()

    def _consume(self) -> None:
        consumer = Consumer(
            {
                **self.client_conf,
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": True,
                "auto.commit.interval.ms": 500,
                "session.timeout.ms": 10000,
                "heartbeat.interval.ms": 1000,
                "fetch.wait.max.ms": 200,
                "socket.timeout.ms": 5000,
                "topic.metadata.refresh.interval.ms": 2000,
                "reconnect.backoff.max.ms": 500,
            }
        )
        consumer.subscribe([self.topic])
        try:
            while not (self._produced.is_set() and self._group_caught_up()):
                if time.monotonic() > self._group_deadline:
                    self.group_errors.append("the group did not catch up in time")
                    break
                for m in consumer.consume(500, timeout=0.2):
                    err = m.error()
                    if err is not None:
                        # Retriable errors are what clients may see during faults.
                        if err.code() != KafkaError._PARTITION_EOF and not err.retriable():
                            self.group_errors.append(str(err))
                        continue
                    p, seq = m.value().split(b":")
                    with self._lock:
                        self.group_seen[int(p)].add(int(seq))
        finally:
            consumer.close()

    def _group_caught_up(self) -> bool:
        with self._lock:
            return all({a.seq for a in self.acks[p]} <= self.group_seen[p] for p in self.acks)

    def abort(self) -> None:
        """Stops both threads as soon as they notice (a failed test's teardown)."""
        self._group_deadline = 0.0
        self._stop.set()
        for t in self._threads:
            t.join(timeout=200)

    def finish(self, group_timeout: float = 60) -> None:
        """Stops producing, waits for every outstanding record's answer, and lets the
        consumer group read up to the last acknowledged record."""
        self._stop.set()
        self._threads[0].join(timeout=180)
        self._group_deadline = time.monotonic() + group_timeout

        for t in self._threads:
            t.join(timeout=group_timeout + 30)
            assert not t.is_alive(), "the workload did not stop"

    def verify(self, bootstrap: str | None = None) -> dict[int, int]:
        """Reads each partition from the start and checks the acknowledged records: each
        present exactly once, at the offset it was acknowledged at (when the client was told
        one), and in the order it was produced; the consumer group saw every one of them. Returns the number of
        acknowledged records per partition."""
        assert not self.errors, f"producer errors: {self.errors[:10]}"
        assert not self.failed, f"records the producer gave up on: {self.failed[:10]}"
        bootstrap = bootstrap or self.bootstrap
        ends = high_watermarks(bootstrap, self.topic, self.partitions, self.client_conf)
        read = read_partitions(bootstrap, self.topic, self.partitions, ends, conf=self.client_conf)
        for p, acks in self.acks.items():
            at = {offset: seq for offset, seq in read[p]}
            seqs = [seq for _, seq in read[p]]
            dupes = sorted({s for s in seqs if seqs.count(s) > 1}) if len(set(seqs)) != len(seqs) else []
            assert not dupes, f"partition {p}: records stored more than once: {dupes[:20]}"
            assert seqs == sorted(seqs), f"partition {p}: records out of order"
            stored = set(seqs)
            missing = [a for a in acks if (a.seq not in stored if a.offset is None else at.get(a.offset) != a.seq)]
            assert not missing, (
                f"partition {p}: {len(missing)} acknowledged records are not where they were "
                f"acknowledged, e.g. {[(a.seq, a.offset, at.get(a.offset)) for a in missing[:10]]}"
            )
            unseen = {a.seq for a in acks} - self.group_seen[p]
            assert not unseen, f"partition {p}: the consumer group never saw {sorted(unseen)[:20]}"
        return {p: len(a) for p, a in self.acks.items()}


def high_watermarks(bootstrap: str, topic: str, partitions: int, conf: dict | None = None) -> dict[int, int]:
    """Each partition's high watermark: where reading it back ends."""
    c = Consumer({**(conf or {}), "bootstrap.servers": bootstrap, "group.id": unique("watermarks")})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(partitions)}
    finally:
        c.close()


def read_partitions(
    bootstrap: str, topic: str, partitions: int, ends: dict[int, int], timeout: float = 60, conf: dict | None = None
):
    """(offset, seq) of every record of each partition up to `ends[p]`."""
    c = Consumer(
        {
            **(conf or {}),
            "bootstrap.servers": bootstrap,
            "group.id": unique("verify"),
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "error",
            "fetch.wait.max.ms": 100,
        }
    )
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        got: dict[int, list[tuple[int, int]]] = {p: [] for p in range(partitions)}
        done = {p for p in range(partitions) if ends[p] == 0}
        deadline = time.monotonic() + timeout
        while len(done) < partitions:
            assert time.monotonic() < deadline, f"timed out reading {topic} back: {ends}"
            for m in c.consume(1000, timeout=0.5):
                err = m.error()
                if err is None:
                    got[m.partition()].append((m.offset(), int(m.value().split(b":")[1])))
                    if m.offset() + 1 >= ends[m.partition()]:
                        done.add(m.partition())
                elif err.code() == KafkaError._PARTITION_EOF:
                    if m.offset() >= ends[m.partition()]:
                        done.add(m.partition())
                elif err.retriable():
                    continue
                else:
                    raise AssertionError(f"reading {topic} back: {err}")
        return got
    finally:
        c.close()


class ClusterBroker:
    """A cluster standing in for one broker in the client tests (`also_on_cluster`):
    clients bootstrap from every node, topics get replication factor 3, and metrics are
    every node's together (summed by the tests' helpers)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.replication_factor = 3

    @property
    def bootstrap(self) -> str:
        return self.cluster.bootstrap

    def metrics(self) -> str:
        return "\n".join(self.cluster.metrics(n.id) for n in self.cluster.running())

    def http_get(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        return self.cluster.running()[0].process.http_get(path, timeout)
