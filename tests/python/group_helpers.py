"""Consumer-group test helpers: group members in their own processes, producing numbered
messages, and the exactly-once bookkeeping of what the members consumed.

A `Member` is one process running tests/python/group_member.py (confluent-kafka or
kafka-python) or tests/node/group_member.js (KafkaJS). It reports what it is assigned,
revokes, consumes and commits as JSON lines on stdout; it takes `nocommit` and `close`
on stdin and can be SIGKILLed (no LeaveGroup, no last commit).
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
from collections import Counter
from pathlib import Path

from strata_helpers import metric_values, unique, wait_until

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MEMBER_SCRIPT = HERE / "group_member.py"
NODE_DIR = REPO / "tests" / "node"
NODE_SCRIPT = NODE_DIR / "group_member.js"

SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 1000


class Member:
    """One group member process and everything it reported."""

    def __init__(self, client: str, cfg: dict, log_dir: Path):
        self.client = client
        self.name = cfg["name"]
        self.cfg = cfg
        self.stderr_path = log_dir / f"member-{self.name}.stderr"
        self.events: list[dict] = []
        self.killed = False
        self.closing = False
        self._lock = threading.Lock()
        if client == "kafkajs":
            node = shutil.which("node")
            assert node, "node is not installed: run scripts/install-test-deps.sh"
            assert (NODE_DIR / "node_modules" / "kafkajs").is_dir(), (
                f"kafkajs is not installed in {NODE_DIR}/node_modules: "
                "run scripts/install-test-deps.sh (npm ci)"
            )
            argv = [node, str(NODE_SCRIPT), json.dumps(cfg)]
        else:
            argv = [sys.executable, str(MEMBER_SCRIPT), json.dumps({"client": client, **cfg})]
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=str(NODE_DIR if client == "kafkajs" else HERE),
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                ev = {"ev": "raw", "line": line}
            with self._lock:
                self.events.append(ev)

    # -- what it reported ---------------------------------------------------------------

    def evs(self, kind: str | None = None, since: int = 0) -> list[dict]:
        with self._lock:
            out = self.events[since:]
        return [e for e in out if kind is None or e["ev"] == kind]

    def mark(self) -> int:
        with self._lock:
            return len(self.events)

    def owned(self) -> set[int]:
        """The partitions it owns now: for confluent-kafka, Consumer.assignment() as last
        reported (after the callbacks ran); otherwise by the last callback."""
        kinds = ("assignment",) if self.client == "confluent" else ("assigned", "revoked", "lost")
        for e in reversed(self.evs()):
            if e["ev"] in kinds:
                return set(e["owned"])
        return set()

    def deliveries(self) -> list[tuple[int, int, str]]:
        return [tuple(r) for e in self.evs("consumed") for r in e["recs"]]

    def consumed_keys(self) -> set[tuple[int, int]]:
        return {(p, o) for p, o, _ in self.deliveries()}

    def committed(self) -> dict[int, int]:
        """The highest commit the broker acknowledged, per partition (next offset)."""
        out: dict[int, int] = {}
        for e in self.evs("committed"):
            for p, o in e["offsets"].items():
                out[int(p)] = max(out.get(int(p), -1), o)
        return out

    def problems(self, since: int = 0) -> list[dict]:
        return [e for e in self.evs(since=since) if e["ev"] in ("error", "lost", "raw")]

    def summary(self) -> str:
        evs = self.evs()
        tail = [
            {k: v for k, v in e.items() if k != "recs"} | ({"n": len(e["recs"])} if "recs" in e else {})
            for e in evs[-12:]
        ]
        return (
            f"{self.name} ({self.client}, pid {self.proc.pid}, rc {self.proc.poll()}): "
            f"owned={sorted(self.owned())} consumed={len(self.deliveries())} "
            f"committed={self.committed()} problems={self.problems()[:5]} last events={tail}"
        )

    def stderr_tail(self, lines: int = 40) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- driving it ---------------------------------------------------------------------

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def wait_event(self, kind: str, timeout: float = 30, since: int = 0) -> dict:
        def found():
            self._check_alive(kind)
            evs = self.evs(kind, since)
            return evs[0] if evs else None

        return wait_until(found, timeout, f"{self.name}: event {kind}")

    def _check_alive(self, what: str) -> None:
        if self.proc.poll() is not None and not (self.killed or self.closing):
            raise AssertionError(
                f"{self.name} exited with {self.proc.returncode} while waiting for {what}; "
                f"{self.summary()}\nstderr:\n{self.stderr_tail()}"
            )

    def nocommit(self) -> None:
        m = self.mark()
        self.send("nocommit")
        self.wait_event("nocommit", since=m)

    def kill(self) -> None:
        """SIGKILL: no LeaveGroup, no final commit."""
        self._check_alive("kill")
        self.killed = True
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)

    def close(self, timeout: float = 45) -> None:
        """Commits, leaves the group, exits 0."""
        self._check_alive("close")
        self.closing = True
        self.send("close")
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} did not exit within {timeout}s of `close`; {self.summary()}\n"
                f"stderr:\n{self.stderr_tail()}"
            )
        self._reader.join(timeout=5)
        assert rc == 0 and self.evs("closed"), (
            f"{self.name} exited with {rc} after `close`; {self.summary()}\n"
            f"stderr:\n{self.stderr_tail()}"
        )

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        self._stderr.close()


class Members:
    """Starts members (the `group_members` fixture) and kills them all at teardown."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.all: list[Member] = []

    def spawn(
        self,
        client: str,
        broker,
        group: str,
        topic: str,
        assignor: str,
        name: str | None = None,
        wait_started: bool = True,
        **extra,
    ) -> Member:
        cfg = {
            "bootstrap": broker.bootstrap,
            "group": group,
            "topic": topic,
            "assignor": assignor,
            "name": name or unique(client),
            "session_timeout_ms": SESSION_TIMEOUT_MS,
            "heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
            **extra,
        }
        m = Member(client, cfg, self.log_dir)
        self.all.append(m)
        if wait_started:
            m.wait_event("started", timeout=60)
        return m

    def cleanup(self) -> None:
        for m in self.all:
            m.cleanup()


