"""Tiered storage end to end: sealed segments go to the object store, old offsets are
served from it (through the block cache), retention and topic deletion remove objects,
and an object-store outage neither loses data nor stops producers (until the cap).

Every test that can runs against both stores Strata supports (the `objstore` fixture):
the local-directory default (`file://<data-dir>/objects`) and a real S3 server (one Ceph
radosgw for the session, scripts/rgw.sh, a fresh bucket per test). Outage tests need the
S3 server (a directory cannot go away).

Record contents are a function of (partition, offset) (see `payload`), so even hundreds of
megabytes are checked byte for byte without keeping them in memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from strata_helpers import (
    HOUR_MS,
    assign_consumer,
    consume_all,
    file_sizes,
    metric_values,
    now_ms,
    parse_metrics,
    partition_dirs,
    unique,
    wait_until,
)

MiB = 1024 * 1024
FAST_RETENTION = {"STRATA_KAFKA_LOG_RETENTION_CHECK_INTERVAL_MS": "500"}


# -- object stores -----------------------------------------------------------------------


class LocalObjects:
    """The default store: a directory under the broker's data directory."""

    kind = "file"
    prefix = ""

    def env(self) -> dict[str, str]:
        return {}

    def root(self, broker) -> Path:
        return broker.data_dir / "objects"

    def keys(self, broker) -> dict[str, int]:
        root = self.root(broker)
        return {str(p.relative_to(root)): size for p, size in file_sizes(root, recursive=True).items()}

    def get(self, broker, key: str) -> bytes:
        return (self.root(broker) / key).read_bytes()

    def put(self, broker, key: str, data: bytes) -> None:
        path = self.root(broker) / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def cleanup(self) -> None:
        pass


class RgwObjects:
    """A fresh bucket on the session's radosgw; the broker writes under the prefix
    `strata/`, so keys are also checked to come back relative to it."""

    kind = "rgw"
    prefix = "strata/"

    def __init__(self, gw):
        self.gw = gw
        self.bucket = f"tier-{uuid.uuid4().hex[:12]}"
        self.s3 = gw.s3_client(connect_timeout=5, read_timeout=30, retries={"total_max_attempts": 3})
        self.s3.create_bucket(Bucket=self.bucket)

    def env(self) -> dict[str, str]:
        return {
            "STRATA_OBJECT_STORE": f"s3://{self.bucket}/strata",
            "STRATA_S3_ENDPOINT": self.gw.endpoint,
            "STRATA_S3_REGION": self.gw.region,
            "STRATA_S3_ALLOW_HTTP": "true",
            "STRATA_S3_PATH_STYLE": "true",
            "AWS_ACCESS_KEY_ID": self.gw.access_key,
            "AWS_SECRET_ACCESS_KEY": self.gw.secret_key,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def _all(self) -> dict[str, int]:
        out = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for o in page.get("Contents", []):
                out[o["Key"]] = o["Size"]
        return out

    def keys(self, broker=None) -> dict[str, int]:
        everything = self._all()
        stray = [k for k in everything if not k.startswith(self.prefix)]
        assert not stray, f"objects outside the prefix {self.prefix}: {stray[:10]}"
        return {k[len(self.prefix):]: n for k, n in everything.items()}

    def get(self, broker, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()

    def put(self, broker, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def cleanup(self) -> None:
        if self.gw.paused:
            self.gw.resume()
        keys = list(self._all())
        for i in range(0, len(keys), 1000):
            self.s3.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True},
            )
        self.s3.delete_bucket(Bucket=self.bucket)


def _kill_brokers(request) -> None:
    """Brokers of the test are killed before its bucket is emptied (they may still be
    uploading)."""
    for b in getattr(request.node, "_strata_brokers", []):
        b.cleanup()


@pytest.fixture(params=["file", "rgw"])
def objstore(request):
    if request.param == "file":
        store = LocalObjects()
    else:
        store = RgwObjects(request.getfixturevalue("rgw"))
    yield store
    _kill_brokers(request)
    store.cleanup()


@pytest.fixture
def rgw_store(request, rgw):
    store = RgwObjects(rgw)
    yield store
    _kill_brokers(request)
    store.cleanup()


# -- records -------------------------------------------------------------------------------

POOL = random.Random(20240611).randbytes(4 * MiB)


def payload(p: int, offset: int, size: int) -> tuple[bytes, bytes]:
    """The key and value of the record at `offset` of partition `p`: distinct everywhere."""
    key = b"p%02d-o%09d" % (p, offset)
    start = (offset * 7919 + p * 104729) % (len(POOL) - size)
    value = key + POOL[start : start + size - len(key)]
    return key, value


def producer(broker, **extra) -> Producer:
    conf = {
        "bootstrap.servers": broker.bootstrap,
        "enable.idempotence": False,
        "acks": "all",
        "linger.ms": 20,
        # Batches of at most 64 KiB (librdkafka's default is ~1 MB), so that segments of a
        # few hundred KiB hold several batches and roll near segment.bytes.
        "batch.size": 65536,
    }
    conf.update(extra)
    return Producer(conf)


class Produced:
    """What one producer run delivered: per partition, the next offset (records are
    produced to explicit partitions in order, one producer, so offsets are dense)."""

    def __init__(self, partitions: int):
        self.ends = {p: 0 for p in range(partitions)}
        self.errors: list = []
        self.bytes = 0


def produce(
    broker,
    topic: str,
    partitions: int,
    per_partition: int,
    size: int,
    start: dict[int, int] | None = None,
    timestamp=None,
    pacer=None,
    **extra,
) -> Produced:
    """Produces `per_partition` records of `size` bytes to each partition, continuing at
    the offsets in `start`, and asserts that every one was delivered at the offset its
    content was made for. `timestamp(p, offset)` gives explicit CreateTimes; `pacer(prod)`
    is called every 2000 records (to hold the producer back)."""
    prod = producer(broker, **extra)
    start = start or {p: 0 for p in range(partitions)}
    out = Produced(partitions)
    out.ends = dict(start)
    wrong: list = []

    def on_delivery(err, m):
        if err is not None:
            out.errors.append(err)
        elif m.key() != payload(m.partition(), m.offset(), size)[0]:
            wrong.append((m.partition(), m.offset(), m.key()))

    n = 0
    remaining = -1
    try:
        for i in range(per_partition):
            for p in range(partitions):
                offset = start[p] + i
                key, value = payload(p, offset, size)
                kwargs = {}
                if timestamp is not None:
                    kwargs["timestamp"] = timestamp(p, offset)
                while True:
                    try:
                        prod.produce(topic, value=value, key=key, partition=p,
                                     on_delivery=on_delivery, **kwargs)
                        break
                    except BufferError:
                        prod.poll(0.05)
                n += 1
                out.bytes += len(value) + len(key)
                if n % 2000 == 0:
                    prod.poll(0)
                    if pacer is not None:
                        pacer(prod)
        remaining = prod.flush(120)
    finally:
        # A failing test keeps its frames: do not leave a producer retrying in them.
        prod.purge()
        prod = None
    assert remaining == 0, f"{remaining} records still undelivered after 120 s"
    assert not out.errors, f"delivery errors: {out.errors[:5]}"
    assert not wrong, f"records delivered at other offsets than produced for: {wrong[:5]}"
    out.ends = {p: start[p] + per_partition for p in range(partitions)}
    return out


def consume_and_compare(
    broker, topic: str, size: int, ends: dict[int, int], starts: dict[int, int] | None = None,
    timeout: float = 180, **extra,
) -> int:
    """Reads every partition from `starts` (default 0) to `ends` and compares every record
    (offset, key, value) with what was produced. Returns the record bytes read."""
    starts = starts or {p: 0 for p in ends}
    c = assign_consumer(broker, **extra)
    read = 0
    try:
        c.assign([TopicPartition(topic, p, starts[p]) for p in ends])
        nxt = dict(starts)
        deadline = time.monotonic() + timeout
        while any(nxt[p] < ends[p] for p in ends):
            assert time.monotonic() < deadline, (
                f"timed out reading {topic}: at {nxt}, want {ends}"
            )
            for m in c.consume(num_messages=5000, timeout=0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise AssertionError(f"consumer error on {topic}[{m.partition()}]: {err}")
                p, o = m.partition(), m.offset()
                assert o == nxt[p], f"{topic}[{p}]: offset {o} read, {nxt[p]} expected next"
                key, value = payload(p, o, size)
                assert m.key() == key, f"{topic}[{p}]@{o}: key {m.key()!r} != {key!r}"
                if m.value() != value:
                    got = m.value() or b""
                    at = next((i for i, (a, b) in enumerate(zip(got, value)) if a != b), min(len(got), len(value)))
                    raise AssertionError(
                        f"{topic}[{p}]@{o}: value differs at byte {at} ({len(got)} bytes read, {len(value)} produced)"
                    )
                read += len(key) + len(value)
                nxt[p] = o + 1
        return read
    finally:
        c.close()


def first_error(c: Consumer, timeout: float = 20) -> KafkaError:
    """The first consumer error other than end-of-partition; fails on a message."""
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, "no consumer error"
        for m in c.consume(10, timeout=0.2):
            assert m.error() is not None, f"got a message at offset {m.offset()}"
            if m.error().code() != KafkaError._PARTITION_EOF:
                return m.error()


# -- broker helpers -------------------------------------------------------------------------


def admin(broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def create_topic(broker, name: str, partitions: int, config: dict[str, str]) -> None:
    a = admin(broker)  # the futures need their client alive
    futures = a.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config)],
        operation_timeout=10,
    )
    futures[name].result(timeout=30)


