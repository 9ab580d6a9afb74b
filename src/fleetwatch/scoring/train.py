"""``fleetwatch train``: fit one model per device from a time range of aggregates, in parallel."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from fleetwatch.config import Settings
from fleetwatch.errors import InvalidInputError, StorageError
from fleetwatch.output import progress_bar
from fleetwatch.scoring.features import devices_in_files, feature_names, read_cube
from fleetwatch.scoring.kinds import new_model
from fleetwatch.scoring.pack import ModelPack, pack_folder, refresh_quietly
from fleetwatch.scoring.registry import ModelRegistry
from fleetwatch.storage.layout import DataLayout


@dataclass
class TrainSummary:
    trained: dict[str, str] = field(default_factory=dict)  # device -> version
    skipped: dict[str, str] = field(default_factory=dict)  # device -> reason
    failed: dict[str, str] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        return {
            "trained": len(self.trained),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "skipped_reasons": self.skipped,
            "failed_reasons": self.failed,
        }


def _gamma(value: str) -> str | float:
    return value if value in ("scale", "auto") else float(value)


@dataclass(frozen=True)
class FitJob:
    """One device's training, as a worker process gets it."""

    device_id: str
    matrix: np.ndarray  # training windows (rows, in time order) x features
    names: list[str]
    parameters: dict[str, Any]
    registry: str  # the registry's folder
    since: datetime
    until: datetime
    activate: bool


def fit_threshold(job: FitJob) -> tuple[Any, float]:
    """Fit a device's model and choose its anomaly threshold on windows it did not see.

    A one-class SVM fitted on a few hundred windows draws its boundary through its support
    vectors, so unseen normal windows often score a little below 0. One fifth of the training
    windows (a seeded random choice) is held out; the model is fitted on the rest and the
    threshold is the held-out scores' ``threshold_quantile``, never above 0.
    """
    options, matrix = job.parameters, job.matrix
    model = new_model(options["kind"], options["nu"], _gamma(options["gamma"]), options["kernel"])
    seed = int.from_bytes(job.device_id.encode()[:8].ljust(8, b"\0"), "little")
    order = np.random.default_rng(seed).permutation(len(matrix))
    held = order[: len(matrix) // 5] if len(matrix) >= 50 else order
    fit_rows = order[len(matrix) // 5 :] if len(matrix) >= 50 else order
    model.fit(matrix[fit_rows], job.names)
    scores = model.sklearn_decision(matrix[held])
    finite = scores[np.isfinite(scores)]
    quantile = float(np.quantile(finite, options["threshold_quantile"])) if len(finite) else 0.0
    return model, min(0.0, quantile)


def fit_and_save(job: FitJob) -> str:
    """Fit and save one device's model, in a worker process; its new version.

    The worker saves it itself (sha256, manifest, fsync, activation): done in the parent, the
    saving of every device one after the other, and the fitted models pickled back to it,
    took most of the time a parallel training saved."""
    model, threshold = fit_threshold(job)
    saved = ModelRegistry(Path(job.registry)).save(
        job.device_id,
        model,
        job.names,
        job.since,
        job.until,
        len(job.matrix),
        job.parameters,
        activate=job.activate,
        threshold=threshold,
    )
    return saved.version


#: Aggregate rows read at once while training: the devices are read in groups of about this
#: many rows (a day of 10,000 devices x 10 sensors is 144M rows, more than memory holds).
READ_ROWS = 8_000_000


def train(
    settings: Settings, since: datetime, until: datetime, devices: list[str] | None = None
) -> TrainSummary:
    """Fit every device with windows in [since, until) (or just ``devices``) on that range."""
    layout = DataLayout(settings.data_dir)
    present, _ = devices_in_files(layout.files_between(since, until))
    if not present:
        raise InvalidInputError(
            f"no aggregates between {since:%Y-%m-%dT%H:%M}Z and {until:%Y-%m-%dT%H:%M}Z in "
            f"{layout.aggregates}; run `fleetwatch aggregate` first or pick another "
            "--since/--until"
        )
    chosen = present if not devices else sorted(set(devices) & set(present))
    summary = TrainSummary()
    for device in sorted(set(devices or ()) - set(present)):
        summary.skipped[device] = "no windows in the training range"
    return train_ranges(settings, dict.fromkeys(chosen, (since, until)), summary)


def train_ranges(
    settings: Settings,
    ranges: Mapping[str, tuple[datetime, datetime]],
    summary: TrainSummary | None = None,
) -> TrainSummary:
    """Fit each device of ``ranges`` on its own range of windows [since, until)."""
    options = settings.train
    summary = summary or TrainSummary()
    kind = "per_sensor" if options.per_sensor else "device"
    layout = DataLayout(settings.data_dir)
    registry = ModelRegistry(layout.models)
    window_ms = int(settings.aggregate.window * 1000)
    parameters = {
        "kind": kind,
        "nu": options.nu,
        "gamma": options.gamma,
        "kernel": options.kernel,
        "threshold_quantile": options.threshold_quantile,
    }
    by_range: dict[tuple[datetime, datetime], list[str]] = {}
    for device_id, span in sorted(ranges.items()):
        by_range.setdefault(span, []).append(device_id)
    workers = max(1, min(options.workers or os.cpu_count() or 1, len(ranges) or 1))
    with (
        progress_bar("train", len(ranges), enabled=options.progress) as bar,
        ProcessPoolExecutor(max_workers=workers) as pool,
    ):

        def advance() -> None:
            if bar is not None:
                bar.update(bar.task_ids[0], advance=1)

        for (since, until), chosen in by_range.items():
            _, rows = devices_in_files(layout.files_between(since, until))
            present = max(len(chosen), 1)
            group = max(1, READ_ROWS * present // max(rows, 1))  # devices per read
            for start in range(0, len(chosen), group):
                part = chosen[start : start + group]
                cube = read_cube(settings.data_dir, since, until, window_ms, devices=part)
                jobs = []
                for device_id in part:
                    count = cube.window_count(device_id) if device_id in cube else 0
                    if count < options.min_windows:
                        summary.skipped[device_id] = (
                            f"{count} windows < --min-windows {options.min_windows}"
                        )
                        advance()
                        continue
                    names = feature_names(cube.sensors(device_id))
                    matrix = cube.matrix(device_id, names).matrix
                    jobs.append(
                        FitJob(
                            device_id,
                            matrix,
                            names,
                            parameters,
                            str(layout.models),
                            since,
                            until,
                            options.activate,
                        )
                    )
                del cube
                _fit_and_save(pool, jobs, summary, advance)
    if options.activate and summary.trained:  # so that the next scoring run finds them packed
        refresh_quietly(ModelPack.open(pack_folder(settings.data_dir), registry), summary.trained)
    return summary


def _fit_and_save(
    pool: ProcessPoolExecutor,
    jobs: list[FitJob],
    summary: TrainSummary,
    advance: Callable[[], None],
) -> None:
    futures = {pool.submit(fit_and_save, job): job.device_id for job in jobs}
    for future in as_completed(futures):
        advance()
        device_id = futures[future]
        try:
            summary.trained[device_id] = future.result()
        except StorageError:  # a full disk fails every device alike: stop, say it once
            for waiting in futures:
                waiting.cancel()
            raise
        except Exception as exc:  # one device's bad data must not stop the others
            summary.failed[device_id] = f"{type(exc).__name__}: {exc}"
