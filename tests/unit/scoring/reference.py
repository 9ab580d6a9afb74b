"""An independent pandas reference for the feature matrices (pivot, then per-device columns)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from fleetwatch.scoring.features import STATISTICS, DeviceWindows


def pivot_by_device(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per device: a frame indexed by window_start with columns ``<sensor>__<stat>``."""
    if frame.empty:
        return {}
    wide = frame.pivot_table(
        index=["device_id", "window_start"],
        columns="sensor",
        values=list(STATISTICS),
        aggfunc="first",
        observed=True,
        dropna=False,
    )
    wide.columns = [f"{pair[1]}__{pair[0]}" for pair in wide.columns]
    # dropna=False pivots every device x every window start: keep the windows that have rows
    reported = pd.MultiIndex.from_frame(frame[["device_id", "window_start"]].drop_duplicates())
    wide = wide[wide.index.isin(reported)]
    result: dict[str, pd.DataFrame] = {}
    for device_id, rows in wide.groupby(level=0, sort=True):
        result[str(device_id)] = rows.droplevel(0)
    return result


def device_matrix(
    device_id: str, rows: pd.DataFrame, names: list[str], window_ms: int
) -> DeviceWindows:
    """The device's windows over exactly ``names`` (absent sensors: NaN, a count of 0; a
    change: from the latest earlier window with a reading, NaN without one)."""
    columns = {}
    starts = rows.index.to_numpy(dtype="datetime64[ms]").astype(np.int64)
    for name in names:
        sensor, stat = name.rsplit("__", 1)
        if stat == "count":
            count = rows.get(name)
            columns[name] = (
                np.zeros(len(rows)) if count is None else count.fillna(0).to_numpy(dtype=float)
            )
        elif stat == "delta":
            mean = rows.get(f"{sensor}__mean")
            if mean is None:
                columns[name] = np.full(len(rows), np.nan)
            else:
                values = pd.Series(mean.to_numpy(dtype=float))
                columns[name] = (values - values.ffill().shift(1)).to_numpy()
        else:
            column = rows.get(name)
            columns[name] = (
                np.full(len(rows), np.nan) if column is None else column.to_numpy(dtype=float)
            )
    matrix = np.column_stack([columns[n] for n in names]) if names else np.empty((len(rows), 0))
    return DeviceWindows(device_id, starts, starts + window_ms, matrix)


def sensors_of(rows: pd.DataFrame) -> list[str]:
    return sorted(
        {
            c.rsplit("__", 1)[0]
            for c in rows.columns
            if rows[c].notna().any() and not c.endswith("__count")
        }
    )


def read_windows(data_dir: Path, since: datetime, until: datetime) -> pd.DataFrame:
    """Every aggregate row with ``since <= window_start < until``, read with pandas alone."""
    files = sorted((data_dir / "aggregates").glob("date=*/hour=*/*.parquet"))
    frame = pd.concat([pd.read_parquet(path) for path in files], ignore_index=True)
    chosen = (frame["window_start"] >= pd.Timestamp(since)) & (
        frame["window_start"] < pd.Timestamp(until)
    )
    return frame[chosen]