def set_topic_config(broker, topic: str, name: str, value: str) -> None:
    res = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)],
    )
    a = admin(broker)
    a.incremental_alter_configs([res])[res].result(timeout=30)


def delete_topic(broker, topic: str) -> None:
    a = admin(broker)
    a.delete_topics([topic], operation_timeout=10)[topic].result(timeout=30)


def delete_records(broker, topic: str, p: int, before: int) -> int:
    """DeleteRecords; returns the new low watermark."""
    a = admin(broker)
    (fut,) = a.delete_records([TopicPartition(topic, p, before)]).values()
    return fut.result(timeout=30).low_watermark


def watermarks(broker, topic: str, p: int) -> tuple[int, int]:
    c = assign_consumer(broker)
    try:
        return c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
    finally:
        c.close()


def metric(broker, name: str, **labels: str) -> float:
    return sum(metric_values(broker.metrics(), name, **labels))


def topic_id(broker, topic: str) -> str:
    dirs = partition_dirs(broker.data_dir, topic, 0)
    assert dirs, f"no log directory for {topic}"
    return dirs[0].parent.name


def listed_segments(store, broker, tid: str) -> dict[int, list[int]]:
    """Per partition, the base offsets of the topic's segments that are in the store with
    both objects (.seg and .idx), as listed with the store's own API (whether or not the
    manifest names them)."""
    seen: dict[tuple[int, int, str, str], set[str]] = {}
    for k in store.keys(broker):
        if not k.startswith(tid + "/"):
            continue
        _, part, name = k.split("/")
        stem, ext = name.rsplit(".", 1)
        base, epoch, upload = stem.split("-")
        seen.setdefault((int(part), int(base), epoch, upload), set()).add(ext)
    segs: dict[int, list[int]] = {}
    for (p, base, _, _), exts in sorted(seen.items()):
        if exts == {"seg", "idx"}:
            segs.setdefault(p, []).append(base)
    return segs


def manifest(store, broker, tid: str) -> dict[int, list[dict]]:
    """Per partition, the topic's manifest (its committed remote segments, oldest first)
    from the admin API, with keys made relative to the store's prefix: the API shows them
    as they are in the bucket, prefix included."""
    status, body = broker.http_get("/api/v1/partitions")
    assert status == 200, body
    out = {}
    for p in json.loads(body):
        if p["topic_id"] == tid:
            status, entries = broker.http_get(
                f"/api/v1/partitions/{p['topic']}/{p['partition']}/remote-segments")
            assert status == 200, entries
            entries = json.loads(entries)
            for e in entries:
                for field in ("key", "index_key"):
                    assert e[field].startswith(store.prefix), f"{e[field]} lacks the prefix {store.prefix}"
                    e[field] = e[field][len(store.prefix):]
            out[p["partition"]] = entries
    return out


def remote_segments(store, broker, tid: str, strict: bool = False) -> dict[int, list[int]]:
    """Per partition, the base offsets of the topic's segments in the manifest, each
    checked to be in the store (both objects, listed with the store's API). `strict`:
    the store holds no other objects of the topic either (none left behind by a failed
    upload attempt, none not yet deleted)."""
    # The manifest first: an entry is committed only after its objects are written, so
    # a listing made after it holds every object it names.
    entries_of = manifest(store, broker, tid)
    keys = set(store.keys(broker))
    segs: dict[int, list[int]] = {}
    named = set()
    for p, entries in entries_of.items():
        for e in entries:
            for k in (e["key"], e["index_key"]):
                assert k in keys, f"{tid}/{p}: the manifest names {k}, which is not in the store"
                named.add(k)
            if e["base_offset"] >= 0:
                segs.setdefault(p, []).append(e["base_offset"])
    if strict:
        others = sorted(k for k in keys if k.startswith(tid + "/") and k not in named)
        assert not others, f"{tid}: objects no manifest entry names: {others}"
    return segs


def segment_key(store, broker, tid: str, p: int, base: int) -> str:
    found = [e["key"] for e in manifest(store, broker, tid).get(p, []) if e["base_offset"] == base]
    assert len(found) == 1, (tid, p, base, found)
    return found[0]


def local_segments(broker, topic: str, p: int) -> list[tuple[int, int]]:
    """(base offset, size) of the partition's segment files, oldest first."""
    (d,) = partition_dirs(broker.data_dir, topic, p)
    return sorted((int(f.stem), size) for f, size in file_sizes(d, "*.log").items())


def sealed_local(broker, topic: str, p: int) -> list[tuple[int, int]]:
    """The local segments but the active (last) one, without empty ones."""
    return [s for s in local_segments(broker, topic, p)[:-1] if s[1] > 0]


def wait_all_uploaded(store, broker, topic: str, partitions: int, timeout: float = 90) -> dict[int, list[int]]:
    """Waits until every sealed local segment of the topic is in the store; returns the
    remote base offsets."""
    tid = topic_id(broker, topic)

    def done():
        remote = remote_segments(store, broker, tid)
        missing = {
            p: [b for b, _ in sealed_local(broker, topic, p) if b not in remote.get(p, [])]
            for p in range(partitions)
        }
        return ("done", remote) if not any(missing.values()) else None

    return wait_until(done, timeout, f"every sealed segment of {topic} to be uploaded", interval=0.5)[1]


def wait_uploaded_to(broker, topic: str, ends: dict[int, int], timeout: float = 30) -> None:
    """Waits until the object store holds each partition's records up to `ends[p]` (the
    active segments roll after segment.ms), as the admin API reports it."""
    def done():
        status, body = broker.http_get("/api/v1/partitions")
        assert status == 200, body
        remote = {p["partition"]: p["remote_log_end_offset"] for p in json.loads(body) if p["topic"] == topic}
        return all(remote.get(p) == end for p, end in ends.items())

    wait_until(done, timeout, f"{topic} to be uploaded up to {ends}", interval=0.5)


def assert_remote_equals_local(store, broker, topic: str, partitions: int) -> int:
    """Every sealed local segment is in the store with the same bytes. Returns how many."""
    tid = topic_id(broker, topic)
    remote_segments(store, broker, tid)
    n = 0
    for p in range(partitions):
        (d,) = partition_dirs(broker.data_dir, topic, p)
        for base, size in sealed_local(broker, topic, p):
            remote = store.get(broker, segment_key(store, broker, tid, p, base))
            local = (d / f"{base:020d}.log").read_bytes()
            assert remote == local, f"{topic}[{p}] segment {base}: remote {len(remote)} bytes != local {len(local)}"
            n += 1
    return n


# -- offload and replay ------------------------------------------------------------------------


