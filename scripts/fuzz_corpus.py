"""Seeds fuzz/corpus/ from real client traffic (run by scripts/fuzz-corpus.sh).

Starts a strata broker, puts a recording TCP proxy in front of it, and drives it with
real clients (confluent-kafka: admin, idempotent produce in every compression codec,
a consumer group, offsets; kafka-python: produce and consume). Every request frame
becomes a `request_frame` input and every Fetch response a `response_frame` input; the
record batches the broker stored and its partition directories (segments, indexes,
producer snapshots, leader epochs) become `record_batch` and `partition_dir` inputs.
File names are the SHA-1 of the contents, so re-running only adds what is new.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "python"))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic  # noqa: E402

from conftest import StrataBroker  # noqa: E402

CORPUS = ROOT / "fuzz" / "corpus"
FETCH = 1
# At most this many inputs per API key, so the corpus stays small and varied.
PER_API = 12
# partition_dir files are cut to this many bytes (the u16 length of the input format).
MAX_FILE = 60_000
# The kind byte of each file name in strata_fuzz::partition_dir's input format.
KINDS = {".log": 0, ".index": 1, ".timeindex": 2, ".producers": 3, "leader-epochs": 6, "acked": 7}


def save(target: str, data: bytes) -> None:
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def read_frame(sock: socket.socket) -> bytes | None:
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        if not chunk:
            return None
        head += chunk
    (size,) = struct.unpack(">i", head)
    body = b""
    while len(body) < size:
        chunk = sock.recv(min(65536, size - len(body)))
        if not chunk:
            return None
        body += chunk
    return body


class Recorder:
    """A proxy that forwards whole frames and keeps a sample of them."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.per_api: dict[int, int] = {}
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _keep(self, api: int) -> bool:
        with self.lock:
            n = self.per_api.get(api, 0)
            self.per_api[api] = n + 1
            return n < PER_API

    def _accept(self) -> None:
        while True:
            client, _ = self.server.accept()
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        broker = socket.create_connection(self.upstream)
        pending: dict[int, int] = {}  # correlation id -> api key
        replies = threading.Thread(target=self._replies, args=(broker, client, pending), daemon=True)
        replies.start()
        try:
            while (frame := read_frame(client)) is not None:
                api, _version, corr = struct.unpack(">hhi", frame[:8])
                pending[corr] = api
                if self._keep(api):
                    save("request_frame", frame)
                broker.sendall(struct.pack(">i", len(frame)) + frame)
        finally:
            broker.close()
            client.close()

    def _replies(self, broker: socket.socket, client: socket.socket, pending: dict[int, int]) -> None:
        try:
            while (frame := read_frame(broker)) is not None:
                (corr,) = struct.unpack(">i", frame[:4])
                if pending.pop(corr, None) == FETCH and self._keep(1000 + FETCH):
                    save("response_frame", b"\x00" + frame)
                client.sendall(struct.pack(">i", len(frame)) + frame)
        except OSError:
            pass
        finally:
            client.close()


def drive(bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [f"seed-{codec}" for codec in ("none", "gzip", "snappy", "lz4", "zstd")]
    for f in admin.create_topics([NewTopic(t, 2, 1) for t in topics]).values():
        f.result(30)
    for t in topics:
        codec = t.removeprefix("seed-")
        p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "compression.type": codec, "linger.ms": 5})
        for i in range(300):
            p.produce(t, key=f"k{i % 7}".encode(), value=(f"value {i} " * (i % 20 + 1)).encode(), headers=[("h", b"v")])
        assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "seed-group", "auto.offset.reset": "earliest"})
    c.subscribe(topics)
    seen = 0
    while seen < 1500:
        m = c.poll(10)
        assert m is not None, f"consumed only {seen} records"
        if m.error() is None:
            seen += 1
    c.commit(asynchronous=False)
    c.committed([TopicPartition(topics[0], 0)], timeout=10)
    c.get_watermark_offsets(TopicPartition(topics[0], 0), timeout=10)
    c.offsets_for_times([TopicPartition(topics[0], 0, 0)], timeout=10)
    c.close()
    for f in admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topics[0])]).values():
        f.result(30)
    admin.list_consumer_groups().result(30)
    for f in admin.delete_topics([topics[-1]]).values():
        f.result(30)

    from kafka import KafkaConsumer, KafkaProducer

    kp = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(50):
        kp.send(topics[0], f"kafka-python {i}".encode())
    kp.flush()
    kp.close()
    kc = KafkaConsumer(topics[0], bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=3000)
    assert sum(1 for _ in kc) > 0
    kc.close()


def stored(data_dir: Path) -> None:
    for part in sorted(p for p in (data_dir / "log").glob("*/*") if p.is_dir()):
        files = b""
        for f in sorted(part.iterdir()):
            kind = next((k for suffix, k in KINDS.items() if f.name.endswith(suffix)), None)
            if kind is None:
                continue
            data = f.read_bytes()[:MAX_FILE]
            files += bytes([kind]) + struct.pack(">H", len(data)) + data
            if f.suffix == ".log":
                pos = 0
                while pos + 12 <= len(data):
                    (length,) = struct.unpack(">i", data[pos + 8 : pos + 12])
                    batch = data[pos : pos + 12 + length]
                    if length <= 0 or len(batch) < 12 + length:
                        break
                    save("record_batch", b"\x00" + batch)
                    pos += 12 + length
        if files:
            save("partition_dir", files)
    meta = data_dir / "meta"
    files = b""
    for kind, name in enumerate(["raft.log", "state.snapshot", "incarnation"]):
        if (meta / name).exists():
            data = (meta / name).read_bytes()[:MAX_FILE]
            files += bytes([kind]) + struct.pack(">H", len(data)) + data
    # Low bit set: the target keeps the records' CRCs valid under mutation.
    save("meta_dir", b"\x01" + files)
    # The Raft log's entries are the JSON the voters' AppendEntries carry.
    log = (meta / "raft.log").read_bytes()
    pos, kept = 8, 0
    while pos + 8 <= len(log) and kept < PER_API:
        (length,) = struct.unpack("<I", log[pos : pos + 4])
        save("meta_rpc", log[pos + 8 : pos + 8 + length])
        pos, kept = pos + 8 + length, kept + 1


def main() -> None:
    binary = ROOT / "target" / "debug" / "strata"
    with tempfile.TemporaryDirectory() as tmp:
        broker = StrataBroker(binary, Path(tmp))
        broker.start()
        try:
            rec = Recorder(("127.0.0.1", broker.kafka_port))
            # Clients must come back through the proxy: it advertises itself.
            broker.stop()
            broker.args = ["--advertised-listener", f"127.0.0.1:{rec.port}"]
            broker.start()
            rec.upstream = ("127.0.0.1", broker.kafka_port)
            drive(f"127.0.0.1:{rec.port}")
        finally:
            broker.stop()
        stored(broker.data_dir)
    for target in sorted(p.name for p in CORPUS.iterdir()):
        print(f"{target}: {sum(1 for _ in (CORPUS / target).iterdir())} inputs")


if __name__ == "__main__":
    main()
