"""Which sensors made a window anomalous: the score each sensor's reset gives back.

For an anomalous window, each sensor in turn is reset to what its model considers typical
(its features, reading count included, made missing, so the model imputes its training
medians) and the window is scored again. A sensor's *contribution* is how much its
reset raises the score; its *share* is its contribution over the sum of all positive ones.
The top sensors (at most :data:`TOP`, each with at least :data:`MIN_SHARE`) are stored with
the window (``anomalies.top_sensors``) and summed over an incident's windows.

All the resets of the devices scored together are scored in one call of their kind's
``decide_many``, as their windows were: explanations cost a fraction of a run, not a run per
sensor.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np

from fleetwatch.scoring.kinds import ModelKind

TOP: Final = 3
MIN_SHARE: Final = 0.05
Explanation = list[tuple[str, float]]  # (sensor, share), largest share first


def sensor_groups(features: tuple[str, ...]) -> tuple[list[str], list[np.ndarray]]:
    """Per sensor (``<sensor>__<statistic>``): its name and its feature columns."""
    columns: dict[str, list[int]] = {}
    for index, feature in enumerate(features):
        columns.setdefault(feature.rsplit("__", 1)[0], []).append(index)
    return list(columns), [np.array(c) for c in columns.values()]


#: Reset windows scored in one call at most (sensors x windows x features): memory stays linear
#: in a device's sensors however many it has (3,000 sensors anomalous for an hour would need a
#: 20 GB array in one piece).
CELLS: Final = 4_000_000


def explain_many(
    kind: type[ModelKind],
    scorers: list[Any],
    features: tuple[str, ...],
    windows: list[np.ndarray],
    scores: list[np.ndarray],
    flagged: list[np.ndarray],
) -> list[list[Explanation]]:
    """Explanations of the ``flagged`` rows of each device's ``windows`` (raw features, as
    scored), whose ``scores`` they were. The resets of all devices (one per sensor and flagged
    window) are scored in calls of their kind's ``decide_many``, each of at most
    :data:`CELLS` values."""
    names, groups = sensor_groups(features)
    width = len(features)
    resets = [np.full((len(groups), len(rows)), np.nan) for rows in flagged]
    known = set()  # devices whose resets their kind knows (one model per sensor)
    for d, rows in enumerate(flagged):
        computed = kind.sensor_resets(scorers[d], windows[d][rows], groups) if len(rows) else None
        if computed is not None:
            resets[d] = computed
            known.add(d)
    units = [
        (d, g)
        for d, rows in enumerate(flagged)
        if len(rows) and d not in known
        for g in range(len(groups))
    ]
    batch: list[tuple[int, int]] = []
    depth = 0
    for unit in units:
        size = len(flagged[unit[0]])
        if batch and (len(batch) + 1) * max(depth, size) * width > CELLS:
            _reset_scores(kind, scorers, windows, flagged, groups, batch, resets)
            batch, depth = [], 0
        batch.append(unit)
        depth = max(depth, size)
    if batch:
        _reset_scores(kind, scorers, windows, flagged, groups, batch, resets)
    result = []
    for matrix, rows, score, reset in zip(windows, flagged, scores, resets, strict=True):
        explained = []
        for i in range(len(rows)):
            if np.isfinite(score[rows[i]]):
                explained.append(_top(names, reset[:, i] - score[rows[i]]))
            else:
                explained.append(_not_finite(names, groups, reset[:, i], matrix[rows[i]]))
        result.append(explained)
    return result


def _reset_scores(
    kind: type[ModelKind],
    scorers: list[Any],
    windows: list[np.ndarray],
    flagged: list[np.ndarray],
    groups: list[np.ndarray],
    batch: list[tuple[int, int]],
    resets: list[np.ndarray],
) -> None:
    """Score one batch of (device, sensor) resets into ``resets``."""
    depth = max(len(flagged[d]) for d, _ in batch)
    stack = np.full((len(batch), depth, windows[batch[0][0]].shape[1]), np.nan)
    counts = np.empty(len(batch), dtype=np.int64)
    for index, (d, g) in enumerate(batch):
        rows = windows[d][flagged[d]]
        stack[index, : len(rows)] = rows
        stack[index, : len(rows), groups[g]] = np.nan  # the sensor reset: imputed medians
        counts[index] = len(rows)
    values = kind.decide_many([scorers[d] for d, _ in batch], stack, counts)
    for (d, g), scored, count in zip(batch, values, counts.tolist(), strict=True):
        resets[d][g] = scored[:count]


def _not_finite(
    names: list[str], groups: list[np.ndarray], resets: np.ndarray, window: np.ndarray
) -> Explanation:
    """A window whose score is not finite: the sensors whose reset gives a finite score back,
    or else those with values that are not finite, in equal shares."""
    chosen = [i for i in range(len(names)) if np.isfinite(resets[i])]
    if not chosen:
        chosen = [i for i, c in enumerate(groups) if not np.isfinite(window[c]).all()]
    chosen = chosen[:TOP]
    return [(names[i], round(1.0 / len(chosen), 4)) for i in chosen]


def _top(names: list[str], gains: np.ndarray) -> Explanation:
    positive = np.where(np.isfinite(gains), np.maximum(gains, 0.0), 0.0)
    total = float(positive.sum())
    if total <= 0:
        return []
    shares = positive / total
    order = np.argsort(-shares, kind="stable")[:TOP]
    return [(names[i], round(float(shares[i]), 4)) for i in order if shares[i] >= MIN_SHARE]
