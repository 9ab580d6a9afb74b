from __future__ import annotations

import json

import pytest

from fleetwatch.telemetry import (
    MAX_MESSAGE_BYTES,
    InvalidMessage,
    encode_message,
    format_ts,
    is_valid_name,
    parse_message,
)


def doc(**changes: object) -> bytes:
    base: dict[str, object] = {
        "device_id": "pump-0042",
        "ts": "2026-11-22T10:15:03.250Z",
        "readings": {"temperature": 71.3, "pressure": 2.04},
    }
    base.update(changes)
    return json.dumps(base).encode()


def test_valid_message_round_trip() -> None:
    message = parse_message(doc(), key=b"pump-0042")
    assert message.device_id == "pump-0042"
    assert message.ts_ms == 1795342503250
    assert message.readings == {"temperature": 71.3, "pressure": 2.04}
    again = parse_message(encode_message(message.device_id, message.ts_ms, message.readings))
    assert again == message


def test_epoch_millis_and_offsets() -> None:
    assert parse_message(doc(ts=1795342503250)).ts_ms == 1795342503250
    assert parse_message(doc(ts="2026-11-22T11:15:03.250+01:00")).ts_ms == 1795342503250
    assert format_ts(1795342503250) == "2026-11-22T10:15:03.250Z"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "not_json"),
        (b"\xff\xfe", "not_json"),
        (b"[1,2]", "not_object"),
        (json.dumps({"device_id": "p", "readings": {"a": 1}}).encode(), "missing_field"),
        (doc(device_id="pump 42"), "bad_device_id"),
        (doc(device_id="../../etc"), "bad_device_id"),
        (doc(device_id="x" * 65), "bad_device_id"),
        (doc(device_id=42), "bad_device_id"),
        (doc(ts="2026-11-22T10:15:03"), "naive_timestamp"),
        (doc(ts="yesterday"), "bad_timestamp"),
        (doc(ts=1.5), "bad_timestamp"),
        (doc(ts=True), "bad_timestamp"),
        (doc(ts=1795342503), "absurd_timestamp"),  # seconds, not milliseconds
        (doc(readings=[1, 2]), "bad_readings"),
        (doc(readings={}), "empty_readings"),
        (doc(readings={"temp erature": 1.0}), "bad_sensor_name"),
        (doc(readings={"t": "hot"}), "non_numeric"),
        (doc(readings={"t": True}), "non_numeric"),
        (doc(readings={"t": None}), "non_numeric"),
        (b'{"device_id":"p","ts":1795342503250,"readings":{"t":NaN}}', "non_finite"),
        (b'{"device_id":"p","ts":1795342503250,"readings":{"t":Infinity}}', "non_finite"),
        (b" " * (MAX_MESSAGE_BYTES + 1), "oversized"),
        (b"[" * 100_000, "oversized"),
    ],
)
def test_invalid_messages_have_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(payload)
    assert caught.value.reason == reason


def test_deep_nesting_is_invalid_not_a_crash() -> None:
    with pytest.raises(InvalidMessage):
        parse_message(b"[" * 5000 + b"]" * 5000)


def test_key_must_match_device_id() -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(doc(), key=b"pump-0001")
    assert caught.value.reason == "key_mismatch"


def test_names() -> None:
    assert is_valid_name("pump-0042")
    assert is_valid_name("sensor_07")
    for bad in ("", "a b", "..", "../x", "x/y", "a;b", "é", "x" * 65, None, 3):
        assert not is_valid_name(bad)


@pytest.mark.parametrize(
    "number",
    [b"1e999", b"-1e999", b"1.8e308", b"1" + b"0" * 400, b"-1" + b"0" * 400, b"NaN", b"Infinity",
     b"-Infinity"],
)  # fmt: skip
def test_orjson_reads_no_number_that_is_not_finite(number: bytes) -> None:
    """parse_fast checks no finiteness: it relies on orjson refusing every such number (an
    integer beyond 64 bits it reads as a float, finite or refused). Then the exact rules
    decide, and the message is dead-lettered ``non_finite``."""
    import orjson

    from fleetwatch.telemetry import parse_fast

    payload = b'{"device_id": "p-1", "ts": 1795334400000, "readings": {"t": ' + number + b"}}"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(payload)
    assert parse_fast(payload, None) is None
    with pytest.raises(InvalidMessage) as error:
        parse_message(payload)
    assert error.value.reason == "non_finite"