# -- group-wide waits and checks ------------------------------------------------------


def describe(members: list[Member]) -> str:
    return "\n  ".join(m.summary() for m in members)


def wait_assignment(members: list[Member], partitions: int, sizes: list[int] | None = None,
                    timeout: float = 60, what: str = "") -> dict[str, set[int]]:
    """Waits until the members' assignments are disjoint, cover all `partitions` and have
    the given sizes (equal shares by default). Returns name -> partitions."""
    if sizes is None:
        sizes = [partitions // len(members)] * len(members)

    def ok():
        for m in members:
            m._check_alive("an assignment")
        owned = [m.owned() for m in members]
        union = set().union(*owned)
        if union != set(range(partitions)) or sum(len(o) for o in owned) != partitions:
            return None
        if sorted(len(o) for o in owned) != sorted(sizes):
            return None
        return {m.name: o for m, o in zip(members, owned)}

    try:
        return wait_until(ok, timeout, f"assignment {sizes} of {partitions} partitions {what}")
    except AssertionError as e:
        raise AssertionError(f"{e}\n  {describe(members)}") from None


def wait_consumed(expected: dict[tuple[int, int], str], members: list[Member],
                  timeout: float = 60, what: str = "") -> None:
    """Waits until every expected (partition, offset) was delivered to some member."""

    def missing():
        got = set().union(*(m.consumed_keys() for m in members))
        return sorted(set(expected) - got)

    deadline = time.monotonic() + timeout
    while True:
        left = missing()
        if not left:
            return
        for m in members:
            m._check_alive(f"consuming {what}")
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"{len(left)} of {len(expected)} messages never consumed {what} "
                f"(first: {left[:10]})\n  {describe(members)}"
            )
        time.sleep(0.1)


def uncommitted_tail(m: Member) -> set[tuple[int, int]]:
    """What `m` consumed at or after its last acknowledged commit of each partition."""
    committed = m.committed()
    return {(p, o) for p, o, _ in m.deliveries() if o >= committed.get(p, -1)}


