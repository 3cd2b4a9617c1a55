"""Lets fixtures free the confluent-kafka clients of a test before stopping the brokers
they talk to. A client that outlives its broker keeps reconnecting and prints
librdkafka's "Connect ... failed: Connection refused" until the interpreter exits: noise
after the test summary, and a sign of a test that did not clean up. Producers and
consumers are tracked so that those still alive can be closed. Imported by conftest.py
before any test module, so `from confluent_kafka import Producer` in a test gets the
tracked class."""

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


# confluent_kafka's Producer and Consumer are C types: subclasses can be weakly
# referenced. (Reference cycles through their callbacks are invisible to the collector,
# so such clients live until closed.)
confluent_kafka.Producer = _tracked(confluent_kafka.Producer)
confluent_kafka.Consumer = _tracked(confluent_kafka.Consumer)


def release_clients() -> None:
    """Frees the clients nothing refers to any more and closes the producers and
    consumers that are still alive, while their brokers still run."""
    gc.collect()
    for client in list(_live):
        try:
            if isinstance(client, confluent_kafka.Producer):
                client.close(0)
            else:
                client.close()
        except (RuntimeError, TypeError):
            pass  # already closed
        except confluent_kafka.KafkaException:
            pass  # a producer in a fatal state (fenced) reports it on close: it is closed
