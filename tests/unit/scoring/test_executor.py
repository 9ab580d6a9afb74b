"""run_tasks: what the parent does while its workers run."""

from __future__ import annotations

import time

from fleetwatch.scoring.executor import run_tasks


def slow_double(devices: list[str]) -> dict[str, tuple[str, object]]:
    time.sleep(0.3)
    return {d: ("ok", d * 2) for d in devices}


def fail_the_last(devices: list[str]) -> dict[str, tuple[str, object]]:
    return {d: ("error", "tampered") if d >= "d7" else ("ok", d) for d in devices}


def test_the_error_threshold_holds_whatever_the_batching() -> None:
    """Failures that come back with the last tasks abort the run as well as early ones."""
    devices = [f"d{i}" for i in range(10)]  # d7, d8, d9 fail
    for mini_batch_size in (1, 3, 10):
        _, errors, aborted = run_tasks(
            devices,
            fail_the_last,
            workers=2,
            mini_batch_size=mini_batch_size,
            task_timeout=30,
            max_retries=0,
            error_threshold=0,
        )
        assert len(errors) >= 1 and aborted, mini_batch_size
        _, errors, aborted = run_tasks(
            devices,
            fail_the_last,
            workers=2,
            mini_batch_size=mini_batch_size,
            task_timeout=30,
            max_retries=0,
            error_threshold=3,
        )
        assert len(errors) == 3 and not aborted, mini_batch_size


def test_grouped_tasks_never_mix_groups_and_fill_every_slot() -> None:
    from fleetwatch.scoring.executor import TaskQueue

    groups = [[f"a{i}" for i in range(2500)], [f"b{i}" for i in range(2500)], ["c0"]]
    queue = TaskQueue.of_groups(groups, slots=2, mini_batch_size=2000, max_retries=1)
    tasks = [task.devices for task in queue.pending]
    assert sorted(d for t in tasks for d in t) == sorted(d for g in groups for d in g)
    assert all(len({d[0] for d in t}) == 1 for t in tasks)  # one group per task
    assert max(len(t) for t in tasks) <= 2000
    one = TaskQueue.of_groups([["x0", "x1", "x2", "x3"]], slots=4, mini_batch_size=100,
                              max_retries=1)  # fmt: skip
    assert [len(t.devices) for t in one.pending] == [1, 1, 1, 1]  # halved until each slot has one
