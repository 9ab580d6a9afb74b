"""What a user sees: one line with the fix and the documented exit code, never a traceback, and
machine output that parses back exactly. Run as the real command (a subprocess)."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fleetwatch.config import Settings
from tests.conftest import fleetwatch_cli


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"fleetwatch {result.args[3]}: error: "), line
    return line


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["score", "--hour", "yesterday"], "--hour 'yesterday': bad timestamp"),
        (["score", "--since", "soon", "--until", "2026-11-22T08"], "--since 'soon'"),
        (["score", "--since", "2026-11-22T10", "--until", "2026-11-22T08"], "empty range"),
        (["score"], "say which hours"),
        (["sql"], "give a query"),
        (["models", "show"], "needs a device id"),
        (["train"], "give the training range"),
        (["train", "--first", "0"], "--first '0': nothing to train on"),
    ],
)
def test_usage_errors_are_one_line_exit_2(argv: list[str], expected: str, tmp_path: Path) -> None:
    line = one_line_error(fleetwatch_cli(*argv, "--data-dir", str(tmp_path)), 2)
    assert expected in line


@pytest.mark.parametrize(
    "argv",
    [
        ["--start", "1970-01-01T00", "--messages", "5"],
        ["--start", "2099-12-31T23", "--duration", "2h"],
    ],
)
def test_a_simulated_clock_outside_the_readings_range_is_refused(argv: list[str]) -> None:
    # Before: every reading sent, and every one dead-lettered (readings are 2000..2100).
    unreachable = ["--bootstrap-servers", "127.0.0.1:9", "--timeout", "1s"]
    line = one_line_error(fleetwatch_cli("simulate", *argv, *unreachable), 2)
    assert "outside 2000..2100" in line and "give a start" in line


@pytest.mark.parametrize("start", ["1999-01-01T00", "2099-12-31T23"])
def test_a_demo_clock_outside_the_readings_range_is_refused_before_anything_starts(
    start: str, tmp_path: Path
) -> None:
    # Before: the broker, the worker and the dashboard started first, then the simulator's
    # check failed naming a --duration the demo had chosen (demo has no such flag).
    data = tmp_path / "demo"
    line = one_line_error(fleetwatch_cli("demo", "--start", start, "--data-dir", str(data)), 2)
    assert "outside 2000..2100" in line and "--start" in line and "--duration" not in line
    assert not (data / "logs").exists()  # no worker was started (it logs there)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # kafka-python's struct.error (int32 and int16 fields of CreateTopics)
        (["topics", "create", "--partitions", "3000000000"], "above the maximum 100000"),
        (["topics", "create", "--replication-factor", "40000"], "above the maximum 32767"),
        # numpy's "high is out of bounds for int64"; the socket's "timestamp out of range"
        (["simulate", "--interval", "99999999999999999999"], "0 to 100 years"),
        (["simulate", "--timeout", "99999999999999999999"], "0 to 100 years"),
        (["aggregate", "--timeout", "30d"], "30d is above the maximum 1d"),
    ],
)
def test_a_number_no_client_can_hold_is_refused_in_one_line(argv: list[str], expected: str) -> None:
    unreachable = ["--bootstrap-servers", "127.0.0.1:9"]
    line = one_line_error(fleetwatch_cli(*argv, *unreachable), 2)
    assert expected in line


def test_an_output_file_that_can_never_be_written_is_refused_at_start(tmp_path: Path) -> None:
    # Before: the scheduler ran and warned at every tick that the alerts stayed pending.
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    data = ["--data-dir", str(tmp_path), "--every", "1s"]
    for sink, says in (
        (str(tmp_path), "is a folder: give a file path"),
        (str(a_file / "alerts.jsonl"), "cannot be written"),
    ):
        line = one_line_error(fleetwatch_cli("schedule", "--jsonl", sink, *data, timeout=30), 2)
        assert f"--jsonl {sink}" in line and says in line
    # the same check before an import: "(File exists)" under a file, before
    readings = tmp_path / "readings.csv"
    readings.write_text("TS,Device,Tag,Value\n2026-11-22T10:00:00Z,pump-1,t,1.0\n")
    for rejects, says in (
        (str(tmp_path), "is a folder: give a file path"),
        (str(a_file / "rejects.csv"), "cannot be written (a part of its path is a file)"),
    ):
        result = fleetwatch_cli(
            "import", str(readings), "--rejects", rejects, "--backfill", *data[:2]
        )
        line = one_line_error(result, 2)
        assert f"--rejects {rejects}" in line and says in line
    line = one_line_error(fleetwatch_cli("schedule", "--webhook-url", "notaurl", *data), 2)
    assert "not an http:// or https:// URL" in line and "notaurl" not in line
    assert a_file.read_text() == "x"


def test_readers_refuse_a_missing_or_wrong_data_folder(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for command in (["status"], ["sql", "SELECT 1"], ["dashboard", "--port", "0"]):
        line = one_line_error(fleetwatch_cli(*command, "--data-dir", str(a_file)), 2)
        assert "is not a folder" in line and "--data-dir" in line
        missing = tmp_path / "mistyped"
        line = one_line_error(fleetwatch_cli(*command, "--data-dir", str(missing)), 2)
        assert "does not exist" in line
        assert not missing.exists()  # nothing made on the spot


def test_the_dashboard_on_a_taken_port_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        result = fleetwatch_cli("dashboard", "--data-dir", str(tmp_path), "--port", port)
    line = one_line_error(result, 2)
    assert f"cannot listen on 127.0.0.1:{port}" in line and "--port" in line


def test_an_hour_without_data_is_not_a_success_and_records_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    line = one_line_error(
        fleetwatch_cli("score", "--hour", "2030-01-01T00", "--data-dir", str(data)), 1
    )
    assert "no aggregates for 2030-01-01T00" in line and "nothing was scored" in line
    assert not (data / "fleetwatch.duckdb").exists()


def test_an_hour_whose_devices_have_no_model_is_not_a_success(tmp_path: Path) -> None:
    # Before: exit 0, status "succeeded", 0 devices scored, and not a word of why.
    import pandas as pd

    from fleetwatch.scoring.train import train
    from tests.unit.scoring.conftest import DEVICES, T0, untrained

    data = tmp_path / "data"
    settings = untrained(data)
    hour = ["score", "--hour", f"{T0:%Y-%m-%dT%H}", "--data-dir", str(data)]
    line = one_line_error(fleetwatch_cli(*hour), 1)
    assert "nothing was scored" in line and f"{len(DEVICES)} devices" in line
    assert "fleetwatch train" in line
    # The run is still recorded: each device's hour is pending once it has a model.
    train(settings, T0, T0 + pd.Timedelta(hours=2).to_pytimedelta(), DEVICES[:2])
    pending = fleetwatch_cli("score", "--missed", "--no-compact", "--data-dir", str(data))
    assert pending.returncode == 0, pending.stderr
    [warning] = [w for w in pending.stderr.splitlines() if "no active model" in w]
    assert f"{len(DEVICES) - 2} devices" in warning and "Traceback" not in pending.stderr
    scored = fleetwatch_cli(
        "sql", "SELECT DISTINCT device_id FROM scores ORDER BY 1", "--format", "json",
        "--data-dir", str(data),
    )  # fmt: skip
    assert [row["device_id"] for row in json.loads(scored.stdout)] == sorted(DEVICES[:2])


def test_a_closed_pipe_ends_the_output_quietly(trained: Settings) -> None:
    from fleetwatch.scoring.score import score_hour
    from tests.unit.scoring.conftest import T0

    for hour in range(3):
        score_hour(trained, T0.replace(hour=hour), progress=False)
    command = f"{sys.executable} -m fleetwatch status --data-dir {trained.data_dir} | head -3"
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, check=False
    )
    assert len(result.stdout.splitlines()) == 3
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_machine_formats_parse_back_exactly(trained: Settings) -> None:
    from fleetwatch.scoring.score import score_hour
    from tests.unit.scoring.conftest import T0

    score_hour(trained, T0.replace(hour=2), progress=False)
    data = ["--data-dir", str(trained.data_dir)]
    sql = (
        "SELECT 0.1::DOUBLE + 0.2::DOUBLE AS x, sum(count) AS readings, 'a,b\"c' AS text "
        "FROM aggregates"
    )
    as_json = fleetwatch_cli("sql", sql, "--format", "json", *data)
    [row] = json.loads(as_json.stdout)
    assert row["x"] == 0.1 + 0.2 and isinstance(row["readings"], int)
    assert row["readings"] == 8 * 180 * 3 * 60 - 60 * 60  # 60 readings a window, one dropout
    as_csv = fleetwatch_cli("sql", sql, "--format", "csv", *data)
    [parsed] = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert float(parsed["x"]) == 0.1 + 0.2 and parsed["readings"] == str(row["readings"])
    assert parsed["text"] == 'a,b"c'
    several = fleetwatch_cli("sql", "SELECT 1 AS a; SELECT 2 AS b", "--format", "json", *data)
    assert [json.loads(line) for line in several.stdout.splitlines()] == [[{"a": 1}], [{"b": 2}]]
    special = "SELECT 'NaN'::DOUBLE AS n, '-inf'::DOUBLE AS i, NULL::DOUBLE AS z"
    [values] = json.loads(fleetwatch_cli("sql", special, "--format", "json", *data).stdout)
    assert values == {"n": "NaN", "i": "-Infinity", "z": None}  # NULL is not NaN (issue 24)
    [cells] = list(csv.DictReader(io.StringIO(
        fleetwatch_cli("sql", special, "--format", "csv", *data).stdout
    )))  # fmt: skip
    assert math.isnan(float(cells["n"])) and float(cells["i"]) == -math.inf and cells["z"] == ""
    status = fleetwatch_cli("status", "--format", "csv", *data)
    facts, pending, runs = status.stdout.split("\n\n")  # three tables, a blank line apart
    [fact] = list(csv.DictReader(io.StringIO(facts)))
    assert fact["scheduler_running"] == "False" and int(fact["hours_pending"]) >= 0
    assert len(list(csv.DictReader(io.StringIO(pending)))) == int(fact["hours_pending"]) == 2
    rows = list(csv.DictReader(io.StringIO(runs)))
    assert rows and rows[0]["status"] == "succeeded" and int(rows[0]["devices_scored"]) == 8
    report = json.loads(fleetwatch_cli("status", "--format", "json", *data).stdout)
    assert report["scheduler"] == {"running": False} and report["last_runs"]


def test_sql_errors_keep_duckdbs_hints(trained: Settings) -> None:
    result = fleetwatch_cli("sql", "SELECT * FROM anomaly", "--data-dir", str(trained.data_dir))
    line = one_line_error(result, 2)
    assert 'Did you mean "anomalies"?' in line
    result = fleetwatch_cli("sql", "SELECT nope FROM runs", "--data-dir", str(trained.data_dir))
    assert "Candidate bindings" in one_line_error(result, 2)


def test_the_tables_are_discoverable(trained: Settings) -> None:
    result = fleetwatch_cli(
        "sql", "--schema", "--format", "csv", "--data-dir", str(trained.data_dir)
    )
    tables = {row["table_name"] for row in csv.DictReader(io.StringIO(result.stdout))}
    assert {"runs", "scores", "device_runs", "anomalies", "aggregates", "late"} <= tables


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "--config", "{big}"],
        ["evaluate", "--suite", "{big}"],
        ["evaluate", "--suite", "{suite}", "--compare", "{big}"],
        ["status", "--config", "/dev/zero"],
        ["evaluate", "--suite", "/dev/urandom"],
    ],
)
def test_a_file_read_whole_that_never_ends_is_refused_not_read(
    argv: list[str], tmp_path: Path
) -> None:
    # Before: read whole into memory (/dev/zero: a MemoryError traceback, or the machine's
    # memory). A configuration, a suite and a baseline are small: past 16 MiB it is no such file.
    big = tmp_path / "big.toml"
    with big.open("wb") as handle:
        handle.truncate(17 << 20)  # sparse: 17 MiB of NULs, nothing written
    suite = tmp_path / "suite.toml"
    suite.write_text('[sets.a]\nsource = "absent"\narguments = []\n')
    argv = [a.format(big=big, suite=suite) for a in argv]
    result = subprocess.run(
        ["bash", "-c", 'ulimit -v 3000000; exec "$@"', "-", sys.executable, "-m", "fleetwatch",
         *argv],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    result.args = [sys.executable, "-m", "fleetwatch", *argv]
    line = one_line_error(result, 2)
    assert "larger than 16 MiB" in line, line
