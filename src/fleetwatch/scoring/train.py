"""``fleetwatch train``: fit one model per device from a time range of aggregates, in parallel.

Each device gets its own range: the same ``--since``/``--until`` for all, the first rows,
duration or share of each device's windows (``--first``, see :mod:`fleetwatch.scoring.ranges`),
or a file of ranges. Its threshold comes from the latest part of its range, held out (see
:mod:`fleetwatch.scoring.calibration`).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np

from fleetwatch.config import ScoreSettings, Settings, TrainSettings
from fleetwatch.errors import InvalidInputError, NothingDoneError, StorageError
from fleetwatch.output import progress_bar
from fleetwatch.scoring.calibration import (
    MIN_FIT,
    Calibration,
    allowed_false_alarms,
    calibrate,
    check_split,
    fitted_scale_of,
    held_out_count,
)
from fleetwatch.scoring.executor import DeviceResult, Executor, TaskModel
from fleetwatch.scoring.executors import executor_for
from fleetwatch.scoring.features import (
    Piece,
    WindowCube,
    device_pieces,
    devices_in_files,
    feature_names,
    fleet_slow,
    in_parts,
    judge_slow,
    named_slow,
    read_cube,
    sensors_and_window,
    slow_sensors,
)
from fleetwatch.scoring.journal import Row
from fleetwatch.scoring.kinds import kind_named, new_model
from fleetwatch.scoring.pack import ModelPack, PackItem, entry_of, refresh_quietly
from fleetwatch.scoring.registry import Mode, ModelRegistry, ParamsLayout, model_row
from fleetwatch.storage.layout import DataLayout
from fleetwatch.storage.models import PARAMS
from fleetwatch.storage.parquet import read_metadata


@dataclass
class TrainSummary:
    trained: dict[str, str] = field(default_factory=dict)  # device -> version
    skipped: dict[str, str] = field(default_factory=dict)  # device -> reason
    failed: dict[str, str] = field(default_factory=dict)
    shadowed: dict[str, str] = field(default_factory=dict)  # device -> why not activated
    degenerate: dict[str, str] = field(default_factory=dict)  # device -> why (calibration)
    uses: Counter[str] = field(default_factory=Counter)  # what models use -> devices
    kinds: Counter[str] = field(default_factory=Counter)  # model kind -> devices
    packed: list[PackItem] = field(default_factory=list)  # pack entries not yet in the pack
    in_pack: set[str] = field(default_factory=set)  # trained devices packed already
    #: --slow-sensors auto: the sensors the fleet judged slow -> (devices judging it slow,
    #: devices judging it)
    slow: dict[str, tuple[int, int]] = field(default_factory=dict)

    def record(self, device_id: str, fitted: Fitted) -> None:
        self.trained[device_id] = fitted.version
        if fitted.packed is not None:
            self.packed.append(fitted.packed)
        if fitted.shadow_reason is not None:
            self.shadowed[device_id] = fitted.shadow_reason
        if fitted.degenerate is not None:
            self.degenerate[device_id] = fitted.degenerate
        self.uses[fitted.uses] += 1
        self.kinds[fitted.kind] += 1

    def as_record(self) -> dict[str, Any]:
        return {
            "trained": len(self.trained),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "kept_in_shadow": len(self.shadowed),
            "threshold_degenerate": len(self.degenerate),
            "models_use": "; ".join(
                f"{uses} ({count} devices)" for uses, count in self.uses.most_common()
            )
            or "none",
            "slow_sensors": ", ".join(
                f"{sensor} ({slow} of {judged} devices)"
                for sensor, (slow, judged) in self.slow.items()
            )
            or "none",
            "skipped_reasons": self.skipped,
            "failed_reasons": self.failed,
            "shadow_reasons": self.shadowed,
            "degenerate_reasons": self.degenerate,
        }


log = logging.getLogger(__name__)


def _gamma(value: str) -> str | float:
    return value if value in ("scale", "auto") else float(value)


@dataclass(frozen=True)
class FitJob:
    """One device's training, as a worker process gets it."""

    device_id: str
    matrix: np.ndarray  # training windows (rows, in time order) x features
    names: list[str]
    parameters: dict[str, Any]
    keep_estimator: bool  # ``[train] keep_estimator``: store the scikit-learn objects too
    since: datetime
    until: datetime
    activate: str  # "yes" | "no" | "if-calibrated": yes when no held-out window surprised


