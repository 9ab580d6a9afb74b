"""DuckDB ``<data>/fleetwatch.duckdb``: runs, scores, per-device outcomes and the views on them.

DuckDB lets one process write, or many read, at a time. So a scoring run computes everything
first and holds the write lock only for its one short transaction, and every connection (the
writer and ``fleetwatch sql``) retries while another process holds the lock.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

if TYPE_CHECKING:  # pandas and pyarrow take a moment to import; `fleetwatch sql` needs pandas
    pass

from fleetwatch.errors import FleetwatchError, LimitError, StorageError
from fleetwatch.storage.layout import DataLayout
from fleetwatch.storage.store import ObjectStore

log = logging.getLogger(__name__)

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
ALTER TABLE scores ADD COLUMN IF NOT EXISTS score_normalized DOUBLE;
ALTER TABLE scores ADD COLUMN IF NOT EXISTS top_sensors STRUCT(sensor VARCHAR, share DOUBLE)[];
CREATE TABLE IF NOT EXISTS shadow_scores (  -- versions in shadow: recorded, never alerting
    run_id VARCHAR, device_id VARCHAR,
    window_start TIMESTAMPTZ, window_end TIMESTAMPTZ,
    score DOUBLE, score_normalized DOUBLE, is_anomaly BOOLEAN, model_version VARCHAR
);
CREATE TABLE IF NOT EXISTS incidents (
    incident_id VARCHAR, device_id VARCHAR,
    window_start TIMESTAMPTZ, window_end TIMESTAMPTZ,
    windows INTEGER, peak_score DOUBLE,
    top_sensors STRUCT(sensor VARCHAR, share DOUBLE)[],
    status VARCHAR,                      -- open | closed
    model_version VARCHAR
);
CREATE TABLE IF NOT EXISTS device_runs (
    run_id VARCHAR, device_id VARCHAR,
    outcome VARCHAR,                     -- scored | failed | no_model | silent
    error VARCHAR, model_version VARCHAR, windows INTEGER
);
CREATE TABLE IF NOT EXISTS hour_devices (   -- devices with data in an hour, as last scored
    window_start TIMESTAMPTZ, files_signature VARCHAR, device_id VARCHAR
);
CREATE TABLE IF NOT EXISTS live_files (     -- files of open hours a live run has scored
    window_start TIMESTAMPTZ, key VARCHAR
);
CREATE OR REPLACE VIEW anomalies AS SELECT * FROM scores WHERE is_anomaly;
CREATE OR REPLACE VIEW device_status AS
    SELECT d.*, r.window_start, r.window_end, r.started_at
    FROM device_runs d JOIN runs r USING (run_id);
"""


#: Increased whenever SCHEMA changes: a database that records an older version is given SCHEMA
#: again (its statements only add what is missing). Run at every connection instead, its
#: CREATE OR REPLACE VIEWs took 30 ms of each run.
SCHEMA_VERSION = 4


def create_schema(connection: Any) -> None:
    """Give a write connection's database the current :data:`SCHEMA` (once per version)."""
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
    """Another process holds the file, or another thread of this one has it open in the
    other mode (DuckDB allows one configuration per file and process): both pass."""
    text = str(exc).lower()
    return (
        "lock" in text
        or "conflicting" in text
        or "being used" in text
        or "different configuration" in text
    )


@contextmanager
def connect(path: Path, *, read_only: bool, lock_timeout: float = 30.0) -> Iterator[Any]:
    """A DuckDB connection, retried while another process (or thread, in the other mode)
    holds the file."""
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
                raise storage_failure(path, exc) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    try:
        connection.execute("SET TimeZone = 'UTC'")
        yield connection
    finally:
        connection.close()


def storage_failure(path: Path, exc: Exception) -> FleetwatchError:
    """DuckDB's error as one line; a full disk or a read-only folder as a storage error that
    says so (DuckDB's own message for those can be about a failed rollback instead)."""
    text = one_line(exc)
    lowered = text.lower()
    for cause, advice in (
        ("no space left", "free some space and run the command again"),
        ("read-only file system", "the file system is read-only: use a writable --data-dir"),
        ("permission denied", "check the permissions of the data directory"),
    ):
        if cause in lowered:
            return StorageError(f"cannot write {path}: {cause}: {text}; {advice}")
    return FleetwatchError(f"DuckDB {path}: {text}")


def has_table(connection: Any, name: str) -> bool:
    found = connection.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
    ).fetchone()
    return bool(found and found[0])


