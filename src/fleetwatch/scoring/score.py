"""``fleetwatch score``: score an hour of windows with every device's active model.

A run is one hour, for every device in it or for some (the pending ones, see
:mod:`fleetwatch.scoring.pending`): the hour's windows are read from Parquet once, every device
with an active model and data is scored in parallel worker processes, and the run, its scores
and every device's outcome are written to DuckDB in one transaction that replaces the old
scores of the devices it scored (no duplicates, ever).

Every score is stored with its normalised score (``(score - threshold) / tail scale``, see
:mod:`fleetwatch.scoring.calibration`); an anomalous window also with its top sensors
(:mod:`fleetwatch.scoring.explain`). The same transaction rebuilds the incidents the hour
touches (:mod:`fleetwatch.scoring.incidents`). A device with a version in shadow has that
version scored too, into ``shadow_scores``: recorded, compared, never alerting.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fleetwatch.aggregate.progress import closed_through
from fleetwatch.config import ScoreSettings, Settings
from fleetwatch.errors import FleetwatchError, InvalidInputError
from fleetwatch.faults import point
from fleetwatch.output import progress_bar
from fleetwatch.scoring.executor import DeviceResult, Executor, TaskModel
from fleetwatch.scoring.executors import executor_for, task_model
from fleetwatch.scoring.explain import Explanation, explain_many
from fleetwatch.scoring.features import (
    Piece,
    WindowCube,
    device_pieces,
    in_parts,
    read_cube,
)
from fleetwatch.scoring.kinds import ModelKind
from fleetwatch.scoring.pack import (
    ActiveModel,
    ModelPack,
    model_from_files,
    read_active,
    refresh_quietly,
)
from fleetwatch.scoring.pending import is_closed
from fleetwatch.scoring.records import write_run
from fleetwatch.scoring.registry import ModelRegistry
from fleetwatch.storage import columns
from fleetwatch.storage.layout import HOUR, DataLayout, HourFiles, floor_hour
from fleetwatch.storage.parquet import open_file, read_metadata
from fleetwatch.storage.store import DataStore, open_store

log = logging.getLogger(__name__)
#: Devices whose windows are cut from the cube together: enough to amortise the cut, small
#: enough that its arrays are reused from the heap instead of fresh pages for every task.
GATHER_SIZE = 32
DeviceHook = Callable[[str], None]
_FAILED = object()  # a device without a result: it failed, or the run was aborted first


class NoDataError(FleetwatchError):
    """An hour to score has no aggregates at all."""

    exit_code = 1


@dataclass
class RunResult:
    run_id: str
    window_start: datetime
    status: str  # succeeded | aborted | provisional
    scope: str  # hour | devices
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


@dataclass(frozen=True)
class Scoring:
    """What scoring an hour needs: the data directory, ``[score]``, the window length, the
    topic whose watermark says which hours are closed, and where tasks run."""

    layout: DataLayout
    options: ScoreSettings
    window_ms: int
    topic: str
    executor: Executor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.executor is None:
            object.__setattr__(self, "executor", executor_for(self.options))

    @classmethod
    def of(cls, settings: Settings | Scoring) -> Scoring:
        if isinstance(settings, Scoring):
            return settings
        return cls(
            settings.layout,
            settings.score,
            round(settings.aggregate.window * 1000),
            settings.kafka.telemetry_topic,
            executor_for(settings.score),
        )

    @property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.layout.store, live=False)

    def watermark(self) -> datetime | None:
        return closed_through(self.layout, self.topic)


def score_hour(
    setup: Settings | Scoring,
    hour: datetime,
    *,
    devices: Sequence[str] | None = None,
    hook: DeviceHook | None = None,
    progress: bool = True,
    files: HourFiles | None = None,
    live: bool = False,
) -> RunResult:
    """Score the hour starting at ``hour`` (UTC) and record the run; see the module docstring.

    Every device of the hour (``devices`` None: the hour's scores are replaced), or just
    ``devices`` (their scores are replaced). The hour's files are those of ``files`` (one
    listing, taken by the caller when it decided to score the hour) or of a listing taken now:
    exactly those are read, and their signature is what the run records. An hour that is not
    closed yet is scored too, as a ``provisional`` run: its pairs stay pending, and are scored
    again once it is closed. Raises :class:`NoDataError` for an hour without any aggregates.

    ``live``: ``files`` are the files of an open hour published since its last live run; their
    windows are scored and stored in place of any stored for the same (device, window), as a
    ``provisional`` run of scope ``live`` (see :mod:`fleetwatch.scoring.live`).
    """
    scoring = Scoring.of(setup)
    options = scoring.options
    layout = scoring.layout
    window_start = floor_hour(hour)
    window_end = window_start + HOUR
    started_at = datetime.now(UTC)
    run_id = f"{window_start:%Y%m%dT%H}-{uuid.uuid4().hex[:8]}"
    window_ms = scoring.window_ms
    if files is None:
        found = layout.inventory([window_start])
        if not found:
            raise NoDataError(
                f"no aggregates for {window_start:%Y-%m-%dT%H}:00Z in "
                f"{layout.store.describe('aggregates')}: nothing to score (check --data-dir and "
                "the hour)"
            )
        files = found[0]
    _check_window(layout.store, files.keys, window_ms)
    closed = is_closed(files, scoring.watermark()) and not live
    whole = devices is None and not live
    executor = scoring.executor

    registry = scoring.registry
    parts: list[tuple[list[str], list[Piece]]] | None = None
    if not executor.shares_memory:
        # The workers read the windows; this process only learns which devices the hour has
        # (one dictionary-encoded column) and gets each device's window starts back.
        cube = None
        pieces, where = device_pieces(layout.store, files.keys)
        with_data = set(where) if devices is None else set(where) & set(devices)
        with_model_folder = registry.model_devices()
        pack = None
    elif (parts := _device_parts(layout.store, files.keys, devices, options.part_rows)) is None:
        cube, with_model_folder, pack = _read_hour(
            layout, registry, files, window_start, window_ms, devices
        )
        with_data = set(cube.devices)
    else:  # more than part_rows rows: read and score the hour a part of its devices at a time
        cube = None
        with_data = {device for part, _ in parts for device in part}
        with_model_folder = registry.model_devices()
        pack = ModelPack(layout.model_pack, registry)
    to_score = sorted(with_data & with_model_folder)
    without_folder = sorted(with_data - with_model_folder)
    silent = (
        sorted(d for d in with_model_folder - with_data if registry.active_version(d))
        if whole
        else []
    )

    shadowed = registry.shadowed_devices() & set(to_score)

    def work(chosen: list[str]) -> dict[str, DeviceResult]:
        assert cube is not None  # the local executor read the hour
        return score_devices(registry, pack, cube, chosen, hook, shadowed)

    model = task_model(options)
    with progress_bar(f"score {window_start:%Y-%m-%dT%H}", len(to_score), progress) as bar:
        on_progress = None
        if bar is not None:
            on_progress = lambda done: bar.update(bar.task_ids[0], completed=done)  # noqa: E731
        if executor.shares_memory and cube is not None:
            results, errors, aborted = executor.run(to_score, work, model, on_progress=on_progress)
        elif executor.shares_memory:
            assert pack is not None and parts is not None
            parted = PartedScoring(layout.store, window_start, window_ms, registry, pack, hook,
                                   shadowed)  # fmt: skip
            chosen = set(to_score)
            results, errors, aborted = parted.run(
                executor, [(sorted(set(p) & chosen), pieces) for p, pieces in parts], model,
                on_progress,
            )  # fmt: skip
        else:
            remote = RemoteScoring(
                layout.store, window_start, window_end, window_ms, frozenset(shadowed), hook,
                tuple(pieces), {device: where[device] for device in to_score},
                None if layout.remote else str(layout.model_pack),
            )  # fmt: skip
            groups: dict[tuple[int, ...], list[str]] = {}
            for device in to_score:  # devices whose windows share files go together
                groups.setdefault(where[device], []).append(device)
            results, errors, aborted = executor.run(
                to_score, remote, model, groups=list(groups.values()), on_progress=on_progress
            )

    # One row per device: (device_id, outcome, error, model_version, windows)
    outcomes: list[tuple[str, str, str | None, str | None, int]] = []
    scored: list[tuple[str, Scored]] = []
    shadow: list[tuple[str, Scored]] = []
    unpacked: list[str] = []
    without_model = list(without_folder)
    for device_id in to_score:
        result = results.get(device_id, _FAILED)
        if result is None:
            without_model.append(device_id)  # a model folder, but no active version
        elif result is not _FAILED:
            active, packed, in_shadow = result
            outcomes.append((device_id, "scored", None, active.version, active.windows))
            scored.append((device_id, active))
            if in_shadow is not None:
                shadow.append((device_id, in_shadow))
            if not packed:
                unpacked.append(device_id)
        else:
            reason = errors.get(device_id, "not run: the run was aborted")
            outcomes.append((device_id, "failed", reason, _active_or_none(registry, device_id), 0))
    outcomes += [(device_id, "no_model", None, None, 0) for device_id in sorted(without_model)]
    outcomes += [(d, "silent", None, registry.active_version(d), 0) for d in silent]
    failed = len(to_score) - len(results)
    del results  # the scores are in `scored` and `shadow` now, which the tables consume
    devices_scored = len(scored)
    scores, flagged_column = _score_table(run_id, window_ms, scored, cube)
    rows_scored = scores.num_rows
    anomalies = int(flagged_column.sum())
    error = None
    if aborted:
        error = (
            f"{failed} devices failed, more than --error-threshold "
            f"{options.error_threshold}; first: {next(iter(errors.values()), '')}"
        )
    status = "aborted" if aborted else "succeeded" if closed else "provisional"
    stored = shadow_stored = None
    if not aborted:
        stored = (
            scores if options.output == "all" else scores.filter(columns.booleans(flagged_column))
        )
        shadow_stored = _score_table(run_id, window_ms, shadow, cube)[0]
    run: dict[str, Any] = {
        "run_id": run_id,
        "window_start": window_start,
        "window_end": window_end,
        "started_at": started_at,
        "finished_at": datetime.now(UTC),
        "status": status,
        "devices_total": len(with_data) + len(silent),
        "devices_scored": devices_scored,
        "devices_failed": failed,
        "devices_without_model": len(without_model),
        "devices_silent": len(silent),
        "rows_scored": rows_scored,
        "error": error,
        "scope": "live" if live else "hour" if whole else "devices",
        "files_signature": files.signature,
    }
    outcome_table = pa.table(
        {
            "run_id": columns.strings([run_id] * len(outcomes)),
            "device_id": columns.strings([row[0] for row in outcomes]),
            "outcome": columns.strings([row[1] for row in outcomes]),
            "error": columns.strings([row[2] for row in outcomes]),
            "model_version": columns.strings([row[3] for row in outcomes]),
            "windows": columns.numeric(
                np.array([row[4] for row in outcomes], dtype=np.int64), pa.int64()
            ),
        }
    )
    point("score.computed")  # every device scored, nothing recorded
    write_run(
        layout.database,
        run,
        stored,
        outcome_table,
        devices=None if whole else sorted(to_score if live else devices or ()),
        hour_devices=sorted(with_data) if whole and status == "succeeded" else None,
        shadow_scores=shadow_stored,
        incident_gap=options.incident_gap,
        lock_timeout=options.lock_timeout,
        live_files=files.keys if live else None,
    )
    if unpacked and pack is not None:  # read from their files (new, re-activated, or edited
        # by hand); a Dask worker never uses this machine's pack
        refresh_quietly(pack, unpacked)
    return RunResult(
        run_id,
        window_start,
        status,
        run["scope"],
        run["devices_total"],
        devices_scored,
        failed,
        len(without_model),
        len(silent),
        rows_scored,
        anomalies,
        error,
    )


def _check_window(store: DataStore, keys: Sequence[str], window_ms: int) -> None:
    """The hour's windows are ``--window`` long (one row of its first file tells): windows of
    10 s scored as 60 s ones would be merged into the wrong grid, silently."""
    for key in keys[:1]:
        parquet = open_file(store, key)
        if parquet.metadata.num_rows == 0:
            return
        first = parquet.read_row_group(0, columns=["window_start", "window_end"]).slice(0, 1)
        start, end = (int(first.column(name)[0].value) for name in ("window_start", "window_end"))
        if end - start != window_ms:
            raise InvalidInputError(
                f"the aggregates of this hour have {(end - start) / 1000:g}s windows, not "
                f"--window {window_ms / 1000:g}s: pass --window {(end - start) / 1000:g}s "
                "(or set window under [aggregate], as for the aggregation)"
            )


def _offset(report: Callable[[int], None], done: int, count: int) -> None:
    report(done + count)


def _device_parts(
    store: DataStore, keys: Sequence[str], devices: Sequence[str] | None, part_rows: int
) -> list[tuple[list[str], list[Piece]]] | None:
    """None when the hour's files hold at most ``part_rows`` rows (read whole, as one cube);
    else its devices (or those of ``devices`` it has) in parts of about that many rows, each
    with the row groups it reads (:func:`~fleetwatch.scoring.features.in_parts`), so that the
    scoring process's memory stays bounded whatever the fleet's size (a part of 2 M rows adds
    ~250 MB while it is read; an hour of 100,000 devices peaks at ~0.9 GB, docs/scale.md).
    The row count comes from the files' footers; the devices from their dictionary-encoded
    device column."""
    rows = sum(read_metadata(store, key).num_rows for key in keys)
    if rows <= part_rows:
        return None
    pieces, where = device_pieces(store, keys)
    present = where if devices is None else set(where) & set(devices)
    return in_parts(pieces, where, present, rows, part_rows)


@dataclass
class PartedScoring:
    """An hour too large to read whole, scored a part of its devices at a time: each part's
    windows read from the row groups that hold them (one cube the forked workers share), its
    devices scored, and the cube let go before the next part is read. The results carry their
    window starts, as from a cluster."""

    store: DataStore
    window_start: datetime
    window_ms: int
    registry: ModelRegistry
    pack: ModelPack
    hook: DeviceHook | None
    shadowed: set[str]

    def run(
        self,
        executor: Executor,
        parts: list[tuple[list[str], list[Piece]]],
        model: TaskModel,
        on_progress: Callable[[int], None] | None,
    ) -> tuple[dict[str, Any], dict[str, str], bool]:
        results: dict[str, Any] = {}
        errors: dict[str, str] = {}
        try:
            self.pack.open_segments()
        except Exception as exc:  # the pack is a cache: the workers read the model files instead
            log.warning("model pack not used (%s)", exc)
        for part, pieces in (p for p in parts if p[0]):
            # as for a whole hour: the part's models are loaded (checked) from the pack while
            # its windows are read, and the forked workers inherit them
            read = threading.Event()
            with ThreadPoolExecutor(1) as thread:
                preloading = thread.submit(self.pack.preload, part, read)
                try:
                    cube = read_cube(
                        self.store, pieces, self.window_start, self.window_start + HOUR,
                        self.window_ms, devices=part,
                    )  # fmt: skip
                finally:
                    read.set()
                    preloading.result()
            done = len(results) + len(errors)

            def work(chosen: list[str], cube: WindowCube = cube) -> dict[str, DeviceResult]:
                return score_devices(
                    self.registry, self.pack, cube, chosen, self.hook, self.shadowed
                )

            left = model.error_threshold
            if left >= 0:  # failures count over the whole run, not per part
                left = max(0, left - len(errors))
            found, failed, aborted = executor.run(
                part, work, replace(model, error_threshold=left),
                on_progress=None if on_progress is None else partial(_offset, on_progress, done),
            )  # fmt: skip
            for device_id, payload in found.items():
                if payload is not None:  # the starts travel with the result
                    starts = cube.row_starts[slice(*cube.rows(device_id))].tobytes()
                    for scored in (payload[0], payload[2]):
                        if scored is not None:
                            scored.starts = starts
            results.update(found)
            errors.update(failed)
            del cube
            self.pack.forget(part)
            if aborted:
                return results, errors, True
        return results, errors, False


def _active_or_none(registry: ModelRegistry, device_id: str) -> str | None:
    try:
        return registry.active_version(device_id)
    except FleetwatchError:
        return None


def _read_hour(
    layout: DataLayout,
    registry: ModelRegistry,
    files: HourFiles,
    window_start: datetime,
    window_ms: int,
    devices: Sequence[str] | None,
) -> tuple[WindowCube, set[str], ModelPack]:
    """The hour's windows (one cube the forked workers share), the devices with a model
    folder, and the model pack. While this thread reads the hour (mostly in Arrow and numpy,
    which let other threads run), another lists the models, opens the pack and loads (checks)
    models until the reading is done; the workers inherit what it loaded and load the rest."""
    pack = ModelPack(layout.model_pack, registry)
    read = threading.Event()
    with ThreadPoolExecutor(1) as thread:
        preloading = thread.submit(_preload, pack, read)
        try:
            cube = read_cube(
                layout.store, files.keys, window_start, window_start + HOUR, window_ms,
                devices=devices,
            )  # fmt: skip
        finally:
            read.set()
            with_model_folder = preloading.result()
    return cube, with_model_folder, pack


@dataclass(frozen=True)
class RemoteScoring:
    """What a Dask worker needs to score some devices of one hour: small, picklable (the
    store travels as its location)."""

    store: DataStore
    window_start: datetime
    window_end: datetime
    window_ms: int
    shadowed: frozenset[str] = field(default_factory=frozenset)
    hook: Callable[[str], None] | None = None  # tests: called before each device
    #: The hour's row groups (file, index) and, per device, those holding its windows: a task
    #: reads only its devices' (one Kafka partition's files, as the aggregator wrote them).
    pieces: tuple[tuple[str, int], ...] = ()
    where: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: The client's model pack, when the workers see the same folder (a local data dir).
    pack: str | None = None

    def __call__(self, devices: list[str]) -> dict[str, DeviceResult]:
        store = open_store(self.store.location)
        registry = ModelRegistry(store, live=False)
        indices = sorted({i for device in devices for i in self.where.get(device, ())})
        chosen = [self.pieces[i] for i in indices]
        cube = read_cube(
            store, chosen, self.window_start, self.window_end, self.window_ms, devices=devices
        )
        results = score_devices(
            registry, _worker_pack(self.pack, registry), cube, devices, self.hook,
            set(self.shadowed),
        )  # fmt: skip
        for device_id, (status, payload) in results.items():
            if status == "ok" and payload is not None:  # the client has no cube: send starts
                starts = cube.row_starts[slice(*cube.rows(device_id))].tobytes()
                for scored in (payload[0], payload[2]):
                    if scored is not None:
                        scored.starts = starts
        return results


#: This worker process's open pack, with the state of its index files when it was opened: the
#: next task reuses it while they are unchanged (opening parses every index).
_OPEN_PACK: dict[str, tuple[tuple[tuple[str, int], ...], ModelPack]] = {}


def _worker_pack(folder: str | None, registry: ModelRegistry) -> ModelPack | None:
    """The client's model pack, opened read-only on a Dask worker; None without one. Every
    entry is checked against the registry's files before use, as on the client, so a pack
    that is stale or half-written costs only the file reads it would have saved."""
    if folder is None:
        return None
    try:
        state = ModelPack.state_of(Path(folder))
        if not state:
            return None
        cached = _OPEN_PACK.get(folder)
        if cached is not None and cached[0] == state:
            pack = cached[1]
            pack.registry = registry
            return pack
        pack = ModelPack.open(Path(folder), registry)
        _OPEN_PACK.clear()
        _OPEN_PACK[folder] = (state, pack)
        return pack
    except Exception:  # a cache: the models are read from their files instead
        return None


def is_anomalous(scores: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    """Below the threshold, or not a finite score at all (a reading of 1e300 makes the
    features overflow: such a window is anomalous, never silently normal).

    >>> is_anomalous(np.array([-2.0, 0.0, np.nan, np.inf]), -1.0).tolist()
    [True, False, True, True]
    """
    with np.errstate(invalid="ignore"):
        result: np.ndarray = ~(scores >= thresholds) | ~np.isfinite(scores)
    return result


@dataclass
class Scored:
    """One device's scores from one model version, as a worker returns them."""

    version: str
    raw: bytes  # float64 scores (10,000 small arrays cost the parent 0.08 s to unpickle)
    threshold: float
    tail_scale: float
    flagged: bytes  # int32 rows below the threshold, or whose score is not finite
    explanations: list[Explanation]  # one per flagged row
    starts: bytes = b""  # int64 window starts (epoch ms), from a Dask worker: no local cube

    @property
    def windows(self) -> int:
        return len(self.raw) // 8

    @classmethod
    def of(cls, model: ActiveModel, scores: np.ndarray) -> Scored:
        flagged = np.flatnonzero(is_anomalous(scores, model.threshold)).astype(np.int32)
        return cls(
            model.version,
            scores.astype(np.float64).tobytes(),
            model.threshold,
            model.tail_scale,
            flagged.tobytes(),
            [],
        )


