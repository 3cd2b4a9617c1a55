"""End-to-end tests of Strata with kcat (librdkafka 2.0.2), run as a subprocess.

kcat cannot create topics or set timestamps: topics come from auto-creation (with
num.partitions set on the broker) or from confluent-kafka's AdminClient, and the
explicit-timestamp data is written with confluent-kafka and read back with kcat.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import broker_or_cluster
from strata_helpers import HOUR_MS, metric_values, now_ms, unique, wait_until

KCAT = shutil.which("kcat") or "kcat"
PARTITIONS = 4


def kcat(broker, *args: str, input: str | None = None, timeout: float = 60) -> str:
    if not shutil.which(KCAT):
        raise FileNotFoundError("kcat is not installed (scripts/install-test-deps.sh installs it)")
    cmd = [KCAT, "-b", broker.bootstrap, "-m", "15", *args]
    r = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} exited {r.returncode}\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-3000:]}"
    return r.stdout


def kcat_json_lines(broker, *args: str) -> list[dict]:
    out = kcat(broker, *args, "-J")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def consume_partition(broker, topic: str, p: int, *extra: str) -> list[dict]:
    return kcat_json_lines(broker, "-C", "-t", topic, "-p", str(p), "-e", "-q", *extra)


def consume_until(broker, topic: str, p: int, count: int, timeout: float = 30) -> list[dict]:
    """Reads partition p from the beginning until at least `count` messages are there
    (acks=0 data becomes visible shortly after it is sent)."""
    return wait_until(
        lambda: (lambda got: got if len(got) >= count else None)(
            consume_partition(broker, topic, p, "-o", "beginning")
        ),
        timeout,
        f"{count} messages in {topic}[{p}]",
        interval=0.2,
    )


def query(broker, *specs: tuple[str, int, int]) -> dict[int, int]:
    """kcat -Q for (topic, partition, timestamp) specs (one per partition); {partition: offset}."""
    args = ["-Q"]
    for t, p, ts in specs:
        args += ["-t", f"{t}:{p}:{ts}"]
    out = kcat(broker, *args)
    found = {}
    for line in out.splitlines():
        # "<topic> [<partition>] offset <offset>"
        parts = line.split()
        if len(parts) == 4 and parts[2] == "offset":
            found[int(parts[1].strip("[]"))] = int(parts[3])
    assert len(found) == len(specs), f"unexpected -Q output: {out!r}"
    return found


def metadata(broker, topic: str | None = None) -> dict:
    args = ["-L", "-J"] + (["-t", topic] if topic else [])
    return json.loads(kcat(broker, *args))


def partitions_of(md: dict, topic: str) -> list[int]:
    (t,) = [t for t in md["topics"] if t["topic"] == topic]
    assert "error" not in t, t
    return sorted(p["partition"] for p in t["partitions"])


@pytest.fixture
def kbroker(broker_factory, request):
    """A broker (or a cluster, see conftest) that auto-creates topics with several
    partitions."""
    return broker_or_cluster(request, broker_factory, {"STRATA_KAFKA_NUM_PARTITIONS": str(PARTITIONS)})


def admin_create(broker, topic: str, partitions: int, config: dict | None = None) -> None:
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    fut = a.create_topics([NewTopic(topic, partitions, getattr(broker, "replication_factor", 1), config=config or {})])
    fut[topic].result(timeout=30)


def admin_delete(broker, topic: str) -> None:
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.delete_topics([topic])[topic].result(timeout=30)


# -- tests ----------------------------------------------------------------------------


def test_auto_created_topic_metadata(kbroker):
    topic = unique("auto")
    md = metadata(kbroker, topic)  # asking for the topic creates it
    assert partitions_of(md, topic) == list(range(PARTITIONS))
    assert md["brokers"] == [{"id": 0, "name": f"127.0.0.1:{kbroker.kafka_port}"}]
    assert md["controllerid"] == 0
    (t,) = [t for t in md["topics"] if t["topic"] == topic]
    for p in t["partitions"]:
        assert (p["leader"], p["replicas"], p["isrs"]) == (0, [{"id": 0}], [{"id": 0}]), p
    # and it is in the full listing too
    assert topic in {t["topic"] for t in metadata(kbroker)["topics"]}


def test_metadata_without_auto_create(broker_factory):
    broker = broker_factory(env={"STRATA_KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false"})
    topic = unique("noauto")
    md = metadata(broker, topic)
    (t,) = [t for t in md["topics"] if t["topic"] == topic]
    assert "Unknown topic or partition" in t.get("error", ""), t
    assert topic not in {t["topic"] for t in metadata(broker)["topics"]}
    admin_create(broker, topic, 3)
    assert partitions_of(metadata(broker, topic), topic) == [0, 1, 2]


@pytest.mark.also_on_cluster
@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_produce_consume_roundtrip(kbroker, acks):
    topic = unique(f"rt-acks{acks}")
    assert partitions_of(metadata(kbroker, topic), topic) == list(range(PARTITIONS))
    per_partition = 750
    rng = random.Random(acks)
    sent: dict[int, list[tuple[str | None, str | None]]] = {}
    windows = {}
    for p in range(PARTITIONS):
        msgs = []
        lines = []
        for i in range(per_partition):
            key = f"k-{p}-{i:05d}"
            value = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789 .,;:!") for _ in range(rng.randrange(1, 120)))
            if i % 101 == 17:
                value = ""  # -Z: empty means null
            if i % 113 == 9:
                key = ""
            msgs.append((key or None, value or None))
            lines.append(f"{key}\t{value}")
        before = now_ms()
        kcat(kbroker, "-P", "-t", topic, "-p", str(p), "-K", "\t", "-Z",
             "-H", f"acks={acks}", "-H", f"part={p}", "-H", "dup=1", "-H", "dup=2",
             "-X", f"acks={acks}", "-X", "enable.idempotence=false",
             input="\n".join(lines) + "\n")
        windows[p] = (before, now_ms())
        sent[p] = msgs

    for p in range(PARTITIONS):
        got = consume_until(kbroker, topic, p, per_partition)
        assert len(got) == per_partition, f"{topic}[{p}]: {len(got)} read, {per_partition} sent"
        lo, hi = windows[p]
        last_ts = 0
        for i, (m, (key, value)) in enumerate(zip(got, sent[p])):
            where = f"{topic}[{p}] offset {m['offset']}"
            assert (m["topic"], m["partition"], m["offset"]) == (topic, p, i), where
            assert m["key"] == key, f"{where}: key {m['key']!r} != {key!r}"
            assert m["payload"] == value, f"{where}: payload {m['payload']!r} != {value!r}"
            assert m["headers"] == ["acks", acks, "part", str(p), "dup", "1", "dup", "2"], where
            assert m["tstype"] == "create", where
            # kcat cannot set timestamps: librdkafka stamps each message as it is produced
            assert lo <= m["ts"] <= hi, f"{where}: ts {m['ts']} outside [{lo}, {hi}]"
            assert m["ts"] >= last_ts, f"{where}: timestamps go backwards"
            last_ts = m["ts"]

    # the same data through a format string
    out = kcat(kbroker, "-C", "-t", topic, "-p", "1", "-o", "beginning", "-e", "-q",
               "-f", "%t|%p|%o|%k|%s|%h|%T\\n")
    rows = [line.split("|") for line in out.splitlines()]
    assert len(rows) == per_partition
    json_rows = consume_partition(kbroker, topic, 1, "-o", "beginning")
    for row, m in zip(rows, json_rows):
        assert row == [topic, "1", str(m["offset"]), m["key"] or "", m["payload"] or "",
                       f"acks={acks},part=1,dup=1,dup=2", str(m["ts"])]

    # watermarks: -Q with the logical timestamps -2 (earliest) and -1 (latest)
    assert query(kbroker, *[(topic, p, -2) for p in range(PARTITIONS)]) == {p: 0 for p in range(PARTITIONS)}
    assert query(kbroker, *[(topic, p, -1) for p in range(PARTITIONS)]) == {
        p: per_partition for p in range(PARTITIONS)
    }


def write_timestamped(broker, topic: str, partitions: int, count: int, base: int) -> dict[int, list[tuple[str, str, int]]]:
    """Writes `count` messages with explicit timestamps base + 10*i (confluent-kafka);
    returns {partition: [(key, value, ts)]}."""
    p = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": False, "acks": "all"})
    errors = []
    out: dict[int, list[tuple[str, str, int]]] = {q: [] for q in range(partitions)}
    for i in range(count):
        part = i % partitions
        key, value, ts = f"key{i}", f"value-{i}", base + 10 * i
        p.produce(topic, value=value, key=key, partition=part, timestamp=ts,
                  headers=[("n", str(i).encode()), ("kind", b"ts")],
                  on_delivery=lambda err, m: err and errors.append(err))
        out[part].append((key, value, ts))
    assert p.flush(30) == 0
    assert not errors, errors
    return out


def test_timestamps_query_and_offsets(kbroker):
    topic = unique("ts")
    admin_create(kbroker, topic, 2)
    base = now_ms() - HOUR_MS
    want = write_timestamped(kbroker, topic, 2, 400, base)

    for p in range(2):
        got = consume_partition(kbroker, topic, p, "-o", "beginning")
        assert [(m["offset"], m["key"], m["payload"], m["ts"], m["tstype"]) for m in got] == [
            (i, k, v, ts, "create") for i, (k, v, ts) in enumerate(want[p])
        ]
        assert [m["headers"][0:2] for m in got] == [["n", k[3:]] for k, _, _ in want[p]]

    def expected(p, ts):
        return next((i for i, (_, _, t) in enumerate(want[p]) if t >= ts), -1)

    ts0 = [t for _, _, t in want[0]]
    ts1 = [t for _, _, t in want[1]]
    cases = [
        (0, 0), (1, base - 5),                 # before everything: the first offset
        (0, ts0[0]), (1, ts1[0]),               # exact first timestamps
        (0, ts0[57]), (1, ts1[120] + 1),        # exact, and between two messages
        (0, ts0[-1]), (1, ts1[-1]),             # the last message
        (0, ts0[-1] + 1), (1, now_ms() + HOUR_MS),  # after the last message: none
    ]
    for p, ts in cases:
        assert query(kbroker, (topic, p, ts)) == {p: expected(p, ts)}, f"-Q {topic}:{p}:{ts} (base+{ts - base})"
    # both partitions in one query
    assert query(kbroker, (topic, 0, ts0[10]), (topic, 1, ts1[-1] + 1)) == {0: 10, 1: -1}

    # consumer start/stop positions: absolute, relative to the end, by timestamp
    got = consume_partition(kbroker, topic, 0, "-o", "150")
    assert [m["offset"] for m in got] == list(range(150, len(want[0])))
    got = consume_partition(kbroker, topic, 0, "-o", "-5")
    assert [m["offset"] for m in got] == list(range(len(want[0]) - 5, len(want[0])))
    got = consume_partition(kbroker, topic, 1, "-o", f"s@{ts1[33] - 3}")
    assert got[0]["offset"] == 33 and len(got) == len(want[1]) - 33
    got = consume_partition(kbroker, topic, 1, "-o", "beginning", "-o", f"e@{ts1[20]}")
    assert [m["offset"] for m in got] == list(range(20))
    got = kcat_json_lines(kbroker, "-C", "-t", topic, "-p", "0", "-o", "7", "-c", "3", "-q")
    assert [m["key"] for m in got] == [k for k, _, _ in want[0][7:10]]


def test_delete_and_recreate_topic_starts_empty(kbroker):
    topic = unique("recreate")
    admin_create(kbroker, topic, 2)
    kcat(kbroker, "-P", "-t", topic, "-p", "0", "-K", ":", "-X", "acks=all", input="a:old1\nb:old2\n")
    kcat(kbroker, "-P", "-t", topic, "-p", "1", "-K", ":", "-X", "acks=all", input="c:old3\n")
    assert query(kbroker, (topic, 0, -1), (topic, 1, -1)) == {0: 2, 1: 1}

    admin_delete(kbroker, topic)
    wait_until(lambda: topic not in {t["topic"] for t in metadata(kbroker)["topics"]}, 10,
               f"{topic} to leave the metadata")
    admin_create(kbroker, topic, 2)
    assert query(kbroker, (topic, 0, -2), (topic, 1, -2)) == {0: 0, 1: 0}
    assert query(kbroker, (topic, 0, -1), (topic, 1, -1)) == {0: 0, 1: 0}
    assert consume_partition(kbroker, topic, 0, "-o", "beginning") == []

    kcat(kbroker, "-P", "-t", topic, "-p", "1", "-K", ":", "-H", "gen=2", "-X", "acks=all",
         input="x:new1\ny:new2\n")
    assert consume_partition(kbroker, topic, 0, "-o", "beginning") == []
    got = consume_partition(kbroker, topic, 1, "-o", "beginning")
    assert [(m["offset"], m["key"], m["payload"], m["headers"]) for m in got] == [
        (0, "x", "new1", ["gen", "2"]),
        (1, "y", "new2", ["gen", "2"]),
    ]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_produce_roundtrip(kbroker, codec):
    topic = unique(f"z-{codec}")
    lines = [f"k{i}\t{'payload-%d-' % i * (1 + i % 7)}" for i in range(300)]
    kcat(kbroker, "-P", "-t", topic, "-p", "3", "-K", "\t", "-z", codec, "-H", f"codec={codec}",
         "-X", "acks=all", "-X", "linger.ms=50", input="\n".join(lines) + "\n")
    got = consume_partition(kbroker, topic, 3, "-o", "beginning")
    assert [(m["offset"], m["key"], m["payload"], m["headers"]) for m in got] == [
        (i, line.split("\t")[0], line.split("\t")[1], ["codec", codec]) for i, line in enumerate(lines)
    ]
    # start inside a compressed batch
    got = consume_partition(kbroker, topic, 3, "-o", "295")
    assert [m["offset"] for m in got] == [295, 296, 297, 298, 299]


def test_metrics_after_kcat_traffic(kbroker):
    topic = unique("metrics")
    lines = "".join(f"k{i}:v{i}\n" for i in range(120))
    kcat(kbroker, "-P", "-t", topic, "-p", "2", "-K", ":", "-X", "acks=1", input=lines)
    assert len(consume_until(kbroker, topic, 2, 120)) == 120
    text = kbroker.metrics()
    produce = metric_values(text, "strata_kafka_requests_total", api="Produce")
    assert produce and produce[0] > 0, produce
    fetch = metric_values(text, "strata_kafka_requests_total", api="Fetch")
    assert fetch and fetch[0] > 0, fetch
    assert metric_values(text, "strata_log_end_offset", topic=topic, partition="2") == [120]
    for p in (0, 1, 3):
        assert metric_values(text, "strata_log_end_offset", topic=topic, partition=str(p)) == [0]