def test_offload_200mb_and_replay_through_the_cache(broker_factory, objstore):
    """~200 MB into small segments: they are uploaded and deleted locally (the local log
    stays bounded), a consumer from offset 0 reads everything back byte for byte from the
    object store, and a second consumer replaying it is served by the cache."""
    partitions, size, per_partition = 8, 1024, 25_000
    segment, local_keep = 2 * MiB, 4 * MiB
    broker = broker_factory(env={
        **objstore.env(),
        **FAST_RETENTION,
        "STRATA_TIER_CACHE_MEMORY_BYTES": str(512 * MiB),
        "STRATA_TIER_CACHE_DISK_BYTES": str(512 * MiB),
    })
    topic = unique("offload")
    create_topic(broker, topic, partitions, {
        "segment.bytes": str(segment),
        "local.retention.bytes": str(local_keep),
    })

    # Hold the producer back while more than 24 MiB wait for the store, so the local log
    # must stay near its bound for the whole run (uploads keep up or the test fails).
    backlog_cap = 24 * MiB
    samples: list[tuple[int, float]] = []
    stop = threading.Event()

    def local_bytes() -> int:
        total = 0
        for p in range(partitions):
            for d in partition_dirs(broker.data_dir, topic, p):
                total += sum(file_sizes(d).values())
        return total

    def sample():
        while not stop.is_set():
            samples.append((local_bytes(), metric(broker, "strata_unuploaded_bytes")))
            stop.wait(0.5)

    def pacer(prod):
        assert prod.flush(60) == 0, "records undelivered after 60 s"
        deadline = time.monotonic() + 60
        while metric(broker, "strata_unuploaded_bytes") > backlog_cap:
            assert time.monotonic() < deadline, (
                f"uploads do not keep up: {metric(broker, 'strata_unuploaded_bytes')} bytes "
                "waited for the store for 60 s"
            )
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    try:
        produced = produce(broker, topic, partitions, per_partition, size, pacer=pacer)
    finally:
        produce_s = time.monotonic() - t0
    assert produced.bytes >= 200_000_000

    # Everything sealed gets uploaded, and local retention trims each partition.
    tid = topic_id(broker, topic)
    remote = wait_all_uploaded(objstore, broker, topic, partitions)
    bound = local_keep + 2 * segment + 256 * 1024  # plus the active segment, indexes
    wait_until(
        lambda: all(
            sum(s for _, s in local_segments(broker, topic, p)) <= bound for p in range(partitions)
        ),
        30,
        f"each partition's local segments to shrink to {bound} bytes",
        interval=0.5,
    )
    stop.set()
    sampler.join()
    # During the run: never more on disk than the local bound of every partition plus
    # what was waiting for the store (the backlog the producer was held at, plus what
    # it writes before the gauge, refreshed once a second, shows it: at most 24 MiB).
    worst = max(samples)
    print(f"largest local log during the run: {worst[0]} bytes; produced in {produce_s:.1f}s")
    assert worst[0] <= partitions * bound + backlog_cap + 24 * MiB, (
        f"local log grew to {worst[0]} bytes (bound {partitions * bound} + backlog {backlog_cap}); "
        f"samples: {samples[::10]}"
    )
    assert len(samples) >= 5, samples

    # The objects really are the segments: keys in the layout, relative to the prefix,
    # and each partition's local log now starts above 0 (older data is only remote).
    # Besides them, only the object naming the cluster the prefix belongs to.
    keys = objstore.keys(broker)
    assert "_strata/cluster-id" in keys, sorted(keys)[:10]
    stray = [k for k in keys if not k.startswith(tid + "/") and k != "_strata/cluster-id"]
    assert not stray, f"objects that are not this topic's segments: {stray[:10]}"
    for p in range(partitions):
        assert len(remote[p]) >= 8, f"partition {p}: only {len(remote[p])} remote segments"
        assert remote[p][0] == 0, f"partition {p}: the first remote segment starts at {remote[p][0]}"
        first_local = local_segments(broker, topic, p)[0][0]
        assert first_local > 0, f"partition {p}: local log still starts at 0"
        assert first_local in remote[p] or first_local > max(remote[p]), (p, first_local, remote[p])
        low, high = watermarks(broker, topic, p)
        assert (low, high) == (0, per_partition), (p, low, high)

    # First replay: from the object store.
    before = broker.metrics()
    m = lambda text, name, **l: sum(metric_values(text, name, **l))  # noqa: E731
    read1 = consume_and_compare(broker, topic, size, produced.ends)
    after1 = broker.metrics()
    from_store = m(after1, "strata_tier_read_bytes_total", source="object_store") - m(
        before, "strata_tier_read_bytes_total", source="object_store")
    from_cache1 = m(after1, "strata_tier_read_bytes_total", source="cache") - m(
        before, "strata_tier_read_bytes_total", source="cache")
    from_local1 = sum(
        m(after1, "strata_tier_read_bytes_total", source=src) - m(before, "strata_tier_read_bytes_total", source=src)
        for src in ("local", "memory")
    )
    fetched1 = m(after1, "strata_kafka_fetch_bytes_total") - m(before, "strata_kafka_fetch_bytes_total")
    gets1 = m(after1, "strata_objstore_requests_total", op="get_range", outcome="ok") - m(
        before, "strata_objstore_requests_total", op="get_range", outcome="ok")
    assert read1 >= produced.bytes, (read1, produced.bytes)
    assert from_store > 0.1 * read1, (
        f"only {from_store} record bytes came from the object store for {read1} read"
    )
    assert gets1 > 0, "no ranged GET in the first replay"
    assert m(after1, "strata_objstore_requests_total", op="get_range", outcome="error") == 0

    # Second replay, another consumer: the same range from the cache.
    read2 = consume_and_compare(broker, topic, size, produced.ends)
    after2 = broker.metrics()
    assert read2 == read1
    gets2 = m(after2, "strata_objstore_requests_total", op="get_range", outcome="ok") - m(
        after1, "strata_objstore_requests_total", op="get_range", outcome="ok")
    hits2 = m(after2, "strata_tier_cache_requests_total", result="hit") - m(
        after1, "strata_tier_cache_requests_total", result="hit")
    store2 = m(after2, "strata_tier_read_bytes_total", source="object_store") - m(
        after1, "strata_tier_read_bytes_total", source="object_store")
    cache2 = m(after2, "strata_tier_read_bytes_total", source="cache") - m(
        after1, "strata_tier_read_bytes_total", source="cache")
    assert gets2 <= max(2, gets1 // 50), (
        f"the second replay issued {gets2} ranged GETs (the first {gets1}): not served by the cache"
    )
    assert hits2 > 0 and cache2 > 0.5 * from_store, (hits2, cache2, from_store)
    assert store2 <= 0.02 * from_store, (store2, from_store)

    # strata_tier_read_bytes_total counts record bytes served to fetches, once: on the
    # first replay memory + local + cache + object_store add up to what the fetches
    # returned.
    counted = from_store + from_cache1 + from_local1
    assert 0.9 * fetched1 <= counted <= 1.25 * fetched1, (
        f"strata_tier_read_bytes_total grew by {counted:.0f} (object_store {from_store:.0f}, "
        f"cache {from_cache1:.0f}, local {from_local1:.0f}) while fetches returned {fetched1:.0f} bytes"
    )


def test_large_segments_are_uploaded_in_parts(broker_factory, objstore):
    """Segments above strata.tier.multipart-part-bytes go up as multipart uploads (parts
    of 5 MiB, the S3 minimum), arrive byte for byte, and read back from the store."""
    size = 4000
    broker = broker_factory(env={
        **objstore.env(),
        **FAST_RETENTION,
        "STRATA_TIER_MULTIPART_PART_BYTES": str(5 * MiB),
    })
    topic = unique("multipart")
    create_topic(broker, topic, 1, {"segment.bytes": str(12 * MiB), "segment.ms": "2000"})
    produced = produce(broker, topic, 1, 7000, size, **{"batch.size": 262144})
    wait_uploaded_to(broker, topic, produced.ends)
    remote = wait_all_uploaded(objstore, broker, topic, 1)
    sizes = [s for _, s in sealed_local(broker, topic, 0)]
    big = [s for s in sizes if s > 5 * MiB]
    assert len(big) >= 2, sizes
    assert metric(broker, "strata_objstore_requests_total", op="put_multipart", outcome="ok") == len(big)
    assert metric(broker, "strata_objstore_requests_total", op="complete_multipart", outcome="ok") == len(big)
    assert metric(broker, "strata_objstore_requests_total", op="upload_part", outcome="error") == 0
    assert assert_remote_equals_local(objstore, broker, topic, 1) == len(sizes) == len(remote[0])
    remote_segments(objstore, broker, topic_id(broker, topic), strict=True)
    # Read back from the store: drop the local copies first.
    set_topic_config(broker, topic, "local.retention.bytes", "0")
    wait_until(lambda: local_segments(broker, topic, 0)[0][0] == produced.ends[0], 30,
               "every uploaded segment to be deleted locally", interval=0.5)
    before = metric(broker, "strata_tier_read_bytes_total", source="object_store")
    consume_and_compare(broker, topic, size, produced.ends)
    assert metric(broker, "strata_tier_read_bytes_total", source="object_store") > before


