"""Idempotent producers end to end: librdkafka producing through broker restarts and
kill -9, kafka-python producing through a restart, hand-built idempotent batches over a
raw socket (duplicates, sequence gaps, fenced epochs, before and after restarts), and
DescribeProducers.

The raw Kafka frames (InitProducerId v1, Produce v8, ListOffsets v4: all non-flexible
versions) and the v2 record batches, CRC-32C included, are written by hand below, so
these tests depend on no client's idea of what the broker should answer.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic
import kafka.errors as KpErrors
from kafka import KafkaProducer
from kafka import TopicPartition as KpTopicPartition
from kafka.admin import KafkaAdminClient

from strata_helpers import consume_all, now_ms, partition_dirs, unique, wait_until

# Kafka error codes
NONE = 0
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_PRODUCER_EPOCH = 47

# -- CRC-32C (Castagnoli), table driven ----------------------------------------------

_CRC32C_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC32C_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def test_crc32c_known_answer():
    # RFC 3720 / the standard check value, and an all-zero block from RFC 3720 B.4
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA


# -- record batch v2 -------------------------------------------------------------------


def _varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)  # zig-zag
    out = bytearray()
    while True:
        b = z & 0x7F
        z >>= 7
        if z:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _record(offset_delta: int, ts_delta: int, key: bytes | None, value: bytes | None) -> bytes:
    body = bytearray()
    body += b"\x00"  # attributes
    body += _varint(ts_delta)
    body += _varint(offset_delta)
    for field in (key, value):
        if field is None:
            body += _varint(-1)
        else:
            body += _varint(len(field)) + field
    body += _varint(0)  # headers
    return _varint(len(body)) + bytes(body)


def record_batch(
    values: list[bytes],
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    base_timestamp: int | None = None,
) -> bytes:
    """A magic-2 batch of uncompressed records (key = value) at base offset 0."""
    ts = now_ms() if base_timestamp is None else base_timestamp
    records = b"".join(_record(i, 0, v, v) for i, v in enumerate(values))
    after_crc = struct.pack(
        ">hiqqqhii",
        0,  # attributes: no compression, CreateTime, not transactional, not control
        len(values) - 1,  # last offset delta
        ts,  # base timestamp
        ts,  # max timestamp
        producer_id,
        producer_epoch,
        base_sequence,
        len(values),
    ) + records
    after_length = struct.pack(">ibI", -1, 2, crc32c(after_crc)) + after_crc
    return struct.pack(">qi", 0, len(after_length)) + after_length


# -- a minimal Kafka client over a socket ----------------------------------------------


class Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        vals = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return vals if len(vals) > 1 else vals[0]

    def string(self) -> str | None:
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.pos : self.pos + n].decode()
        self.pos += n
        return s

    def array(self, item):
        return [item() for _ in range(self.take(">i"))]


def _str(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


class RawKafka:
    """One connection; requests with header v1, responses with header v0."""

    def __init__(self, bootstrap: str, timeout: float = 30.0):
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.correlation = 0

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def request(self, api_key: int, version: int, body: bytes) -> Reader:
        self.correlation += 1
        header = struct.pack(">hhi", api_key, version, self.correlation) + _str("strata-raw-test")
        frame = header + body
        self.sock.sendall(struct.pack(">i", len(frame)) + frame)
        (size,) = struct.unpack(">i", self._recv_exact(4))
        r = Reader(self._recv_exact(size))
        corr = r.take(">i")
        assert corr == self.correlation, f"correlation id {corr}, want {self.correlation}"
        return r

    def init_producer_id(self, transactional_id: str | None = None) -> tuple[int, int, int]:
        """InitProducerId v1 -> (error code, producer id, epoch)."""
        r = self.request(22, 1, _str(transactional_id) + struct.pack(">i", 60000))
        _throttle, error, pid, epoch = r.take(">ihqh")
        return error, pid, epoch

    def produce(self, topic: str, partition: int, batch: bytes, acks: int = -1) -> dict:
        """Produce v8 of one batch -> the partition's response as a dict."""
        body = (
            _str(None)
            + struct.pack(">hi", acks, 30000)
            + struct.pack(">i", 1)
            + _str(topic)
            + struct.pack(">i", 1)
            + struct.pack(">ii", partition, len(batch))
            + batch
        )
        r = self.request(0, 8, body)

        def part():
            index, error, base, append_time, log_start = r.take(">ihqqq")
            record_errors = r.array(lambda: (r.take(">i"), r.string()))
            message = r.string()
            return dict(partition=index, error=error, base_offset=base, log_append_time=append_time,
                        log_start_offset=log_start, record_errors=record_errors, message=message)

        topics = r.array(lambda: (r.string(), r.array(part)))
        assert [(t, [p["partition"] for p in ps]) for t, ps in topics] == [(topic, [partition])], topics
        return topics[0][1][0]

    def list_offset(self, topic: str, partition: int, timestamp: int) -> tuple[int, int]:
        """ListOffsets v4 -> (error code, offset); timestamp -1 latest, -2 earliest."""
        body = struct.pack(">ib", -1, 0) + struct.pack(">i", 1) + _str(topic) + struct.pack(
            ">iiiq", 1, partition, -1, timestamp
        )
        r = self.request(2, 4, body)
        _throttle = r.take(">i")

        def part():
            index, error, _ts, offset, _epoch = r.take(">ihqqi")
            return index, error, offset

        topics = r.array(lambda: (r.string(), r.array(part)))
        ((name, ((index, error, offset),)),) = topics
        assert (name, index) == (topic, partition)
        return error, offset


