"""Tumbling event-time windows and their statistics.

Each statistic is an ``initialize / agg / merge / result`` object (the quix-streams pattern),
but vectorised: ``agg`` reduces a whole batch of readings per group with numpy, ``merge`` folds a
batch's partial result into a window's running state. The standard deviation is the *population*
one (ddof=0): it is defined for a one-reading window (0.0) and merges exactly (Chan et al.).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: Order of the fields of a window's running state (a plain list, for speed).
COUNT, MEAN, M2, MIN, MAX, FIRST_OFFSET, LAST_OFFSET = range(7)
AGGREGATE_COLUMNS: Final = (
    "device_id",
    "sensor",
    "window_start",
    "window_end",
    "count",
    "mean",
    "std",
    "min",
    "max",
)


@dataclass(frozen=True)
class WindowSpec:
    """Tumbling windows of ``size_ms`` aligned to the epoch, closed ``grace_ms`` after their end."""

    size_ms: int = 60_000
    grace_ms: int = 30_000

    def start_of(self, ts_ms: int) -> int:
        return ts_ms - ts_ms % self.size_ms

    def close_boundary(self, max_event_ms: int) -> int:
        """Every window ending at or before the returned time is closed.

        >>> WindowSpec(60_000, 30_000).close_boundary(185_000)
        120000
        """
        watermark = max_event_ms - self.grace_ms
        return watermark - watermark % self.size_ms


@dataclass(frozen=True)
class GroupStats:
    """Per-group partial statistics of one batch (arrays aligned with ``codes``)."""

    codes: IntArray
    count: IntArray
    mean: FloatArray
    m2: FloatArray
    minimum: FloatArray
    maximum: FloatArray
    first_offset: IntArray
    last_offset: IntArray


def aggregate_batch(codes: IntArray, values: FloatArray, offsets: IntArray) -> GroupStats:
    """Reduce readings to per-code count, mean, M2 (sum of squared deviations), min, max.

    >>> s = aggregate_batch(np.array([7, 3, 7]), np.array([1.0, 5.0, 3.0]), np.array([0, 1, 2]))
    >>> s.codes.tolist(), s.count.tolist(), s.mean.tolist(), s.m2.tolist()
    ([3, 7], [1, 2], [5.0, 2.0], [0.0, 2.0])
    """
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    sorted_values = values[order]
    sorted_offsets = offsets[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    count = np.diff(np.r_[starts, len(sorted_codes)]).astype(np.int64)
    total = np.add.reduceat(sorted_values, starts)
    mean = total / count
    deviation = sorted_values - np.repeat(mean, count)
    m2 = np.add.reduceat(deviation * deviation, starts)
    return GroupStats(
        codes=sorted_codes[starts],
        count=count,
        mean=mean,
        m2=m2,
        minimum=np.minimum.reduceat(sorted_values, starts),
        maximum=np.maximum.reduceat(sorted_values, starts),
        first_offset=np.minimum.reduceat(sorted_offsets, starts),
        last_offset=np.maximum.reduceat(sorted_offsets, starts),
    )


def merge_into(
    state: list[float],
    count: int,
    mean: float,
    m2: float,
    low: float,
    high: float,
    first: int,
    last: int,
) -> None:
    """Fold one batch's partial statistics into a window's running state, in place."""
    n_a = state[COUNT]
    n = n_a + count
    delta = mean - state[MEAN]
    state[MEAN] += delta * count / n
    state[M2] += m2 + delta * delta * n_a * count / n
    state[COUNT] = n
    if low < state[MIN]:
        state[MIN] = low
    if high > state[MAX]:
        state[MAX] = high
    if first < state[FIRST_OFFSET]:
        state[FIRST_OFFSET] = first
    if last > state[LAST_OFFSET]:
        state[LAST_OFFSET] = last


def new_state(
    count: int, mean: float, m2: float, low: float, high: float, first: int, last: int
) -> list[float]:
    return [count, mean, m2, low, high, first, last]


def result_std(state: list[float]) -> float:
    """Population standard deviation of a window's readings."""
    variance = state[M2] / state[COUNT]
    return float(np.sqrt(variance)) if variance > 0 else 0.0
