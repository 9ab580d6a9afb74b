"""``fleetwatch score``: score an hour of closed windows with every device's active model.

One run per hour: the hour's windows are read from Parquet once, every device with an active
model and data is scored in parallel worker processes, and the run, its scores and every
device's outcome are written to DuckDB in one transaction that replaces the hour's old scores.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fleetwatch.config import Settings
from fleetwatch.output import progress_bar
from fleetwatch.scoring.executor import run_tasks
from fleetwatch.scoring.features import WindowCube, read_windows
from fleetwatch.scoring.models import decision_from_arrays
from fleetwatch.scoring.registry import ModelRegistry
from fleetwatch.storage.checkpoints import CheckpointStore
from fleetwatch.storage.duck import connect, write_run

HOUR = timedelta(hours=1)
DeviceHook = Callable[[str], None]


@dataclass
class RunResult:
    run_id: str
    window_start: datetime
    status: str
    devices_total: int
    devices_scored: int
    devices_failed: int
    devices_without_model: int
    devices_silent: int
    rows_scored: int
    anomalies: int
    error: str | None

    def as_record(self) -> dict[str, Any]:
        return {**self.__dict__, "window_start": self.window_start.isoformat()}


def database_path(settings: Settings) -> Path:
    return settings.data_dir / "fleetwatch.duckdb"


def score_hour(
    settings: Settings, hour: datetime, *, hook: DeviceHook | None = None, progress: bool = True
) -> RunResult:
    """Score the hour starting at ``hour`` (UTC) and record it; see the module docstring."""
    options = settings.score
    window_start = hour.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    window_end = window_start + HOUR
    started_at = datetime.now(UTC)
    run_id = f"{window_start:%Y%m%dT%H}-{uuid.uuid4().hex[:8]}"
    window_ms = round(settings.aggregate.window * 1000)

    frame = read_windows(settings.data_dir, window_start, window_end)
    cube = WindowCube(frame, window_ms)
    registry = ModelRegistry(settings.data_dir / "models")
    # Reading 10k ACTIVE files is work for the workers; the parent only lists folders.
    with_model_folder = registry.model_devices()
    with_data = set(cube.devices)
    to_score = sorted(with_data & with_model_folder)
    without_folder = sorted(with_data - with_model_folder)
    silent = sorted(d for d in with_model_folder - with_data if registry.active_version(d))

    def work(device_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str] | None:
        if hook is not None:
            hook(device_id)
        version = registry.active_version(device_id)
        if version is None:
            return None  # a model folder without an active version: no model
        model = registry.get(device_id, version)
        kind, arrays = ModelRegistry.load_params(model)  # sha256-checked, no pickle
        windows = cube.matrix(device_id, list(model.manifest["features"]))
        scores = decision_from_arrays(kind, arrays, windows.matrix)
        flagged = scores < float(model.manifest.get("threshold", 0.0))
        return windows.window_start, windows.window_end, scores, flagged, model.version

    workers = options.workers or os.cpu_count() or 1
    with progress_bar(f"score {window_start:%Y-%m-%dT%H}", len(to_score), progress) as bar:
        results, errors, aborted = run_tasks(
            to_score,
            work,
            workers=workers,
            mini_batch_size=options.mini_batch_size,
            task_timeout=options.task_timeout,
            max_retries=options.max_retries,
            error_threshold=options.error_threshold,
            on_progress=None
            if bar is None
            else lambda done: bar.update(bar.task_ids[0], completed=done),
        )

    outcome_rows: list[tuple[str, str, str, str | None, str | None, int]] = []
    parts: dict[str, list[Any]] = {"start": [], "end": [], "score": [], "flagged": []}
    scored_devices: list[str] = []
    scored_versions: list[str] = []
    counts: list[int] = []
    without_model = list(without_folder)
    for device_id in to_score:
        if device_id in results and results[device_id] is None:
            without_model.append(device_id)  # a model folder, but no active version
        elif device_id in results:
            starts, ends, values, flagged, version = results[device_id]
            outcome_rows.append((run_id, device_id, "scored", None, version, len(values)))
            scored_devices.append(device_id)
            scored_versions.append(version)
            counts.append(len(values))
            parts["start"].append(starts)
            parts["end"].append(ends)
            parts["score"].append(values)
            parts["flagged"].append(flagged)
        else:
            reason = errors.get(device_id, "not run: the run was aborted")
            version = registry.active_version(device_id)
            outcome_rows.append((run_id, device_id, "failed", reason, version, 0))
    outcome_rows += [(run_id, d, "no_model", None, None, 0) for d in sorted(without_model)]
    outcome_rows += [(run_id, d, "silent", None, registry.active_version(d), 0) for d in silent]
    outcomes = pd.DataFrame(
        outcome_rows,
        columns=["run_id", "device_id", "outcome", "error", "model_version", "windows"],
    )

    def joined(name: str, dtype: Any) -> np.ndarray:
        return np.concatenate(parts[name]) if parts[name] else np.array([], dtype=dtype)

    values = joined("score", float)
    scores = pd.DataFrame(
        {
            "run_id": run_id,
            "device_id": np.repeat(np.array(scored_devices, dtype=object), counts),
            "window_start": pd.to_datetime(joined("start", np.int64), unit="ms", utc=True),
            "window_end": pd.to_datetime(joined("end", np.int64), unit="ms", utc=True),
            "score": values,
            "is_anomaly": joined("flagged", bool),
            "model_version": np.repeat(np.array(scored_versions, dtype=object), counts),
        }
    )
    failed = len(to_score) - len(results)
    anomalies = int(scores["is_anomaly"].sum()) if len(scores) else 0
    error = None
    if aborted:
        error = (
            f"{failed} devices failed, more than --error-threshold "
            f"{options.error_threshold}; first: {next(iter(errors.values()), '')}"
        )
    status = "aborted" if aborted else "succeeded"
    stored = (
        None if aborted else (scores if options.output == "all" else scores[scores["is_anomaly"]])
    )
    run: dict[str, Any] = {
        "run_id": run_id,
        "window_start": window_start,
        "window_end": window_end,
        "started_at": started_at,
        "finished_at": datetime.now(UTC),
        "status": status,
        "devices_total": len(with_data) + len(silent),
        "devices_scored": len(scored_devices),
        "devices_failed": failed,
        "devices_without_model": len(without_model),
        "devices_silent": len(silent),
        "rows_scored": len(scores),
        "error": error,
    }
    write_run(database_path(settings), run, stored, outcomes, options.lock_timeout)
    return RunResult(
        run_id,
        window_start,
        status,
        run["devices_total"],
        len(scored_devices),
        failed,
        len(without_model),
        len(silent),
        len(scores),
        anomalies,
        error,
    )


def closed_through(settings: Settings) -> datetime | None:
    """Event time up to which every window is on disk (None: nothing aggregated yet).

    It is the lowest close boundary among partitions that still hold open windows. A partition
    with nothing open (every window written, e.g. closed by the idle timeout) or that never saw
    data holds nothing back; when no partition holds anything open, everything is written up to
    the highest boundary. (A device that resumes later on an idle partition can still add
    windows to an hour that was scored meanwhile: rescore it with `fleetwatch score --hour`.)
    """
    store = CheckpointStore(
        settings.data_dir / "state" / "aggregate" / settings.kafka.telemetry_topic
    )
    holding: list[int] = []
    written: list[int] = []
    for path in sorted(store.root.glob("p*.json")) if store.root.exists() else []:
        checkpoint = store.load(int(path.stem[1:]))
        if checkpoint is None or checkpoint.close_boundary_ms is None:
            if checkpoint is not None and checkpoint.next_offset is not None:
                return None  # data read, nothing closed yet: nothing is closed anywhere
            continue
        written.append(checkpoint.close_boundary_ms)
        if checkpoint.offset is not None and checkpoint.offset != checkpoint.next_offset:
            holding.append(checkpoint.close_boundary_ms)
    if holding:
        return datetime.fromtimestamp(min(holding) / 1000, UTC)
    if written:
        return datetime.fromtimestamp(max(written) / 1000, UTC)
    return None


def hours_with_data(settings: Settings) -> list[datetime]:
    root = settings.data_dir / "aggregates"
    hours = []
    for folder in root.glob("date=*/hour=*") if root.exists() else []:
        if any(folder.glob("*.parquet")):
            date = folder.parent.name.split("=", 1)[1]
            hour = folder.name.split("=", 1)[1]
            hours.append(datetime.fromisoformat(f"{date}T{hour}:00:00+00:00"))
    return sorted(hours)


def missed_hours(settings: Settings, limit: int | None = None) -> list[datetime]:
    """Closed hours with data and no successful run, oldest first."""
    closed = closed_through(settings)
    candidates = [h for h in hours_with_data(settings) if closed is None or h + HOUR <= closed]
    done: set[datetime] = set()
    path = database_path(settings)
    if path.exists() and candidates:
        with connect(path, read_only=True, lock_timeout=settings.score.lock_timeout) as db:
            tables = {
                r[0]
                for r in db.execute("SELECT table_name FROM information_schema.tables").fetchall()
            }
            if "runs" in tables:
                rows = db.execute(
                    "SELECT DISTINCT window_start FROM runs WHERE status = 'succeeded'"
                ).fetchall()
                done = {r[0].astimezone(UTC) for r in rows}
    pending = [h for h in candidates if h not in done]
    return pending[:limit] if limit is not None else pending