def fit_threshold(job: FitJob) -> tuple[Any, Calibration]:
    """Fit a device's model and its threshold (see :mod:`fleetwatch.scoring.calibration`)."""
    options, matrix = job.parameters, job.matrix
    held = held_out_count(len(matrix))
    if len(matrix) - held < MIN_FIT:
        raise ValueError(
            f"{len(matrix)} training windows: at least {MIN_FIT + held} are needed "
            f"({MIN_FIT} to fit, {held} held out for the threshold)"
        )
    scores, fitted = _provisional_scores(job, len(matrix) - held, len(matrix))
    calibration = calibrate(scores, options["target_far"], fitted_scale_of(fitted))
    model = _model(job)
    model.fit(matrix, job.names)
    return model, calibration


def _model(job: FitJob) -> Any:
    options = job.parameters
    return new_model(options["kind"], options["nu"], _gamma(options["gamma"]), options["kernel"])


def _provisional_scores(job: FitJob, fitted: int, until: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``fitted:until`` scored by a model of windows ``:fitted``, and that model's
    scores of its own windows ``:fitted``."""
    provisional = _model(job)
    provisional.fit(job.matrix[:fitted], job.names)
    scorer = kind_named(job.parameters["kind"]).scorer(provisional.arrays())
    scores: np.ndarray = scorer.decision(job.matrix[:until])
    return scores[fitted:], scores[:fitted]


def held_out_false_alarms(job: FitJob) -> tuple[int, int] | None:
    """The retraining check (see :mod:`fleetwatch.scoring.calibration`): how many of the
    latest windows a model of the earlier ones flags, of how many; None with too few."""
    split = check_split(len(job.matrix))
    if split is None:
        return None
    checked, calibrating = split
    end = len(job.matrix) - checked
    held, fitted = _provisional_scores(job, end - calibrating, end)
    calibration = calibrate(held, job.parameters["target_far"], fitted_scale_of(fitted))
    fitted = _model(job)
    fitted.fit(job.matrix[: end - calibrating], job.names)
    scorer = kind_named(job.parameters["kind"]).scorer(fitted.arrays())
    flagged = int((scorer.decision(job.matrix[end:]) < calibration.threshold).sum())
    return flagged, checked


@dataclass(frozen=True)
class Fitted:
    """What training one device did: its new version ("" until published), why it was kept
    in shadow instead of activated (None when it was not), why its threshold is degenerate
    (None when it is not), and what its model uses (:func:`describe_features`)."""

    version: str
    shadow_reason: str | None
    degenerate: str | None
    uses: str
    packed: PackItem | None = None  # its model pack entry, when it is activated
    row: Row | None = None  # the model as its run object's row, until published
    mode: Mode = "activate"
    kind: str = "device"  # the model's kind (``--model-kind auto`` chooses per device)


def describe_features(names: list[str]) -> str:
    """What a model's features say about its sensors: their levels (mean, min, max), their
    changes (a slow sensor's change since its previous reading), their spread and count.

    >>> describe_features(["t__delta", "t__std", "t__count", "p__mean", "p__std", "p__count"])
    'levels of p; changes of t'
    """
    by_sensor: dict[str, set[str]] = {}
    for name in names:
        sensor, _, statistic = name.rpartition("__")
        by_sensor.setdefault(sensor, set()).add(statistic)
    levels = sorted(s for s, stats in by_sensor.items() if "mean" in stats)
    changes = sorted(s for s, stats in by_sensor.items() if "delta" in stats)
    other = sorted(set(by_sensor) - set(levels) - set(changes))
    parts = [("levels of ", levels), ("changes of ", changes), ("spread/count of ", other)]
    return "; ".join(label + ", ".join(sensors) for label, sensors in parts if sensors)


def _uses(job: FitJob) -> str:
    """What the model uses; for a kind other than the default, which kind (with ``--model-kind
    auto``, the summary then counts the devices of each)."""
    uses = describe_features(job.names)
    kind = job.parameters["kind"]
    return uses if kind == "device" else f"{kind}: {uses}"


def fit_one(job: FitJob) -> Fitted:
    """Fit one device's model, in a worker process: the result carries it as a run object's
    row (its bytes, manifest and sha256 made here, in parallel) and its model pack entry;
    :func:`publish` saves a group's rows as one object."""
    model, calibration = fit_threshold(job)
    shadow_reason = None
    if job.activate == "if-calibrated":
        check = held_out_false_alarms(job)
        if check is not None and check[0] > allowed_false_alarms(check[1], calibration.target_far):
            shadow_reason = (
                f"{check[0]} of its {check[1]} latest training windows flagged by a model of the "
                f"earlier ones (target false-alarm rate {calibration.target_far:g}): kept in "
                "shadow"
            )
    row = model_row(
        job.device_id, model, job.names, job.since, job.until, len(job.matrix), job.parameters,
        calibration, job.keep_estimator,
    )  # fmt: skip
    mode: Mode = "keep"
    if shadow_reason is not None:
        mode = "shadow"
    elif job.activate in ("yes", "if-calibrated"):
        mode = "activate"
    packed = None
    if mode == "activate":  # its pack entry: version and run object filled in when published
        manifest = json.loads(row.manifest)
        arrays = ParamsLayout(manifest["params"]).arrays(row.files[PARAMS])
        packed = entry_of(job.device_id, "", manifest, arrays, ("", row.digest))
    return Fitted(
        "", shadow_reason, calibration.degenerate, _uses(job), packed, row, mode,
        job.parameters["kind"],
    )  # fmt: skip


def fit_many(jobs: list[FitJob]) -> list[tuple[str, Fitted | str]]:
    """:func:`fit_one` of each job, in a worker process (a local one: a task of a few
    devices, as a pool task cost about as much as a 120-window device's fit; or a Dask
    worker's): a device whose fit fails gets why instead of its model, the others are
    fitted."""
    outcomes: list[tuple[str, Fitted | str]] = []
    for job in jobs:
        try:
            outcomes.append((job.device_id, fit_one(job)))
        except Exception as exc:  # one device's bad data must not stop the others
            outcomes.append((job.device_id, f"{type(exc).__name__}: {exc}"))
    return outcomes


def publish(registry: ModelRegistry, fitted: Mapping[str, Fitted]) -> dict[str, Fitted]:
    """Save fitted models as one run object published by one journal record; each result
    with its version and its pack entry complete."""
    rows = [f.row for f in fitted.values() if f.row is not None]
    run, versions = registry.publish(rows, {d: f.mode for d, f in fitted.items()})
    signature = f"{run}@{registry.runs.store_version(run)}"
    done = {}
    for device_id, result in fitted.items():
        packed = result.packed
        if packed is not None:
            entry = packed[1]._replace(version=versions[device_id], manifest=signature)
            packed = (device_id, entry, packed[2])
        done[device_id] = replace(result, version=versions[device_id], packed=packed, row=None)
    return done


#: Aggregate rows read at once while training: the devices are read in groups of about this
#: many rows (a day of 10,000 devices x 10 sensors is 144M rows, more than memory holds).
READ_ROWS = 8_000_000
#: Devices prepared and submitted at a time: the workers fit the first while the parent
#: prepares the rest of a group (a thousand devices' features take it most of a second).
SUBMIT_DEVICES = 64
#: Training windows fitted per task, about (``Fitting.add``): a few 1,440-window devices, a
#: hundred of 120 windows.
TASK_WINDOWS = 8192


@dataclass(frozen=True)
class Training:
    """What training needs: the data directory, ``[train]``, the window length, and where
    tasks run (``[score]``'s executor and task limits, shared with scoring)."""

    layout: DataLayout
    options: TrainSettings
    window_ms: int
    tasks: ScoreSettings
    executor: Executor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.executor is None:
            object.__setattr__(self, "executor", executor_for(self.tasks))

    @classmethod
    def of(cls, settings: Settings | Training) -> Training:
        if isinstance(settings, Training):
            return settings
        return cls(
            settings.layout,
            settings.train,
            round(settings.aggregate.window * 1000),
            settings.score,
            executor_for(settings.score),
        )


def train(
    setup: Settings | Training,
    since: datetime,
    until: datetime,
    devices: list[str] | None = None,
    activate: str | None = None,
) -> TrainSummary:
    """Fit every device with windows in [since, until) (or just ``devices``) on that range."""
    training = Training.of(setup)
    layout = training.layout
    if until <= since:
        raise InvalidInputError(
            f"--since {since:%Y-%m-%dT%H:%M}Z --until {until:%Y-%m-%dT%H:%M}Z is "
            f"{'reversed' if until < since else 'empty'}: --until is the end and comes after "
            "--since"
        )
    files = [item.key for item in layout.files_between(since, until)]
    present, _ = devices_in_files(layout.store, files)
    if not present:
        raise NothingDoneError(
            f"no aggregates between {since:%Y-%m-%dT%H:%M}Z and {until:%Y-%m-%dT%H:%M}Z in "
            f"{layout.store.describe('aggregates')}; run `fleetwatch aggregate` first or pick "
            "another --since/--until"
        )
    chosen = present if not devices else sorted(set(devices) & set(present))
    summary = TrainSummary()
    for device in sorted(set(devices or ()) - set(present)):
        summary.skipped[device] = "no windows in the training range"
    return train_ranges(training, dict.fromkeys(chosen, (since, until)), summary, activate)


def _check_against_the_data(
    layout: DataLayout,
    by_range: Mapping[tuple[datetime, datetime], list[str]],
    window_ms: int,
    declared: list[str],
) -> None:
    """Before any fit: the aggregates' windows are ``--window`` long (a model of 5 s windows
    fitted on 60 s ones would score nothing right), and a sensor named by ``--slow-sensors``
    exists in them (a typo would otherwise change nothing, silently)."""
    since = min(span[0] for span in by_range)
    until = max(span[1] for span in by_range)
    files = [item.key for item in layout.files_between(since, until)]
    sensors, lengths = sensors_and_window(layout.store, files)
    if lengths and window_ms not in lengths:
        found = ", ".join(f"{length / 1000:g}s" for length in sorted(lengths))
        raise InvalidInputError(
            f"the aggregates in the training range have {found} windows, not --window "
            f"{window_ms / 1000:g}s: pass --window {found.split(',')[0]}"
        )
    if declared not in (["auto"], ["none"]) and sensors:
        unknown = [name for name in declared if name not in sensors]
        if len(unknown) == len(declared):
            raise InvalidInputError(
                f"--slow-sensors {','.join(unknown)}: no device has such a sensor in the "
                f"training range (it has {', '.join(sorted(sensors)[:8])}"
                f"{', ...' if len(sensors) > 8 else ''})"
            )


def declared_slow(names: list[str]) -> list[str]:
    """``--slow-sensors`` checked: ``auto``, ``none`` or sensor names (not mixed)."""
    from fleetwatch.telemetry import is_valid_name

    names = list(dict.fromkeys(names)) or ["auto"]
    if len(names) > 1 and {"auto", "none"} & set(names):
        raise InvalidInputError(
            f"--slow-sensors {','.join(names)}: give auto, none, or sensor names, not both"
        )
    if names not in (["auto"], ["none"]):
        bad = [name for name in names if not is_valid_name(name)]
        if bad:
            raise InvalidInputError(
                f"--slow-sensors: {bad[0]!r} is not a valid sensor name (letters, digits, "
                "'_', '-', '.')"
            )
    return names


def train_ranges(
    setup: Settings | Training,
    ranges: Mapping[str, tuple[datetime, datetime]],
    summary: TrainSummary | None = None,
    activate: str | None = None,
) -> TrainSummary:
    """Fit each device of ``ranges`` on its own range of windows [since, until).

    ``activate``: "yes", "no" or "if-calibrated" (default: ``--activate``'s yes or no)."""
    training = Training.of(setup)
    options = training.options
    summary = summary or TrainSummary()
    kind = "per_sensor" if options.per_sensor else options.model_kind
    layout = training.layout
    registry = ModelRegistry(layout.store, live=False)
    executor = training.executor
    window_ms = training.window_ms
    activate = activate or ("yes" if options.activate else "no")
    parameters = {
        "kind": kind,
        "nu": options.nu,
        "gamma": options.gamma,
        "kernel": options.kernel,
        "target_far": options.target_far,
        "slow_sensors": declared_slow(options.slow_sensors),
        "window_ms": window_ms,
    }
    by_range: dict[tuple[datetime, datetime], list[str]] = {}
    for device_id, span in sorted(ranges.items()):
        by_range.setdefault(span, []).append(device_id)
    if ranges:
        _check_against_the_data(layout, by_range, window_ms, declared_slow(options.slow_sensors))
    workers = max(1, min(options.workers or os.cpu_count() or 1, len(ranges) or 1))
    if not executor.shares_memory:
        workers = 1  # the local pool stays idle: the cluster fits
    with (
        ProcessPoolExecutor(max_workers=workers, initializer=_worker_start) as pool,
        progress_bar("train", len(ranges), enabled=options.progress) as bar,
    ):
        if executor.shares_memory and ranges:  # started now: they import while this reads
            pool.submit(int)
        fleet = None
        read = CubeReader(layout, window_ms)
        if parameters["slow_sensors"] == ["auto"] and len(ranges) > 1:
            summary.slow = _fleet_slow(training, by_range, read, options.min_windows)
            fleet = tuple(summary.slow)

        def advance() -> None:
            if bar is not None:
                bar.update(bar.task_ids[0], advance=1)

        fit_setup = FitSetup(
            parameters, options.keep_estimator, activate, options.min_windows, window_ms,
            layout.location, fleet,
        )  # fmt: skip
        pack = ModelPack.open(layout.model_pack, registry) if activate != "no" else None
        fitting = Fitting(pool, summary, advance, registry, pack)
        for (since, until), chosen in by_range.items():
            if not executor.shares_memory:  # the workers read their devices themselves
                train_on_cluster(training, fit_setup, since, until, chosen, summary, advance)
                continue
            for part, cube in read(since, until, chosen, keep=False):
                fitting.open_group()
                for start in range(0, len(part), SUBMIT_DEVICES):  # the workers start at once
                    some = part[start : start + SUBMIT_DEVICES]
                    jobs, skipped = prepare_jobs(cube, some, fit_setup, since, until)
                    for device_id, reason in skipped.items():
                        summary.skipped[device_id] = reason
                        advance()
                    fitting.add(jobs)
                del cube
                # the workers fit this group while the next one is read (one group ahead)
                fitting.wait(ahead=1)
        fitting.wait(ahead=0)
    if pack is not None and summary.trained:  # so that the next scoring run finds them packed
        pack_quietly(pack, summary)
    return summary


def pack_quietly(pack: ModelPack, summary: TrainSummary) -> None:
    """The entries the workers made into the pack, and any trained device without one
    packed from its files; a pack that cannot be written only makes scoring slower."""
    try:
        pack.add(summary.packed)
    except Exception as exc:  # the pack is a cache: never fail training for it
        log.warning("model pack not updated (%s); scoring reads the model files instead", exc)
        return
    done = {item[0] for item in summary.packed} | summary.in_pack
    rest = [device for device in summary.trained if device not in done]
    if rest:
        refresh_quietly(pack, rest)


def _worker_start() -> None:
    """Each training process runs one BLAS/OpenMP thread: the processes are the parallelism
    (two processes of two threads each on two cores fought for them). The processes start
    before the parent reads the training windows and import scikit-learn's fitting modules
    (most of a second) meanwhile, instead of the parent before they fork. Each leaves when its
    parent is gone (:func:`_leave_with_parent`)."""
    _leave_with_parent()
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    threadpool_limits(1)
    import sklearn.pipeline
    import sklearn.svm  # noqa: F401

    import fleetwatch.scoring.kinds.transforms  # noqa: F401


#: How often a training process looks whether its parent is still there.
PARENT_CHECK_S = 1.0


def _leave_with_parent() -> None:
    """Exit once the parent is gone. A pool's idle workers otherwise outlive a ``train``
    killed with SIGKILL forever: each waits on the task queue, whose write end its siblings
    hold open, so no end of file ever comes. (Linux's parent-death signal is not used: it fires
    when the forking *thread* ends, and ``schedule`` trains from its job threads.)"""
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="fleetwatch-parent-watch", daemon=True).start()


#: A training range and its devices: (since, until, devices).
_Range = tuple[datetime, datetime, tuple[str, ...]]


class CubeReader:
    """The windows of devices in [since, until), read in groups of devices of about
    :data:`READ_ROWS` rows, from one listing of the hours. The slow-sensor judgement and the
    fits read the same windows: the judgement's last read (all of them when a range's devices
    fit in one) is kept for the fits (``keep``), which take it first, instead of reading it
    twice while the workers wait."""

    def __init__(self, layout: DataLayout, window_ms: int) -> None:
        self.layout = layout
        self.window_ms = window_ms
        self._kept: dict[_Range, tuple[list[str], WindowCube]] = {}

    def __call__(
        self, since: datetime, until: datetime, devices: list[str], keep: bool
    ) -> Iterator[tuple[list[str], WindowCube]]:
        asked = (since, until, tuple(devices))
        kept = self._kept.pop(asked, None)
        done: set[str] = set()  # the devices of the kept read: each device is read once here
        if kept is not None:
            done = set(kept[0])
            yield kept
            del kept  # the caller's to free
            if done.issuperset(devices):
                return
        layout = self.layout
        files = [item.key for item in layout.files_between(since, until)]
        rows = sum(read_metadata(layout.store, key).num_rows for key in files)
        groups: list[tuple[list[str], Sequence[str] | list[Piece]]] = [(devices, files)]
        # Two groups' windows are held at once (the workers fit one while the next is read):
        # a range of up to twice READ_ROWS is read as one group within the same bound, once.
        if rows > 2 * READ_ROWS:  # each group reads the row groups of its devices only
            groups = list(in_parts(*device_pieces(layout.store, files), devices, rows, READ_ROWS))
        for index, (group, chosen) in enumerate(groups):
            part = [device for device in group if device not in done]
            if not part:
                continue
            cube = read_cube(layout.store, chosen, since, until, self.window_ms, devices=part)
            if keep and index == len(groups) - 1:
                self._kept[asked] = (part, cube)
            yield part, cube


def judge_devices(
    cube: WindowCube, devices: list[str], min_windows: int
) -> dict[str, dict[str, bool]]:
    """Each device's judgement of its sensors (slow or not, see
    :func:`fleetwatch.scoring.features.judge_slow`) on its windows in ``cube``; devices with
    fewer than ``min_windows`` windows (not trained) do not judge."""
    judged = {}
    for device_id in devices:
        if device_id in cube and cube.window_count(device_id) >= min_windows:
            sensors = cube.sensors(device_id)
            windows = cube.matrix(device_id, [f"{s}__mean" for s in sensors])
            judged[device_id] = judge_slow(
                windows.matrix, sensors, windows.window_start, cube.window_ms
            )
    return judged


def _fleet_slow(
    training: Training,
    by_range: Mapping[tuple[datetime, datetime], list[str]],
    read: CubeReader,
    min_windows: int,
) -> dict[str, tuple[int, int]]:
    """``--slow-sensors auto`` for the devices trained together: each device judges its
    sensors on its own training windows (here, or on the Dask workers), the majority decides
    (:func:`fleetwatch.scoring.features.fleet_slow`). The slow sensors, with their votes
    (slow, judged). One extra read of the training windows when they do not fit in one read."""
    judged: dict[str, dict[str, bool]] = {}
    for (since, until), devices in by_range.items():
        if not training.executor.shares_memory:
            judged.update(judge_on_cluster(training, since, until, devices, min_windows))
            continue
        for part, cube in read(since, until, devices, keep=True):
            judged.update(judge_devices(cube, part, min_windows))
    votes: dict[str, list[bool]] = {}
    for judgement in judged.values():
        for sensor, slow in judgement.items():
            votes.setdefault(sensor, []).append(slow)
    return {sensor: (sum(votes[sensor]), len(votes[sensor])) for sensor in fleet_slow(votes)}


@dataclass(frozen=True)
class FitSetup:
    """What fitting needs besides a device's windows (small: sent with Dask tasks too)."""

    parameters: dict[str, Any]
    keep_estimator: bool
    activate: str
    min_windows: int
    window_ms: int
    data_dir: str
    slow: tuple[str, ...] | None = None  # --slow-sensors auto: the fleet's judgement


def prepare_jobs(
    cube: WindowCube, devices: list[str], setup: FitSetup, since: datetime, until: datetime
) -> tuple[list[FitJob], dict[str, str]]:
    """Each device's fit job from ``cube``, or why it is skipped (too few windows)."""
    jobs, skipped = [], {}
    declared = setup.parameters.get("slow_sensors", ["auto"])
    for device_id in devices:
        count = cube.window_count(device_id) if device_id in cube else 0
        if count < setup.min_windows:
            skipped[device_id] = f"{count} windows < --min-windows {setup.min_windows}"
            continue
        sensors = cube.sensors(device_id)
        slow = named_slow(sensors, declared, setup.slow)
        if slow is None:  # alone: this device's window means judge its sensors
            means = cube.matrix(device_id, [f"{s}__mean" for s in sensors])
            slow = slow_sensors(
                means.matrix, sensors, declared, None, means.window_start, cube.window_ms
            )
        names = feature_names(sensors, slow)
        matrix = cube.matrix(device_id, names).matrix
        parameters = setup.parameters
        if parameters.get("kind") == "auto":
            parameters = {**parameters, "kind": auto_kind(sensors)}
        jobs.append(
            FitJob(
                device_id,
                matrix,
                names,
                parameters,
                setup.keep_estimator,
                since,
                until,
                setup.activate,
            )
        )
    return jobs, skipped


def auto_kind(sensors: list[str]) -> str:
    """``--model-kind auto``: Hotelling's T² where there are correlations between sensors to
    watch, the one-class SVM for a single sensor's statistics (docs/detection.md).

    >>> auto_kind(["temperature"]), auto_kind(["temperature", "pressure"])
    ('device', 'covariance')
    """
    return "covariance" if len(sensors) >= 2 else "device"


class Fitting:
    """Groups of fit jobs in the local pool, their results recorded in the summary. Reading a
    group of devices' windows takes the parent seconds: submitted one group ahead, the workers
    fit the group before while it reads (``docs/performance.md``, training)."""

    def __init__(
        self,
        pool: ProcessPoolExecutor,
        summary: TrainSummary,
        advance: Callable[[], None],
        registry: ModelRegistry,
        pack: ModelPack | None = None,
    ) -> None:
        self.pool = pool
        self.summary = summary
        self.advance = advance
        self.registry = registry
        self.pack = pack  # a group's entries go in with the group (not held for the run)
        self.groups: list[dict[Future[list[tuple[str, Fitted | str]]], list[str]]] = []

    def open_group(self) -> None:
        """Start a group: the jobs added next are published together."""
        self.groups.append({})

    def add(self, jobs: list[FitJob]) -> None:
        """Submit ``jobs`` to the group last opened, in tasks of about :data:`TASK_WINDOWS`
        training windows (a task costs the pool as much as a small device's fit; a big task
        at the end of a run would leave the other workers idle)."""
        group = self.groups[-1]
        task: list[FitJob] = []
        windows = 0
        for job in jobs:
            task.append(job)
            windows += len(job.matrix)
            if windows >= TASK_WINDOWS:
                group[self.pool.submit(fit_many, task)] = [j.device_id for j in task]
                task, windows = [], 0
        if task:
            group[self.pool.submit(fit_many, task)] = [j.device_id for j in task]

    def wait(self, ahead: int) -> None:
        """Wait until at most ``ahead`` groups are unfinished (the newest: the workers run
        them in order), the others' results recorded."""
        while len(self.groups) > ahead:
            self._collect(self.groups.pop(0))

    def _collect(self, futures: dict[Future[list[tuple[str, Fitted | str]]], list[str]]) -> None:
        """A group's results, published together (one run object, one journal record)."""
        fitted: dict[str, Fitted] = {}
        for future in as_completed(futures):
            try:
                outcomes = future.result()
            except Exception as exc:  # the task itself failed (its worker died): its devices
                outcomes = [(device, f"{type(exc).__name__}: {exc}") for device in futures[future]]
            for device_id, outcome in outcomes:
                self.advance()
                if isinstance(outcome, str):
                    self.summary.failed[device_id] = outcome
                else:
                    fitted[device_id] = outcome
        if not fitted:
            return
        try:
            published = publish(self.registry, fitted)
        except StorageError:  # a full disk fails every device alike: stop, say it once
            for group in self.groups:
                for waiting in group:
                    waiting.cancel()
            raise
        items = [result.packed for result in published.values() if result.packed is not None]
        if self.pack is not None and items:
            try:
                self.pack.add(items)
            except Exception as exc:  # the pack is a cache: never fail training for it
                log.warning("model pack not updated (%s); packed after the run", exc)
            else:
                self.summary.in_pack.update(item[0] for item in items)
                published = {d: replace(r, packed=None) for d, r in published.items()}
        for device_id, result in sorted(published.items()):
            self.summary.record(device_id, result)


#: A training task fits many devices: its timeout is at least this long.
TRAIN_TASK_TIMEOUT = 600.0


def _cluster_model(options: ScoreSettings) -> TaskModel:
    return TaskModel(
        options.mini_batch_size, max(TRAIN_TASK_TIMEOUT, options.task_timeout), options.max_retries
    )


@dataclass(frozen=True)
class RemoteFitting:
    """Fit some devices on a cluster worker: their windows read there, the models sent back
    as run object rows, published by the client (as a local training worker's)."""

    setup: FitSetup
    since: datetime
    until: datetime

    def __call__(self, devices: list[str]) -> dict[str, DeviceResult]:
        layout = DataLayout.open(self.setup.data_dir)
        files = [item.key for item in layout.files_between(self.since, self.until)]
        cube = read_cube(
            layout.store, files, self.since, self.until, self.setup.window_ms, devices=devices
        )
        jobs, skipped = prepare_jobs(cube, devices, self.setup, self.since, self.until)
        del cube
        results: dict[str, DeviceResult] = {
            device: ("ok", ("skipped", reason)) for device, reason in skipped.items()
        }
        for device_id, outcome in fit_many(jobs):
            results[device_id] = (
                ("error", outcome) if isinstance(outcome, str) else ("ok", ("trained", outcome))
            )
        return results


@dataclass(frozen=True)
class RemoteJudging:
    """Some devices' judgement of their sensors (``--slow-sensors auto``), on a cluster worker
    that reads their training windows itself."""

    data_dir: str
    since: datetime
    until: datetime
    window_ms: int
    min_windows: int

    def __call__(self, devices: list[str]) -> dict[str, DeviceResult]:
        layout = DataLayout.open(self.data_dir)
        files = [item.key for item in layout.files_between(self.since, self.until)]
        cube = read_cube(
            layout.store, files, self.since, self.until, self.window_ms, devices=devices
        )
        judged = judge_devices(cube, devices, self.min_windows)
        return {device: ("ok", judged.get(device, {})) for device in devices}


def judge_on_cluster(
    training: Training, since: datetime, until: datetime, devices: list[str], min_windows: int
) -> dict[str, dict[str, bool]]:
    """:class:`RemoteJudging` for ``devices`` on the cluster: each device's judgement (a
    device whose task failed does not judge; its fit will fail the same way, reported)."""
    work = RemoteJudging(training.layout.location, since, until, training.window_ms, min_windows)
    results, _, _ = training.executor.run(devices, work, _cluster_model(training.tasks))
    return {device: judged for device, judged in results.items() if judged}


def train_on_cluster(
    training: Training,
    setup: FitSetup,
    since: datetime,
    until: datetime,
    devices: list[str],
    summary: TrainSummary,
    advance: Callable[[], None],
) -> None:
    """Fit ``devices`` on [since, until) on the cluster, into ``summary``. A task that dies
    or times out is split and run again; the devices are published once, by the client,
    when every task is done."""
    done = 0

    def progress(count: int) -> None:
        nonlocal done
        for _ in range(count - done):
            advance()
        done = count

    results, errors, _ = training.executor.run(
        devices, RemoteFitting(setup, since, until), _cluster_model(training.tasks),
        on_progress=progress,
    )  # fmt: skip
    fitted = {}
    for device_id, outcome in results.items():
        if outcome[0] == "skipped":
            summary.skipped[device_id] = outcome[1]
        else:
            fitted[device_id] = outcome[1]
    if fitted:
        registry = ModelRegistry(training.layout.store, live=False)
        for device_id, result in sorted(publish(registry, fitted).items()):
            summary.record(device_id, result)
    summary.failed.update(errors)
