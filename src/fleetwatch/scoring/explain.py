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


def explain_many(
    kind: type[ModelKind],
    scorers: list[Any],
    features: tuple[str, ...],
    windows: list[np.ndarray],
    scores: list[np.ndarray],
    flagged: list[np.ndarray],
) -> list[list[Explanation]]:
    """Explanations of the ``flagged`` rows of each device's ``windows`` (raw features, as
    scored), whose ``scores`` they were."""
    names, groups = sensor_groups(features)
    stacks = []
    for matrix, rows in zip(windows, flagged, strict=True):
        stack = np.repeat(matrix[rows][None], len(groups), axis=0)  # sensor x window x feature
        for position, columns in enumerate(groups):
            stack[position][:, columns] = np.nan
        stacks.append(stack.reshape(-1, matrix.shape[1]))
    counts = np.array([len(s) for s in stacks])
    depth = int(counts.max()) if len(counts) else 0
    if depth == 0:
        return [[] for _ in windows]
    batch = np.full((len(stacks), depth, len(features)), np.nan)
    for index, stack in enumerate(stacks):
        batch[index, : len(stack)] = stack
    reset_scores = kind.decide_many(scorers, batch, counts)
    result = []
    for matrix, rows, score, reset in zip(windows, flagged, scores, reset_scores, strict=True):
        picked = len(rows)
        resets = reset[: picked * len(groups)].reshape(len(groups), picked)
        explained = []
        for i in range(picked):
            if np.isfinite(score[rows[i]]):
                explained.append(_top(names, resets[:, i] - score[rows[i]]))
            else:
                explained.append(_not_finite(names, groups, resets[:, i], matrix[rows[i]]))
        result.append(explained)
    return result


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