def test_read_committed_replays_from_the_store_skip_aborted_transactions(broker_factory, objstore):
    """Transactions committed and aborted, uploaded, their local copies deleted and the
    broker restarted (so nothing local remembers them): a read_committed replay from
    offset 0 out of the object store returns exactly the committed records, because
    each segment's manifest entry carries the transactions its abort markers ended."""
    broker = broker_factory(env={**objstore.env(), **FAST_RETENTION})
    topic = unique("tieredtxn")
    create_topic(broker, topic, 1, {"segment.bytes": str(64 * 1024), "segment.ms": "1000"})
    p = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": unique("tid"), "linger.ms": 5})
    p.init_transactions(60)
    committed = []
    for t in range(6):
        p.begin_transaction()
        values = [b"txn%d-%03d-" % (t, i) + b"x" * 500 for i in range(60)]
        for v in values:
            p.produce(topic, value=v, partition=0)
        assert p.flush(30) == 0
        if t % 2 == 0:
            p.commit_transaction(30)
            committed += values
        else:
            p.abort_transaction(30)
    end = watermarks(broker, topic, 0)[1]
    wait_uploaded_to(broker, topic, {0: end}, timeout=60)
    set_topic_config(broker, topic, "local.retention.bytes", "0")
    wait_until(lambda: local_segments(broker, topic, 0)[0][0] == end, 30,
               "every uploaded segment to be deleted locally", interval=0.5)
    broker.restart()

    before = metric(broker, "strata_tier_read_bytes_total", source="object_store")
    level = {"isolation.level": "read_committed"}
    got = consume_all(broker, topic, {0: end}, **level)[0]
    assert [m.value() for m in got] == committed
    assert metric(broker, "strata_tier_read_bytes_total", source="object_store") > before
    # read_uncommitted sees the aborted records too.
    everything = consume_all(broker, topic, {0: end}, **{"isolation.level": "read_uncommitted"})[0]
    assert len(everything) == 6 * 60


@pytest.mark.parametrize("restart", ["sigterm", "kill"])
def test_the_replay_cache_survives_a_restart(broker_factory, rgw_store, restart):
    """A tiered topic read back from the object store, then the broker restarted (SIGTERM,
    or SIGKILL after the reads settled): reading it again is served from the cache's
    disk tier, without a single GET to the store."""
    size = 1000
    broker = broker_factory(env={**rgw_store.env(), **FAST_RETENTION})
    topic = unique("warmcache")
    create_topic(broker, topic, 1, {"segment.bytes": str(256 * 1024), "segment.ms": "2000",
                                    "local.retention.bytes": "0"})
    produced = produce(broker, topic, 1, 3000, size)
    wait_uploaded_to(broker, topic, produced.ends)
    wait_until(lambda: local_segments(broker, topic, 0)[0][0] == produced.ends[0], 30,
               "the uploaded segments to be deleted locally", interval=0.5)
    consume_and_compare(broker, topic, size, produced.ends)
    assert metric(broker, "strata_tier_read_bytes_total", source="object_store") > 1_000_000
    if restart == "sigterm":
        assert broker.stop() == 0
    else:
        # The cache's disk writes are asynchronous: SIGKILL once they have all landed.
        wait_until(lambda: metric(broker, "strata_tier_cache_disk_pending_blocks") == 0, 30,
                   "the cache's disk tier to have every fetched block", interval=0.2)
        broker.kill()
    broker.start()
    consume_and_compare(broker, topic, size, produced.ends)
    # (The broker's own start-up GETs, of the cluster id, are not the topic's.)
    gets = sum(metric(broker, "strata_objstore_topic_requests_total", topic=topic, op=op) for op in ("get", "get_range"))
    assert gets == 0, f"{gets} GETs of the topic's objects after the restart: the cache did not survive it"
    assert metric(broker, "strata_tier_read_bytes_total", source="object_store") == 0
    assert metric(broker, "strata_tier_read_bytes_total", source="cache") > 1_000_000
    assert metric(broker, "strata_tier_cache_requests_total", result="hit") > 0
    assert metric(broker, "strata_tier_cache_requests_total", result="miss") == 0


def test_a_lost_local_log_is_served_from_the_store(broker_factory, objstore):
    """The partition's local directory is lost while the broker is down (metadata
    survives): after a restart the log continues where the uploaded data ends, every
    uploaded record reads back from the store, and new records follow."""
    size = 1000
    broker = broker_factory(env={**objstore.env(), **FAST_RETENTION})
    topic = unique("lost")
    create_topic(broker, topic, 2, {"segment.bytes": str(128 * 1024), "segment.ms": "2000"})
    produced = produce(broker, topic, 2, 600, size)
    wait_uploaded_to(broker, topic, produced.ends)
    wait_all_uploaded(objstore, broker, topic, 2)
    broker.stop()
    for p in range(2):
        (d,) = partition_dirs(broker.data_dir, topic, p)
        shutil.rmtree(d)
    broker.start()
    for p in range(2):
        assert watermarks(broker, topic, p) == (0, produced.ends[p]), p
    consume_and_compare(broker, topic, size, produced.ends)
    more = produce(broker, topic, 2, 100, size, start=produced.ends)
    consume_and_compare(broker, topic, size, more.ends)


# -- object-store outages ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["stop", "restart"])
def test_outage_producing_continues_and_uploads_resume(broker_factory, rgw_store, mode):
    """The store goes away (hung: SIGSTOP; refused: radosgw stopped) during a produce run:
    acks=all producing goes on, uploads resume when it is back, nothing is lost and the
    objects are the segments byte for byte."""
    partitions, size = 2, 1000
    broker = broker_factory(env={**rgw_store.env(), **FAST_RETENTION})
    topic = unique("outage")
    create_topic(broker, topic, partitions, {
        "segment.bytes": str(256 * 1024),
        "segment.ms": "3000",
        "local.retention.bytes": "-1",
    })
    first = produce(broker, topic, partitions, 1000, size)
    wait_all_uploaded(rgw_store, broker, topic, partitions)
    uploads_before = metric(broker, "strata_tier_uploads_total")
    errors_before = metric(broker, "strata_tier_upload_errors_total")

    rgw_store.gw.pause(mode)
    t0 = time.monotonic()
    second = produce(broker, topic, partitions, 4000, size, start=first.ends)
    took = time.monotonic() - t0
    assert took < 30, f"producing 8 MB took {took:.1f}s with the store down"
    # Nothing can be uploaded meanwhile: the backlog shows.
    backlog = wait_until(
        lambda: (lambda v: v if v >= 6 * MiB else None)(metric(broker, "strata_unuploaded_bytes")),
        10,
        "strata_unuploaded_bytes to show the backlog",
    )
    sealed = sum(len(sealed_local(broker, topic, p)) for p in range(partitions))
    assert sealed >= 20, sealed
    wait_until(
        lambda: metric(broker, "strata_unuploaded_segments") >= 20,
        5,
        "strata_unuploaded_segments to count the backlog",
    )
    if mode == "restart":
        # Connection refused fails fast: attempts fail and are counted.
        wait_until(
            lambda: metric(broker, "strata_tier_upload_errors_total") > errors_before,
            30,
            "failed upload attempts to be counted",
        )
    time.sleep(max(0.0, 8 - (time.monotonic() - t0)))
    assert metric(broker, "strata_tier_uploads_total") == uploads_before, "uploads during the outage"
    rgw_store.gw.resume()

    # Back: every segment goes up (the active ones roll after segment.ms), the gauge
    # drains to zero, and the store holds the local segments byte for byte.
    wait_until(
        lambda: metric(broker, "strata_unuploaded_bytes") == 0,
        120,
        f"strata_unuploaded_bytes to drain after the outage (was {backlog})",
        interval=0.5,
    )
    wait_all_uploaded(rgw_store, broker, topic, partitions, timeout=30)
    n = assert_remote_equals_local(rgw_store, broker, topic, partitions)
    assert n >= 30, n
    assert metric(broker, "strata_tier_uploads_total") - uploads_before >= 20
    assert metric(broker, "strata_unuploaded_segments") == 0
    consume_and_compare(broker, topic, size, second.ends)