def ensure_schema(path: Path, lock_timeout: float = 30.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with connect(path, read_only=False, lock_timeout=lock_timeout) as connection:
        create_schema(connection)


@dataclass(frozen=True)
class QueryResult:
    """One statement's result: column names, DuckDB types, rows of Python values."""

    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


#: What ``fleetwatch sql`` runs: queries (``SELECT``, and ``SHOW``, ``DESCRIBE``, ``SUMMARIZE``,
#: ``FROM ...``, which DuckDB parses as ``SELECT``), ``EXPLAIN`` without ``ANALYZE`` (which
#: would run its statement), and these pragmas. Everything else is refused before DuckDB sees it.
READ_ONLY_PRAGMAS = frozenset(
    {"show_tables", "show_tables_expanded", "table_info", "show", "version", "database_size"}
)


def check_read_only(sql: str) -> list[str]:
    """The statements of ``sql`` if every one of them only reads; else one clear error."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise FleetwatchError(f"bad SQL: {one_line(exc)}") from None
    if not statements:
        raise FleetwatchError("no SQL statement given")
    chosen = []
    for statement in statements:
        kind = statement.type.name
        words = [
            sql_token_text(statement.query, start)
            for start, token in duckdb.tokenize(statement.query)
            if token.name != "comment"
        ]
        keywords = {word.upper() for word in words}
        if kind == "EXPLAIN" and "ANALYZE" in keywords:
            raise FleetwatchError(
                "fleetwatch sql is read-only: EXPLAIN ANALYZE runs its statement and is refused "
                "(use EXPLAIN)"
            )
        if kind == "PRAGMA":
            upper = [word.upper() for word in words]
            after = upper.index("PRAGMA") + 1 if "PRAGMA" in upper else len(words)
            name = words[after].lower() if after < len(words) else ""
            if name not in READ_ONLY_PRAGMAS:
                raise FleetwatchError(
                    f"fleetwatch sql is read-only: PRAGMA {name} is refused (allowed: "
                    f"{', '.join(sorted(READ_ONLY_PRAGMAS))})"
                )
        elif kind not in ("SELECT", "EXPLAIN"):
            # DuckDB files INSTALL under LOAD: name the statement as the user wrote it
            first = next((word.upper() for word in words if word.strip()), kind)
            shown = first if first.isalpha() else kind
            raise FleetwatchError(
                f"fleetwatch sql is read-only: {shown} statements are refused (use SELECT)"
            )
        chosen.append(statement.query)
    return chosen


def sql_token_text(sql: str, start: int) -> str:
    """The word of ``sql`` starting at ``start`` (DuckDB's tokenizer gives only offsets)."""
    end = start
    while end < len(sql) and (sql[end].isalnum() or sql[end] == "_"):
        end += 1
    return sql[start:end]


@contextmanager
def sandbox(
    layout: DataLayout, lock_timeout: float = 30.0, memory_limit: str | None = None
) -> Iterator[Any]:
    """A connection that can read the database and the data folder's Parquet files and
    nothing else: opened read-only (nothing is created: a data folder without a database
    gets empty tables in memory); file access off except for the aggregate and late files
    that exist now (DuckDB's ``allowed_paths``: it cannot even write those, as it writes a
    file under a temporary name first); extensions off; and the configuration locked, so no
    statement can turn any of it back on."""
    layout.require()
    store = layout.store
    files = {
        name: [_readable(store, item.key) for item in layout.dataset_files(name)]
        for name in ("aggregates", "late")
    }
    if layout.database.exists():
        opened = connect(layout.database, read_only=True, lock_timeout=lock_timeout)
    else:
        opened = _in_memory()
    with opened as connection:
        if isinstance(store, ObjectStore):
            connection.register_filesystem(store.read_only_filesystem())
        allowed = [path for paths in files.values() for path in paths]
        if allowed:
            connection.execute("SET allowed_paths = ?", [allowed])
        connection.execute("SET enable_external_access = false")
        connection.execute("SET autoinstall_known_extensions = false")
        connection.execute("SET autoload_known_extensions = false")
        if memory_limit is not None:
            connection.execute("SET memory_limit = ?", [memory_limit])
        for name, paths in files.items():
            if paths:
                listed = ", ".join(f"'{_quote(path)}'" for path in paths)
                source = f"read_parquet([{listed}], hive_partitioning = false)"
            else:
                source = _empty(name)
            # name is one of two literals and the paths are quoted: no user text reaches this
            connection.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM {source}")  # noqa: S608
        connection.execute("SET lock_configuration = true")
        yield connection


@contextmanager
def _in_memory() -> Iterator[Any]:
    connection = duckdb.connect(":memory:")
    try:
        connection.execute("SET TimeZone = 'UTC'")
        connection.execute(SCHEMA.replace("ALTER TABLE runs ADD COLUMN IF NOT EXISTS", "--"))
        yield connection
    finally:
        connection.close()


def query(
    layout: DataLayout,
    sql: str,
    lock_timeout: float = 30.0,
    query_timeout: float = 0.0,
    memory_limit: str | None = None,
) -> list[QueryResult]:
    """Run read-only SQL in the :func:`sandbox`; one result per statement. The statements
    together may take ``query_timeout`` seconds (0: no limit); a signal stops them too; each
    may use ``memory_limit`` (DuckDB's setting: ``25%``, ``2GB``; None: DuckDB's default)."""
    statements = check_read_only(sql)
    results = []
    deadline = time.monotonic() + query_timeout if query_timeout > 0 else None
    with sandbox(layout, lock_timeout, memory_limit) as connection:
        for number, statement in enumerate(statements, 1):
            log.debug("sql: running statement %d of %d", number, len(statements))
            description, rows = _interruptible(
                connection, statement, deadline, query_timeout, memory_limit
            )
            results.append(
                QueryResult(
                    [str(d[0]) for d in description], [str(d[1]) for d in description], rows
                )
            )
    return results


def _interruptible(
    connection: Any,
    statement: str,
    deadline: float | None,
    limit: float,
    memory_limit: str | None = None,
) -> tuple[list[Any], list[Any]]:
    """One statement, run on a thread while this one waits: DuckDB holds the thread it runs
    on until the statement ends, so a signal (SIGTERM, Ctrl-C) would wait for it, and a
    statement that never ends would keep the database's read lock forever. Past the
    ``deadline``, or on a signal, the statement is interrupted (DuckDB's ``interrupt``, again
    until it has stopped: one that comes before the statement starts is not kept). While it
    runs, SIGTERM and SIGINT only note themselves (an exception raised inside a wait could
    leave the wait's lock held, and the statement's thread could then never say it ended);
    once it has stopped, the signal goes to the handler there was before."""
    outcome: dict[str, Any] = {}
    done = threading.Event()
    stop = threading.Event()
    caught: list[int] = []

    def work() -> None:
        try:
            if not stop.is_set():
                cursor = connection.execute(statement)
                outcome["answer"] = (cursor.description or [], cursor.fetchall())
        except BaseException as exc:  # handed to the waiting thread
            outcome["error"] = exc
        finally:
            done.set()

    def noted(signum: int, frame: object) -> None:
        caught.append(signum)
        stop.set()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {
            number: signal.signal(number, noted)
            for number in STOP_SIGNALS
            if signal.getsignal(number) not in (signal.SIG_IGN, None)  # ignored stays so
        }
    timed_out = False
    try:
        threading.Thread(target=work, name="fleetwatch-sql", daemon=True).start()
        while not done.wait(0.05):
            if deadline is not None and time.monotonic() > deadline:
                timed_out = True
                stop.set()
            if stop.is_set():
                connection.interrupt()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if caught:
        _deliver(caught[0], previous[caught[0]])
    answer: tuple[list[Any], list[Any]] | None = outcome.get("answer")
    if answer is not None:  # (it may have ended as it was stopped)
        return answer
    if stop.is_set():  # past the deadline, or a signal whose handler let it go on
        raise LimitError(
            f"the query ran longer than --query-timeout {limit:g}s and was stopped; "
            "narrow it (e.g. WHERE window_start >= ...) or give a longer --query-timeout"
            if timed_out
            else "the query was stopped by a signal"
        )
    error = outcome["error"]
    if isinstance(error, duckdb.OutOfMemoryException):  # (its hints say SET, which is refused)
        raise LimitError(
            f"the query needs more memory than --memory-limit {memory_limit}; narrow it (fewer "
            "rows or columns, an aggregate) or give a larger --memory-limit"
        ) from None
    if isinstance(error, duckdb.Error):
        raise FleetwatchError(f"SQL error: {one_line(error)}") from None
    raise error


#: What stops a statement as it stops the command.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _deliver(signum: int, handler: Any) -> None:
    """A signal noted while a statement ran, to the handler that was there before it."""
    if callable(handler):
        handler(signum, None)  # fleetwatch's own (SIGTERM), or Python's KeyboardInterrupt
    elif handler != signal.SIG_IGN:
        os.kill(os.getpid(), signum)  # the default action


def table_schema(layout: DataLayout, lock_timeout: float = 30.0) -> list[QueryResult]:
    """Every table and view ``fleetwatch sql`` can query, with its columns and their types."""
    return query(
        layout,
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_name NOT IN ('fleetwatch_schema') ORDER BY table_name, ordinal_position",
        lock_timeout,
    )


def _readable(store: Any, key: str) -> str:
    """What DuckDB reads an object by: its local path, or its URL."""
    local = store.local_path(key)
    return str(local) if local is not None else store.describe(key)


def _quote(path: str) -> str:
    return path.replace("'", "''")


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


def one_line(exc: Exception) -> str:
    """DuckDB's message on one line, its hints kept (``Did you mean ...``), the caret
    drawing of the statement left out."""
    lines = [line.strip() for line in str(exc).strip().splitlines()]
    kept = [line for line in lines if line and not line.startswith("LINE ") and set(line) != {"^"}]
    return " ".join(kept)
