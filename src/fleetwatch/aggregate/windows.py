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


class OpenWindow:
    """One open window's running statistics, for every (device, sensor) pair it has: arrays
    sorted by pair id (the processor's numbering), merged a batch at a time with vector
    operations (the same arithmetic as :func:`merge_into`, element by element). About 60
    bytes a pair, where a Python list of seven numbers in a dict took about 300."""

    __slots__ = ("count", "first", "last", "m2", "maximum", "mean", "minimum", "pairs")

    def __init__(self) -> None:
        self.pairs = np.empty(0, dtype=np.int64)
        self.count = np.empty(0, dtype=np.int64)
        self.mean = np.empty(0, dtype=np.float64)
        self.m2 = np.empty(0, dtype=np.float64)
        self.minimum = np.empty(0, dtype=np.float64)
        self.maximum = np.empty(0, dtype=np.float64)
        self.first = np.empty(0, dtype=np.int64)
        self.last = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.pairs)

    def merge(self, pairs: IntArray, stats: GroupStats, chosen: slice | IntArray) -> int:
        """Fold the partial statistics ``stats[chosen]`` of ``pairs`` (sorted, unique) in;
        returns how many pairs were new to the window."""
        count, mean, m2 = stats.count[chosen], stats.mean[chosen], stats.m2[chosen]
        low, high = stats.minimum[chosen], stats.maximum[chosen]
        first, last = stats.first_offset[chosen], stats.last_offset[chosen]
        size = len(self.pairs)
        at = np.searchsorted(self.pairs, pairs)
        found = at < size
        found[found] = self.pairs[at[found]] == pairs[found]
        if found.any():
            i, c = at[found], count[found]
            n_a = self.count[i]
            n = n_a + c
            delta = mean[found] - self.mean[i]
            self.mean[i] = self.mean[i] + delta * c / n
            self.m2[i] = self.m2[i] + (m2[found] + delta * delta * n_a * c / n)
            self.count[i] = n
            self.minimum[i] = np.minimum(self.minimum[i], low[found])
            self.maximum[i] = np.maximum(self.maximum[i], high[found])
            self.first[i] = np.minimum(self.first[i], first[found])
            self.last[i] = np.maximum(self.last[i], last[found])
        new = ~found
        added = int(new.sum())
        if added:
            where = at[new]
            self.pairs = np.insert(self.pairs, where, pairs[new])
            self.count = np.insert(self.count, where, count[new])
            self.mean = np.insert(self.mean, where, mean[new])
            self.m2 = np.insert(self.m2, where, m2[new])
            self.minimum = np.insert(self.minimum, where, low[new])
            self.maximum = np.insert(self.maximum, where, high[new])
            self.first = np.insert(self.first, where, first[new])
            self.last = np.insert(self.last, where, last[new])
        return added

    def std(self) -> FloatArray:
        """Each pair's population standard deviation (0 for one reading)."""
        variance = self.m2 / self.count
        result: FloatArray = np.where(variance > 0, np.sqrt(np.maximum(variance, 0.0)), 0.0)
        return result
