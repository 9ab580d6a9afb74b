"""Run scoring tasks on a Dask cluster (``[score] executor = "dask"``), with the local
executor's task model: mini-batches of devices, a timeout per task, a failed multi-device task
split in two (down to single devices, which spend ``--max-retries``), the error threshold.

Each task carries only the names of its devices and where the data is (its ``work`` object
is made by the stage: ``fleetwatch.scoring.score.RemoteScoring``, ``...train.RemoteFitting``):
the worker reads those devices' windows and models itself, so the hour is never shipped through
the client. Results come back as the local executor's, and the run is recorded by the client
exactly as a local run is.

Dask reschedules the tasks of a worker that dies (``distributed.scheduler.allowed-failures``
times, then ``KilledWorker``, which fails the task here: split and retried as a crash is
locally). A task past ``--task-timeout`` is cancelled and retried split; Dask cannot stop a
running Python function, so its thread finishes on its worker before that thread is free again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fleetwatch.errors import FleetwatchError
from fleetwatch.scoring.executor import Outcome, Task, TaskModel, TaskQueue, WorkFn


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
            "(or FLEETWATCH_SCORE_DASK_SCHEDULER)"
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


@dataclass(frozen=True)
class DaskExecutor:
    """Tasks on the Dask cluster at ``address`` (each reads its own share of the data)."""

    address: str
    name: str = "dask"
    shares_memory: bool = False

    def run(
        self,
        devices: list[str],
        work: WorkFn,
        model: TaskModel,
        *,
        groups: list[list[str]] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> Outcome:
        with connect(self.address) as client:
            return run_tasks_dask(
                devices,
                work,
                client,
                mini_batch_size=model.mini_batch_size,
                task_timeout=model.task_timeout,
                max_retries=model.max_retries,
                error_threshold=model.error_threshold,
                on_progress=on_progress,
                groups=groups,
            )
