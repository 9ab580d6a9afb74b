"""Issue 23, defect 6: two processes from different Kafka clusters (two demos, each with its own
embedded broker) used to write one data folder. A demo refuses a folder another fleetwatch
process uses; a worker refuses a folder a live worker fills from another topic of the name."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetwatch.aggregate.worker import check_no_other_topic
from fleetwatch.config import load_settings
from fleetwatch.demo import _prepare
from fleetwatch.errors import FleetwatchError
from fleetwatch.storage.checkpoints import CheckpointStore, TopicState
from fleetwatch.storage.layout import DataLayout
from fleetwatch.storage.locks import FolderInUseError
from tests.conftest import fleetwatch_cli, wait_for


def test_a_demo_refuses_a_folder_in_use(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    layout, demo = _prepare(folder)  # a first demo holds it
    with pytest.raises(FolderInUseError, match="in use by another fleetwatch process"):
        _prepare(folder)
    demo.release()
    other = DataLayout.open(folder).use()  # an aggregator, a scheduler
    with pytest.raises(FolderInUseError):
        _prepare(folder)
    other.release()
    _, again = _prepare(folder)  # nobody uses it: the demo's own folder is replaced
    again.release()
    assert layout.demo_marker.exists()


def test_a_demo_started_beside_a_running_scheduler_refuses_in_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    log = (tmp_path / "schedule.log").open("wb")
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "fleetwatch", "schedule", "--every", "1h", "--data-dir",
         str(folder)],
        env=env, stdout=log, stderr=log,
    )  # fmt: skip
    try:
        wait_for(lambda: (folder / "state" / "schedule.json").exists(), 60, "the scheduler")
        demo = fleetwatch_cli("demo", "--data-dir", str(folder), timeout=60)
    finally:
        scheduler.terminate()
        scheduler.wait(30)
        log.close()
    assert demo.returncode == 2, demo.stderr
    [line] = demo.stderr.strip().splitlines()
    assert "in use by another fleetwatch process" in line and "Traceback" not in demo.stderr
    assert not (folder / ".fleetwatch-demo").exists()  # nothing of the folder touched


def status(store: CheckpointStore, topic_id: str, updated: float, **extra: object) -> None:
    document = {"topic_id": topic_id, "updated_at": updated, "pid": os.getpid(),
                "host": socket.gethostname(), "stopped": False, **extra}  # fmt: skip
    store.write_status(f"w{len(store.statuses())}", json.dumps(document))


def test_a_worker_refuses_a_folder_filled_from_another_topic_of_the_name(tmp_path: Path) -> None:
    settings = load_settings(environ={}, overrides={"": {"data_dir": str(tmp_path)}})
    store = CheckpointStore(settings.layout.store, settings.kafka.telemetry_topic)
    store.save_topic_state(TopicState(4, "topic-of-cluster-a"))
    now = time.time()
    check_no_other_topic(settings, store, "topic-of-cluster-a", now)  # the same topic
    check_no_other_topic(settings, store, "topic-b", now)  # nobody writes: a reset
    status(store, "topic-of-cluster-a", now - 10_000)  # a worker long gone
    status(store, "topic-of-cluster-a", now - 5, stopped=True)  # one that stopped cleanly
    status(store, "topic-of-cluster-a", now - 5, pid=2**22 + 7)  # one killed: no such pid
    check_no_other_topic(settings, store, "topic-b", now)
    status(store, "topic-of-cluster-a", now - 5)  # this process: alive, writing
    with pytest.raises(FleetwatchError, match="another topic named") as caught:
        check_no_other_topic(settings, store, "topic-b", now)
    assert "\n" not in str(caught.value) and "use another --data-dir" in str(caught.value)