def log_end(broker, topic: str, partition: int = 0) -> int:
    with RawKafka(broker.bootstrap) as k:
        error, offset = k.list_offset(topic, partition, -1)
    assert error == NONE, f"ListOffsets latest of {topic}[{partition}]: error {error}"
    return offset


# -- client helpers ----------------------------------------------------------------------


def create_topic(broker, name: str, partitions: int, config: dict | None = None) -> None:
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    futures = a.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=10,
    )
    futures[name].result(timeout=30)


def kp_admin(broker) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)


def describe_producers(broker, topic: str, partitions: int) -> dict[int, list]:
    """DescribeProducers through kafka-python (confluent-kafka 2.16 has no binding)."""
    a = kp_admin(broker)
    try:
        res = a.describe_producers([KpTopicPartition(topic, p) for p in range(partitions)])
    finally:
        a.close()
    return {tp.partition: sorted(state.active_producers) for tp, state in res.items()}


# -- librdkafka through restarts -----------------------------------------------------------


def produce_through_outages(broker, outage, count: int = 30000, partitions: int = 3) -> None:
    """An idempotent librdkafka producer sends `count` numbered messages (message i to
    partition i % partitions, key = i) at a steady rate while `outage(k)` takes the broker
    down and brings it back twice. Every message must be acknowledged, with the offset it
    really has, and be in the log exactly once, in order."""
    topic = unique("idem")
    create_topic(broker, topic, partitions)
    lock = threading.Lock()
    delivered: dict[int, tuple[int, int]] = {}  # i -> (partition, offset)
    duplicate_reports: list[int] = []
    failures: list = []
    client_errors: list = []

    def on_error(err):
        with lock:
            client_errors.append(err)

    p = Producer({
        "bootstrap.servers": broker.bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.num.messages": 500,
        "message.timeout.ms": 180000,
        "request.timeout.ms": 10000,
        "retry.backoff.ms": 50,
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 500,
        "error_cb": on_error,
    })

    def on_delivery(err, m):
        i = int(m.key())
        with lock:
            if err is not None:
                failures.append((i, err))
            elif i in delivered:
                duplicate_reports.append(i)
            else:
                delivered[i] = (m.partition(), m.offset())

    produced = [0]
    stop = threading.Event()
    rate = 5000.0  # messages per second: the run lasts ~6 s, across both outages

    def run():
        start = time.monotonic()
        i = 0
        while i < count and not stop.is_set():
            if i > (time.monotonic() - start) * rate:
                p.poll(0.002)
                continue
            try:
                p.produce(topic, key=b"%d" % i, value=b"v-%08d" % i, partition=i % partitions,
                          on_delivery=on_delivery)
                i += 1
                produced[0] = i
            except BufferError:
                p.poll(0.01)
            if i % 100 == 0:
                p.poll(0)
        # the rest of the deliveries (poll serves the callbacks on this thread)
        deadline = time.monotonic() + 150
        while len(p) > 0 and time.monotonic() < deadline and not stop.is_set():
            p.poll(0.1)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        for k, at in enumerate((count // 4, count // 2)):
            wait_until(lambda: len(delivered) >= at, 60, f"{at} acknowledged messages before outage {k}")
            with lock:
                before = len(delivered)
            outage(k)
            assert produced[0] < count, "the producer finished before the outage: make it slower"
            wait_until(lambda: len(delivered) > before + 1000, 60, f"deliveries to resume after outage {k}")
        t.join(170)
        assert not t.is_alive(), f"the producer thread did not finish; {len(p)} messages still queued"
    finally:
        stop.set()
        t.join(10)
    remaining = p.flush(10)
    assert remaining == 0, f"{remaining} messages undelivered"
    assert not failures, f"{len(failures)} delivery failures, e.g. {failures[:5]}"
    assert not duplicate_reports, f"messages reported twice: {duplicate_reports[:10]}"
    assert sorted(delivered) == list(range(count)), (
        f"{count - len(delivered)} messages never acknowledged"
    )
    fatal = [e for e in client_errors if e.fatal()]
    assert not fatal, f"fatal producer errors: {fatal}"
    # the producer really lost its connection during the outages
    assert any(e.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN) for e in client_errors), (
        f"the producer never noticed the outages: {client_errors}"
    )

    check_each_message_once_in_order(broker, topic, count, partitions, delivered)


def check_each_message_once_in_order(broker, topic: str, count: int, partitions: int,
                                     delivered: dict[int, tuple[int, int]]) -> None:
    """Messages 0..count-1 (key i, value v-%08d, message i to partition i % partitions)
    were acknowledged as `delivered` (i -> (partition, offset)): the acknowledged offsets
    are the messages' positions, and each partition holds every message exactly once, in
    order, and nothing else; and the broker never refused a batch."""
    # Delivery reports carry the offsets the messages really have: 0, 1, 2, ... in the
    # order the messages went to the partition.
    for part in range(partitions):
        seqs = list(range(part, count, partitions))
        offsets = [delivered[i][1] for i in seqs]
        assert all(delivered[i][0] == part for i in seqs)
        bad = [(i, o, n) for n, (i, o) in enumerate(zip(seqs, offsets)) if o != n]
        assert not bad, (
            f"partition {part}: delivery report offsets differ from the positions, "
            f"(message, reported, expected) e.g. {bad[:5]}"
        )

    expected = {part: len(range(part, count, partitions)) for part in range(partitions)}
    got = consume_all(broker, topic, expected, timeout=90)
    for part in range(partitions):
        want = list(range(part, count, partitions))
        keys = [int(m.key()) for m in got[part]]
        offsets = [m.offset() for m in got[part]]
        if keys != want:
            seen: dict[int, int] = {}
            for k in keys:
                seen[k] = seen.get(k, 0) + 1
            dups = sorted(k for k, n in seen.items() if n > 1)
            missing = sorted(set(want) - set(seen))
            first_diff = next((n for n, (a, b) in enumerate(zip(keys, want)) if a != b), min(len(keys), len(want)))
            raise AssertionError(
                f"partition {part}: {len(keys)} messages in the log, {len(want)} produced; "
                f"{len(dups)} duplicated (e.g. {dups[:10]}), {len(missing)} missing (e.g. {missing[:10]}), "
                f"first difference at position {first_diff}: log {keys[first_diff:first_diff + 5]} "
                f"vs produced {want[first_diff:first_diff + 5]}"
            )
        assert offsets == list(range(len(want))), f"partition {part}: offsets are not contiguous from 0"
        assert [m.value() for m in got[part]] == [b"v-%08d" % i for i in want]
    # and nothing beyond: the log ends where the last message is
    for part in range(partitions):
        assert log_end(broker, topic, part) == expected[part]
    # The broker never had to refuse a batch (a sequence or epoch error would mean it lost
    # track of the producer; the client might then have recovered by itself).
    rejected = [line for line in broker.log_text().splitlines() if "produce rejected" in line]
    assert not rejected, f"the broker refused batches: {rejected[:5]}"


def test_idempotent_producer_through_graceful_restarts(broker):
    def outage(_k):
        broker.stop()  # SIGTERM, exit code 0 checked
        time.sleep(0.5)  # the producer sees the broker gone, its requests fail
        broker.restart()

    produce_through_outages(broker, outage)


def test_idempotent_producer_through_kill_9(broker):
    def outage(_k):
        broker.kill()
        time.sleep(0.5)
        broker.restart()

    produce_through_outages(broker, outage)


def test_kafka_python_idempotent_producer_through_graceful_restart(broker):
    """kafka-python's idempotent producer (enable_idempotence=True, acks='all':
    InitProducerId, then Produce batches carrying its producer id, epoch and per-partition
    sequences) sends numbered messages to 3 partitions: a first part, then the rest at a
    steady rate while the broker is stopped (SIGTERM) and restarted, so that messages wait
    in the producer across the restart (and batches in flight when the connection drops
    are sent again, with the same sequences). Every message is acknowledged once, with the
    offset it really has, and is in the log exactly once, in order; DescribeProducers shows
    the producer on every partition, before and after the restart, with the same id and
    epoch (kafka-python bumps the epoch or gets a new id when the broker answers a
    sequence or epoch error) and the sequence of the last message it sent there."""
    topic = unique("kp-idem")
    partitions = 3
    first, count = 1500, 12000
    create_topic(broker, topic, partitions)
    lock = threading.Lock()
    delivered: dict[int, tuple[int, int]] = {}  # i -> (partition, offset)
    duplicate_reports: list[int] = []
    failures: list = []
    sent_at: list[float] = []  # when send() returned, for message i

    p = KafkaProducer(
        bootstrap_servers=broker.bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        request_timeout_ms=10000,
        delivery_timeout_ms=120000,
        retry_backoff_ms=50,
        reconnect_backoff_ms=50,
        reconnect_backoff_max_ms=500,
    )

    def ok(i, md):
        with lock:
            if i in delivered:
                duplicate_reports.append(i)
            else:
                delivered[i] = (md.partition, md.offset)

    def failed(i, exc):
        with lock:
            failures.append((i, repr(exc)))

    def send(i):
        f = p.send(topic, key=b"%d" % i, value=b"v-%08d" % i, partition=i % partitions)
        f.add_callback(ok, i)
        f.add_errback(failed, i)
        sent_at.append(time.monotonic())

    def seen_producers(n: int, when: str) -> int:
        """DescribeProducers after messages 0..n-1: one producer, epoch 0, each
        partition's last sequence that of its last message. Returns the producer id."""
        state = describe_producers(broker, topic, partitions)
        assert set(state) == set(range(partitions)), f"{when}: {state}"
        ids = {s.producer_id for part in state for s in state[part]}
        assert len(ids) == 1, f"{when}: one producer id expected on every partition: {state}"
        for part in range(partitions):
            (s,) = state[part]
            sent = len(range(part, n, partitions))
            assert (s.producer_epoch, s.last_sequence) == (0, sent - 1), (
                f"{when}, partition {part}: {s}, {sent} messages sent"
            )
        (pid,) = ids
        assert pid >= 0
        return pid

    try:
        for i in range(first):
            send(i)
        p.flush(timeout=30)
        with lock:
            assert not failures, f"delivery failures: {failures[:5]}"
            assert len(delivered) == first, f"{len(delivered)} of {first} acknowledged"
        pid = seen_producers(first, "before the restart")

        stop = threading.Event()
        rate = 2000.0  # messages per second: the rest takes ~5 s, across the restart

        send_errors: list = []

        def run():
            start = time.monotonic()
            i = first
            while i < count and not stop.is_set():
                if i - first > (time.monotonic() - start) * rate:
                    time.sleep(0.002)
                    continue
                try:
                    send(i)
                except Exception as e:  # noqa: BLE001 - reported below
                    send_errors.append((i, repr(e)))
                    return
                i += 1

        t = threading.Thread(target=run, daemon=True)
        t.start()
        try:
            wait_until(lambda: len(delivered) >= first + 2000, 60, "acknowledgements before the restart")
            down = time.monotonic()
            broker.stop()  # SIGTERM, exit code 0 checked
            time.sleep(0.5)  # the producer sees the broker gone, its requests fail
            broker.restart()
            up = time.monotonic()
            assert len(sent_at) < count, "the producer finished before the restart: make it slower"
            with lock:
                before = len(delivered)
            wait_until(lambda: len(delivered) > before + 1000, 60, "deliveries to resume after the restart")
            t.join(120)
            assert not t.is_alive(), "the producer thread did not finish"
            assert not send_errors, f"send() raised: {send_errors}"
        finally:
            stop.set()
            t.join(10)
        p.flush(timeout=120)
    finally:
        p.close(timeout=10)
    # messages were sent while the broker was down: they waited (or were retried) for it
    while_down = sum(1 for ts in sent_at if down <= ts <= up)
    assert while_down > 0, "no message was sent while the broker was down"
    assert not failures, f"{len(failures)} delivery failures, e.g. {failures[:5]}"
    assert not duplicate_reports, f"messages reported twice: {duplicate_reports[:10]}"
    assert sorted(delivered) == list(range(count)), (
        f"{count - len(delivered)} messages never acknowledged"
    )
    check_each_message_once_in_order(broker, topic, count, partitions, delivered)
    after = seen_producers(count, "after the restart")
    assert after == pid, f"producer id {pid} before the restart, {after} after"


# -- raw idempotent batches --------------------------------------------------------------


def test_init_producer_id_hands_out_fresh_ids(broker):
    with RawKafka(broker.bootstrap) as k:
        ids = []
        for _ in range(5):
            error, pid, epoch = k.init_producer_id()
            assert (error, epoch) == (NONE, 0), (error, pid, epoch)
            assert pid >= 0
            ids.append(pid)
        assert len(set(ids)) == 5, f"producer ids repeated: {ids}"
        # A transactional id keeps its producer id; each init bumps its epoch (fencing the
        # instance before).
        error, tpid, epoch = k.init_producer_id("some-transactional-id")
        assert (error, epoch) == (NONE, 0) and tpid not in ids, (error, tpid, epoch)
        error, again, epoch = k.init_producer_id("some-transactional-id")
        assert (error, again, epoch) == (NONE, tpid, 1)
        ids.append(tpid)
    # ids are reserved in metadata: none is handed out again after a restart, or after kill -9
    broker.stop()
    broker.restart()
    with RawKafka(broker.bootstrap) as k:
        error, pid, epoch = k.init_producer_id()
    assert (error, epoch) == (NONE, 0)
    assert pid not in ids and pid > max(ids), f"after a restart got {pid}, had {ids}"
    ids.append(pid)
    broker.kill()
    broker.restart()
    with RawKafka(broker.bootstrap) as k:
        error, pid, epoch = k.init_producer_id()
    assert (error, epoch) == (NONE, 0)
    assert pid not in ids and pid > max(ids), f"after kill -9 got {pid}, had {ids}"


def test_duplicate_gap_and_fenced_epoch_by_hand(broker):
    topic = unique("raw-idem")
    # small segments: the later batches roll several, so each sealed one gets a producer snapshot
    create_topic(broker, topic, 1, {"segment.bytes": "4096"})
    log: list[bytes] = []  # every value the partition should hold, in offset order

    def vals(tag: str, n: int) -> list[bytes]:
        return [b"%s-%d" % (tag.encode(), i) for i in range(n)]

    with RawKafka(broker.bootstrap) as k:
        err_a, pid_a, epoch_a = k.init_producer_id()
        err_b, pid_b, epoch_b = k.init_producer_id()
        assert (err_a, epoch_a, err_b, epoch_b) == (NONE, 0, NONE, 0)
        assert pid_a != pid_b

        def send(batch: bytes) -> dict:
            return k.produce(topic, 0, batch)

        a0 = record_batch(vals("a0", 3), pid_a, 0, 0)
        a1 = record_batch(vals("a1", 2), pid_a, 0, 3)
        r = send(a0)
        assert (r["error"], r["base_offset"]) == (NONE, 0), r
        r = send(a1)
        assert (r["error"], r["base_offset"]) == (NONE, 3), r
        log += vals("a0", 3) + vals("a1", 2)
        b0 = record_batch(vals("b0", 4), pid_b, 0, 0)
        r = send(b0)
        assert (r["error"], r["base_offset"]) == (NONE, 5), r
        log += vals("b0", 4)
        assert log_end(broker, topic) == 9

        # retries of A's batches: acknowledged with their original offsets, not written again
        r = send(a1)
        assert (r["error"], r["base_offset"]) == (NONE, 3), f"retry of a1: {r}"
        r = send(a0)
        assert (r["error"], r["base_offset"]) == (NONE, 0), f"retry of a0: {r}"
        r = send(b0)
        assert (r["error"], r["base_offset"]) == (NONE, 5), f"retry of b0: {r}"
        assert log_end(broker, topic) == 9, "a duplicate batch moved the log end"

        # a gap in the sequence (5 and 6 missing)
        r = send(record_batch(vals("gap", 1), pid_a, 0, 7))
        assert r["error"] == OUT_OF_ORDER_SEQUENCE_NUMBER, r
        assert r["base_offset"] == -1, r
        # a batch overlapping the last one without being a retry of it
        r = send(record_batch(vals("overlap", 2), pid_a, 0, 4))
        assert r["error"] == OUT_OF_ORDER_SEQUENCE_NUMBER, r
        # a new epoch has to start at sequence 0
        r = send(record_batch(vals("e1bad", 1), pid_a, 1, 5))
        assert r["error"] == OUT_OF_ORDER_SEQUENCE_NUMBER, r
        assert log_end(broker, topic) == 9, "a refused batch moved the log end"

        # epoch 1 from 0: accepted; from then on epoch 0 is fenced, its retries too
        a_e1 = record_batch(vals("a-e1", 2), pid_a, 1, 0)
        r = send(a_e1)
        assert (r["error"], r["base_offset"]) == (NONE, 9), r
        log += vals("a-e1", 2)
        r = send(record_batch(vals("zombie", 1), pid_a, 0, 5))
        assert r["error"] == INVALID_PRODUCER_EPOCH, r
        r = send(a1)
        assert r["error"] == INVALID_PRODUCER_EPOCH, f"retry of a1 from the fenced epoch: {r}"
        assert log_end(broker, topic) == 11

        # B writes on, enough to roll several segments: A's state is then only in the
        # producer snapshots of sealed segments
        seq_b = 4
        big = b"x" * 300
        last_b = None
        for n in range(40):
            values = [b"b%d-%d-" % (n, i) + big for i in range(4)]
            last_b = (record_batch(values, pid_b, 0, seq_b), len(log))
            r = send(last_b[0])
            assert (r["error"], r["base_offset"]) == (NONE, len(log)), (n, r)
            log += values
            seq_b += 4
        end = len(log)
        assert log_end(broker, topic) == end

    dirs = partition_dirs(broker.data_dir, topic, 0)
    segments = sorted(f.name for d in dirs for f in d.iterdir() if f.suffix == ".log")
    snapshots = sorted(f.name for d in dirs for f in d.iterdir() if f.suffix == ".producers")
    assert len(segments) >= 4, f"expected several segments: {segments}"
    assert snapshots, f"no producer snapshot next to the sealed segments: {sorted(f.name for d in dirs for f in d.iterdir())}"

    def check_state(when: str):
        state = describe_producers(broker, topic, 1)[0]
        by_id = {s.producer_id: s for s in state}
        assert set(by_id) == {pid_a, pid_b}, f"{when}: producers {state}"
        assert (by_id[pid_a].producer_epoch, by_id[pid_a].last_sequence) == (1, 1), f"{when}: {by_id[pid_a]}"
        assert (by_id[pid_b].producer_epoch, by_id[pid_b].last_sequence) == (0, seq_b - 1), f"{when}: {by_id[pid_b]}"

    check_state("before the restart")

    # after an orderly restart: the retries are still recognised, the epoch is still fenced,
    # and the sequences go on where they were
    broker.stop()
    broker.restart()
    check_state("after the restart")
    with RawKafka(broker.bootstrap) as k:
        r = k.produce(topic, 0, a_e1)
        assert (r["error"], r["base_offset"]) == (NONE, 9), f"retry of A's last batch after the restart: {r}"
        r = k.produce(topic, 0, last_b[0])
        assert (r["error"], r["base_offset"]) == (NONE, last_b[1]), f"retry of B's last batch after the restart: {r}"
        assert log_end(broker, topic) == end, "a duplicate after the restart was written again"
        r = k.produce(topic, 0, record_batch(vals("zombie2", 1), pid_a, 0, 5))
        assert r["error"] == INVALID_PRODUCER_EPOCH, f"epoch 0 after the restart: {r}"
        r = k.produce(topic, 0, record_batch(vals("gap2", 1), pid_a, 1, 3))
        assert r["error"] == OUT_OF_ORDER_SEQUENCE_NUMBER, f"gap after the restart: {r}"
        a_e1_next = record_batch(vals("a-e1-next", 3), pid_a, 1, 2)
        r = k.produce(topic, 0, a_e1_next)
        assert (r["error"], r["base_offset"]) == (NONE, end), r
        log += vals("a-e1-next", 3)
        end = len(log)

    # after kill -9 (the last batch is in the active segment, its state rebuilt from the log)
    broker.kill()
    broker.restart()
    with RawKafka(broker.bootstrap) as k:
        r = k.produce(topic, 0, a_e1_next)
        assert (r["error"], r["base_offset"]) == (NONE, end - 3), f"retry after kill -9: {r}"
        r = k.produce(topic, 0, a_e1)  # still one of A's last five
        assert (r["error"], r["base_offset"]) == (NONE, 9), f"older retry after kill -9: {r}"
        assert log_end(broker, topic) == end
    state = {s.producer_id: s for s in describe_producers(broker, topic, 1)[0]}
    assert (state[pid_a].producer_epoch, state[pid_a].last_sequence) == (1, 4), state

    got = consume_all(broker, topic, {0: end}, timeout=90)[0]
    assert [m.value() for m in got] == log, "the partition does not hold each batch exactly once"
    assert [m.offset() for m in got] == list(range(end))


def test_describe_producers_after_librdkafka(broker):
    topic = unique("descprod")
    partitions = 3
    create_topic(broker, topic, partitions)
    count = 3000
    p = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "linger.ms": 5})
    errors: list = []
    last_ts: dict[int, int] = {}
    base = now_ms() - 60_000
    for i in range(count):
        part = i % partitions
        ts = base + i
        last_ts[part] = ts
        p.produce(topic, key=b"%d" % i, value=b"v", partition=part, timestamp=ts,
                  on_delivery=lambda err, m: err and errors.append(err))
        if i % 500 == 0:
            p.poll(0)
    assert p.flush(30) == 0
    assert not errors, errors[:5]

    # a non-idempotent producer's writes are not tracked
    plain = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": False})
    plain.produce(topic, b"plain", partition=0)
    assert plain.flush(30) == 0

    state = describe_producers(broker, topic, partitions)
    assert set(state) == set(range(partitions))
    ids = {s.producer_id for part in state for s in state[part]}
    assert len(ids) == 1, f"one producer id expected on every partition: {state}"
    for part in range(partitions):
        (s,) = state[part]
        n = len(range(part, count, partitions))
        assert s.producer_epoch == 0, s
        assert s.last_sequence == n - 1, f"partition {part}: {s}, {n} messages sent"
        assert s.last_timestamp == last_ts[part], f"partition {part}: {s}, want {last_ts[part]}"
        assert s.coordinator_epoch == -1 and s.current_transaction_start_offset == -1, s
    # an unknown partition is an error (sent straight to the broker: kafka-python would
    # otherwise refuse it from its metadata without asking)
    a = kp_admin(broker)
    try:
        with pytest.raises(KpErrors.UnknownTopicOrPartitionError):
            a.describe_producers([KpTopicPartition(topic, 7)], broker_id=0)
        with pytest.raises(KpErrors.UnknownTopicOrPartitionError):
            a.describe_producers([KpTopicPartition(unique("nope"), 0)], broker_id=0)
    finally:
        a.close()
