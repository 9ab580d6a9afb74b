"""Which :class:`~fleetwatch.scoring.executor.Executor` runs the tasks: chosen once, from
``[score]``'s settings, for ``score``, ``train`` and the scheduler."""

from __future__ import annotations

import os

from fleetwatch.config import ScoreSettings
from fleetwatch.scoring.dask_executor import DaskExecutor
from fleetwatch.scoring.executor import Executor, LocalExecutor, TaskModel


def executor_for(options: ScoreSettings, workers: int | None = None) -> Executor:
    """The executor ``options`` choose (``workers`` for the local one: default ``[score]
    workers``, else every core)."""
    if options.executor == "dask":
        return DaskExecutor(options.dask_scheduler)
    return LocalExecutor(workers or options.workers or os.cpu_count() or 1)


def task_model(options: ScoreSettings) -> TaskModel:
    return TaskModel(
        options.mini_batch_size, options.task_timeout, options.max_retries, options.error_threshold
    )