def check_consumed_once(expected: dict[tuple[int, int], str], members: list[Member]) -> Counter:
    """Every produced message was consumed, with the value it was produced with; and
    exactly once, except what a killed member consumed after its last acknowledged
    commit of that partition: that is consumed exactly twice (once by the killed member,
    once by the member that took the partition over from the last commit).

    Members that stopped with `close` committed everything before giving partitions up,
    so anything else consumed twice is a duplicate delivery (or a lost commit)."""
    counts: Counter = Counter()
    for m in members:
        for p, o, v in m.deliveries():
            assert (p, o) in expected, f"{m.name} consumed offset {o} of partition {p}, never produced"
            assert v == expected[(p, o)], (
                f"{m.name}: partition {p} offset {o} has value {v!r}, produced {expected[(p, o)]!r}"
            )
            counts[(p, o)] += 1
    missing = sorted(set(expected) - set(counts))
    assert not missing, f"{len(missing)} messages never consumed: {missing[:20]}\n  {describe(members)}"
    allowed: Counter = Counter()
    for m in members:
        if m.killed:
            for key in uncommitted_tail(m):
                allowed[key] += 1
    wrong = {k: (n, 1 + allowed[k]) for k, n in counts.items() if n != 1 + allowed[k]}
    if wrong:
        who = {
            k: [m.name for m in members for p, o, _ in m.deliveries() if (p, o) == k]
            for k in sorted(wrong)[:10]
        }
        raise AssertionError(
            f"{len(wrong)} messages consumed the wrong number of times "
            f"((partition, offset): (times, expected)): {dict(sorted(wrong.items())[:20])}; "
            f"consumed by: {who}\n  {describe(members)}"
        )
    return counts


def metric(broker, name: str) -> float:
    """The metric's value (summed over nodes when `broker` is a cluster)."""
    vals = metric_values(broker.metrics(), name)
    assert vals, f"no metric {name}"
    return sum(vals)


def wait_metric(broker, name: str, want: float, timeout: float = 30) -> None:
    wait_until(lambda: metric(broker, name) == want, timeout, f"{name} == {want}")


# -- confluent-kafka producing and offsets ---------------------------------------------


def create_topic(broker, name: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=getattr(broker, "replication_factor", 1))],
                    operation_timeout=10)[name].result(timeout=30)


