"""No message can crash the aggregation or take valid neighbours with it: hostile payloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetwatch.aggregate.processor import PartitionProcessor
from fleetwatch.aggregate.windows import WindowSpec
from fleetwatch.storage.checkpoints import CheckpointStore
from fleetwatch.storage.layout import DataLayout
from fleetwatch.storage.parquet import PartitionedParquetSink
from fleetwatch.telemetry import InvalidMessage, Telemetry, parse_exact, parse_message
from tests.unit.aggregate.test_processor import read_dir

T0 = 1_795_334_400_000


def doc(**fields: object) -> bytes:
    base: dict[str, object] = {"device_id": "pump-1", "ts": T0, "readings": {"t": 1.0}}
    base.update(fields)
    return json.dumps(base).encode()


def raw(text: str) -> bytes:
    return text.encode()


HOSTILE: list[bytes | None] = [
    None,
    b"",
    b" ",
    b"\x00",
    b"\x00" * 100,
    b"\xff\xfe\xfd",
    b"\xc3\x28",  # invalid UTF-8
    b'{"device_id": "pump-1", "ts": 1, "readings": {"t": 1}}\x00',
    b"null",
    b"true",
    b"42",
    b'"a string"',
    b"[]",
    b"[" * 100_000 + b"]" * 100_000,  # deep nesting
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    raw('{"device_id": "pump-1", "ts": ' + "9" * 400 + ', "readings": {"t": 1}}'),
    raw('{"device_id": "pump-1", "ts": 1795334400000, "readings": {"t": ' + "9" * 400 + "}}"),
    raw('{"device_id": "pump-1", "ts": 1795334400000, "readings": {"t": -' + "9" * 400 + "}}"),
    raw('{"device_id": "pump-1", "ts": 1795334400000, "readings": {"t": 1' + "0" * 5000 + "}}"),
    raw('{"device_id": "pump-1", "ts": 1795334400000, "readings": {"t": 1e999}}'),
    raw('{"device_id": "pump-1", "ts": 1795334400000, "readings": {"t": -1e999}}'),
    raw('{"device_id": "pump-1", "ts": 1795334400000, "readings": {"t": NaN}}'),
    raw('{"device_id": "pump-1", "ts": 1795334400000, "readings": {"t": Infinity}}'),
    raw('{"device_id": ' + "1" * 5000 + ', "ts": 1795334400000, "readings": {"t": 1}}'),
    doc(ts=1.5e12),
    doc(ts=-1),
    doc(ts=2**70),
    doc(ts=True),
    doc(ts=None),
    doc(ts=[1, 2]),
    doc(ts={"a": 1}),
    doc(ts=""),
    doc(ts="yesterday"),
    doc(ts="2026-11-22T10:00:00"),  # naive
    doc(ts="0001-01-01T00:00:00+14:00"),
    doc(ts="9999-12-31T23:59:59-14:00"),
    doc(ts="2026-13-45T99:99:99Z"),
    doc(ts="2026-11-22T10:00:00Z" + "0" * 10_000),
    doc(device_id=""),
    doc(device_id="a" * 65),
    doc(device_id="../../etc/passwd"),
    doc(device_id="pump 1"),
    doc(device_id="pump-1\x00"),
    doc(device_id=None),
    doc(device_id=12),
    doc(device_id=["pump-1"]),
    doc(device_id=".."),
    doc(readings=None),
    doc(readings=[]),
    doc(readings={}),
    doc(readings="t=1"),
    doc(readings={"": 1.0}),
    doc(readings={"t; DROP TABLE scores": 1.0}),
    doc(readings={"t" * 65: 1.0}),
    doc(readings={"t": "1.0"}),
    doc(readings={"t": None}),
    doc(readings={"t": True}),
    doc(readings={"t": [1.0]}),
    doc(readings={"t": {"v": 1.0}}),
    doc(readings={f"s{i}": 1.0 for i in range(20_000)}),  # 64 KiB and more
    doc(readings={f"s{i}": 1.0 for i in range(3000)}),  # within 64 KiB: too many sensors
    raw('{"device_id": "pump-1", "device_id": "pump-2", "ts": 1795334400000, "readings": 1}'),
    raw('{"device_id": "pump-1"}'),
    raw('{"ts": 1795334400000, "readings": {"t": 1}}'),
    raw('{"device_id": "pump-1", "ts": 1795334400000}'),
    b'{"device_id": "pump-1", "ts": 1795334400000, "readings": {"t": 1}' + b" " * 70_000 + b"}",
    doc(ts="2026-11-22T10:00:00+25:00"),  # an offset beyond a day
    doc() + b"garbage",
    doc() * 2,
    b"{" + b"x" * 1_000_082,  # a payload above Kafka's default message size
]


def test_there_are_at_least_fifty_hostile_payloads() -> None:
    assert len(HOSTILE) >= 50


@pytest.mark.parametrize("payload", HOSTILE, ids=range(len(HOSTILE)))
def test_a_hostile_payload_is_invalid_with_a_reason_and_nothing_else(payload: bytes | None) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(payload, b"pump-1")
    assert caught.value.reason and len(caught.value.detail) < 2000


def test_a_key_that_does_not_match_is_invalid() -> None:
    with pytest.raises(InvalidMessage, match="key_mismatch"):
        parse_message(doc(), b"x" * 1_000_000)


def test_hostile_payloads_among_valid_readings_cost_only_themselves(tmp_path: Path) -> None:
    """Every valid reading sent between hostile ones is aggregated, each hostile one is dead
    lettered once with its reason, and the processor never raises."""
    layout = DataLayout.open(tmp_path)
    dead: list[tuple[int, str]] = []
    processor = PartitionProcessor(
        0,
        WindowSpec(60_000, 30_000),
        PartitionedParquetSink(layout, "aggregates"),
        PartitionedParquetSink(layout, "late"),
        lambda offset, key, value, reason, detail: dead.append((offset, reason)),
    )
    records = []
    valid = 0
    for index, payload in enumerate(HOSTILE):
        records.append((2 * index, b"pump-1", payload))
        good = json.dumps({"device_id": "pump-1", "ts": T0 + index * 100, "readings": {"t": 2.0}})
        records.append((2 * index + 1, b"pump-1", good.encode()))
        valid += 1
    for start in range(0, len(records), 7):  # whatever the batching
        processor.process(records[start : start + 7])
    processor.close_all()
    processor.save(CheckpointStore(layout.store, "telemetry"))
    assert sorted(offset for offset, _ in dead) == [2 * i for i in range(len(HOSTILE))]
    windows = read_dir(tmp_path / "aggregates")
    assert windows["count"].sum() == valid and set(windows["mean"]) == {2.0}


def test_a_message_of_too_many_sensors_is_dead_lettered_for_it() -> None:
    """Issue 24, item 6: one message within the size limit carried 3,000 sensors, whose
    explanations then needed 20 GB. Beyond telemetry.MAX_SENSORS a message is refused."""
    from fleetwatch.telemetry import MAX_SENSORS

    with pytest.raises(InvalidMessage) as caught:
        parse_message(doc(readings={f"s{i}": 1.0 for i in range(MAX_SENSORS + 1)}), b"pump-1")
    assert caught.value.reason == "too_many_sensors"
    assert len(parse_message(doc(readings={f"s{i}": 1.0 for i in range(MAX_SENSORS)})).readings)


def _decided(parse, payload: bytes | None, key: bytes | None = None):  # type: ignore[no-untyped-def]
    try:
        message = parse(payload, key)
    except InvalidMessage as exc:
        return ("invalid", exc.reason, exc.detail)
    assert type(message) is Telemetry  # the fast path makes it as a tuple, without __new__
    return ("valid", message.device_id, message.ts_ms, message.readings)


@pytest.mark.parametrize("payload", HOSTILE)
def test_the_fast_path_decides_every_hostile_payload_as_the_exact_rules_do(
    payload: bytes | None,
) -> None:
    """Issue 27: the decoder's fast path (orjson, remembered names) changes no decision: the
    same reason and detail for every hostile payload, the same readings for valid ones."""
    decided = _decided(parse_message, payload)
    expected = _decided(parse_exact, payload)
    if decided[0] == "invalid" and expected[0] == "invalid" and expected[1] == "oversized":
        assert decided[1] == "oversized"
    else:
        assert decided == expected


def test_the_fast_path_decides_generated_messages_as_the_exact_rules_do() -> None:
    """Generated documents: the contract's fields with values of every JSON type, names valid
    and not, integers within and beyond 64 bits, floats at the edges, NaN and Infinity
    literals, keys that match and keys that do not."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    names = st.one_of(
        st.sampled_from(["pump-1", "t", "temp.a", "x" * 64, "x" * 65, "..", "a b", "é", ""]),
        st.text(max_size=6),
    )
    numbers = st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.sampled_from([T0, T0 + 0.5, 2**63, -(2**63) - 1, 1e308, -1e308, 5e-324]),
    )
    scalars = st.one_of(numbers, st.booleans(), st.none(), names)
    readings = st.one_of(
        st.dictionaries(names, st.one_of(numbers, scalars), max_size=4), scalars, st.lists(numbers)
    )
    stamps = st.one_of(
        numbers,
        st.sampled_from(
            ["2026-11-22T10:15:03.250Z", "2026-11-22T10:15:03", "2026-11-22T10:15:03+05:30",
             "1999-12-31T23:59:59Z", "2100-01-01T00:00:00Z", "not a time", "2026-13-01T00:00Z"]
        ),
        scalars,
    )  # fmt: skip
    anything = st.fixed_dictionaries(
        {}, optional={"device_id": names, "ts": stamps, "readings": readings, "extra": scalars}
    )
    valid_names = st.from_regex(r"[A-Za-z0-9_.-]{1,8}", fullmatch=True)
    plausible = st.fixed_dictionaries(  # mostly valid: the fast path's own cases
        {
            "device_id": valid_names,
            "ts": st.one_of(
                st.integers(min_value=T0 - 10**9, max_value=T0 + 10**9),
                st.sampled_from(["2026-11-22T10:15:03.250Z", "2026-11-22T10:15:03+01:00"]),
            ),
            "readings": st.dictionaries(valid_names, numbers, min_size=1, max_size=5),
        }
    )

    @settings(max_examples=2000, deadline=None, derandomize=True)
    @given(st.one_of(anything, plausible), st.sampled_from([None, b"pump-1", b"other"]))
    def check(document: dict[str, object], key: bytes | None) -> None:
        payload = json.dumps(document, allow_nan=False).encode()
        assert _decided(parse_message, payload, key) == _decided(parse_exact, payload, key)
        if key is None and document.get("readings"):  # a NaN literal, where json reads it
            nan = payload.replace(b"}}", b', "zz": NaN}}', 1)
            assert _decided(parse_message, nan) == _decided(parse_exact, nan)

    check()