def object_store_health(broker) -> dict:
    code, body = broker.http_get("/api/v1/health")
    assert code == 200, body
    return json.loads(body)["object_store"]


def test_an_outage_shows_within_seconds(broker_factory, rgw_store):
    """A hung store (radosgw paused) shows within 10 s: in the metrics (every failed
    attempt counted), in one log line, and on /api/v1/health; its end shows the same way.
    (Before, retries inside the S3 client hid the first failure for minutes.)"""
    broker = broker_factory(env={**rgw_store.env(), **FAST_RETENTION})
    topic = unique("visible")
    create_topic(broker, topic, 1, {"segment.bytes": str(64 * 1024), "segment.ms": "1000"})
    first = produce(broker, topic, 1, 300, 1000)
    wait_all_uploaded(rgw_store, broker, topic, 1)
    assert object_store_health(broker)["available"] is True
    assert metric(broker, "strata_objstore_up") == 1
    failed_before = metric(broker, "strata_objstore_requests_total", outcome="timeout") + metric(
        broker, "strata_objstore_requests_total", outcome="error")

    with rgw_store.gw.outage("stop"):
        t0 = time.monotonic()
        # Keep the uploader busy, as a broker under load would be.
        produce(broker, topic, 1, 200, 1000, start=first.ends)
        wait_until(lambda: metric(broker, "strata_objstore_up") == 0, 10 - (time.monotonic() - t0),
                   "strata_objstore_up to drop to 0 within 10 s of the pause")
        took = time.monotonic() - t0
        assert took < 10, took
        failed = metric(broker, "strata_objstore_requests_total", outcome="timeout") + metric(
            broker, "strata_objstore_requests_total", outcome="error")
        assert failed > failed_before, (failed, failed_before)
        health = object_store_health(broker)
        assert health["available"] is False and health["last_error"], health
        assert broker.log_text().count("object store request failed") == 1, broker.log_tail()
        # More failures are counted, not logged.
        wait_until(lambda: object_store_health(broker)["failed_requests"] >= 2, 15,
                   "a second failed request to be counted")
        assert broker.log_text().count("object store request failed") == 1, broker.log_tail()
    t1 = time.monotonic()
    wait_until(lambda: metric(broker, "strata_objstore_up") == 1, 15, "the store to count as back")
    assert time.monotonic() - t1 < 15
    assert "object store is answering again" in broker.log_text(), broker.log_tail()
    assert object_store_health(broker)["available"] is True


@contextlib.contextmanager
def small_disk_broker(broker_factory, rgw_store):
    """A started broker tiering to `rgw_store` whose data directory is a 64 MiB tmpfs
    (16 MiB of it for the cache, 4 MiB kept in reserve); unmounted at the end."""
    broker = broker_factory(env={
        **rgw_store.env(), **FAST_RETENTION,
        "STRATA_TIER_CACHE_DISK_BYTES": str(16 << 20),
        "STRATA_WAL_DISK_RESERVE_BYTES": str(4 << 20),
    }, start=False)
    broker.data_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(broker.data_dir)], check=True)
    try:
        broker.start()
        yield broker
    finally:
        if broker.running():
            broker.kill()
        subprocess.run(["umount", str(broker.data_dir)], check=False)


def test_an_outage_on_a_small_disk_throttles_producers_before_the_disk_fills(broker_factory, rgw_store):
    """The store is down and the data directory is a 64 MiB file system: producers to a
    tiered topic get the retriable KAFKA_STORAGE_ERROR while there is still room (the
    unuploaded-bytes cap follows the free space), the disk never fills, and everything
    acknowledged is there once the store is back."""
    with small_disk_broker(broker_factory, rgw_store) as broker:
        topic = unique("smalldisk")
        create_topic(broker, topic, 1, {"segment.bytes": str(1 << 20), "segment.ms": "2000"})
        acked: dict[int, bytes] = {}
        refused: list = []
        with rgw_store.gw.outage("restart"):
            prod = producer(broker, **{"acks": "all", "enable.idempotence": False, "retries": 0,
                                       "request.timeout.ms": 4000, "max.in.flight": 1, "linger.ms": 5})

            def on_delivery(err, m):
                if err is None:
                    acked[m.offset()] = m.value()
                else:
                    refused.append(err)

            try:
                for rnd in range(200):  # at most 200 MiB: far more than the disk holds
                    for i in range(1000):
                        value = b"%08d-%04d-" % (rnd, i) + b"x" * 1000
                        while True:
                            try:
                                prod.produce(topic, value=value, partition=0, on_delivery=on_delivery)
                                break
                            except BufferError:
                                prod.poll(0.05)
                    prod.flush(60)
                    if refused:
                        break
            finally:
                prod.purge()
                prod.close(0)
            assert refused, "producing never stopped"
            assert all(e.code() == KafkaError.KAFKA_STORAGE_ERROR for e in refused), refused[:3]
            assert len(acked) > 10_000, len(acked)
            st = os.statvfs(broker.data_dir)
            assert st.f_bavail * st.f_frsize > 2 << 20, "the disk kept room"
            log = broker.log_text()
            assert "No space left on device" not in log, broker.log_tail()
            assert "limited_by=\"the data directory's free space\"" in log, broker.log_tail()
        wait_until(lambda: metric(broker, "strata_unuploaded_bytes") == 0, 120,
                   "the backlog to upload", interval=0.5)
        c = assign_consumer(broker)
        try:
            c.assign([TopicPartition(topic, 0, 0)])
            got: dict[int, bytes] = {}
            deadline = time.monotonic() + 120
            while len(got) < max(acked) + 1 and time.monotonic() < deadline:
                for m in c.consume(num_messages=5000, timeout=0.5):
                    if m.error() is None:
                        got[m.offset()] = m.value()
        finally:
            c.close()
        missing = [o for o, v in acked.items() if got.get(o) != v]
        assert not missing, f"{len(missing)} acknowledged records lost, first {missing[:5]}"
        # Uploaded data is a cache on a tight disk: the broker made room for producers.
        produce(broker, topic, 1, 100, 1000, start={0: max(acked) + 1})
        assert broker.stop() == 0


def test_on_a_small_disk_active_segments_are_sealed_at_the_disk_cap(broker_factory, rgw_store):
    """A 64 MiB data directory, a healthy store and a topic with 1 GiB segments and no
    segment.ms: the unuploaded-bytes cap follows the free space, and reaching it seals the
    active segment for upload, so producing 100 MB goes through (no producer is held
    back until segment.ms)."""
    with small_disk_broker(broker_factory, rgw_store) as broker:
        topic = unique("bigsegments")
        create_topic(broker, topic, 1, {"segment.bytes": str(1 << 30), "local.retention.bytes": "0"})
        # Each round waits for its acks; a refusal fails the produce.
        produced = produce(broker, topic, 1, 100_000, 1000, **{"request.timeout.ms": 30000,
                                                               "message.timeout.ms": 120000})
        assert produced.ends[0] == 100_000
        assert "limited_by=\"the data directory's free space\"" in broker.log_text(), broker.log_tail()
        assert metric(broker, "strata_tier_uploads_total") >= 2
        assert broker.stop() == 0


