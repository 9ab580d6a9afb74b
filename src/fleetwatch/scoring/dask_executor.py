"""Run scoring tasks on a Dask cluster (``[score] executor = "dask"``), with the local
executor's task model: mini-batches of devices, a timeout per task, a failed multi-device task
split in two (down to single devices, which spend ``--max-retries``), the error threshold.

Each task carries only the names of its devices and where the data is: the worker reads those
devices' windows from the Parquet and their models from the registry itself (checked as
everywhere; the model pack is a per-machine cache and is not used), so the hour is never
shipped through the client. Results come back as the local executor's, and the run is recorded
by the client exactly as a local run is.

Dask reschedules the tasks of a worker that dies (``distributed.scheduler.allowed-failures``
times, then ``KilledWorker``, which fails the task here: split and retried as a crash is
locally). A task past ``--task-timeout`` is cancelled and retried split; Dask cannot stop a
running Python function, so its thread finishes on its worker before that thread is free again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fleetwatch.errors import FleetwatchError
from fleetwatch.scoring.executor import DeviceResult, Task, TaskQueue, WorkFn
from fleetwatch.storage.remote import location_text, parse_location


@dataclass(frozen=True)
class RemoteScoring:
    """What a worker needs to score some devices of one hour: small, picklable."""

    data_dir: str
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
        from fleetwatch.scoring.features import read_cube
        from fleetwatch.scoring.registry import ModelRegistry
        from fleetwatch.scoring.score import score_devices
        from fleetwatch.storage.layout import DataLayout

        registry = ModelRegistry(DataLayout(parse_location(self.data_dir)).models)
        chosen = None
        if self.where:
            indices = sorted({i for device in devices for i in self.where.get(device, ())})
            chosen = [(parse_location(self.pieces[i][0]), self.pieces[i][1]) for i in indices]
        cube = read_cube(
            parse_location(self.data_dir), self.window_start, self.window_end, self.window_ms,
            devices=devices, pieces=chosen,
        )  # fmt: skip
        results = score_devices(
            registry, _pack(self.pack, registry), cube, devices, self.hook, set(self.shadowed)
        )
        for device_id, (status, payload) in results.items():
            if status == "ok" and payload is not None:  # the client has no cube: send starts
                starts = cube.row_starts[slice(*cube.rows(device_id))].tobytes()
                for scored in (payload[0], payload[2]):
                    if scored is not None:
                        scored.starts = starts
        return results


#: This worker process's open pack, with the state of its index files when it was opened: the
#: next task reuses it while they are unchanged (opening parses every index).
_OPEN_PACK: dict[str, tuple[tuple[tuple[str, int], ...], Any]] = {}


def _pack(folder: str | None, registry: Any) -> Any:
    """The client's model pack, opened read-only on this worker; None without one. Every
    entry is checked against the registry's files before use, as on the client, so a pack
    that is stale or half-written costs only the file reads it would have saved."""
    if folder is None or not Path(folder).is_dir():
        return None
    from fleetwatch.scoring.pack import ModelPack

    try:
        state = tuple(
            sorted((p.name, p.stat().st_mtime_ns) for p in Path(folder).glob("[!.]*.json"))
        )
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


def connect(address: str, timeout: float = 30.0) -> Any:
    """A ``distributed.Client`` to the scheduler at ``address``; one line when it cannot."""
    try:
        from distributed import Client
    except ImportError:
        raise FleetwatchError(
            "executor = dask needs Dask: pip install 'fleetwatch[dask]'"
        ) from None
    if not address:
        raise FleetwatchError(
            "executor = dask needs a scheduler: --dask-scheduler tcp://HOST:8786 "
            "(or FLEETWATCH_DASK_SCHEDULER)"
        )
    try:
        return Client(address, timeout=f"{timeout}s", set_as_default=False)  # type: ignore[no-untyped-call]
    except (OSError, TimeoutError) as exc:
        raise FleetwatchError(
            f"no Dask scheduler answers at {address} ({type(exc).__name__}); check --dask-scheduler"
        ) from None


def run_tasks_dask(
    devices: list[str],
    work: WorkFn,
    client: Any,
    *,
    mini_batch_size: int,
    task_timeout: float,
    max_retries: int,
    error_threshold: int = -1,
    on_progress: Callable[[int], None] | None = None,
    groups: list[list[str]] | None = None,
) -> tuple[dict[str, Any], dict[str, str], bool]:
    """:func:`fleetwatch.scoring.executor.run_tasks`, on ``client``'s cluster; with
    ``groups``, no task mixes two of them (:meth:`TaskQueue.of_groups`)."""
    slots = max(1, sum(client.nthreads().values()))
    queue = (
        TaskQueue.of(devices, slots, mini_batch_size, max_retries, error_threshold)
        if groups is None
        else TaskQueue.of_groups(groups, slots, mini_batch_size, max_retries, error_threshold)
    )
    running: dict[Any, tuple[Task, float]] = {}
    try:
        while queue.pending or running:
            while len(running) < 2 * slots and (task := queue.next()) is not None:
                future = client.submit(work, task.devices, pure=False)  # one queued per slot
                running[future] = (task, time.monotonic() + task_timeout)
            done = {future for future in running if future.done()}
            if not done:
                time.sleep(0.02)
            now = time.monotonic()
            for future, (task, deadline) in list(running.items()):
                if future in done:
                    if future.status == "finished":
                        queue.finished(task, future.result())
                    else:
                        exc = future.exception()
                        queue.failed(task, f"task failed: {type(exc).__name__}: {exc}")
                elif now > deadline:
                    future.cancel()
                    queue.failed(task, f"task timed out after {task_timeout:g}s")
                else:
                    continue
                del running[future]
                if on_progress is not None:
                    on_progress(queue.done)
    finally:
        for future in running:
            future.cancel()
    return queue.outcome()


#: A training task fits many devices: its timeout is at least this long.
TRAIN_TASK_TIMEOUT = 600.0


@dataclass(frozen=True)
class RemoteFitting:
    """Fit some devices on a worker: their windows read there, each model saved there through
    the registry (as a local training worker saves it)."""

    setup: Any  # fleetwatch.scoring.train.FitSetup
    since: datetime
    until: datetime

    def __call__(self, devices: list[str]) -> dict[str, DeviceResult]:
        from fleetwatch.scoring.features import read_cube
        from fleetwatch.scoring.train import fit_and_save, prepare_jobs

        cube = read_cube(
            parse_location(self.setup.data_dir), self.since, self.until, self.setup.window_ms,
            devices=devices,
        )  # fmt: skip
        jobs, skipped = prepare_jobs(cube, devices, self.setup, self.since, self.until)
        del cube
        results: dict[str, DeviceResult] = {
            device: ("ok", ("skipped", reason)) for device, reason in skipped.items()
        }
        for job in jobs:
            try:
                version, shadow_reason = fit_and_save(job)
                results[job.device_id] = ("ok", ("trained", version, shadow_reason))
            except Exception as exc:  # one device's bad data must not stop the others
                results[job.device_id] = ("error", f"{type(exc).__name__}: {exc}")
        return results


@dataclass(frozen=True)
class RemoteJudging:
    """Some devices' judgement of their sensors (``--slow-sensors auto``), on a worker that
    reads their training windows itself."""

    data_dir: str
    since: datetime
    until: datetime
    window_ms: int
    min_windows: int

    def __call__(self, devices: list[str]) -> dict[str, DeviceResult]:
        from fleetwatch.scoring.features import read_cube
        from fleetwatch.scoring.train import judge_devices

        cube = read_cube(
            parse_location(self.data_dir), self.since, self.until, self.window_ms,
            devices=devices,
        )  # fmt: skip
        judged = judge_devices(cube, devices, self.min_windows)
        return {device: ("ok", judged.get(device, {})) for device in devices}


def judge_on_dask(
    settings: Any,
    since: datetime,
    until: datetime,
    devices: list[str],
    window_ms: int,
    min_windows: int,
) -> dict[str, dict[str, bool]]:
    """:class:`RemoteJudging` for ``devices`` on the cluster: each device's judgement (a
    device whose task failed does not judge; its fit will fail the same way, reported)."""
    options = settings.score
    with connect(options.dask_scheduler) as client:
        results, _, _ = run_tasks_dask(
            devices,
            RemoteJudging(location_text(settings.data_dir), since, until, window_ms, min_windows),
            client,
            mini_batch_size=options.mini_batch_size,
            task_timeout=max(TRAIN_TASK_TIMEOUT, options.task_timeout),
            max_retries=options.max_retries,
        )
    return {device: judged for device, judged in results.items() if judged}


def train_on_dask(
    settings: Any,
    setup: Any,
    since: datetime,
    until: datetime,
    devices: list[str],
    summary: Any,
    advance: Callable[[], None],
) -> None:
    """Fit ``devices`` on [since, until) on the Dask cluster, into ``summary`` (a
    :class:`fleetwatch.scoring.train.TrainSummary`). A task that dies or times out is split
    and run again; a device it had already saved then gets one more version (versions never
    change; the newest is active)."""
    options = settings.score
    done = 0

    def progress(count: int) -> None:
        nonlocal done
        for _ in range(count - done):
            advance()
        done = count

    with connect(options.dask_scheduler) as client:
        results, errors, _ = run_tasks_dask(
            devices,
            RemoteFitting(setup, since, until),
            client,
            mini_batch_size=options.mini_batch_size,
            task_timeout=max(TRAIN_TASK_TIMEOUT, options.task_timeout),
            max_retries=options.max_retries,
            on_progress=progress,
        )
    for device_id, outcome in results.items():
        if outcome[0] == "skipped":
            summary.skipped[device_id] = outcome[1]
        else:
            summary.trained[device_id] = outcome[1]
            if outcome[2] is not None:
                summary.shadowed[device_id] = outcome[2]
    summary.failed.update(errors)
