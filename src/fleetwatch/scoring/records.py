"""A scoring run's record in DuckDB: its row in ``runs``, its scores, each device's outcome,
and the incidents it touches, in one transaction (see :mod:`fleetwatch.scoring.score`)."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from fleetwatch.scoring.incidents import rebuild
from fleetwatch.storage.columns import strings
from fleetwatch.storage.duck import connect, create_schema, storage_failure
from fleetwatch.storage.store import storage_error


def write_run(
    path: Path,
    run: dict[str, Any],
    scores: pa.Table | None,
    outcomes: pa.Table,
    *,
    devices: list[str] | None = None,
    hour_devices: list[str] | None = None,
    shadow_scores: pa.Table | None = None,
    incident_gap: float = 300.0,
    lock_timeout: float = 30.0,
    live_files: list[str] | None = None,
) -> None:
    """Record a run, in one transaction. With ``scores``, replace the hour's scores (and
    ``shadow_scores``): all of them, or with ``devices`` only those devices', and rebuild the
    incidents they touch. With ``hour_devices``, record them as the devices with data in the
    hour (for ``run["files_signature"]``).

    A live run (``live_files``: the files it read) replaces only the scores of the windows it
    scored, (device, window) by (device, window), and records its files as read: the next
    live run of the hour reads only files published since, and a window is never stored
    twice however the runs and the final one interleave (see :mod:`fleetwatch.scoring.live`)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(str(path), exc) from exc
    with connect(path, read_only=False, lock_timeout=lock_timeout) as connection:
        create_schema(connection)
        connection.execute("BEGIN TRANSACTION")
        try:
            hour = [run["window_start"], run["window_end"]]
            if scores is not None and live_files is not None:
                _replace_windows(connection, scores, shadow_scores)
            elif scores is not None:
                if devices is not None:
                    connection.register("run_devices", _device_table(devices))
                for table in ("scores", "shadow_scores"):
                    only = (
                        ""
                        if devices is None
                        else (" AND device_id IN (SELECT device_id FROM run_devices)")
                    )
                    connection.execute(
                        f"DELETE FROM {table} "  # noqa: S608 - two fixed table names
                        f"WHERE window_start >= ? AND window_start < ?{only}",
                        hour,
                    )
                if devices is not None:
                    connection.unregister("run_devices")
                connection.register("new_scores", scores)
                connection.execute(
                    "INSERT INTO scores (run_id, device_id, window_start, window_end, score, "
                    "is_anomaly, model_version, score_normalized, top_sensors) SELECT run_id, "
                    "device_id, window_start, window_end, score, is_anomaly, model_version, "
                    "score_normalized, top_sensors FROM new_scores"
                )
                connection.unregister("new_scores")
            if scores is not None and shadow_scores is not None and shadow_scores.num_rows:
                connection.register("new_shadow", shadow_scores)
                connection.execute(
                    "INSERT INTO shadow_scores SELECT run_id, device_id, window_start, "
                    "window_end, score, score_normalized, is_anomaly, model_version "
                    "FROM new_shadow"
                )
                connection.unregister("new_shadow")
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
            if live_files is not None and scores is not None:
                connection.execute(
                    "INSERT INTO live_files SELECT ?, unnest(?::VARCHAR[])",
                    [run["window_start"], live_files],
                )
                connection.execute(  # an hour older than this is final: forget its files
                    "DELETE FROM live_files WHERE window_start < ?",
                    [run["window_start"] - timedelta(hours=3)],
                )
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
            if scores is not None:  # after device_runs: an incident's status reads them
                rebuild(
                    connection,
                    devices,
                    run["window_start"],
                    run["window_end"],
                    timedelta(seconds=incident_gap),
                )
            connection.execute("COMMIT")
        except duckdb.Error as exc:
            with contextlib.suppress(duckdb.Error):  # a failed commit leaves nothing to undo
                connection.execute("ROLLBACK")
            raise storage_failure(path, exc) from exc
        except Exception:
            with contextlib.suppress(duckdb.Error):
                connection.execute("ROLLBACK")
            raise


def _replace_windows(connection: Any, scores: pa.Table, shadow_scores: pa.Table | None) -> None:
    """The rows of ``scores`` in place of any stored for their (device, window)."""
    for table, rows in (("scores", scores), ("shadow_scores", shadow_scores)):
        if rows is None or not rows.num_rows:
            continue
        connection.register("replacing", rows.select(["device_id", "window_start"]))
        connection.execute(
            f"DELETE FROM {table} t USING replacing r "  # noqa: S608 - fixed table names
            "WHERE t.device_id = r.device_id AND t.window_start = r.window_start"
        )
        connection.unregister("replacing")
    connection.register("new_scores", scores)
    connection.execute(
        "INSERT INTO scores (run_id, device_id, window_start, window_end, score, "
        "is_anomaly, model_version, score_normalized, top_sensors) SELECT run_id, "
        "device_id, window_start, window_end, score, is_anomaly, model_version, "
        "score_normalized, top_sensors FROM new_scores"
    )
    connection.unregister("new_scores")


def _device_table(devices: list[str]) -> pa.Table:
    return pa.table({"device_id": strings(devices)})
