"""Lets fixtures free the confluent-kafka clients of a test before stopping the brokers
they talk to. A client that outlives its broker keeps reconnecting and prints
librdkafka's "Connect ... failed: Connection refused" until the interpreter exits: noise
after the test summary, and a sign of a test that did not clean up. Clients kept alive
only by reference cycles are freed by a collection; consumers still referenced are
closed, which is why they are tracked. Imported by conftest.py before any test module,
so `from confluent_kafka import Consumer` in a test gets the tracked class."""

from __future__ import annotations

import gc
import weakref

import confluent_kafka

_live: weakref.WeakSet = weakref.WeakSet()


def _tracked(cls):
    class Tracked(cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            _live.add(self)

    Tracked.__name__ = cls.__name__
    Tracked.__qualname__ = cls.__qualname__
    Tracked.__module__ = cls.__module__
    return Tracked


# confluent_kafka.Consumer is a C type: a subclass can be weakly referenced.
confluent_kafka.Consumer = _tracked(confluent_kafka.Consumer)


def release_clients() -> None:
    """Frees the clients nothing refers to any more (reference cycles included) and
    closes consumers that are still referenced, while their brokers still run."""
    gc.collect()
    for client in list(_live):
        if isinstance(client, confluent_kafka.Consumer):
            try:
                client.close()
            except RuntimeError:
                pass  # already closed
