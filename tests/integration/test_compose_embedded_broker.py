"""docker-compose.yml's services, run for real: every service's command and environment, with
the embedded broker standing in for `kafka` (no Docker engine here), until scored hours appear.

Overrides, and only these: the broker's address and the data folder (the compose network and
volume), and the scale and pace of the run (20 devices instead of 200, an hour every 5 s
instead of every minute, ticks every 2 s, idle partitions after 3 s, 5 s rebalances as the
embedded broker wants) so that it takes a minute.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest
import yaml

from fleetwatch.brokers.embedded import EmbeddedBroker
from tests.integration.aggregate_helpers import read_parquet_dir

pytestmark = [pytest.mark.integration, pytest.mark.scenario]
ROOT = Path(__file__).resolve().parents[2]
PACE = {
    "FLEETWATCH_SIMULATE_DEVICES": "20",
    "FLEETWATCH_SIMULATE_SPEED": "720",
    "FLEETWATCH_SCHEDULE_EVERY": "2s",
    "FLEETWATCH_AGGREGATE_IDLE_TIMEOUT": "3s",
    "FLEETWATCH_AGGREGATE_REBALANCE_TIMEOUT": "5s",
}


def service(
    compose: dict[str, Any], name: str, broker: str, data: Path
) -> tuple[list[str], dict[str, str]]:
    spec = compose["services"][name]
    argv = [*spec.get("entrypoint", ["fleetwatch"])[1:], *spec["command"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    env.update({k: str(v) for k, v in spec["environment"].items()})
    env.update({"FLEETWATCH_BOOTSTRAP_SERVERS": broker, "FLEETWATCH_DATA_DIR": str(data)})
    env.update({k: v for k, v in PACE.items() if k in env or k.startswith("FLEETWATCH_AGG")})
    argv = [a.replace("/data/", f"{data}/") for a in argv]
    return [sys.executable, "-m", "fleetwatch", *argv], env


def start(command: tuple[list[str], dict[str, str]], log: Path) -> subprocess.Popen[bytes]:
    argv, env = command
    with log.open("ab") as handle:
        return subprocess.Popen(argv, env=env, stdout=handle, stderr=handle)


def succeeded_runs(data: Path) -> pd.DataFrame:
    path = data / "fleetwatch.duckdb"
    if not path.exists():
        return pd.DataFrame()
    try:
        with duckdb.connect(str(path), read_only=True) as db:
            return db.execute(
                "SELECT run_id, window_start, scope, devices_scored FROM runs "
                "WHERE status = 'succeeded' AND devices_scored > 0"
            ).fetchdf()
    except duckdb.Error:  # the scheduler is writing right now
        return pd.DataFrame()


def test_the_compose_services_score_complete_hours(tmp_path: Path) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    data = tmp_path / "data"
    logs = tmp_path / "logs"
    logs.mkdir()
    with EmbeddedBroker(port=0) as broker:
        address = broker.bootstrap_servers
        argv, env = service(compose, "topics", address, data)
        topics = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert topics.returncode == 0, topics.stderr
        running = {
            name: start(service(compose, name, address, data), logs / f"{name}.log")
            for name in ("aggregator", "scheduler", "simulator")
        }
        try:
            # into the third simulated hour, the simulator stops and is started again, as
            # `restart: unless-stopped` would: it resumes after what the topic holds
            deadline = time.monotonic() + 60
            while len(list((data / "aggregates").glob("date=*/hour=*"))) < 3:
                assert time.monotonic() < deadline, (logs / "aggregator.log").read_text()[-3000:]
                time.sleep(0.2)
            simulator = running["simulator"]
            simulator.send_signal(signal.SIGINT)
            assert simulator.wait(30) == 130
            running["simulator"] = start(
                service(compose, "simulator", address, data), logs / "simulator.log"
            )
            deadline = time.monotonic() + 150
            while True:
                runs = succeeded_runs(data)
                if len(runs) >= 2:
                    break
                for name, process in running.items():
                    assert process.poll() is None, (logs / f"{name}.log").read_text()[-3000:]
                assert time.monotonic() < deadline, (logs / "scheduler.log").read_text()[-3000:]
                time.sleep(1)
        finally:
            for process in running.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            codes = {name: process.wait(60) for name, process in running.items()}
    assert codes["aggregator"] == 0 and codes["scheduler"] == 0, codes
    # every scored hour was complete: as many scores per device as it has windows in Parquet
    windows = read_parquet_dir(data / "aggregates")
    per_device = (
        windows.assign(hour=windows["window_start"].dt.floor("h"))
        .groupby(["hour", "device_id"])["window_start"]
        .nunique()
    )
    with duckdb.connect(str(data / "fleetwatch.duckdb"), read_only=True) as db:
        scored = db.execute(
            "SELECT r.window_start, s.device_id, count(*) FROM scores s JOIN runs r USING (run_id) "
            "WHERE r.status = 'succeeded' GROUP BY 1, 2"
        ).fetchall()
        silent = db.execute(
            "SELECT r.window_start, d.device_id FROM device_runs d JOIN runs r USING (run_id) "
            "WHERE d.outcome = 'silent'"
        ).fetchall()
    assert scored
    for hour, device, count in scored:
        assert count == per_device[(pd.Timestamp(hour).tz_convert("UTC"), device)], (hour, device)
    assert silent == []  # every device reported in every hour
    # the restarted simulator went on after its last event, not from the wall clock's "now"
    # hours behind: late readings, if any, are within a window (60 s) of the first run's last
    # event (its last readings, in flight while the idle timeout closed their window; CI saw
    # readings 8 s before it) or after it, never hours before
    summaries = [
        line.split()[1]
        for line in (logs / "simulator.log").read_text().splitlines()
        if line.strip().startswith("last_event")
    ]
    first_run_last = pd.Timestamp(summaries[0])
    late = read_parquet_dir(data / "late")
    earliest = first_run_last - pd.Timedelta(seconds=60)
    assert late.empty or late["ts"].min() > earliest, (first_run_last, late["ts"].min())
    assert (data / "labels.parquet").exists()
