"""Detection metrics over labelled points: the one implementation ``evaluate`` and the demo use.

A *point* is what the labels are about: a reading (a row of a labelled file, a simulated
message) or, where only windows exist, a window. Each point has its truth, its prediction (the
flag of the window it falls in), and, when it is anomalous, the *episode* it belongs to (one
labelled anomaly: a contiguous run of anomalous rows of a device, or one injected anomaly) and
that episode's kind.

- precision, recall, F1 = 2PR/(P+R) (equal to SKAB's TP / (TP + (FN+FP)/2));
- FAR = FP / (FP+TN), MAR = FN / (FN+TP), in percent as SKAB reports them;
- point-adjusted F1: an episode with at least one detected point counts as wholly detected
  (Xu et al., 2018), an upper bound that forgives late detection;
- event recall: the share of episodes with at least one detected point; per kind as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Counts:
    tp: int
    fp: int
    fn: int
    tn: int

    @classmethod
    def of(cls, truth: np.ndarray, predicted: np.ndarray) -> Counts:
        return cls(
            int((truth & predicted).sum()),
            int((~truth & predicted).sum()),
            int((truth & ~predicted).sum()),
            int((~truth & ~predicted).sum()),
        )

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        total = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / total if total else 0.0

    @property
    def far(self) -> float:
        """False-alarm rate, percent of the normal points flagged."""
        return 100.0 * self.fp / (self.fp + self.tn) if self.fp + self.tn else 0.0

    @property
    def mar(self) -> float:
        """Missed-alarm rate, percent of the anomalous points not flagged."""
        return 100.0 * self.fn / (self.fn + self.tp) if self.fn + self.tp else 0.0


@dataclass
class Report:
    """What ``evaluate`` prints (``as_record``) and the demo quotes."""

    unit: str  # "readings" or "windows"
    counts: Counts
    adjusted: Counts
    episodes: int
    episodes_found: int
    by_kind: dict[str, tuple[int, int, float]] = field(default_factory=dict)  # found, all, recall

    @property
    def event_recall(self) -> float:
        return self.episodes_found / self.episodes if self.episodes else 0.0

    def as_record(self) -> dict[str, Any]:
        c = self.counts
        record: dict[str, Any] = {
            "unit": self.unit,
            "points": c.tp + c.fp + c.fn + c.tn,
            "anomalous_points": c.tp + c.fn,
            "flagged_points": c.tp + c.fp,
            "precision": round(c.precision, 4),
            "recall": round(c.recall, 4),
            "f1": round(c.f1, 4),
            "far_percent": round(c.far, 2),
            "mar_percent": round(c.mar, 2),
            "point_adjusted_f1": round(self.adjusted.f1, 4),
            "episodes": self.episodes,
            "episodes_found": self.episodes_found,
            "event_recall": round(self.event_recall, 4),
        }
        if self.by_kind:
            record["by_kind"] = {
                kind: {"found": found, "episodes": total, "recall": round(recall, 4)}
                for kind, (found, total, recall) in sorted(self.by_kind.items())
            }
        return record


def evaluate(
    truth: np.ndarray,
    predicted: np.ndarray,
    episodes: np.ndarray,
    kinds: Sequence[str | None] | None = None,
    unit: str = "readings",
) -> Report:
    """The report for points with ``truth`` and ``predicted`` (booleans), ``episodes`` (the
    anomalous points' episode ids, -1 for normal points) and per-episode ``kinds`` (indexed by
    episode id; None: no kinds)."""
    truth = np.asarray(truth, dtype=bool)
    predicted = np.asarray(predicted, dtype=bool)
    episodes = np.asarray(episodes, dtype=np.int64)
    counts = Counts.of(truth, predicted)
    labelled = episodes >= 0
    ids = np.unique(episodes[labelled])
    found_ids = np.unique(episodes[labelled & predicted])
    adjusted_prediction = predicted | (labelled & np.isin(episodes, found_ids))
    report = Report(unit, counts, Counts.of(truth, adjusted_prediction), len(ids), len(found_ids))
    if kinds is not None:
        found = set(found_ids.tolist())
        per_kind: dict[str, list[int]] = {}
        for episode in ids.tolist():
            tally = per_kind.setdefault(kinds[episode] or "unknown", [0, 0])
            tally[0] += int(episode in found)
            tally[1] += 1
        for kind, (hit, total) in per_kind.items():
            report.by_kind[kind] = (hit, total, hit / total)
    return report


def episodes_of_runs(devices: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Episode ids for labelled rows given per device in time order: each contiguous run of
    anomalous rows of a device is one episode (-1 for normal rows)."""
    devices = np.asarray(devices)
    truth = np.asarray(truth, dtype=bool)
    starts = truth.copy()
    starts[1:] &= ~(truth[:-1] & (devices[1:] == devices[:-1]))
    ids = np.cumsum(starts) - 1
    return np.where(truth, ids, -1)