@dataclass
class _Model:
    """A device's active model, loaded and checked."""

    active: ActiveModel
    packed: bool  # loaded from the model pack (else from its files: pack it after the run)


def _preload(pack: ModelPack, stop: threading.Event) -> set[str]:
    """The devices with a model folder; their models preloaded from the pack until ``stop``."""
    devices = pack.registry.model_devices()
    try:
        pack.open_segments()
        pack.preload(sorted(devices), stop)
    except Exception as exc:  # the pack is a cache: the workers read the model files instead
        log.warning("model pack not used (%s)", exc)
    return devices


def score_devices(
    registry: ModelRegistry,
    pack: ModelPack | None,
    cube: WindowCube,
    devices: list[str],
    hook: DeviceHook | None = None,
    shadowed: set[str] | frozenset[str] = frozenset(),
) -> dict[str, DeviceResult]:
    """Score ``devices`` (one task, in a worker): ("ok", (active Scored, packed, shadow
    Scored or None) or None). Models come from ``pack`` when it holds them as they are, else
    from their files; the versions in shadow (of ``shadowed`` devices) from their files.

    Every model is loaded and checked on its own, so a bad one fails its device only.
    Devices go ``GATHER_SIZE`` at a time: the windows of those that share a feature list are
    cut from the cube and transformed, imputed and scaled in one go (re-scored one by one if
    a model among them fails), and their models are released before the next ones load.
    """
    results: dict[str, DeviceResult] = {}
    for start in range(0, len(devices), GATHER_SIZE):
        groups: dict[tuple[type[ModelKind], tuple[str, ...]], list[tuple[str, _Model]]] = {}
        for device_id in devices[start : start + GATHER_SIZE]:
            try:
                model = _load(registry, pack, device_id, hook)
            except Exception as exc:  # a model that raises fails its device only
                results[device_id] = ("error", f"{type(exc).__name__}: {exc}")
                continue
            if model is None:
                results[device_id] = ("ok", None)  # a model folder without an active version
            else:
                key = (model.active.kind, model.active.features)
                groups.setdefault(key, []).append((device_id, model))
        for (kind, features), members in groups.items():
            scored = _score_group(kind, features, [m.active for _, m in members], cube, members)
            for (device_id, model), outcome in zip(members, scored, strict=True):
                if isinstance(outcome, Exception):
                    results[device_id] = ("error", f"{type(outcome).__name__}: {outcome}")
                    continue
                in_shadow = None
                if device_id in shadowed:
                    in_shadow = _score_shadow(registry, cube, device_id)
                results[device_id] = ("ok", (outcome, model.packed, in_shadow))
    return results