def test_restart_with_unuploaded_segments_uploads_them(broker_factory, rgw_store):
    """Sealed segments pile up while the store is down; the broker is stopped, the store
    comes back, and the restarted broker uploads them."""
    partitions, size = 2, 1000
    broker = broker_factory(env={**rgw_store.env(), **FAST_RETENTION})
    topic = unique("restart")
    create_topic(broker, topic, partitions, {
        "segment.bytes": str(256 * 1024),
        "local.retention.bytes": "-1",
    })
    rgw_store.gw.pause("restart")
    produced = produce(broker, topic, partitions, 3000, size)
    wait_until(
        lambda: metric(broker, "strata_unuploaded_segments") >= 20,
        10,
        "sealed segments to pile up",
    )
    pending = sum(len(sealed_local(broker, topic, p)) for p in range(partitions))
    assert pending >= 20, pending
    t0 = time.monotonic()
    broker.stop()
    assert time.monotonic() - t0 < 20, "shutdown with the store down took long"
    tid = topic_id(broker, topic)
    rgw_store.gw.resume()
    assert not [k for k in rgw_store.keys() if k.startswith(tid + "/")], "objects written during the outage"

    broker.start()
    wait_all_uploaded(rgw_store, broker, topic, partitions, timeout=60)
    assert metric(broker, "strata_tier_uploads_total") >= pending
    assert assert_remote_equals_local(rgw_store, broker, topic, partitions) >= pending
    wait_until(
        lambda: metric(broker, "strata_unuploaded_segments") <= partitions,
        10,
        "only active segments to remain unuploaded",
    )
    consume_and_compare(broker, topic, size, produced.ends)


def test_produce_refused_at_the_unuploaded_cap(broker_factory, rgw_store):
    """With strata.wal.max-unuploaded-bytes = 2 MiB and the store down, produce requests
    are held, then refused with KAFKA_STORAGE_ERROR (counted); a producer that retries
    gets its record in once the store is back; refused records are not in the log."""
    size = 1000
    cap = 2 * MiB
    broker = broker_factory(env={
        **rgw_store.env(),
        **FAST_RETENTION,
        "STRATA_WAL_MAX_UNUPLOADED_BYTES": str(cap),
    })
    topic = unique("cap")
    create_topic(broker, topic, 1, {"segment.bytes": str(256 * 1024), "local.retention.bytes": "-1"})
    rgw_store.gw.pause("restart")

    # No retries: every answer is seen. The broker holds a request for half its timeout.
    # One request in flight: the broker answers a connection's requests one at a time, so
    # a second one would wait out the first one's hold and time out in the client.
    prod = producer(broker, retries=0, **{"linger.ms": 0, "request.timeout.ms": 4000,
                                          "message.timeout.ms": 20000,
                                          "max.in.flight.requests.per.connection": 1})
    results: list = []
    sent = 0
    deadline = time.monotonic() + 60
    while not any(err is not None for err, _ in results):
        assert time.monotonic() < deadline, (
            f"no refusal after {sent} records ({sent * size} bytes) with a {cap}-byte cap; "
            f"strata_unuploaded_bytes={metric(broker, 'strata_unuploaded_bytes')}"
        )
        for _ in range(100):
            key, value = payload(0, sent, size)
            prod.produce(topic, key=key, value=value, partition=0,
                         on_delivery=lambda err, m: results.append((err, m.offset())))
            sent += 1
        t0 = time.monotonic()
        assert prod.flush(30) == 0
        flush_s = time.monotonic() - t0
        # About 1 MB/s: the broker checks the backlog once a second, so a faster
        # producer overshoots the cap by what it writes in that second.
        time.sleep(0.1)
    errors = [err for err, _ in results if err is not None]
    accepted = [off for err, off in results if err is None]
    codes = sorted({e.name() for e in errors})
    assert codes == ["KAFKA_STORAGE_ERROR"], codes
    first_refused = next(i for i, (err, _) in enumerate(results) if err is not None)
    assert all(err is not None for err, _ in results[first_refused:]), "accepted after a refusal"
    assert accepted == list(range(len(accepted))), "accepted records are not at offsets 0.."
    assert len(accepted) * size >= 0.9 * cap, f"refused after only {len(accepted)} records"
    assert len(accepted) * size <= cap + 3 * MiB, f"{len(accepted)} records accepted over a {cap}-byte cap"
    assert flush_s >= 1.5, f"refused after {flush_s:.2f}s: the broker should hold the request first"
    assert metric(broker, "strata_tier_produce_throttled_total") >= 1
    assert metric(broker, "strata_unuploaded_bytes") >= cap
    assert watermarks(broker, topic, 0) == (0, len(accepted)), "refused records were written"
    # A local-only topic adds nothing to the backlog: its producers are not held back.
    local_only = unique("cap-local")
    create_topic(broker, local_only, 1, {"remote.storage.enable": "false"})
    throttled = metric(broker, "strata_tier_produce_throttled_total")
    produce(broker, local_only, 1, 20, size, retries=0, **{"request.timeout.ms": 4000})
    assert watermarks(broker, local_only, 0) == (0, 20)
    assert metric(broker, "strata_tier_produce_throttled_total") == throttled

    # A producer that retries (as librdkafka does for this error) gets in after the outage.
    retrying = producer(broker, **{"linger.ms": 0, "message.timeout.ms": 120000})
    reports: list = []
    key, value = payload(0, len(accepted), size)
    retrying.produce(topic, key=key, value=value, partition=0,
                     on_delivery=lambda err, m: reports.append((err, m.offset())))
    retrying.poll(5)
    assert reports == [], f"delivered while the store is still down: {reports}"
    rgw_store.gw.resume()
    assert retrying.flush(90) == 0
    assert reports == [(None, len(accepted))], reports

    wait_until(
        lambda: metric(broker, "strata_unuploaded_bytes") < cap,
        90,
        "the backlog to drain below the cap",
        interval=0.5,
    )
    end = len(accepted) + 1
    more = produce(broker, topic, 1, 500, size, start={0: end}, retries=0)
    consume_and_compare(broker, topic, size, more.ends)


def test_the_unuploaded_cap_does_not_block_a_healthy_store(broker_factory, objstore):
    """strata.wal.max-unuploaded-bytes bounds what waits for an unavailable store. With
    the store up, data that has not been uploaded only because it sits in active
    segments (not yet at segment.bytes, far from segment.ms) must not keep producers out:
    every record of a steady producer is accepted within its timeout."""
    cap = 2 * MiB
    broker = broker_factory(env={
        **objstore.env(),
        **FAST_RETENTION,
        "STRATA_WAL_MAX_UNUPLOADED_BYTES": str(cap),
    })
    topic = unique("cap-healthy")
    partitions = 4
    # Active segments may hold up to 1 MiB each: together more than the cap.
    create_topic(broker, topic, partitions, {"segment.bytes": str(MiB)})
    first = produce(broker, topic, partitions, 650, 1000)
    # No segment reached segment.bytes, yet together they exceed the cap: the broker
    # seals the active segments early and uploads them, and the backlog drains.
    tid = topic_id(broker, topic)
    remote = wait_until(
        lambda: (lambda r: r if all(r.get(p) for p in range(partitions)) else None)(
            remote_segments(objstore, broker, tid)),
        30,
        "every partition's early-sealed segment to be uploaded",
        interval=0.5,
    )
    assert all(remote[p][0] == 0 for p in range(partitions)), remote
    wait_until(
        lambda: metric(broker, "strata_unuploaded_bytes") < cap,
        30,
        "the unuploaded backlog to drain below the cap",
    )
    t0 = time.monotonic()
    more = produce(broker, topic, partitions, 100, 1000, start=first.ends,
                   **{"message.timeout.ms": 15000})
    took = time.monotonic() - t0
    assert took < 15, f"producing 400 KB took {took:.1f}s with a healthy store"
    assert metric(broker, "strata_tier_produce_throttled_total") == 0
    consume_and_compare(broker, topic, 1000, more.ends)


def fetch_storage_errors(broker) -> float:
    """Fetch responses' KAFKA_STORAGE_ERROR partition errors counted by the broker."""
    return sum(
        v for n, labels, v in parse_metrics(broker.metrics())
        if n == "strata_kafka_request_errors_total" and labels.get("api") == "Fetch"
        and "storage" in labels.get("error", "").lower().replace("_", "")
    )