def produce(broker, topic: str, partitions: int, count: int, tag: str) -> dict[tuple[int, int], str]:
    """`count` messages round-robin over the partitions with values `<tag>-<i>`.
    Returns (partition, offset) -> value from the delivery reports."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": False,
                  "acks": "all", "linger.ms": 5})
    out: dict[tuple[int, int], str] = {}
    errors: list = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            out[(msg.partition(), msg.offset())] = msg.value().decode()

    for i in range(count):
        p.produce(topic, value=f"{tag}-{i}".encode(), partition=i % partitions, on_delivery=on_delivery)
    assert p.flush(30) == 0, "messages still undelivered after flush"
    assert not errors, f"delivery errors: {errors[:5]}"
    assert len(out) == count
    return out


def committed_offsets(broker, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets (OffsetFetch, through confluent-kafka)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        res = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=20)
        return {tp.partition: tp.offset for tp in res}
    finally:
        c.close()


def end_offsets(expected: dict[tuple[int, int], str], partitions: int) -> dict[int, int]:
    ends = {p: 0 for p in range(partitions)}
    for p, o in expected:
        ends[p] = max(ends[p], o + 1)
    return ends


# -- the three-member scenario shared by the confluent-kafka and kafka-python tests -----


def kill_and_join_scenario(broker, group_members, client: str, assignor: str,
                           incremental: bool, produce_fn=produce, committed_fn=committed_offsets,
                           partitions: int = 6) -> None:
    """Three members of one group on a 6-partition topic end with 2 partitions each; one
    is SIGKILLed with consumed-but-uncommitted messages, the two others take its
    partitions over once its session times out; a fourth joins and takes 2. Every
    message is consumed, exactly once except the killed member's uncommitted tail, and
    the group's committed offsets end at the log end.

    `incremental`: the assignor is cooperative (KIP-429): survivors must keep what they
    had and only gain (member killed) or only give up what the new member gets
    (member joins). Otherwise (eager) every rebalance revokes everything first."""
    topic, group = unique(f"grp-{client}"), unique(f"g-{client}")
    create_topic(broker, topic, partitions)
    expected = produce_fn(broker, topic, partitions, 300, "first")
    spawn = lambda name: group_members.spawn(client, broker, group, topic, assignor, name=name)  # noqa: E731
    a, b, c = spawn("a"), spawn("b"), spawn("c")
    wait_assignment([a, b, c], partitions, what="after three members joined")
    wait_consumed(expected, [a, b, c], what="by the first three members")
    wait_metric(broker, "strata_group_members", 3)
    for m in (a, b, c):
        assert not m.problems(), m.summary()

    # c stops committing, consumes some more, and dies without leaving the group.
    c.nocommit()
    c_parts = c.owned()
    # Where c's partitions resume once it is gone: the group's committed offsets (c's own
    # last commits; a previous owner's for a partition c never committed).
    c_committed = committed_fn(broker, group, topic, partitions)
    for p, o in c.committed().items():
        if p in c_parts:
            assert c_committed[p] == o, f"partition {p}: group committed {c_committed[p]}, c {o}"
    more = produce_fn(broker, topic, partitions, 120, "tail")
    expected |= more
    c_tail_keys = {k for k in more if k[0] in c_parts}
    wait_until(lambda: c_tail_keys <= c.consumed_keys(), 30, "c consuming its uncommitted tail")
    expired_before = metric(broker, "strata_group_expired_members_total")
    marks = {m.name: m.mark() for m in (a, b)}
    before = {m.name: m.owned() for m in (a, b)}
    killed_at = time.monotonic()
    c.kill()
    expected |= produce_fn(broker, topic, partitions, 120, "after-kill")
    second = wait_assignment([a, b], partitions, timeout=45, what="after c was killed")
    took = time.monotonic() - killed_at
    # c's last heartbeat was at most one heartbeat interval before the kill.
    assert took >= (SESSION_TIMEOUT_MS - HEARTBEAT_INTERVAL_MS) / 1000 - 0.5, (
        f"c's partitions moved {took:.1f}s after it was killed, before its "
        f"{SESSION_TIMEOUT_MS} ms session could time out"
    )
    assert metric(broker, "strata_group_expired_members_total") == expired_before + 1
    wait_metric(broker, "strata_group_members", 2)
    for m in (a, b):
        revoked = [e["parts"] for e in m.evs("revoked", marks[m.name]) if e["parts"]]
        if incremental:
            assert not revoked, f"{m.name} had partitions revoked when c died: {revoked}"
            assert before[m.name] <= second[m.name], (
                f"{m.name} owned {before[m.name]} before, {second[m.name]} after c died"
            )
        else:
            assert sorted(before[m.name]) in revoked, (
                f"eager: {m.name} should have revoked all of {before[m.name]}: {revoked}"
            )
    # Whoever took c's partitions over resumed at c's last commit: c's uncommitted tail
    # is read again, nothing before it.
    wait_until(lambda: c_tail_keys <= a.consumed_keys() | b.consumed_keys(), 30,
               "c's uncommitted messages redelivered to a or b")
    for p in c_parts:
        firsts = [
            o for m in (a, b) for e in m.evs("consumed", marks[m.name])
            for (q, o, _) in e["recs"] if q == p
        ]
        assert firsts and min(firsts) == c_committed[p], (
            f"partition {p}: after c died it was read from {min(firsts, default=None)}, "
            f"c had committed {c_committed[p]}"
        )

    # d joins: with a cooperative assignor it takes partitions from a and b without
    # anyone giving up more than d gets.
    marks = {m.name: m.mark() for m in (a, b)}
    d = spawn("d")
    expected |= produce_fn(broker, topic, partitions, 120, "after-join")
    third = wait_assignment([a, b, d], partitions, what="after d joined")
    wait_metric(broker, "strata_group_members", 3)
    for m in (a, b):
        revoked = {p for e in m.evs("revoked", marks[m.name]) for p in e["parts"]}
        gained = {p for e in m.evs("assigned", marks[m.name]) for p in e["parts"]}
        if incremental:
            assert revoked <= third["d"], f"{m.name} revoked {revoked}, d got {third['d']}"
            assert not gained, f"{m.name} was assigned {gained} when d joined (incremental)"
            assert third[m.name] == second[m.name] - revoked, (
                f"{m.name}: had {second[m.name]}, revoked {revoked}, owns {third[m.name]}"
            )
        else:
            assert second[m.name] <= revoked, (
                f"eager: {m.name} should have revoked all of {second[m.name]}, revoked {revoked}"
            )
    if incremental:
        moved = {p for m in (a, b) for e in m.evs("revoked", marks[m.name]) for p in e["parts"]}
        assert moved == third["d"], f"partitions revoked {moved}, d got {third['d']}"
    wait_consumed(expected, [a, b, c, d], what="by the end")
    for m in (a, b, d):
        m.close()
        assert not m.problems(), m.summary()
    wait_metric(broker, "strata_group_members", 0)
    check_consumed_once(expected, [a, b, c, d])
    ends = end_offsets(expected, partitions)
    assert committed_fn(broker, group, topic, partitions) == ends
