"""Garbled messages, made on purpose to exercise the dead-letter path.

Each kind is a realistic way real devices break the contract; :data:`MALFORMED_KINDS` maps the
kind to the reason the validator reports (see :mod:`fleetwatch.telemetry`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Final

from fleetwatch.telemetry import InvalidReason, format_ts


def _document(device_id: str, ts_ms: int, readings: dict[str, float]) -> dict[str, object]:
    return {"device_id": device_id, "ts": format_ts(ts_ms), "readings": dict(readings)}


def _dump(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _truncated(device_id: str, ts_ms: int, readings: dict[str, float]) -> bytes:
    whole = _dump(_document(device_id, ts_ms, readings))
    return whole[: len(whole) // 2]


def _binary(device_id: str, ts_ms: int, readings: dict[str, float]) -> bytes:
    return b"\x00\xff\xfe" + device_id.encode() + b"\x00garbage"


def _missing_ts(device_id: str, ts_ms: int, readings: dict[str, float]) -> bytes:
    document = _document(device_id, ts_ms, readings)
    del document["ts"]
    return _dump(document)


def _naive_ts(device_id: str, ts_ms: int, readings: dict[str, float]) -> bytes:
    document = _document(device_id, ts_ms, readings)
    document["ts"] = str(document["ts"]).rstrip("Z")
    return _dump(document)


def _seconds_not_ms(device_id: str, ts_ms: int, readings: dict[str, float]) -> bytes:
    document = _document(device_id, ts_ms, readings)
    document["ts"] = ts_ms // 1000  # the classic unit mix-up: lands in January 1970
    return _dump(document)


def _bad_device_id(device_id: str, ts_ms: int, readings: dict[str, float]) -> bytes:
    return _dump(_document(f"../{device_id} x", ts_ms, readings))


def _non_numeric(device_id: str, ts_ms: int, readings: dict[str, float]) -> bytes:
    document = _document(device_id, ts_ms, readings)
    sensor = next(iter(readings))
    document["readings"] = {**readings, sensor: "high"}
    return _dump(document)


def _non_finite(device_id: str, ts_ms: int, readings: dict[str, float]) -> bytes:
    sensor = next(iter(readings))
    return json.dumps(
        _document(device_id, ts_ms, {**readings, sensor: float("nan")}), separators=(",", ":")
    ).encode()


def _empty_readings(device_id: str, ts_ms: int, readings: dict[str, float]) -> bytes:
    return _dump(_document(device_id, ts_ms, {}))


def _bad_sensor_name(device_id: str, ts_ms: int, readings: dict[str, float]) -> bytes:
    return _dump(_document(device_id, ts_ms, {**readings, "temp; DROP TABLE scores": 1.0}))


Garbler = Callable[[str, int, dict[str, float]], bytes]

#: kind -> (how to garble, the reason the validator gives)
MALFORMED_KINDS: Final[dict[str, tuple[Garbler, InvalidReason]]] = {
    "truncated_json": (_truncated, "not_json"),
    "binary": (_binary, "not_json"),
    "missing_ts": (_missing_ts, "missing_field"),
    "naive_ts": (_naive_ts, "naive_timestamp"),
    "seconds_not_ms": (_seconds_not_ms, "absurd_timestamp"),
    "bad_device_id": (_bad_device_id, "bad_device_id"),
    "non_numeric": (_non_numeric, "non_numeric"),
    "non_finite": (_non_finite, "non_finite"),
    "empty_readings": (_empty_readings, "empty_readings"),
    "bad_sensor_name": (_bad_sensor_name, "bad_sensor_name"),
}
MALFORMED_NAMES: Final = tuple(MALFORMED_KINDS)
