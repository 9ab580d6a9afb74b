"""DuckDB ``<data>/fleetwatch.duckdb``: runs, scores, per-device outcomes and the views on them.

DuckDB lets one process write, or many read, at a time. So a scoring run computes everything
first and holds the write lock only for its one short transaction, and every connection (the
writer and ``fleetwatch sql``) retries while another process holds the lock.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

if TYPE_CHECKING:  # pandas and pyarrow take a moment to import; `fleetwatch sql` needs pandas
    import pandas as pd
    import pyarrow as pa

from fleetwatch.errors import FleetwatchError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    window_start TIMESTAMPTZ, window_end TIMESTAMPTZ,
    started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ,
    status VARCHAR,                      -- succeeded | aborted | provisional
    devices_total INTEGER, devices_scored INTEGER, devices_failed INTEGER,
    devices_without_model INTEGER, devices_silent INTEGER,
    rows_scored BIGINT, error VARCHAR
);
ALTER TABLE runs ADD COLUMN IF NOT EXISTS scope VARCHAR;           -- hour | devices
ALTER TABLE runs ADD COLUMN IF NOT EXISTS files_signature VARCHAR;
CREATE TABLE IF NOT EXISTS scores (
    run_id VARCHAR, device_id VARCHAR,
    window_start TIMESTAMPTZ, window_end TIMESTAMPTZ,
    score DOUBLE, is_anomaly BOOLEAN, model_version VARCHAR
);
CREATE TABLE IF NOT EXISTS device_runs (
    run_id VARCHAR, device_id VARCHAR,
    outcome VARCHAR,                     -- scored | failed | no_model | silent
    error VARCHAR, model_version VARCHAR, windows INTEGER
);
CREATE TABLE IF NOT EXISTS hour_devices (   -- devices with data in an hour, as last scored
    window_start TIMESTAMPTZ, files_signature VARCHAR, device_id VARCHAR
);
CREATE OR REPLACE VIEW anomalies AS SELECT * FROM scores WHERE is_anomaly;
CREATE OR REPLACE VIEW device_status AS
    SELECT d.*, r.window_start, r.window_end, r.started_at
    FROM device_runs d JOIN runs r USING (run_id);
"""


#: Increased whenever SCHEMA changes: a database that records an older version is given SCHEMA
#: again (its statements only add what is missing). Run at every connection instead, its
#: CREATE OR REPLACE VIEWs took 30 ms of each run.
SCHEMA_VERSION = 2


def _create_schema(connection: Any) -> None:
    try:
        found = connection.execute("SELECT max(version) FROM fleetwatch_schema").fetchone()
    except duckdb.CatalogException:  # a new database, or one from before the marker
        found = None
    if found is None or found[0] != SCHEMA_VERSION:
        connection.execute(SCHEMA)
        connection.execute("CREATE OR REPLACE TABLE fleetwatch_schema (version INTEGER)")
        connection.execute("INSERT INTO fleetwatch_schema VALUES (?)", [SCHEMA_VERSION])


class DatabaseBusyError(FleetwatchError):
    """Another process held the DuckDB file for longer than the lock timeout."""


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "conflicting" in text or "being used" in text


@contextmanager
def connect(path: Path, *, read_only: bool, lock_timeout: float = 30.0) -> Iterator[Any]:
    """A DuckDB connection, retried while another process holds the file."""
    deadline = time.monotonic() + lock_timeout
    delay = 0.02
    while True:
        try:
            connection = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.Error as exc:
            if not _is_lock_error(exc) or time.monotonic() > deadline:
                if _is_lock_error(exc):
                    raise DatabaseBusyError(
                        f"{path} stayed locked by another process for {lock_timeout:g}s "
                        "(a scoring run?); try again, or raise --lock-timeout"
                    ) from None
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    try:
        connection.execute("SET TimeZone = 'UTC'")
        yield connection
    finally:
        connection.close()


def has_table(connection: Any, name: str) -> bool:
    found = connection.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
    ).fetchone()
    return bool(found and found[0])


