"""The broker fixture itself: start-up failures are reported with the broker's stderr,
stop() is an orderly exit, restart() keeps the data directory and the Kafka port."""

from __future__ import annotations

import socket

import pytest


def test_bad_setting_fails_start_with_stderr(broker_factory):
    with pytest.raises(RuntimeError, match="before it was ready") as exc:
        broker_factory(env={"STRATA_KAFKA_NUM_PARTITIONS": "0"})
    assert "num.partitions" in str(exc.value), exc.value
    with pytest.raises(RuntimeError, match="before it was ready") as exc:
        broker_factory(env={"STRATA_KAFKA_NO_SUCH_SETTING": "1"})
    assert "STRATA_KAFKA_NO_SUCH_SETTING" in str(exc.value), exc.value


def test_stop_restart_same_port_and_data_dir(broker):
    port, data_dir = broker.kafka_port, broker.data_dir
    assert broker.http_get("/healthz")[0] == 200
    assert broker.http_get("/readyz")[0] == 200
    broker.stop()
    assert not broker.running()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    broker.restart()
    assert (broker.kafka_port, broker.data_dir) == (port, data_dir)
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    broker.kill()
    assert not broker.running()
    broker.restart()
    assert broker.kafka_port == port
    log = broker.log_text()
    assert log.count("kafka listener ready") == 3
    assert "shutdown complete" in log