@pytest.mark.parametrize("mode", ["restart", "stop"])
def test_remote_reads_fail_during_an_outage_then_resume(broker_factory, rgw_store, mode):
    """Offsets only in the object store cannot be read while it is down (refusing
    connections, or hung: "stop"): those partitions get KAFKA_STORAGE_ERROR (the consumer
    keeps its position, nothing is skipped) while a local partition in the same fetches
    is served throughout, and the same consumer reads everything once the store is back
    (failures are not cached)."""
    size = 1000
    broker = broker_factory(env={
        **rgw_store.env(),
        **FAST_RETENTION,
        "STRATA_TIER_REMOTE_FETCH_TIMEOUT_MS": "1500",
    })
    topic = unique("remote-outage")
    create_topic(broker, topic, 1, {
        "segment.bytes": str(64 * 1024),
        "local.retention.bytes": str(128 * 1024),
    })
    local_topic = unique("local-during-outage")
    create_topic(broker, local_topic, 1, {"remote.storage.enable": "false"})
    produced = produce(broker, topic, 1, 1000, size)
    wait_all_uploaded(rgw_store, broker, topic, 1)
    wait_until(lambda: local_segments(broker, topic, 0)[0][0] > 500, 30,
               "old segments to be deleted locally", interval=0.5)
    errors_before = fetch_storage_errors(broker)

    rgw_store.gw.pause(mode)
    c = assign_consumer(broker)
    try:
        c.assign([TopicPartition(topic, 0, 0), TopicPartition(local_topic, 0, 0)])
        local = produce(broker, local_topic, 1, 200, size)
        got, got_local = [], []
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            for m in c.consume(100, timeout=0.5):
                if m.error() is None:
                    (got_local if m.topic() == local_topic else got).append(m)
        assert got == [], f"read {len(got)} records from offset {got[0].offset()} with the store down"
        assert fetch_storage_errors(broker) > errors_before, "no fetch failed with KAFKA_STORAGE_ERROR"
        assert [m.offset() for m in got_local] == list(range(local.ends[0])), (
            f"the local partition was not served while the store was {mode}: "
            f"{len(got_local)} of {local.ends[0]} records"
        )
        rgw_store.gw.resume()
        nxt = 0
        deadline = time.monotonic() + 60
        while nxt < produced.ends[0]:
            assert time.monotonic() < deadline, f"stuck at offset {nxt} after the store came back"
            for m in c.consume(500, timeout=0.5):
                if m.error() is not None:
                    assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                    continue
                assert m.offset() == nxt, (m.offset(), nxt)
                assert (m.key(), m.value()) == payload(0, nxt, size), nxt
                nxt += 1
    finally:
        c.close()


# -- retention, timestamps, deletion on the object store ---------------------------------------


OLD = 2 * HOUR_MS


