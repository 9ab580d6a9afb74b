"""The window transform's arithmetic, shared by the fitted scikit-learn step
(:mod:`fleetwatch.scoring.kinds.transforms`) and fast scoring (:mod:`fleetwatch.scoring.kinds.svm`):
spreads compared on a log scale, reading counts as a share of the typical count."""

from __future__ import annotations

import numpy as np

#: A spread ``s`` becomes ``log(s + SPREAD_FLOOR * typical)``: on a log scale a sensor stuck at
#: one value (spread 0) is far from its usual noise, while a spread that is merely small stays
#: close; the floor keeps a sensor that often repeats its value (a coarse sensor) from putting
#: every such window at minus infinity.
SPREAD_FLOOR = 0.001
#: A reading count ``c`` becomes ``COVERAGE * c / typical``: with the usual count constant in
#: training, a sensor missing from a window is as unusual as a 10-sigma deviation.
COVERAGE = 10.0


def apply_window_transform(
    windows: np.ndarray,
    log_columns: np.ndarray,
    log_offsets: np.ndarray,
    coverage_columns: np.ndarray,
    coverage_scale: np.ndarray,
) -> None:
    """In place, over the last axis of ``windows``: spreads to ``log(s + offset)``, counts
    times their scale; NaN stays NaN. Offsets and scales broadcast against ``windows``."""
    if len(log_columns):
        windows[..., log_columns] = np.log(np.maximum(windows[..., log_columns], 0.0) + log_offsets)
    if len(coverage_columns):
        windows[..., coverage_columns] *= coverage_scale
