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
   scale * ln(TAIL_SHARE / target_far)``, ``t0`` where the tail starts and ``scale`` the
   mean distance of the tail's scores below it, each distance counted at most
   :data:`CLIP_SCALES` rough scales (the median distance over ``ln 2``), so that one extreme
   held-out window cannot stretch it). A few dozen windows cannot show a 1-in-1,000 score;
   the tail's shape can.
3. The scale is at least the same estimate on the provisional model's scores of its own
   (fitted) windows, and at least :data:`MIN_SCALE`: held-out windows that all score alike
   (a sensor that held still while they were recorded) say nothing of how far normal windows
   may fall, and a scale of nothing would flag every window that differs by a rounding.
4. The final model is fitted on every training window and keeps that threshold.

A threshold is *degenerate* (``Calibration.degenerate`` says why; ``train`` reports it and
the manifest keeps it) when the held-out scores have no spread (the scale came from the fitted
windows or the floor) or when every training window scored alike (the model can only tell
"like training" from "not": any change is flagged). Such a model still alarms; the report says
how far to trust it.

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
from dataclasses import dataclass, replace
from typing import Any, Final

import numpy as np

HELD_OUT_SHARE: Final = 0.2
MIN_HELD_OUT: Final = 5
MIN_FIT: Final = 10
#: The lowest share of the held-out scores the exponential tail is fitted to.
TAIL_SHARE: Final = 0.3
MIN_WINDOWS: Final = MIN_FIT + MIN_HELD_OUT
#: The least tail scale, in score units (the score is a log of a kernel-sum ratio: 0.001 is
#: a window with 0.1% less support than another).
MIN_SCALE: Final = 0.001
#: Excesses beyond this many rough scales (from the median excess) count as this many: one
#: extreme window cannot stretch the tail (an exponential excess passes 10 scales with a
#: chance of 5e-5). 5 cost the simulator 0.01 of F1 (its tails are lighter); 10 costs nothing.
CLIP_SCALES: Final = 10.0
#: Held-out scores whose tail spreads less than this (score units) have no spread.
NO_SPREAD: Final = 1e-6


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
    degenerate: str | None = None  # why the threshold is degenerate (see the module docstring)
    fitted_scale: float = 0.0  # the tail scale of the fitted windows' own scores

    def as_manifest(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "tail_scale": self.tail_scale,
            "target_far": self.target_far,
            "rule": self.rule,
            "held_out_windows": len(self.held_out),
            "held_out_scores": [float(f"{v:.8g}") for v in self.held_out],
            "fitted_scale": self.fitted_scale,
            "degenerate": self.degenerate,
        }

    @classmethod
    def from_manifest(cls, section: dict[str, Any]) -> Calibration:
        degenerate = section.get("degenerate")
        return cls(
            float(section["threshold"]),
            float(section["tail_scale"]),
            float(section["target_far"]),
            str(section["rule"]),
            [float(v) for v in section.get("held_out_scores", [])],
            None if degenerate is None else str(degenerate),
            float(section.get("fitted_scale", 0.0)),
        )

    def normalized(self, scores: np.ndarray) -> np.ndarray:
        return (np.asarray(scores, dtype=float) - self.threshold) / self.tail_scale


def tail_scale(scores: np.ndarray) -> tuple[int, float, float]:
    """Of sorted finite ``scores`` (at least 2): how many form the lower tail, where it
    starts, and its exponential scale (the mean excess below the start, clipped: see the
    module docstring)."""
    tail = min(max(2, math.ceil(len(scores) * TAIL_SHARE)), len(scores) - 1)
    start = float(scores[tail])
    excess = start - scores[:tail]
    rough = float(np.median(excess)) / math.log(2) or float(np.quantile(excess, 0.75)) / math.log(4)
    if rough > 0:
        excess = np.minimum(excess, CLIP_SCALES * rough)
    return tail, start, float(np.mean(excess))


def fitted_scale_of(scores: np.ndarray) -> float:
    """The tail scale of a provisional model's scores of its own (fitted) windows."""
    own = np.sort(np.asarray(scores, dtype=float)[np.isfinite(scores)])
    return tail_scale(own)[2] if len(own) >= 2 else 0.0


def calibrate(
    held_out: np.ndarray, target_far: float, fitted_scale: float | None = None
) -> Calibration:
    """The threshold for ``target_far`` from held-out scores, its scale at least
    ``fitted_scale`` (see :func:`fitted_scale_of`) and :data:`MIN_SCALE` (see the module
    docstring)."""
    held = np.asarray(held_out, dtype=float)
    finite = np.isfinite(held)
    scores = np.sort(held[finite])
    if len(scores) < 2:
        raise ValueError(f"{len(scores)} finite held-out scores: at least 2 are needed")
    tail, start, held_scale = tail_scale(scores)
    fitted = fitted_scale or 0.0
    scale = max(held_scale, fitted, MIN_SCALE)
    reasons = []
    if not finite.all():
        reasons.append(f"{int((~finite).sum())} of {len(held)} held-out scores were not finite")
    if fitted_scale is not None and fitted < NO_SPREAD and held_scale < NO_SPREAD:
        reasons.append(
            "every training window scored alike (its sensors held still while it trained): "
            "any change is flagged"
        )
    elif held_scale < NO_SPREAD:
        source = "the fitted windows' scale" if fitted > MIN_SCALE else f"the floor ({MIN_SCALE:g})"
        reasons.append(f"the held-out windows all scored alike: the scale is {source}")
    share = tail / len(scores)
    if target_far >= share:
        threshold, rule = float(np.quantile(scores, target_far)), "empirical quantile"
    else:
        threshold, rule = start - scale * math.log(share / target_far), "exponential tail"
    return Calibration(
        threshold,
        scale,
        target_far,
        rule,
        scores.tolist(),
        "; ".join(reasons) or None,
        fitted,
    )


def recalibrated(calibration: Calibration, target_far: float) -> Calibration:
    """The same held-out scores at another target (the fitted windows' scale kept)."""
    if not calibration.held_out:
        raise ValueError("this threshold was set by hand: no held-out scores to recompute from")
    again = calibrate(np.array(calibration.held_out), target_far, calibration.fitted_scale)
    return replace(again, degenerate=calibration.degenerate)  # the same windows: same reasons


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
