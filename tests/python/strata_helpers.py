"""Shared helpers for the Strata end-to-end client tests (test data, polling, metrics,
confluent-kafka readers)."""

from __future__ import annotations

import random
import re
import stat
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

HOUR_MS = 3600 * 1000


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Msg:
    partition: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    timestamp: int = -1


def make_messages(
    count: int,
    partitions: int,
    base_ts: int,
    seed: int = 1,
    step_ms: int = 7,
    with_nulls: bool = True,
    null_header_values: bool = True,
) -> list[Msg]:
    """`count` messages spread over `partitions` partitions (round-robin plus some
    randomness) with distinct keys, values of varied size (some empty, some null), 0-3
    headers (one repeated name, some null values) and strictly increasing explicit
    timestamps `base_ts + i * step_ms` in production order."""
    rng = random.Random(seed)
    msgs = []
    for i in range(count):
        p = (i + rng.randrange(2)) % partitions
        key: bytes | None = f"key-{i:06d}".encode()
        size = rng.choice([0, 1, 10, 100, 700])
        value: bytes | None = bytes(rng.randrange(256) for _ in range(size))
        if with_nulls and i % 97 == 5:
            key = None
        if with_nulls and i % 89 == 7:
            value = None
        headers: list[tuple[str, bytes | None]] = []
        nh = i % 4
        if nh >= 1:
            headers.append(("idx", str(i).encode()))
        if nh >= 2:
            headers.append(("bin", bytes([i % 256, 0, 255, (i * 7) % 256])))
        if nh >= 3:
            # the same header name twice, order must be kept
            headers.append(("idx", b"again-" + str(i).encode()))
        if null_header_values and i % 50 == 3:
            headers.append(("nullhdr", None))
        msgs.append(Msg(p, key, value, headers, base_ts + i * step_ms))
    return msgs


def by_partition(msgs: list[Msg], partitions: int) -> dict[int, list[Msg]]:
    out: dict[int, list[Msg]] = {p: [] for p in range(partitions)}
    for m in msgs:
        out[m.partition].append(m)
    return out


def first_offset_at_or_after(msgs: list[Msg], ts: int) -> int:
    """Kafka's by-timestamp lookup: the first offset whose timestamp is >= ts, or -1."""
    for offset, m in enumerate(msgs):
        if m.timestamp >= ts:
            return offset
    return -1


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    """Polls `predicate` until it returns a truthy value; fails with `what` (and the
    last value seen) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text format -> [(name, labels, value)]."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC_LINE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(3) or ""))
        out.append((m.group(1), labels, float(m.group(4))))
    return out


def metric_values(text: str, name: str, **labels: str) -> list[float]:
    return [
        v
        for n, ls, v in parse_metrics(text)
        if n == name and all(ls.get(k) == want for k, want in labels.items())
    ]


def partition_dirs(data_dir: Path, topic: str, partition: int) -> list[Path]:
    """Finds a partition's directories. Strata keeps `log/<topic id>/topic.name` (holding
    the name) with one sub-directory per partition; Kafka's `<topic>-<partition>` naming is
    accepted too."""
    found = []
    for marker in data_dir.rglob("topic.name"):
        if marker.read_text(errors="replace").strip() == topic:
            d = marker.parent / str(partition)
            if d.is_dir():
                found.append(d)
    for d in data_dir.rglob(f"{topic}-{partition}"):
        if d.is_dir():
            found.append(d)
    return found


def file_sizes(root: Path, pattern: str = "*", recursive: bool = False) -> dict[Path, int]:
    """Sizes of the regular files under `root` whose names match `pattern` (`rglob` when
    `recursive`). The broker deletes segments and objects while a test lists them
    (retention, local trimming after upload), so a file gone between the listing and the
    stat is skipped, not an error."""
    out = {}
    for f in (root.rglob(pattern) if recursive else root.glob(pattern)):
        try:
            st = f.stat()
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            out[f] = st.st_size
    return out


def assign_consumer(broker, **extra) -> Consumer:
    """A confluent-kafka consumer for assign() reads: no commits, end-of-partition
    reported, and no offset reset (a position out of range is an error). `extra`
    overrides any of it."""
    conf = {
        # librdkafka wants a group id; it is never used for a group (no subscribe()).
        "group.id": unique("unused"),
        "bootstrap.servers": broker.bootstrap,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "error",
        # end-of-partition is only reported when a fetch comes back empty: keep that short
        "fetch.wait.max.ms": 100,
    }
    conf.update(extra)
    return Consumer(conf)


def consume_all(
    broker, topic: str, expected: dict[int, int], timeout: float = 60, start=OFFSET_BEGINNING, **extra
) -> dict[int, list]:
    """Reads every partition in `expected` from `start` until it has seen end-of-partition
    at (at least) the expected offset. Returns the messages read per partition."""
    c = assign_consumer(broker, **extra)
    try:
        c.assign([TopicPartition(topic, p, start) for p in expected])
        got: dict[int, list] = {p: [] for p in expected}
        done: set[int] = set()
        deadline = time.monotonic() + timeout
        while done != set(expected):
            assert time.monotonic() < deadline, (
                f"timed out reading {topic}: have "
                f"{ {p: len(v) for p, v in got.items()} }, want {expected}"
            )
            for m in c.consume(num_messages=1000, timeout=0.5):
                err = m.error()
                if err is None:
                    got[m.partition()].append(m)
                    done.discard(m.partition())
                elif err.code() == KafkaError._PARTITION_EOF:
                    if m.offset() >= expected[m.partition()]:
                        done.add(m.partition())
                else:
                    raise AssertionError(f"consumer error on {topic}: {err}")
        return got
    finally:
        c.close()
