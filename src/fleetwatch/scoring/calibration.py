"""A device's anomaly threshold, from windows its model did not see: the latest of its training.

The rule (documented in the README, "Thresholds"):

1. The training windows, in time order, are split: the latest ``HELD_OUT_SHARE`` of them (at
   least ``MIN_HELD_OUT``) are held out, the earlier ones (at least ``MIN_FIT``) fit a
   provisional model. Held out *by time*, the held-out windows show the drift that comes
   after the fitted ones, as the windows scored later will.
2. The provisional model scores the held-out windows. The threshold is the score below which
   a ``target_far`` share of them would fall: their empirical quantile when the held-out
   windows are enough for it (``target_far >= TAIL_SHARE``), else an exponential tail fitted
   to their lowest ``TAIL_SHARE`` (a peaks-over-threshold estimate with shape 0: ``t0 -
   scale * ln(TAIL_SHARE / target_far)``, ``t0`` where the tail starts and ``scale`` the mean
   distance of the tail's scores below it). A few dozen windows cannot show a 1-in-1,000
   score; the tail's shape can.
3. The final model is fitted on every training window and keeps that threshold.

Retraining (``schedule --retrain-every``) checks a new version before activating it: a
provisional model fitted on the windows before the held-out ones is calibrated on the latest
part of *those* (as above), and the held-out windows are scored against that threshold. Their
false-alarm rate must be within the target: no more of them flagged than a rate of
``target_far`` makes likely (at most ``k``, the largest count that ``n`` windows at that rate
reach with a probability of 1% or more: 1 of 24 at 0.001, 2 of 288). A fault (or a change)
in the latest training windows fails the check, and the new version is kept in shadow instead
(scored, compared, not alerting) until someone promotes it.

The tail's ``scale`` also makes scores comparable across devices: ``(score - threshold) /
scale`` (``score_normalized``) is 0 at the threshold and -1 per tail scale beyond it, where
the estimated share of normal windows scoring that low is ``target_far * e**normalized``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

HELD_OUT_SHARE: Final = 0.2
MIN_HELD_OUT: Final = 5
MIN_FIT: Final = 10
#: The lowest share of the held-out scores the exponential tail is fitted to.
TAIL_SHARE: Final = 0.3
MIN_WINDOWS: Final = MIN_FIT + MIN_HELD_OUT


def held_out_count(windows: int) -> int:
    """How many of ``windows`` training windows (the latest) are held out.

    >>> held_out_count(100), held_out_count(20)
    (20, 5)
    """
    return max(MIN_HELD_OUT, math.ceil(windows * HELD_OUT_SHARE))


@dataclass(frozen=True)
class Calibration:
    """A threshold and how it was chosen; recorded in the model's manifest."""

    threshold: float
    tail_scale: float
    target_far: float
    rule: str  # "empirical quantile" | "exponential tail" | "set by hand"
    held_out: list[float]  # the held-out windows' scores, sorted (empty when set by hand)

    def as_manifest(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "tail_scale": self.tail_scale,
            "target_far": self.target_far,
            "rule": self.rule,
            "held_out_windows": len(self.held_out),
            "held_out_scores": [float(f"{v:.8g}") for v in self.held_out],
        }

    @classmethod
    def from_manifest(cls, section: dict[str, Any]) -> Calibration:
        return cls(
            float(section["threshold"]),
            float(section["tail_scale"]),
            float(section["target_far"]),
            str(section["rule"]),
            [float(v) for v in section.get("held_out_scores", [])],
        )

    def normalized(self, scores: np.ndarray) -> np.ndarray:
        return (np.asarray(scores, dtype=float) - self.threshold) / self.tail_scale


def calibrate(held_out: np.ndarray, target_far: float) -> Calibration:
    """The threshold for ``target_far`` from held-out scores (see the module docstring)."""
    scores = np.sort(np.asarray(held_out, dtype=float)[np.isfinite(held_out)])
    if len(scores) < 2:
        raise ValueError(f"{len(scores)} finite held-out scores: at least 2 are needed")
    tail = min(max(2, math.ceil(len(scores) * TAIL_SHARE)), len(scores) - 1)
    start = float(scores[tail])
    excess = float(np.mean(start - scores[:tail]))
    scale = max(excess, 1e-9 * max(1.0, abs(start)))
    share = tail / len(scores)
    if target_far >= share:
        threshold, rule = float(np.quantile(scores, target_far)), "empirical quantile"
    else:
        threshold, rule = start - scale * math.log(share / target_far), "exponential tail"
    return Calibration(threshold, scale, target_far, rule, scores.tolist())


def recalibrated(calibration: Calibration, target_far: float) -> Calibration:
    """The same held-out scores at another target."""
    if not calibration.held_out:
        raise ValueError("this threshold was set by hand: no held-out scores to recompute from")
    return calibrate(np.array(calibration.held_out), target_far)


#: The check's allowance: flagged counts at least this likely at the target rate pass.
CHECK_LEVEL: Final = 0.01


def allowed_false_alarms(windows: int, target_far: float) -> int:
    """How many of ``windows`` checked windows may be flagged at ``target_far``.

    >>> [allowed_false_alarms(n, rate) for n, rate in ((24, 0.001), (288, 0.001), (5, 1e-6))]
    [1, 2, 0]
    """
    allowed, below = 0, 0.0  # below: P(X < allowed + 1) accumulated
    for count in range(windows + 1):
        below += (
            math.comb(windows, count) * target_far**count * (1 - target_far) ** (windows - count)
        )
        if 1.0 - below < CHECK_LEVEL:  # P(X >= count + 1) too unlikely: count is the most
            return count
        allowed = count + 1
    return allowed


def check_split(windows: int) -> tuple[int, int] | None:
    """For the retraining check: how many of the latest windows are checked, and how many
    before them calibrate (the rest fit); None when there are too few for both.

    >>> check_split(100), check_split(19)
    ((20, 16), None)
    """
    checked = held_out_count(windows)
    calibrating = held_out_count(windows - checked)
    if windows - checked - calibrating < MIN_FIT:
        return None
    return checked, calibrating
