"""`fleetwatch demo` at a small scale: everything on the embedded broker, checked afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from tests.conftest import fleetwatch_cli

pytestmark = pytest.mark.integration


def tansu_processes() -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if "tansu" in (entry / "cmdline").read_text():
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def test_demo_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    before = tansu_processes()
    started = time.monotonic()
    result = fleetwatch_cli(
        "demo",
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
        timeout=180,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert elapsed < 120
    out = result.stdout
    assert "hours scored        2" in out and "precision" in out and "recall" in out
    assert "fleetwatch sql --data-dir" in out
    with duckdb.connect(str(data / "fleetwatch.duckdb"), read_only=True) as db:
        runs = db.execute(
            "SELECT hour(window_start), status, devices_scored, devices_failed FROM runs ORDER BY 1"
        ).fetchall()
        anomalies = db.execute("SELECT count(*) FROM anomalies").fetchone()
    scored_hours = [r for r in runs if r[1] == "succeeded"]
    assert len(runs) == len(scored_hours) == 4  # 2 training hours + 2 scored hours, each once
    assert all(r[2] == 8 and r[3] == 0 for r in runs)
    assert anomalies is not None and anomalies[0] > 0
    assert (data / "labels.parquet").exists() and list((data / "models").iterdir())
    # every process it started is gone
    assert tansu_processes() - before == set()
    query = fleetwatch_cli(
        "sql", "--data-dir", str(data), "SELECT count(*) AS n FROM runs", "--format", "json"
    )
    assert json.loads(query.stdout) == [{"n": 4}]


def test_demo_ctrl_c_stops_everything(tmp_path: Path) -> None:
    before = tansu_processes()
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
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(8)
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 130, out
    assert "interrupted" in out
    time.sleep(1)
    assert tansu_processes() - before == set()