def ensure_schema(path: Path, lock_timeout: float = 30.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with connect(path, read_only=False, lock_timeout=lock_timeout) as connection:
        _create_schema(connection)


def write_run(
    path: Path,
    run: dict[str, Any],
    scores: pa.Table | None,
    outcomes: pa.Table,
    *,
    devices: list[str] | None = None,
    hour_devices: list[str] | None = None,
    lock_timeout: float = 30.0,
) -> None:
    """Record a run, in one transaction. With ``scores``, replace the hour's scores: all of
    them, or with ``devices`` only those devices'. With ``hour_devices``, record them as the
    devices with data in the hour (for ``run["files_signature"]``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with connect(path, read_only=False, lock_timeout=lock_timeout) as connection:
        _create_schema(connection)
        connection.execute("BEGIN TRANSACTION")
        try:
            hour = [run["window_start"], run["window_end"]]
            if scores is not None:
                if devices is None:
                    connection.execute(
                        "DELETE FROM scores WHERE window_start >= ? AND window_start < ?", hour
                    )
                else:
                    connection.register("run_devices", _device_table(devices))
                    connection.execute(
                        "DELETE FROM scores WHERE window_start >= ? AND window_start < ? "
                        "AND device_id IN (SELECT device_id FROM run_devices)",
                        hour,
                    )
                    connection.unregister("run_devices")
                connection.register("new_scores", scores)
                connection.execute(
                    "INSERT INTO scores SELECT run_id, device_id, window_start, window_end, "
                    "score, is_anomaly, model_version FROM new_scores"
                )
                connection.unregister("new_scores")
            if hour_devices is not None:
                connection.execute(
                    "DELETE FROM hour_devices WHERE window_start >= ? AND window_start < ?", hour
                )
                connection.register("with_data", _device_table(hour_devices))
                connection.execute(
                    "INSERT INTO hour_devices SELECT ?, ?, device_id FROM with_data",
                    [run["window_start"], run["files_signature"]],
                )
                connection.unregister("with_data")
            connection.register("new_outcomes", outcomes)
            connection.execute(
                "INSERT INTO device_runs SELECT run_id, device_id, outcome, error, "
                "model_version, windows FROM new_outcomes"
            )
            connection.unregister("new_outcomes")
            columns = list(run)
            connection.execute(
                f"INSERT INTO runs ({', '.join(columns)}) "  # noqa: S608 - fixed column names
                f"VALUES ({', '.join('?' for _ in columns)})",
                [run[c] for c in columns],
            )
            connection.execute("COMMIT")
        except Exception:
            with contextlib.suppress(duckdb.Error):  # a failed commit leaves nothing to undo
                connection.execute("ROLLBACK")
            raise


def _device_table(devices: list[str]) -> pa.Table:
    import pyarrow as pa

    from fleetwatch.storage.columns import strings

    return pa.table({"device_id": strings(devices)})


#: Statement types `fleetwatch sql` runs; anything else (INSERT, DROP, COPY, ATTACH...) is refused.
READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN", "PRAGMA")


def query(path: Path, data_dir: Path, sql: str, lock_timeout: float = 30.0) -> pd.DataFrame:
    """Run read-only SQL over the DuckDB tables plus views of the Parquet files."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise FleetwatchError(f"bad SQL: {_first_line(exc)}") from None
    if not statements:
        raise FleetwatchError("no SQL statement given")
    for statement in statements:
        kind = statement.type.name
        if kind not in READ_ONLY_STATEMENTS:
            raise FleetwatchError(
                f"fleetwatch sql is read-only: {kind} statements are refused (use SELECT)"
            )
    ensure_schema(path, lock_timeout)
    with connect(path, read_only=True, lock_timeout=lock_timeout) as connection:
        for name, folder in (("aggregates", "aggregates"), ("late", "late")):
            pattern = data_dir / folder / "date=*" / "hour=*" / "*.parquet"
            if list((data_dir / folder).glob("date=*/hour=*/*.parquet")):
                source = f"read_parquet('{_quote(pattern)}', hive_partitioning = false)"
            else:
                source = _empty(name)
            # name is one of two literals and source quotes the path: no user text reaches this
            connection.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM {source}")  # noqa: S608
        try:
            result: pd.DataFrame = connection.execute(sql).fetchdf()
        except duckdb.Error as exc:
            raise FleetwatchError(f"SQL error: {_first_line(exc)}") from None
        return result


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


def _empty(name: str) -> str:
    if name == "aggregates":
        return (
            "(SELECT NULL::VARCHAR AS device_id, NULL::VARCHAR AS sensor, "
            "NULL::TIMESTAMPTZ AS window_start, NULL::TIMESTAMPTZ AS window_end, "
            "NULL::BIGINT AS count, NULL::DOUBLE AS mean, NULL::DOUBLE AS std, "
            "NULL::DOUBLE AS min, NULL::DOUBLE AS max WHERE false)"
        )
    return (
        "(SELECT NULL::VARCHAR AS device_id, NULL::VARCHAR AS sensor, NULL::TIMESTAMPTZ AS ts, "
        "NULL::DOUBLE AS value, NULL::TIMESTAMPTZ AS window_start, NULL::BIGINT AS lateness_ms,"
        " NULL::INTEGER AS partition, NULL::BIGINT AS offset WHERE false)"
    )


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]
