"""`fleetwatch demo` at a small scale: everything on the embedded broker, checked afterwards."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from tests.conftest import fleetwatch_cli, wait_for

pytestmark = pytest.mark.integration


def session_members(session: int) -> set[int]:
    """Live processes of a session: the demo runs in its own, so whatever it started (the
    broker, the worker) is in it and no process of anyone else is."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def run_demo(args: list[str], timeout: float) -> tuple[subprocess.CompletedProcess[str], int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "fleetwatch", "demo", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err), process.pid


@pytest.mark.scenario
def test_demo_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    started = time.monotonic()
    result, session = run_demo(
        [
            "--data-dir",
            str(data),
            "--devices",
            "8",
            "--sensors",
            "3",
            "--speed",
            "720",
            "--train-for",
            "2h",
            "--score-for",
            "2h",
            "--anomaly-rate",
            "2",
            "--timeout",
            "150s",
        ],
        timeout=180,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert elapsed < 120
    out = result.stdout
    assert "hours scored        4" in out and "in 4 runs" in out and "precision" in out
    assert "fleetwatch sql --data-dir" in out
    # the time to alert per fault kind: each kind's line names how many of its faults alerted
    assert "time to alert" in out
    labels = pd.read_parquet(data / "labels.parquet")  # injected after the clean hours only
    for kind, faults in labels.groupby("kind"):
        assert re.search(rf"  {kind}\s+\d+/{len(faults)} alerted", out), (kind, out)
    with duckdb.connect(str(data / "fleetwatch.duckdb"), read_only=True) as db:
        runs = db.execute(
            "SELECT hour(window_start), status, devices_scored, devices_failed FROM runs "
            "WHERE scope <> 'live' ORDER BY 1"
        ).fetchall()
        live = db.execute(
            "SELECT count(*), count(*) FILTER (WHERE status <> 'provisional') FROM runs "
            "WHERE scope = 'live'"
        ).fetchone()
        anomalies = db.execute("SELECT count(*) FROM anomalies").fetchone()
    print("live runs", live)
    scored_hours = [r for r in runs if r[1] == "succeeded"]
    assert len(runs) == len(scored_hours) == 4  # 2 training hours + 2 scored hours, each once
    assert all(r[2] == 8 and r[3] == 0 for r in runs)
    assert anomalies is not None and anomalies[0] > 0
    assert (data / "labels.parquet").exists() and list((data / "models").iterdir())
    # every process it started is gone
    assert session_members(session) == set()
    query = fleetwatch_cli(
        "sql", "--data-dir", str(data), "SELECT count(*) AS n FROM runs", "--format", "json"
    )
    assert json.loads(query.stdout) == [{"n": 4 + live[0]}]


def test_demo_ctrl_c_stops_everything(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleetwatch",
            "demo",
            "--data-dir",
            str(tmp_path / "d"),
            "--devices",
            "4",
            "--sensors",
            "2",
            "--speed",
            "60",
        ],
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    seen = []
    for line in process.stdout:  # until everything it starts is running
        seen.append(line)
        if "simulating" in line:
            break
    assert len(session_members(process.pid)) >= 3, seen  # itself, the broker, the worker
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 130, "".join(seen) + out
    assert "interrupted" in out
    wait_for(lambda: not session_members(process.pid), 10, "the demo's processes to end")
