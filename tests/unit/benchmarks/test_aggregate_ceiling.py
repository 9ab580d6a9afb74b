"""benchmarks/aggregate.py's ceiling job (``dict_windows``), the figure fleetwatch is compared
with: it must do the job it claims, or the comparison means nothing. Checked against pandas over
the same readings."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pandas as pd
import pytest

from fleetwatch.simulators.fleet import FleetSpec, FleetStream
from tests.unit.benchmarks.conftest import load_script


def test_the_ceiling_folds_every_reading_into_its_minute_as_pandas_does() -> None:
    bench = load_script("aggregate.py")
    start = datetime(2026, 11, 22, 0, 0, 30, tzinfo=UTC)  # windows cut mid-run
    stream = FleetStream(FleetSpec(devices=5, sensors=3, start=start, seed=3, anomaly_rate=0.0))
    values = [value for _, batch in stream.ticks(600) for _, value in batch]
    windows: dict[tuple[str, str, int], list[float]] = {}
    bench.dict_windows(windows, values[:250])  # in two calls, as batches come
    bench.dict_windows(windows, values[250:])

    rows = [
        (m["device_id"], sensor, value, pd.Timestamp(m["ts"]).value // 10**6 // 60_000)
        for m in map(orjson.loads, values)
        for sensor, value in m["readings"].items()
    ]
    frame = pd.DataFrame(rows, columns=["device", "sensor", "value", "minute"])
    frame["square"] = frame["value"] ** 2
    expected = frame.groupby(["device", "sensor", "minute"]).agg(
        count=("value", "size"),
        total=("value", "sum"),
        squares=("square", "sum"),
        low=("value", "min"),
        high=("value", "max"),
    )
    assert len(expected["count"]) > 15 and expected.index.get_level_values(2).nunique() >= 2
    assert set(windows) == set(expected.index)
    for key, (count, total, squares, low, high) in expected.iterrows():
        got = windows[key]
        assert got[0] == count and (got[3], got[4]) == (low, high)
        assert got[1] == pytest.approx(total) and got[2] == pytest.approx(squares)
