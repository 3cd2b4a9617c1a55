"""OpenTelemetry export, checked against a real collector: rotel (an OTLP receiver over
gRPC and HTTP, from PyPI) prints every span and metric it receives, and the tests read
its output.

The broker exports spans for produce, fetch, segment upload, remote read and metadata
commit with their topic, partition, bytes and Kafka client id, and the metrics of
`/metrics`, configured only by the standard `OTEL_*` variables (or `--otlp-endpoint`).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from strata_helpers import metric_values, unique, wait_until

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Collector:
    """A rotel agent on free loopback ports, logging what it receives to a file."""

    def __init__(self, root: Path):
        self.log = root / "rotel.log"
        self.grpc = f"127.0.0.1:{free_port()}"
        self.http = f"127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Collector:
        binary = next(REPO.glob(".venv/lib/python3*/site-packages/rotel/rotel-agent"))
        out = self.log.open("wb")
        self.proc = subprocess.Popen(
            [str(binary), "start", "--otlp-grpc-endpoint", self.grpc, "--otlp-http-endpoint", self.http,
             "--exporter", "blackhole", "--debug-log", "traces", "--debug-log", "metrics",
             "--debug-log-verbosity", "detailed"],
            stdout=out, stderr=subprocess.STDOUT,
        )
        host, port = self.http.split(":")
        wait_until(lambda: self._accepts(host, int(port)), 20, "rotel to listen")
        return self

    @staticmethod
    def _accepts(host: str, port: int) -> bool:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def spans(self) -> list[dict[str, str]]:
        """Every received span: its name and attributes (as rotel prints them)."""
        spans, current = [], None
        for line in self.text().splitlines():
            m = re.match(r"\s+Name\s+: (\S+)", line)
            if m:
                current = {"name": m.group(1)}
                spans.append(current)
                continue
            m = re.match(r"\s+-> ([\w.]+): (?:Str|Int)\((.*)\)$", line)
            if m and current is not None:
                current.setdefault(m.group(1), m.group(2))
        return spans

    def metric_names(self) -> set[str]:
        return set(re.findall(r"-> Name: (\w+)", self.text()))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def collector(tmp_path):
    c = Collector(tmp_path).start()
    yield c
    c.stop()


def spans_named(c: Collector, name: str, **attrs: str) -> list[dict[str, str]]:
    return [s for s in c.spans() if s["name"] == name and all(s.get(k) == v for k, v in attrs.items())]


def test_spans_and_metrics_arrive_over_otlp_http(broker_factory, collector):
    """With only OTEL_EXPORTER_OTLP_ENDPOINT set (http/protobuf by default), a produce,
    the segment upload it leads to, a fetch that reads it back from the object store,
    and the metadata commits all arrive as spans with their attributes; the metrics
    arrive too, per-topic object-store costs included."""
    broker = broker_factory(env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{collector.http}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "STRATA_KAFKA_LOG_RETENTION_CHECK_INTERVAL_MS": "500",
    })
    topic = unique("otel")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 1, config={"segment.bytes": str(64 * 1024), "segment.ms": "1000"})])[
        topic].result(30)
    p = Producer({"bootstrap.servers": broker.bootstrap, "client.id": "otel-producer", "linger.ms": 5})
    for i in range(300):
        p.produce(topic, value=b"x" * 1000, partition=0)
        if i % 50 == 0:
            p.flush(30)
    assert p.flush(30) == 0

    def uploaded() -> float:
        return sum(metric_values(broker.metrics(), "strata_tier_uploads_total"))

    wait_until(lambda: uploaded() >= 2, 60, "segments to be uploaded")
    # Drop the local copies so that reading from the start goes to the object store.
    resource = ConfigResource("topic", topic, incremental_configs=[
        ConfigEntry("local.retention.bytes", "0", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([resource])[resource].result(30)
    wait_until(lambda: sum(metric_values(broker.metrics(), "strata_log_segments_deleted_total")) >= 1, 60,
               "local segments to be deleted")
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("g"), "client.id": "otel-consumer",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    got = 0
    deadline = time.monotonic() + 30
    while got < 10 and time.monotonic() < deadline:
        m = c.poll(1)
        if m is not None and m.error() is None:
            got += 1
    c.close()
    assert got >= 10
    assert sum(metric_values(broker.metrics(), "strata_tier_read_bytes_total", source="object_store")) > 0

    def all_arrived() -> bool:
        return bool(
            spans_named(collector, "produce", **{"messaging.destination.name": topic})
            and spans_named(collector, "fetch", **{"messaging.destination.name": topic,
                                                   "messaging.client.id": "otel-consumer"})
            and spans_named(collector, "segment.upload", **{"messaging.destination.name": topic})
            and spans_named(collector, "remote.read", **{"messaging.destination.name": topic})
            and spans_named(collector, "metadata.commit")
            and "strata_objstore_topic_bytes_total" in collector.metric_names()
        )

    wait_until(all_arrived, 30, "the spans and metrics to reach the collector")
    produce_span = spans_named(collector, "produce", **{"messaging.destination.name": topic})[0]
    assert produce_span["messaging.client.id"] == "otel-producer"
    assert produce_span["messaging.system"] == "kafka"
    assert produce_span["messaging.destination.partition.id"] == "0"
    assert produce_span["kafka.error_code"] == "0"
    assert int(produce_span["strata.bytes"]) > 1000
    upload = spans_named(collector, "segment.upload", **{"messaging.destination.name": topic})[0]
    assert upload["messaging.destination.partition.id"] == "0"
    assert int(upload["strata.bytes"]) > 0
    read = spans_named(collector, "remote.read", **{"messaging.destination.name": topic})[0]
    assert int(read["strata.bytes"]) > 0
    commits = {s.get("strata.command") for s in spans_named(collector, "metadata.commit")}
    assert "CreateTopic" in commits and "AddRemoteSegment" in commits, commits
    assert 'service.name: Str(strata)' in collector.text()
    names = collector.metric_names()
    for expected in ("strata_kafka_requests_total", "strata_log_syncs_total", "strata_tier_uploads_total",
                     "strata_kafka_request_duration_seconds_count", "strata_objstore_topic_requests_total"):
        assert expected in names, expected
    # The per-topic costs are also on /metrics, by topic name.
    text = broker.metrics()
    assert sum(metric_values(text, "strata_objstore_topic_requests_total", topic=topic, op="put")) >= 2
    assert sum(metric_values(text, "strata_objstore_topic_bytes_total", topic=topic, direction="upload")) > 64 * 1024
    assert sum(metric_values(text, "strata_objstore_topic_bytes_total", topic=topic, direction="download")) > 0


def test_grpc_flag_service_name_and_sampler_are_honoured(broker_factory, collector):
    """`--otlp-endpoint` with OTEL_EXPORTER_OTLP_PROTOCOL=grpc exports over gRPC under
    the OTEL_SERVICE_NAME with OTEL_RESOURCE_ATTRIBUTES; OTEL_TRACES_SAMPLER=always_off
    stops the spans but not the metrics."""
    broker = broker_factory(env={
        "STRATA_OTLP_ENDPOINT": f"http://{collector.grpc}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_SERVICE_NAME": "strata-under-test",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=ci",
        "OTEL_TRACES_SAMPLER": "always_off",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    })
    topic = unique("sampled")
    p = Producer({"bootstrap.servers": broker.bootstrap})
    p.produce(topic, value=b"v")
    assert p.flush(30) == 0
    wait_until(lambda: "strata_kafka_requests_total" in collector.metric_names(), 30, "metrics over gRPC")
    text = collector.text()
    assert "service.name: Str(strata-under-test)" in text
    assert "deployment.environment: Str(ci)" in text
    time.sleep(1)  # a span batch would have gone out by now (OTEL_BSP_SCHEDULE_DELAY)
    assert not spans_named(collector, "produce"), "always_off still exported spans"


def test_a_bad_protocol_is_refused_at_start(strata_binary, tmp_path):
    """An unsupported OTEL_EXPORTER_OTLP_PROTOCOL stops the start with a clear message."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRATA_", "OTEL_"))}
    env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"})
    out = subprocess.run([str(strata_binary), "serve", "--data-dir", str(tmp_path / "data")],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stderr
    assert "carrier-pigeon" in out.stderr and "http/protobuf or grpc" in out.stderr
    assert not (tmp_path / "data").exists(), "the data directory was touched before the config was checked"
