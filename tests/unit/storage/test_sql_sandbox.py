"""``fleetwatch sql`` is read-only for real: DuckDB's own sandbox, with the statement check as a
second layer. Each attempt below must be refused or harmless: no file written anywhere we can
see, nothing read from outside the data folder, no secret in the answer, nothing changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetwatch.errors import FleetwatchError
from fleetwatch.storage.duck import query
from fleetwatch.storage.layout import DataLayout
from tests.unit.scoring.conftest import settings_for, synthetic_windows, write_windows

SECRET = "hunter2-secret-in-the-environment"


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from fleetwatch.scoring.score import score_hour
    from fleetwatch.scoring.train import train
    from tests.unit.scoring.conftest import T0, set_watermark

    root = tmp_path / "data"
    write_windows(root, synthetic_windows(hours=2))
    settings = settings_for(root)
    train(settings, T0, T0.replace(hour=1))
    set_watermark(settings, T0.replace(hour=2))
    score_hour(settings, T0.replace(hour=1), progress=False)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text(SECRET)
    write_windows(tmp_path / "outside", synthetic_windows(hours=1))  # Parquet, but not ours
    monkeypatch.setenv("FLEETWATCH_SASL_PASSWORD", SECRET)
    return root


def escapes(tmp: Path) -> list[str]:
    outside = tmp / "outside"
    secret = outside / "secret.txt"
    parquet = next(outside.rglob("*.parquet"))
    agg = next((tmp / "data" / "aggregates").rglob("*.parquet")).parent
    db = tmp / "data" / "fleetwatch.duckdb"
    return [
        # COPY, in every wrapper
        f"COPY (SELECT 'x') TO '{tmp}/evil.csv'",
        f"COPY runs TO '{agg}/evil.csv'",
        f"copy (select 1) to '{tmp}/evil2.csv' (FORMAT csv, HEADER false, QUOTE '')",
        f"/* a comment */ COPY (SELECT 1) TO '{tmp}/evil3.csv'",
        f"EXPLAIN ANALYZE COPY (SELECT 'x') TO '{agg}/evil.cron' (FORMAT csv, HEADER false)",
        f"EXPLAIN (ANALYZE) COPY (SELECT 'x') TO '{tmp}/evil4.csv'",
        f"explain   analyze copy (select 'x') to '{tmp}/evil5.csv'",
        f"SELECT 1; COPY (SELECT 2) TO '{tmp}/evil6.csv'",
        f"SELECT 1 --\n; COPY (SELECT 2) TO '{tmp}/evil7.csv'",
        f"SELECT * FROM query('COPY (SELECT 1) TO ''{tmp}/evil8.csv''')",
        f"EXPORT DATABASE '{tmp}/exported'",
        f"IMPORT DATABASE '{outside}'",
        f"PRAGMA import_database('{outside}')",
        # other databases, extensions
        f"ATTACH '{tmp}/other.duckdb' AS other",
        "ATTACH ':memory:' AS scratch",
        "DETACH DATABASE fleetwatch",
        "INSTALL httpfs",
        "LOAD httpfs",
        f"LOAD '{tmp}/evil.duckdb_extension'",
        "SELECT * FROM read_parquet('https://example.com/x.parquet')",
        # changes to the data, the schema, the settings
        "DROP TABLE runs",
        "DELETE FROM scores",
        "UPDATE runs SET status = 'x'",
        "INSERT INTO runs (run_id) VALUES ('x')",
        "CREATE TABLE t AS SELECT 1",
        "CREATE TEMP TABLE t AS SELECT 1",
        "CREATE OR REPLACE VIEW anomalies AS SELECT 1",
        "CREATE MACRO m(x) AS x",
        "ALTER TABLE runs ADD COLUMN x INT",
        "SET enable_external_access = true",
        f"SET allowed_paths = ['{secret}']",
        "RESET enable_external_access",
        "SET lock_configuration = false",
        "PRAGMA enable_profiling",
        "CHECKPOINT",
        "VACUUM",
        "CALL pragma_version()",
        # reading outside the data folder
        f"SELECT * FROM read_text('{secret}')",
        "SELECT * FROM read_text('/proc/self/environ')",
        "SELECT * FROM read_text('/etc/passwd')",
        f"SELECT * FROM read_blob('{secret}')",
        f"SELECT * FROM read_csv('{secret}')",
        f"SELECT * FROM read_csv_auto('{secret}')",
        f"SELECT * FROM read_json_auto('{secret}')",
        f"SELECT * FROM read_ndjson('{secret}')",
        f"SELECT * FROM sniff_csv('{secret}')",
        f"SELECT * FROM read_parquet('{parquet}')",
        f"SELECT * FROM parquet_metadata('{parquet}')",
        f"SELECT * FROM parquet_schema('{parquet}')",
        f"SELECT * FROM glob('{outside}/*')",
        f"SELECT * FROM '{secret}'",
        f"FROM '{parquet}'",
        f"SELECT * FROM read_text('{agg}/../../../outside/secret.txt')",
        f"SELECT * FROM read_text('{db}')",
        "SELECT * FROM duckdb_secrets()",
        "SELECT * FROM query_table('runs'); SELECT * FROM read_text('/proc/self/environ')",
    ]


def test_forty_escapes_are_refused_or_harmless(data: Path, tmp_path: Path) -> None:
    layout = DataLayout.open(data)
    attempts = escapes(tmp_path)
    assert len(attempts) >= 40
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    runs_before = query(layout, "SELECT count(*) FROM runs")[0].rows
    refused = 0
    for attempt in attempts:
        try:
            results = query(layout, attempt)
        except FleetwatchError as exc:
            refused += 1
            assert SECRET not in str(exc), attempt
            continue
        text = repr([r.rows for r in results])
        assert SECRET not in text and "root:" not in text, attempt
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before, set(after) ^ set(before)  # nothing written, nothing changed
    assert query(layout, "SELECT count(*) FROM runs")[0].rows == runs_before
    assert refused == len(attempts)


def test_the_data_folder_and_its_tables_stay_readable(data: Path) -> None:
    layout = DataLayout.open(data)
    [tables] = query(layout, "SHOW TABLES")
    names = {row[0] for row in tables.rows}
    assert {"runs", "scores", "device_runs", "anomalies", "aggregates", "late"} <= names
    [described] = query(layout, "DESCRIBE scores")
    assert [row[0] for row in described.rows][:3] == ["run_id", "device_id", "window_start"]
    [count] = query(layout, "SELECT count(*) FROM aggregates")
    assert count.rows[0][0] > 0
    first_file = layout.store.local_path(layout.dataset_files("aggregates")[0].key)
    [direct] = query(layout, f"SELECT count(*) FROM read_parquet('{first_file}')")
    assert direct.rows[0][0] > 0  # the data folder's own files, read directly: allowed
    first, second = query(layout, "SELECT 1 AS a; SELECT 2 AS b")
    assert (first.rows, second.rows) == ([(1,)], [(2,)])


def test_a_folder_without_a_database_is_queried_without_creating_one(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_windows(root, synthetic_windows(hours=1))
    [runs] = query(DataLayout.open(root), "SELECT count(*) FROM runs")
    assert runs.rows == [(0,)]
    assert not (root / "fleetwatch.duckdb").exists()
    with pytest.raises(FleetwatchError, match="does not exist"):
        query(DataLayout.open(tmp_path / "mistyped"), "SELECT 1")
    assert not (tmp_path / "mistyped").exists()


def test_a_read_only_data_folder_is_queried(data: Path, tmp_path: Path) -> None:
    """Readers open the database read-only and create nothing (before: sql and status made the
    schema, and failed on a read-only folder with a traceback)."""
    import shutil

    from fleetwatch.scheduler.status import status
    from tests.conftest import remount_read_only, small_disk

    with small_disk(tmp_path / "ro", "64m") as disk:
        copy = disk / "data"
        shutil.copytree(data, copy)
        remount_read_only(disk)
        [runs] = query(DataLayout.open(copy), "SELECT count(*) FROM runs")
        assert runs.rows[0][0] >= 1
        report = status(settings_for(copy))
        assert len(report["last_runs"]) >= 1


ENDLESS = "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t"


def test_a_query_past_its_time_limit_is_stopped_and_lets_go_of_the_database(data: Path) -> None:
    """A query holds the database's read lock, which scoring needs to write: an endless one
    stops at ``--query-timeout`` with one line (exit 1), and the database is writable again."""
    import subprocess
    import sys
    import time

    from fleetwatch.storage.duck import connect

    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "fleetwatch", "sql", ENDLESS, "--data-dir", str(data),
         "--query-timeout", "1s"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and done.stdout == "", done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("fleetwatch sql: error:") and "--query-timeout" in line
    assert time.monotonic() - started < 60
    with connect(data / "fleetwatch.duckdb", read_only=False, lock_timeout=1.0) as writer:
        assert writer.execute("SELECT count(*) FROM runs").fetchone()[0] >= 1
    [quick] = query(DataLayout.open(data), "SELECT 42", query_timeout=0.5)
    assert quick.rows == [(42,)]


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_running_query_stops_on_sigterm_and_ctrl_c(data: Path, signum: str) -> None:
    """Before: DuckDB held the main thread, the signal was never handled, the query ran on."""
    import os
    import signal
    import subprocess
    import sys

    env = os.environ | {"FLEETWATCH_LOG_LEVEL": "DEBUG"}
    process = subprocess.Popen(
        [sys.executable, "-m", "fleetwatch", "sql", ENDLESS, "--data-dir", str(data),
         "--query-timeout", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        for line in process.stderr:  # waits for the query to be running
            if "running statement 1 of 1" in line:
                break
        process.send_signal(getattr(signal, signum))
        code = process.wait(60)
        said = process.stderr.read()
    finally:
        process.kill()
        process.wait()
    assert code == 130 and "interrupted" in said and "Traceback" not in said, said


def test_an_ignored_ctrl_c_stays_ignored_while_a_query_runs(data: Path) -> None:
    """A command started with SIGINT ignored (`nohup`, `cmd &` in a script) is not stopped by
    one: the query runs on to its --query-timeout."""
    import os
    import signal
    import subprocess
    import sys

    env = os.environ | {"FLEETWATCH_LOG_LEVEL": "DEBUG"}
    process = subprocess.Popen(
        [sys.executable, "-m", "fleetwatch", "sql", ENDLESS, "--data-dir", str(data),
         "--query-timeout", "3s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if "running statement 1 of 1" in line:
                break
        process.send_signal(signal.SIGINT)
        code = process.wait(60)
        said = process.stderr.read()
    finally:
        process.kill()
        process.wait()
    assert code == 1 and "--query-timeout 3s" in said, said


def test_a_query_past_its_memory_limit_is_one_line_and_the_limit_cannot_be_lifted(
    data: Path,
) -> None:
    """The machine also runs the worker and the scorer: a query's memory is bounded
    (`--memory-limit`, 25% of RAM by default), and no statement can raise the bound."""
    import subprocess
    import sys

    hungry = "SELECT length(string_agg(repeat('a', 1000), '')) AS n FROM range(300000)"  # 300 MB
    run = [sys.executable, "-m", "fleetwatch", "sql", "--data-dir", str(data), "--format", "csv"]
    refused = subprocess.run(
        [*run, hungry, "--memory-limit", "50MB"], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 1 and refused.stdout == "", refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert "--memory-limit 50MB" in line and "SET" not in line, line
    done = subprocess.run(
        [*run, hungry, "--memory-limit", "2GB"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.split() == ["n", "300000000"], done.stderr
    [limit] = query(
        DataLayout.open(data), "SELECT current_setting('memory_limit')", memory_limit="1GB"
    )
    assert limit.rows == [("953.6 MiB",)]  # DuckDB's own rendering of 1 GB
    with pytest.raises(FleetwatchError, match="read-only"):
        query(DataLayout.open(data), "SET memory_limit = '100GB'", memory_limit="1GB")
    bad = subprocess.run(
        [*run, "SELECT 1", "--memory-limit", "lots"], capture_output=True, text=True
    )
    assert (
        bad.returncode == 2 and "memory_limit" in bad.stderr and len(bad.stderr.splitlines()) == 1
    )