def _score_group(
    kind: type[ModelKind],
    features: tuple[str, ...],
    models: list[ActiveModel],
    cube: WindowCube,
    members: list[tuple[str, Any]],
) -> list[Scored | Exception]:
    """The scores (and explanations) of devices of one kind and feature list."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        # windows with values that overflow score as not finite: anomalous (is_anomalous)
        return _score_group_quietly(kind, features, models, cube, members)


def _score_group_quietly(
    kind: type[ModelKind],
    features: tuple[str, ...],
    models: list[ActiveModel],
    cube: WindowCube,
    members: list[tuple[str, Any]],
) -> list[Scored | Exception]:
    ids = [device_id for device_id, _ in members]
    windows, counts = cube.gather(ids, list(features))
    outcomes: list[Scored | Exception] = []
    values: list[np.ndarray | Exception]
    try:
        values = list(kind.decide_many([m.scorer for m in models], windows, counts))
    except Exception:  # a malformed model among them: score them one by one
        windows, counts = cube.gather(ids, list(features))
        values = []
        for index, model in enumerate(models):
            try:
                values.append(model.scorer.decision(windows[index, : counts[index]]))
            except Exception as exc:
                values.append(exc)
    flagged: list[tuple[int, Scored]] = []  # (position, its scores) of devices to explain
    for position, (model, value) in enumerate(zip(models, values, strict=True)):
        if isinstance(value, Exception):
            outcomes.append(value)
            continue
        scored = Scored.of(model, value)
        outcomes.append(scored)
        if scored.flagged:
            flagged.append((position, scored))
    if flagged:
        try:
            raw, _ = cube.gather([ids[i] for i, _ in flagged], list(features))
            found = explain_many(
                kind,
                [models[i].scorer for i, _ in flagged],
                features,
                [raw[p, : counts[i]] for p, (i, _) in enumerate(flagged)],
                [np.frombuffer(scored.raw) for _, scored in flagged],
                [np.frombuffer(scored.flagged, dtype=np.int32) for _, scored in flagged],
            )
            for (_, scored), explanations in zip(flagged, found, strict=True):
                scored.explanations = explanations
        except Exception as exc:  # an explanation is extra: its failure costs only itself
            log.warning("explanations left out for %d devices: %s", len(flagged), exc)
    return outcomes


def _score_shadow(registry: ModelRegistry, cube: WindowCube, device_id: str) -> Scored | None:
    """The device's version in shadow scored on the same windows (None when it cannot be:
    shadow scoring never fails the device)."""
    try:
        model = model_from_files(registry, registry.shadow(device_id))
        if model is None:
            return None
        matrix = cube.matrix(device_id, list(model.features)).matrix
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return Scored.of(model, model.scorer.decision(matrix))
    except Exception as exc:
        log.warning("%s: the version in shadow was not scored: %s", device_id, exc)
        return None


def _load(
    registry: ModelRegistry,
    pack: ModelPack | None,
    device_id: str,
    hook: DeviceHook | None,
) -> _Model | None:
    if hook is not None:
        hook(device_id)
    active = pack.load(device_id) if pack is not None else None
    packed = active is not None
    if active is None:
        active = read_active(registry, device_id)
        if active is None:
            return None
    expected = active.scorer.feature_count
    if expected is not None and expected != len(active.features):
        raise ValueError(
            f"the model has {expected} features, its manifest lists "
            f"{len(active.features)}: retrain it"
        )
    return _Model(active, packed)


#: ``top_sensors``: a list of (sensor, share) per anomalous window, null for the others.
TOP_SENSORS = pa.list_(pa.struct([("sensor", pa.string()), ("share", pa.float64())]))


def _score_table(
    run_id: str, window_ms: int, scored: list[tuple[str, Scored]], cube: WindowCube | None
) -> tuple[pa.Table, np.ndarray]:
    """The ``scores`` rows of the scored devices, built column-wise (no per-row objects), and
    which of them are anomalies (below their model's threshold). Window starts come from the
    cube, or (``cube`` None: scored on Dask) from each result. ``scored`` is emptied: its
    bytes are in the table now (an hour of 100,000 devices: ~150 MB less while it is written).
    """
    values = np.frombuffer(b"".join(s.raw for _, s in scored), dtype=np.float64)
    counts = np.array([s.windows for _, s in scored], dtype=np.int64)
    owner = np.repeat(np.arange(len(scored), dtype=np.int32), counts)
    # in place, a row-long array at a time: 6 M rows at 100,000 devices
    thresholds = np.array([s.threshold for _, s in scored], dtype=np.float64)[owner]
    flagged = is_anomalous(values, thresholds)
    with np.errstate(invalid="ignore"):
        normalized = values - thresholds
        del thresholds
        normalized /= np.array([s.tail_scale for _, s in scored], dtype=np.float64)[owner]
        normalized[~np.isfinite(values)] = -np.inf
    starts = np.concatenate(
        [
            cube.row_starts[slice(*cube.rows(d))]
            if cube is not None
            else np.frombuffer(s.starts, dtype=np.int64)
            for d, s in scored
        ]
        or [np.empty(0, np.int64)]
    )
    timestamp = pa.timestamp("ms", tz="UTC")
    table = pa.table(
        {
            "run_id": columns.dictionary(np.zeros(len(owner), dtype=np.int32), [run_id]),
            "device_id": columns.dictionary(owner, [device_id for device_id, _ in scored]),
            "window_start": columns.numeric(starts, timestamp),
            "window_end": columns.numeric(starts + window_ms, timestamp),
            "score": columns.numeric(values, pa.float64()),
            "score_normalized": columns.numeric(normalized, pa.float64()),
            "is_anomaly": columns.booleans(flagged),
            "model_version": columns.dictionary(owner, [s.version for _, s in scored]),
            "top_sensors": _top_sensors(scored, counts),
        }
    )
    scored.clear()
    return table, flagged


def _top_sensors(scored: list[tuple[str, Scored]], counts: np.ndarray) -> pa.Array:
    """The ``top_sensors`` column: built from offsets, so that the (many) windows without an
    explanation cost no Python object."""
    lengths = np.zeros(int(counts.sum()), dtype=np.int32)
    valid = np.zeros(len(lengths), dtype=bool)
    sensors: list[str] = []
    shares: list[float] = []
    base = 0
    for (_, item), count in zip(scored, counts.tolist(), strict=True):
        rows = np.frombuffer(item.flagged, dtype=np.int32)
        for row, explanation in zip(rows.tolist(), item.explanations, strict=False):
            lengths[base + row] = len(explanation)
            valid[base + row] = True
            for sensor, share in explanation:
                sensors.append(sensor)
                shares.append(share)
        base += count
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = pa.StructArray.from_arrays(
        [
            columns.strings(sensors).cast(pa.string()),
            columns.numeric(np.array(shares, dtype=np.float64), pa.float64()),
        ],
        names=["sensor", "share"],
    )
    validity = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(
        TOP_SENSORS,
        len(lengths),
        [validity, pa.py_buffer(offsets)],
        children=[values],
    )