def remote_only_topic(broker, store, partitions: int = 1, old_records: int = 600,
                      fresh_records: int = 600, size: int = 1000):
    """A topic whose old records (2 h old, timestamps `ts(p, offset)`) are only in the
    object store. Returns (topic, ends, ts)."""
    topic = unique("remote")
    create_topic(broker, topic, partitions, {
        "segment.bytes": str(64 * 1024),
        "local.retention.bytes": str(128 * 1024),
    })
    base = now_ms() - OLD

    def ts(p: int, offset: int) -> int:
        if offset < old_records:
            return base + offset * 10 + p
        return now_ms_at_fresh + (offset - old_records) * 10 + p

    now_ms_at_fresh = now_ms()
    # The old records compressed: remote reads and time lookups see compressed batches.
    produce(broker, topic, partitions, old_records, size, timestamp=ts,
            **{"compression.type": "lz4"})
    produced = produce(broker, topic, partitions, fresh_records, size,
                       start={p: old_records for p in range(partitions)}, timestamp=ts)
    wait_all_uploaded(store, broker, topic, partitions)
    wait_until(
        lambda: all(local_segments(broker, topic, p)[0][0] > old_records // 2 for p in range(partitions)),
        30,
        "old segments to be deleted locally",
        interval=0.5,
    )
    return topic, produced.ends, ts


def test_list_offsets_by_timestamp_in_the_object_store(broker_factory, objstore):
    broker = broker_factory(env={**objstore.env(), **FAST_RETENTION})
    topic, ends, ts = remote_only_topic(broker, objstore, partitions=2)
    tid = topic_id(broker, topic)
    remote = remote_segments(objstore, broker, tid)

    def lookup(p: int, t: int) -> int:
        c = assign_consumer(broker)
        try:
            (r,) = c.offsets_for_times([TopicPartition(topic, p, t)], timeout=10)
            return r.offset
        finally:
            c.close()

    for p in range(2):
        local_start = local_segments(broker, topic, p)[0][0]
        assert local_start > 100 and local_start in remote[p], (p, local_start, remote[p])
        for offset in [0, 1, 57, 100, local_start // 2, local_start - 1]:
            assert lookup(p, ts(p, offset)) == offset, (p, offset, local_start)
            # between two records: the later one
            assert lookup(p, ts(p, offset) - 5) == offset, (p, offset)
        assert lookup(p, 0) == 0
        assert lookup(p, ts(p, local_start + 3)) == local_start + 3
        assert lookup(p, ts(p, ends[p] - 1)) == ends[p] - 1
        assert lookup(p, ts(p, ends[p] - 1) + 1) == -1

    # After a restart the manifest (in metadata) still maps old offsets to objects, and
    # nothing already uploaded is uploaded again.
    broker.stop()
    broker.start()
    for p in range(2):
        assert lookup(p, ts(p, 42)) == 42
    time.sleep(2.5)  # two upload rounds
    assert metric(broker, "strata_tier_uploads_total") == 0
    # (the one PUT is the start-up probe)
    assert metric(broker, "strata_objstore_requests_total", op="put", outcome="ok") <= 1
    consume_and_compare(broker, topic, 1000, ends)


def test_retention_deletes_objects_and_moves_the_log_start(broker_factory, objstore):
    broker = broker_factory(env={**objstore.env(), **FAST_RETENTION})
    topic, ends, ts = remote_only_topic(broker, objstore)
    tid = topic_id(broker, topic)
    remote = remote_segments(objstore, broker, tid)[0]
    old_records = 600
    # Retention keeps the segment holding the first fresh record and everything after.
    keep_from = max(b for b in remote if b <= old_records)
    assert keep_from > 0, remote
    deleted_before = metric(broker, "strata_tier_remote_segments_deleted_total")

    set_topic_config(broker, topic, "retention.ms", str(HOUR_MS))
    wait_until(lambda: watermarks(broker, topic, 0)[0] == keep_from, 30,
               f"the log start offset to move to {keep_from}", interval=0.5)
    gone = [b for b in remote if b < keep_from]

    def deleted() -> bool:
        # Both objects of each segment: they are deleted one after the other, so the
        # segment leaves listed_segments (which wants both) before its second is gone.
        left = [
            k for k in objstore.keys(broker)
            if k.startswith(tid + "/") and int(k.rsplit("/", 1)[1].split("-")[0]) < keep_from
        ]
        return not left and listed_segments(objstore, broker, tid)[0] == [b for b in remote if b >= keep_from]

    wait_until(deleted, 30, f"the objects of segments {gone} to be deleted", interval=0.5)
    remote_segments(objstore, broker, tid, strict=True)
    assert metric(broker, "strata_tier_remote_segments_deleted_total") - deleted_before == len(gone)
    assert watermarks(broker, topic, 0) == (keep_from, ends[0])

    # Below the log start: OFFSET_OUT_OF_RANGE, and a consumer resetting to earliest
    # starts at the new log start, reading from the object store.
    c = assign_consumer(broker)
    try:
        c.assign([TopicPartition(topic, 0, 5)])
        err = first_error(c)
        assert err.code() == KafkaError._AUTO_OFFSET_RESET and "out of range" in err.str().lower(), err
    finally:
        c.close()
    c = assign_consumer(broker, **{"auto.offset.reset": "earliest"})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 20
        msgs = []
        while not msgs:
            assert time.monotonic() < deadline
            msgs = [m for m in c.consume(10, timeout=0.5) if m.error() is None]
        assert msgs[0].offset() == keep_from, msgs[0].offset()
        assert msgs[0].value() == payload(0, keep_from, 1000)[1]
    finally:
        c.close()
    consume_and_compare(broker, topic, 1000, ends, starts={0: keep_from})

    # DeleteRecords into the middle of a remote-only segment: the start is exactly there,
    # and the segments wholly below it are deleted from the store too.
    local_start = local_segments(broker, topic, 0)[0][0]
    left = [b for b in remote if keep_from <= b < local_start]
    assert len(left) >= 3, (left, local_start)
    cut = left[2] + 7
    assert delete_records(broker, topic, 0, cut) == cut
    assert watermarks(broker, topic, 0) == (cut, ends[0])
    wait_until(
        lambda: listed_segments(objstore, broker, tid)[0] == [b for b in remote if b >= left[2]],
        30,
        "the objects below the new start to be deleted",
        interval=0.5,
    )
    consume_and_compare(broker, topic, 1000, ends, starts={0: cut})
    c = assign_consumer(broker, **{"auto.offset.reset": "earliest"})
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 20
        msgs = []
        while not msgs:
            assert time.monotonic() < deadline
            msgs = [m for m in c.consume(10, timeout=0.5) if m.error() is None]
        assert msgs[0].offset() == cut
    finally:
        c.close()
    assert metric(broker, "strata_tier_remote_segments_deleted_total") - deleted_before == len(gone) + 2


def test_deleting_a_topic_deletes_its_objects(broker_factory, objstore):
    broker = broker_factory(env={**objstore.env(), **FAST_RETENTION})
    topic = unique("doomed")
    create_topic(broker, topic, 2, {"segment.bytes": str(64 * 1024)})
    other = unique("kept")
    create_topic(broker, other, 1, {"segment.bytes": str(64 * 1024)})
    produce(broker, topic, 2, 500, 1000)
    kept = produce(broker, other, 1, 300, 1000)
    remote = wait_all_uploaded(objstore, broker, topic, 2)
    wait_all_uploaded(objstore, broker, other, 1)
    tid, other_tid = topic_id(broker, topic), topic_id(broker, other)
    n_segments = sum(len(v) for v in remote.values())
    assert n_segments >= 10
    other_keys = {k for k in objstore.keys(broker) if k.startswith(other_tid + "/")}
    deleted_before = metric(broker, "strata_tier_remote_segments_deleted_total")
    per_topic = ("strata_objstore_topic_requests_total", "strata_objstore_topic_bytes_total")

    def series(label: str) -> list[float]:
        text = broker.metrics()
        return [v for name in per_topic for v in metric_values(text, name, topic=label)]

    assert metric(broker, "strata_objstore_topic_requests_total", topic=topic, op="put") >= n_segments

    delete_topic(broker, topic)
    wait_until(
        lambda: not [k for k in objstore.keys(broker) if k.startswith(tid + "/")],
        30,
        "the deleted topic's objects to be deleted",
        interval=0.5,
    )
    # Its per-topic cost series go with it (under its name or its id); the other's stay.
    wait_until(lambda: not series(topic), 30, "the deleted topic's per-topic series to go", interval=0.5)
    assert not series(tid)
    assert series(other)
    # The other topic's objects are untouched, and it still reads back.
    assert {k for k in objstore.keys(broker) if k.startswith(other_tid + "/")} >= other_keys
    consume_and_compare(broker, other, 1000, kept.ends)
    # A new topic of the same name starts empty (its objects have a new topic id).
    create_topic(broker, topic, 1, {"segment.bytes": str(64 * 1024)})
    assert watermarks(broker, topic, 0) == (0, 0)
    assert topic_id(broker, topic) != tid
    # Topic deletion is one of the ways remote segments are deleted (docs/metrics.md).
    assert metric(broker, "strata_tier_remote_segments_deleted_total") - deleted_before == n_segments


def test_garbage_collector_deletes_only_old_unnamed_objects(broker_factory, objstore):
    """Objects no manifest names (an upload that crashed before its commit, a topic that
    is gone) are deleted once older than the grace period; named objects and objects
    outside Strata's key layout are left alone."""
    grace_s = 4
    broker = broker_factory(env={
        **objstore.env(),
        "STRATA_TIER_GC_INTERVAL_MS": "1000",
        "STRATA_TIER_GC_GRACE_MS": str(grace_s * 1000),
    })
    topic = unique("gc")
    create_topic(broker, topic, 1, {"segment.bytes": str(64 * 1024)})
    produced = produce(broker, topic, 1, 300, 1000)
    wait_all_uploaded(objstore, broker, topic, 1)
    tid = topic_id(broker, topic)
    orphans = [
        f"{tid}/0/{10**9:020d}-0-{'ab' * 8}.seg",
        f"{tid}/0/{10**9:020d}-0-{'ab' * 8}.idx",
        f"{uuid.uuid4()}/0/{0:020d}-0-{'cd' * 8}.seg",
    ]
    foreign = "notes/not-strata.txt"
    named = set(objstore.keys(broker))
    before = metric(broker, "strata_tier_gc_deleted_objects_total")
    written = time.monotonic()
    for k in [*orphans, foreign]:
        objstore.put(broker, k, b"left behind")
    wait_until(
        lambda: not set(orphans) & set(objstore.keys(broker)),
        60,
        "the orphaned objects to be garbage-collected",
        interval=0.5,
    )
    assert time.monotonic() - written >= grace_s, "deleted within the grace period"
    keys = set(objstore.keys(broker))
    assert foreign in keys, "an object outside the key layout was deleted"
    assert named <= keys, f"named objects were deleted: {sorted(named - keys)}"
    assert metric(broker, "strata_tier_gc_deleted_objects_total") - before == len(orphans)
    consume_and_compare(broker, topic, 1000, produced.ends)


# -- start-up checks ------------------------------------------------------------------------


def serve_fails(strata_binary, tmp_path, env: dict[str, str], *args: str) -> str:
    """Runs `strata serve` that must fail at start: non-zero exit, quickly. Returns its
    output."""
    data = tmp_path / f"data-{uuid.uuid4().hex[:8]}"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("STRATA_", "AWS_"))}
    t0 = time.monotonic()
    r = subprocess.run(
        [str(strata_binary), "serve", "--data-dir", str(data), "--kafka-listen", "127.0.0.1:0",
         "--http-listen", "127.0.0.1:0", *args],
        env={**base, "NO_COLOR": "1", **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
    )
    took = time.monotonic() - t0
    out = r.stdout + r.stderr
    assert r.returncode != 0, f"strata serve started:\n{out[-3000:]}"
    assert took < 30, f"strata serve took {took:.1f}s to give up:\n{out[-3000:]}"
    assert "kafka listener ready" not in out, out[-3000:]
    return out


def test_serve_refuses_an_unusable_object_store(strata_binary, tmp_path, rgw):
    store = RgwObjects(rgw)
    try:
        good = store.env()
        # A missing bucket.
        out = serve_fails(strata_binary, tmp_path, {**good, "STRATA_OBJECT_STORE": "s3://no-such-bucket-here/x"})
        assert "bucket does not exist" in out and "no-such-bucket-here" in out, out[-3000:]
        # Wrong credentials.
        out = serve_fails(strata_binary, tmp_path, {**good, "AWS_SECRET_ACCESS_KEY": "wrong"})
        assert "credentials were refused" in out, out[-3000:]
        # An unreachable endpoint (a closed port), given as a flag this time.
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        out = serve_fails(strata_binary, tmp_path, good, "--s3-endpoint", f"http://127.0.0.1:{port}")
        assert "cannot be reached" in out and str(port) in out, out[-3000:]
        # A directory that cannot be created.
        out = serve_fails(strata_binary, tmp_path, {"STRATA_OBJECT_STORE": "file:///proc/strata-objects"})
        assert "/proc/strata-objects" in out, out[-3000:]
        # The same settings with the right credentials and bucket start fine (so the
        # failures above were about what they changed).
        data = tmp_path / "good"
        proc = subprocess.Popen(
            [str(strata_binary), "serve", "--data-dir", str(data), "--kafka-listen", "127.0.0.1:0",
             "--http-listen", "127.0.0.1:0"],
            env={**{k: v for k, v in os.environ.items() if not k.startswith(("STRATA_", "AWS_"))},
                 "NO_COLOR": "1", **good},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            deadline = time.monotonic() + 30
            seen = ""
            while "kafka listener ready" not in seen:
                assert time.monotonic() < deadline and proc.poll() is None, seen[-3000:]
                seen += proc.stdout.readline()
        finally:
            proc.terminate()
            proc.wait(timeout=40)
    finally:
        store.cleanup()

