"""The fleet generator, checked against independent re-derivations of what it should have made."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from fleetwatch.simulators.anomalies import read_labels, write_labels
from fleetwatch.simulators.fleet import FleetSpec, FleetStream
from fleetwatch.simulators.malformed import MALFORMED_KINDS
from fleetwatch.telemetry import InvalidMessage, parse_message

START = datetime(2026, 11, 22, tzinfo=UTC)
SPEC = FleetSpec(devices=12, sensors=4, start=START, interval_s=5.0, seed=42, anomaly_rate=6.0)


def run(spec: FleetSpec, messages: int) -> tuple[list[tuple[bytes, bytes]], FleetStream]:
    stream = FleetStream(spec)
    out = [m for _, batch in stream.ticks(messages) for m in batch]
    out += stream.drain_late()
    return out, stream


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    first, _ = run(SPEC, 3000)
    second, _ = run(SPEC, 3000)
    other, _ = run(replace(SPEC, seed=43), 3000)
    assert first == second
    assert first != other


def test_exact_count_keys_and_contract() -> None:
    messages, stream = run(SPEC, 2500)
    assert len(messages) == 2500
    readings = 0
    for key, value in messages:
        parsed = parse_message(value, key=key)
        assert parsed.device_id == key.decode()
        readings += len(parsed.readings)
    assert readings == stream.counters.readings
    assert {k for k, _ in messages} == {d.encode() for d in stream.device_ids}
    assert stream.sensor_names == ["temperature", "pressure", "vibration", "current"]


def test_event_times_follow_the_simulated_clock() -> None:
    messages, _ = run(replace(SPEC, anomaly_rate=0), 12 * 10)
    times = [parse_message(v).ts_ms for _, v in messages]
    start_ms = int(START.timestamp() * 1000)
    assert min(times) >= start_ms
    assert max(times) < start_ms + 10 * 5000
    per_device: dict[str, list[int]] = {}
    for key, value in messages:
        per_device.setdefault(key.decode(), []).append(parse_message(value).ts_ms)
    for series in per_device.values():
        assert np.all(np.diff(series) == 5000)  # one reading per interval per device
    assert times == sorted(times)  # emitted in event-time order


def test_sensor_names_beyond_the_named_ones() -> None:
    stream = FleetStream(replace(SPEC, sensors=12))
    assert stream.sensor_names[-2:] == ["sensor_11", "sensor_12"]


def test_labels_cover_exactly_the_readings_that_differ_from_a_clean_run() -> None:
    """Anomaly randomness is separate from noise, so a run with no anomalies is the control."""
    spec = replace(SPEC, anomaly_rate=20.0, interval_s=10.0)
    dirty, stream = run(spec, 12 * 720)  # two simulated hours
    clean, _ = run(replace(spec, anomaly_rate=0.0), 12 * 720)
    labels = stream.close()
    assert len(labels) >= 20
    assert {label.kind for label in labels} == {
        "spike",
        "level_shift",
        "stuck",
        "noise_burst",
        "drift_ramp",
        "dropout",
    }

    differs: set[tuple[str, str, int]] = set()
    for (_, dirty_value), (_, clean_value) in zip(dirty, clean, strict=True):
        d, c = parse_message(dirty_value), parse_message(clean_value)
        assert (d.device_id, d.ts_ms) == (c.device_id, c.ts_ms)
        for sensor, value in c.readings.items():
            if d.readings.get(sensor) != value:
                differs.add((d.device_id, sensor, d.ts_ms))

    def labelled(device: str, sensor: str, ts: int) -> bool:
        return any(
            x.device_id == device and x.sensor == sensor and x.start_ms <= ts <= x.end_ms
            for x in labels
        )

    assert all(labelled(*point) for point in differs), "a reading changed outside every label"
    for label in labels:
        touched = [
            p
            for p in differs
            if p[:2] == (label.device_id, label.sensor) and label.start_ms <= p[2] <= label.end_ms
        ]
        # a stuck sensor holds its first value, so its first reading equals the clean one
        assert touched, f"label {label} changed no reading"
    one_at_a_time = Counter()
    for label in labels:
        one_at_a_time[label.device_id] += 1
    starts = sorted((x.device_id, x.start_ms, x.end_ms) for x in labels)
    for (dev_a, _, end_a), (dev_b, start_b, _) in itertools.pairwise(starts):
        if dev_a == dev_b:
            assert start_b > end_a, "two anomalies overlap on one device"


def test_clean_for_keeps_the_first_span_free() -> None:
    spec = replace(SPEC, anomaly_rate=30.0, clean_for_s=1800.0)
    _, stream = run(spec, 12 * 720)
    labels = stream.close()
    assert labels
    assert min(x.start_ms for x in labels) >= int(START.timestamp() * 1000) + 1800 * 1000


def test_malformed_messages_fail_with_their_documented_reason() -> None:
    spec = replace(SPEC, malformed_fraction=0.3)
    messages, stream = run(spec, 4000)
    reasons: Counter[str] = Counter()
    valid = 0
    for key, value in messages:
        try:
            parse_message(value, key=key)
            valid += 1
        except InvalidMessage as exc:
            reasons[exc.reason] += 1
    expected: Counter[str] = Counter()
    for kind, count in stream.counters.malformed.items():
        expected[MALFORMED_KINDS[kind][1]] += count
    assert reasons == expected
    assert sum(stream.counters.malformed.values()) == 4000 - valid
    assert set(stream.counters.malformed) == set(MALFORMED_KINDS)  # every kind shows up
    assert 0.25 < (4000 - valid) / 4000 < 0.35


def test_late_messages_arrive_after_their_delay_with_their_own_time() -> None:
    spec = replace(SPEC, late_fraction=0.1, late_delay_s=60.0, anomaly_rate=0.0)
    messages, stream = run(spec, 3000)
    clean, _ = run(replace(spec, late_fraction=0.0), 3000)
    assert sorted(messages) == sorted(clean)  # the same messages, only the order differs
    assert stream.counters.late > 200
    max_seen = 0
    late_seen = 0
    for _, value in messages:
        ts = parse_message(value).ts_ms
        if ts < max_seen - 30_000:
            late_seen += 1
        max_seen = max(max_seen, ts)
    assert late_seen >= stream.counters.late * 0.9


def test_dropout_only_with_more_than_one_sensor() -> None:
    spec = replace(SPEC, sensors=1, anomaly_rate=50.0, anomaly_kinds=("dropout", "spike"))
    messages, stream = run(spec, 3000)
    assert {x.kind for x in stream.close()} == {"spike"}
    for key, value in messages:
        parse_message(value, key=key)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_labels_file_round_trip(tmp_path: Path, suffix: str) -> None:
    _, stream = run(replace(SPEC, anomaly_rate=30.0), 2000)
    labels = stream.close()
    path = tmp_path / f"labels{suffix}"
    write_labels(labels, path)
    assert read_labels(path) == labels
    if suffix == ".csv":
        header = path.read_text().splitlines()[0]
        assert header == "device_id,sensor,kind,start,end"


def test_messages_are_compact_json_in_contract_key_order() -> None:
    messages, _ = run(replace(SPEC, anomaly_rate=0), 5)
    document = json.loads(messages[0][1])
    assert list(document) == ["device_id", "ts", "readings"]
    assert document["ts"].endswith("Z")
