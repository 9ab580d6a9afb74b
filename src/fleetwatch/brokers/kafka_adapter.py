"""The one module that touches kafka-python's internals (as ``aggregate/faust_adapter.py`` is for
Faust's and aiokafka's); everything else uses this.

Read against kafka-python 3.0.12 (``pyproject.toml`` admits >=3.0,<3.1). What is used that is
not public, once, below:

- ``KafkaProducer._sender.force_close()``: the producer's I/O thread stops and fails every
  record it still holds, in flight or not (each record's errback runs), so that ``close()``
  has nothing left to flush. kafka-python's ``close()`` flushes first and, when that flush
  times out (a broker that stopped answering: its in-flight records do not always expire by
  the delivery timeout), raises before closing, and its ``__del__`` raises the same again: a
  traceback, and records neither counted delivered nor failed.

:func:`check_private_surface` checks that it still exists;
``tests/unit/brokers/test_kafka_adapter.py`` runs it in the suite.
"""

from __future__ import annotations

import inspect

from kafka import KafkaProducer
from kafka.producer.sender import Sender

from fleetwatch.errors import PrivateSurfaceError

READ_AGAINST = "kafka-python 3.0.12"


def check_private_surface() -> None:
    """Raise :class:`PrivateSurfaceError` naming what changed, if anything did."""
    force_close = getattr(Sender, "force_close", None)
    if force_close is None or list(inspect.signature(force_close).parameters) != ["self"]:
        from importlib.metadata import version

        raise PrivateSurfaceError(
            f"kafka-python {version('kafka-python')} changed what fleetwatch's adapter relies "
            f"on (Sender.force_close()); it was read against {READ_AGAINST}: install a version "
            "within pyproject.toml's bounds, or update fleetwatch.brokers.kafka_adapter"
        )


def fail_pending(producer: KafkaProducer) -> None:
    """Stop ``producer``'s I/O thread, failing every record it still holds (their errbacks
    run); ``producer.close()`` then returns without raising."""
    producer._sender.force_close()  # noqa: SLF001
