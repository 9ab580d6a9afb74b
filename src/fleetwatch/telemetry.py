"""The telemetry message contract: what a valid message is, and how to write one.

A message on the ``telemetry`` topic, keyed by its device id::

    {"device_id": "pump-0042", "ts": "2026-11-22T10:15:03.250Z",
     "readings": {"temperature": 71.3, "pressure": 2.04}}

Every producer (simulator, importer) writes through :func:`encode_message` and every consumer
(the aggregator, the tests) reads through :func:`parse_message`, so the contract lives here once.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final, Literal, NamedTuple

import orjson

#: Device ids and sensor names end up in file paths and SQL, so they are held to a safe alphabet.
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_MESSAGE_BYTES: Final = 64 * 1024
#: Sensors a message may carry: a device's model, its explanations and its dashboard page cost
#: memory in proportion to its sensors, so one message cannot make that cost unbounded.
MAX_SENSORS: Final = 500
#: Event times outside this range are "absurd": a clock that was never set, or a unit mix-up.
MIN_EVENT_MS: Final = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1000)
MAX_EVENT_MS: Final = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1000)

InvalidReason = Literal[
    "oversized",
    "not_json",
    "not_object",
    "missing_field",
    "bad_device_id",
    "key_mismatch",
    "bad_timestamp",
    "naive_timestamp",
    "absurd_timestamp",
    "bad_readings",
    "empty_readings",
    "too_many_sensors",
    "bad_sensor_name",
    "non_numeric",
    "non_finite",
    "future_timestamp",
    "unparseable",
]


class InvalidMessage(ValueError):
    """A message that breaks the contract; ``reason`` is one of :data:`InvalidReason`."""

    def __init__(self, reason: InvalidReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: InvalidReason = reason
        self.detail = detail


class Telemetry(NamedTuple):
    """One valid message: a device's readings at one event time (epoch milliseconds, UTC).

    A NamedTuple: one is made per message on the aggregation's hot path, in half the time of
    a frozen dataclass."""

    device_id: str
    ts_ms: int
    readings: dict[str, float]


def is_valid_name(name: object) -> bool:
    """True for a device id or sensor name that may reach a path or SQL.

    >>> is_valid_name("pump-0042"), is_valid_name("../etc"), is_valid_name("a b")
    (True, False, False)
    """
    return (
        isinstance(name, str)
        and NAME_PATTERN.fullmatch(name) is not None
        and name
        not in (
            ".",
            "..",
        )
        and not name.startswith("..")
    )


def parse_timestamp_field(value: Any) -> int:
    """Epoch milliseconds from the contract's ``ts``: ISO-8601 with an offset, or integer ms."""
    if isinstance(value, bool):
        raise InvalidMessage("bad_timestamp", "ts is a boolean")
    if isinstance(value, int):
        if not MIN_EVENT_MS <= value < MAX_EVENT_MS:
            raise InvalidMessage("absurd_timestamp", f"ts {_short(value)} is outside 2000..2100")
        return value
    if not isinstance(value, str):
        raise InvalidMessage("bad_timestamp", f"ts is a {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidMessage("bad_timestamp", f"ts {value[:40]!r} is not ISO-8601") from None
    if parsed.tzinfo is None:
        raise InvalidMessage("naive_timestamp", f"ts {value[:40]!r} has no offset or Z")
    try:
        ts_ms = round(parsed.timestamp() * 1000)
    except (OverflowError, ValueError, OSError):  # year 1 with a positive offset, and the like
        ts_ms = MIN_EVENT_MS - 1
    if not MIN_EVENT_MS <= ts_ms < MAX_EVENT_MS:
        raise InvalidMessage("absurd_timestamp", f"ts {value[:40]!r} is outside 2000..2100")
    return ts_ms


def _short(value: object) -> str:
    """A bounded, never-failing rendering of a JSON value for a detail message (a 5,000-digit
    integer cannot even be turned into a string by default)."""
    if isinstance(value, int) and not isinstance(value, bool):
        digits = value.bit_length() * 0.30103
        return repr(value) if digits < 40 else f"<an integer of about {digits:.0f} digits>"
    try:
        return repr(value)[:40]
    except (ValueError, RecursionError):
        return f"<a {type(value).__name__}>"


def _reading(sensor: str, reading: object) -> float:
    """A sensor's value as a finite float, or why it is invalid."""
    if isinstance(reading, bool) or not isinstance(reading, int | float):
        raise InvalidMessage("non_numeric", f"{sensor} = {_short(reading)}")
    try:
        number = float(reading)  # an integer beyond float's range raises OverflowError
    except OverflowError:
        raise InvalidMessage("non_finite", f"{sensor} = {_short(reading)}") from None
    if not math.isfinite(number):
        raise InvalidMessage("non_finite", f"{sensor} = {number}")
    return number


def parse_message(value: bytes | None, key: bytes | None = None) -> Telemetry:
    """Validate one raw Kafka message against the contract.

    Raises :class:`InvalidMessage` with a reason; never anything else for any input bytes (an
    unforeseen failure is reported as ``unparseable`` with its type, not raised as it is).

    >>> parse_message(b'{"device_id":"p-1","ts":1763806503250,"readings":{"t":1.5}}').readings
    {'t': 1.5}
    """
    fast = parse_fast(value, key)
    return fast if fast is not None else parse_exact(value, key)


def parse_exact(value: bytes | None, key: bytes | None = None) -> Telemetry:
    """:func:`parse_message` without its fast path: every rule, one at a time. For what
    :func:`parse_fast` declined (a loop that tried it already calls this, not parse_message,
    so a declined message is not decoded by the fast path twice)."""
    try:
        return _parse(value, key)
    except InvalidMessage:
        raise
    except Exception as exc:  # a message must never crash its consumer: see the docstring
        raise InvalidMessage("unparseable", f"{type(exc).__name__} while parsing") from None


#: Names that passed :func:`is_valid_name` (device ids and sensors repeat in every message);
#: emptied when it reaches :data:`KNOWN_NAMES_LIMIT`, so a stream of made-up names costs only
#: the check it would have cost anyway.
_KNOWN_NAMES: set[str] = set()
KNOWN_NAMES_LIMIT: Final = 200_000


def _known(names: Iterable[str]) -> bool:
    """Whether every one of ``names`` is a valid name (remembering those that are)."""
    for name in names:
        if name not in _KNOWN_NAMES:
            if not is_valid_name(name):
                return False
            if len(_KNOWN_NAMES) >= KNOWN_NAMES_LIMIT:
                _KNOWN_NAMES.clear()
            _KNOWN_NAMES.add(name)
    return True


def _parse(value: bytes | None, key: bytes | None) -> Telemetry:
    if value is None:
        raise InvalidMessage("not_json", "empty message (tombstone)")
    if len(value) > MAX_MESSAGE_BYTES:
        raise InvalidMessage("oversized", f"{len(value)} bytes > {MAX_MESSAGE_BYTES}")
    return _parse_exact(value, key)


# The fast path's callables bound once (a module attribute looked up per message costs ~0.1 us
# here), and its result made as the tuple it is: Telemetry(...) runs a Python-level __new__
# (0.3 us a message more). Together 8% of parse_message (benchmarks/aggregate.py), and no
# finiteness sum (see below) 10% more.
_loads = orjson.loads
_fromisoformat = datetime.fromisoformat
_new_tuple = tuple.__new__


def parse_fast(value: bytes | None, key: bytes | None) -> Telemetry | None:
    """:func:`parse_message`'s common case, fast, for a loop over many messages: the message
    when it is plainly valid, else None, and then :func:`parse_exact` decides (the reason, or
    the message when it is valid in an unusual way). Never raises.

    Decoded by orjson, its names checked once per name (:data:`_KNOWN_NAMES`), its values by
    type. What returns None: anything invalid, and the unusual valid forms (an ISO timestamp
    that does not parse here, an integer too large for a float, NaN literals, UTF-16).
    Every decision is the exact rules' (tested on the hostile payloads and on generated ones).

    >>> parse_fast(b'{"device_id":"p-1","ts":1763806503250,"readings":{"t":1}}', None)
    Telemetry(device_id='p-1', ts_ms=1763806503250, readings={'t': 1.0})
    >>> parse_fast(b'{"device_id":"p-1"}', None) is None
    True
    """
    if value is None or len(value) > MAX_MESSAGE_BYTES:
        return None
    try:  # (one function, no call level: a call costs ~0.1 us a message)
        document = _loads(value)
        if type(document) is not dict:
            return None
        device_id = document.get("device_id")
        ts = document.get("ts")
        readings = document.get("readings")
        if type(device_id) is not str or type(readings) is not dict:
            return None
        if not 0 < len(readings) <= MAX_SENSORS:
            return None
        if key is not None and key != device_id.encode():
            return None
        if type(ts) is str:  # parse_timestamp_field's rules, inline (a call costs ~0.4 us)
            parsed = _fromisoformat(ts)
            if parsed.tzinfo is None:
                return None
            ts_ms = round(parsed.timestamp() * 1000)
            if not MIN_EVENT_MS <= ts_ms < MAX_EVENT_MS:
                return None
        elif type(ts) is int:
            if not MIN_EVENT_MS <= ts < MAX_EVENT_MS:
                return None
            ts_ms = ts
        else:
            return None
        known = _KNOWN_NAMES
        if not (device_id in known and known.issuperset(readings)) and not _known(
            (device_id, *readings)
        ):
            return None
        for reading in readings.values():  # a loop: a third faster than a set of their types
            if type(reading) is not float:
                if not set(map(type, readings.values())) <= {float, int}:
                    return None
                readings = {sensor: float(reading) for sensor, reading in readings.items()}
                break
        # No finiteness check: orjson reads no NaN and no infinity (1e999, an integer too
        # large for a float and the NaN / Infinity literals are errors, and an integer beyond
        # 64 bits is read as a float: tests/unit/test_telemetry.py), so every value is finite.
        return _new_tuple(Telemetry, (device_id, ts_ms, readings))
    except Exception:  # whatever it is (a time that does not parse here, ...): the exact rules
        return None


def _parse_exact(value: bytes, key: bytes | None) -> Telemetry:
    """Every rule, one at a time: the reason a message is invalid, or the message."""
    try:
        document = json.loads(value)
    except (ValueError, RecursionError):
        raise InvalidMessage("not_json", "payload is not JSON (or not UTF-8)") from None
    if not isinstance(document, dict):
        raise InvalidMessage("not_object", f"payload is a JSON {type(document).__name__}")
    try:
        device_id = document["device_id"]
        ts = document["ts"]
        readings = document["readings"]
    except KeyError as exc:
        raise InvalidMessage("missing_field", f"no {exc.args[0]!r} field") from None
    if not is_valid_name(device_id):
        raise InvalidMessage("bad_device_id", f"device_id {_short(device_id)}")
    if key is not None and key != device_id.encode():
        raise InvalidMessage("key_mismatch", f"key {key[:80]!r} is not device_id {device_id!r}")
    ts_ms = parse_timestamp_field(ts)
    if not isinstance(readings, dict):
        raise InvalidMessage("bad_readings", f"readings is a {type(readings).__name__}")
    if not readings:
        raise InvalidMessage("empty_readings", "readings is empty")
    if len(readings) > MAX_SENSORS:
        raise InvalidMessage(
            "too_many_sensors", f"{len(readings)} readings > {MAX_SENSORS} sensors a message"
        )
    values: dict[str, float] = {}
    for sensor, reading in readings.items():
        if not is_valid_name(sensor):
            raise InvalidMessage("bad_sensor_name", f"sensor {sensor[:80]!r}")
        values[sensor] = _reading(sensor, reading)
    return Telemetry(device_id, ts_ms, values)


def format_ts(ts_ms: int) -> str:
    """The contract's ISO-8601 form of epoch milliseconds.

    >>> format_ts(1763806503250)
    '2025-11-22T10:15:03.250Z'
    """
    seconds, millis = divmod(ts_ms, 1000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"


def encode_message(device_id: str, ts_ms: int, readings: dict[str, float]) -> bytes:
    """The JSON bytes of one message (compact, keys in the contract's order)."""
    return json.dumps(
        {"device_id": device_id, "ts": format_ts(ts_ms), "readings": readings},
        separators=(",", ":"),
        allow_nan=False,
    ).encode()
