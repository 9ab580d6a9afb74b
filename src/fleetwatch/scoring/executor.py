"""Run scoring tasks in forked worker processes: timeouts, retries, crash isolation.

Each task is a mini-batch of devices run in its own forked process, so the parent's data (the
hour's features) reaches the child without pickling, and a child that hangs, segfaults or is
killed costs only its task: the parent kills it at ``--task-timeout`` and runs it again split in
two, down to single devices (splits are free), and a single device is retried ``--max-retries``
times before it fails alone.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

DeviceResult = tuple[str, Any]  # ("ok", payload) or ("error", message)
#: Runs one task in a child: results for (some of) its devices. It catches a device's own
#: exception itself; anything it raises fails the whole task, which is then split and retried.
WorkFn = Callable[[list[str]], dict[str, DeviceResult]]
Outcome = tuple[dict[str, Any], dict[str, str], bool]  # results, errors, aborted


@dataclass(frozen=True)
class TaskModel:
    """How devices are cut into tasks and what a failure costs (``[score]``'s settings)."""

    mini_batch_size: int
    task_timeout: float
    max_retries: int
    error_threshold: int = -1  # -1: never abort


class Executor(Protocol):
    """Where tasks run. Chosen once, from ``[score] executor``
    (:func:`fleetwatch.scoring.executors.executor_for`), and used by ``score`` and ``train``.

    ``run`` blocks until every task has finished, failed for good, or the run was aborted; it
    never raises for a task's failure (that is in its outcome), only for an executor that cannot
    run at all (no cluster: :class:`~fleetwatch.errors.FleetwatchError`)."""

    @property
    def name(self) -> str:
        """``local`` or ``dask``."""

    @property
    def shares_memory(self) -> bool:
        """True when tasks see what the calling process has read (forked children): the
        caller reads the data once; False when each task reads its own share (a cluster)."""

    def run(
        self,
        devices: list[str],
        work: WorkFn,
        model: TaskModel,
        *,
        groups: list[list[str]] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> Outcome:
        """Run ``work`` over ``devices`` in tasks (with ``groups``: no task mixes two)."""


@dataclass(frozen=True)
class LocalExecutor:
    """Forked worker processes on this machine (see :func:`run_tasks`)."""

    workers: int
    name: str = "local"
    shares_memory: bool = True

    def run(
        self,
        devices: list[str],
        work: WorkFn,
        model: TaskModel,
        *,
        groups: list[list[str]] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> Outcome:
        return run_tasks(
            devices,
            work,
            workers=self.workers,
            mini_batch_size=model.mini_batch_size,
            task_timeout=model.task_timeout,
            max_retries=model.max_retries,
            error_threshold=model.error_threshold,
            on_progress=on_progress,
        )


@dataclass
class Task:
    devices: list[str]
    attempt: int = 0


@dataclass
class TaskQueue:
    """The task model every executor shares: devices cut into even mini-batches; a failed
    multi-device task split in two (splitting is free: it isolates the culprit, so the innocent
    devices of its batch are not failed with it), a single device retried ``max_retries``
    times, then failed alone; more failures than ``error_threshold`` (-1: never) abort the run
    and drop what has not started."""

    pending: list[Task]
    max_retries: int
    error_threshold: int = -1
    results: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    aborted: bool = False

    @classmethod
    def of(
        cls,
        devices: list[str],
        slots: int,
        mini_batch_size: int,
        max_retries: int,
        error_threshold: int = -1,
    ) -> TaskQueue:
        # At most mini_batch_size devices per task, and a multiple of `slots` tasks of even
        # size, so that no worker is left alone with the last task while the others idle.
        tasks = -(-len(devices) // mini_batch_size)
        if len(devices) >= slots > 1:
            tasks = -(-tasks // slots) * slots
        parts = [Task(list(part)) for part in even_parts(devices, tasks)]
        return cls(parts, max_retries, error_threshold)

    @classmethod
    def of_groups(
        cls,
        groups: list[list[str]],
        slots: int,
        mini_batch_size: int,
        max_retries: int,
        error_threshold: int = -1,
    ) -> TaskQueue:
        """Like :meth:`of`, but no task mixes two groups (devices whose windows lie in the
        same files: a task then reads only its group's files). Each group is cut into even
        mini-batches; the largest tasks are halved until every slot has one."""
        parts = [
            part
            for group in groups
            for part in even_parts(group, -(-len(group) // mini_batch_size))
        ]
        while 0 < len(parts) < slots and max(len(p) for p in parts) > 1:
            largest = max(range(len(parts)), key=lambda i: len(parts[i]))
            parts[largest : largest + 1] = even_parts(parts[largest], 2)
        return cls([Task(list(part)) for part in parts], max_retries, error_threshold)

    def next(self) -> Task | None:
        """The next task to start, or None (none left, or the run is aborted)."""
        if not self.aborted and 0 <= self.error_threshold < len(self.errors):
            self.aborted = True
            self.pending.clear()
        return self.pending.pop(0) if self.pending else None

    def finished(self, task: Task, found: dict[str, DeviceResult]) -> None:
        for device in task.devices:
            status, payload = found.get(device, ("error", "no result returned"))
            if status == "ok":
                self.results[device] = payload
            else:
                self.errors[device] = payload

    def failed(self, task: Task, reason: str) -> None:
        if len(task.devices) > 1:
            middle = len(task.devices) // 2
            self.pending += [
                Task(task.devices[:middle], task.attempt),
                Task(task.devices[middle:], task.attempt),
            ]
        elif task.attempt < self.max_retries:
            self.pending.append(Task(task.devices, task.attempt + 1))
        else:
            self.errors[task.devices[0]] = f"{reason} (after {task.attempt + 1} attempts)"

    @property
    def done(self) -> int:
        return len(self.results) + len(self.errors)

    def outcome(self) -> tuple[dict[str, Any], dict[str, str], bool]:
        # Failures that came back with the last tasks count as much as early ones.
        aborted = self.aborted or 0 <= self.error_threshold < len(self.errors)
        return self.results, self.errors, aborted


@dataclass
class _Running:
    task: Task
    process: Any
    connection: Connection
    deadline: float


def _child(work: WorkFn, devices: list[str], connection: Connection) -> None:
    message: tuple[str, Any]
    try:
        message = ("results", work(devices))
    except BaseException:
        message = ("task failed", traceback.format_exc(limit=1).strip().splitlines()[-1])
    connection.send(message)
    connection.close()
    os._exit(0)  # skip atexit handlers inherited from the parent


def run_tasks(
    devices: list[str],
    work: WorkFn,
    *,
    workers: int,
    mini_batch_size: int,
    task_timeout: float,
    max_retries: int,
    error_threshold: int = -1,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, Any], dict[str, str], bool]:
    """Score ``devices`` with ``work(mini_batch)`` in child processes.

    Returns (results by device, errors by device, aborted). ``aborted`` is True when more than
    ``error_threshold`` devices failed (-1: never abort); remaining tasks are then not run.
    """
    context = multiprocessing.get_context("fork")
    queue = TaskQueue.of(devices, workers, mini_batch_size, max_retries, error_threshold)
    running: list[_Running] = []
    # Objects that exist before the forks are left to the parent: the children's garbage
    # collector would otherwise visit (write to) them and copy their pages, one by one.
    gc.freeze()
    try:
        while queue.pending or running:
            while len(running) < max(1, workers) and (task := queue.next()) is not None:
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(target=_child, args=(work, task.devices, sender))
                process.start()
                sender.close()
                running.append(_Running(task, process, receiver, time.monotonic() + task_timeout))
            ready = wait([r.connection for r in running], timeout=0.05)
            now = time.monotonic()
            for entry in list(running):
                if entry.connection in ready:
                    try:
                        kind, batch = entry.connection.recv()
                    except (EOFError, OSError):
                        entry.process.join(5)
                        queue.failed(entry.task, f"worker process died ({_exit_reason(entry)})")
                    else:
                        entry.process.join(5)
                        if kind != "results":
                            queue.failed(entry.task, batch)
                        else:
                            queue.finished(entry.task, batch)
                elif now > entry.deadline:
                    entry.process.kill()
                    entry.process.join(5)
                    queue.failed(entry.task, f"task timed out after {task_timeout:g}s")
                else:
                    continue
                entry.connection.close()
                running.remove(entry)
                if on_progress is not None:
                    on_progress(queue.done)
    finally:
        gc.unfreeze()
    return queue.outcome()


def even_parts(items: list[str], parts: int) -> list[list[str]]:
    """``items`` cut into ``parts`` consecutive runs whose lengths differ by at most one.

    >>> [len(p) for p in even_parts([str(i) for i in range(10)], 4)]
    [3, 3, 2, 2]
    """
    base, extra = divmod(len(items), max(parts, 1))
    bounds = [0]
    for index in range(max(parts, 1)):
        bounds.append(bounds[-1] + base + (1 if index < extra else 0))
    return [items[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def _exit_reason(entry: _Running) -> str:
    code = entry.process.exitcode
    if code is None:
        return "no exit code"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}"
