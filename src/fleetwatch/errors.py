"""The exception hierarchy. Everything a user can cause derives from :class:`FleetwatchError`.

The CLI prints such an error as one line (``fleetwatch: error: ...``) with no traceback, so every
message says what was wrong and how to fix it.
"""

from __future__ import annotations


class FleetwatchError(Exception):
    """Base class of every error fleetwatch reports to a user."""

    exit_code = 2


class ConfigError(FleetwatchError):
    """A setting is unknown or has a bad value; the message names the key and where it came from."""


class BrokerError(FleetwatchError):
    """The Kafka broker cannot be reached, started or used."""


class InvalidInputError(FleetwatchError):
    """An input file or argument does not follow the telemetry contract."""


class DeliveryError(FleetwatchError):
    """Some messages could not be delivered to Kafka."""

    exit_code = 1


class StorageError(FleetwatchError):
    """A file in the data directory could not be written (a full disk, a read-only folder)."""

    exit_code = 1


class LimitError(FleetwatchError):
    """The work was stopped at a limit it was given (its time, its memory)."""

    exit_code = 1


class NothingDoneError(FleetwatchError):
    """The command ran but did nothing it was asked to (no device trained, ...): not success."""

    exit_code = 1


class PrivateSurfaceError(FleetwatchError):
    """An installed library no longer has the internals one of fleetwatch's adapters relies on
    (``aggregate/faust_adapter.py``, ``brokers/kafka_adapter.py``)."""
