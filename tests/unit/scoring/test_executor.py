"""run_tasks: what the parent does while its workers run."""

from __future__ import annotations

import multiprocessing
import time

from fleetwatch.scoring.executor import run_tasks


def slow_double(devices: list[str]) -> dict[str, tuple[str, object]]:
    time.sleep(0.3)
    return {d: ("ok", d * 2) for d in devices}


def test_meanwhile_runs_once_while_the_first_tasks_run() -> None:
    calls: list[int] = []

    def meanwhile() -> None:
        calls.append(len(multiprocessing.active_children()))

    devices = [f"d{i}" for i in range(8)]
    results, errors, aborted = run_tasks(
        devices,
        slow_double,
        workers=2,
        mini_batch_size=2,
        task_timeout=30,
        max_retries=0,
        meanwhile=meanwhile,
    )
    assert results == {d: d * 2 for d in devices} and not errors and not aborted
    assert calls == [2]  # once, with both workers' first tasks running
