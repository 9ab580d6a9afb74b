"""The DuckDB schema: made once per database, and again when this fleetwatch's differs."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from fleetwatch.storage import duck


def views(path: Path) -> set[str]:
    with duckdb.connect(str(path), read_only=True) as connection:
        rows = connection.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal")
        return {name for (name,) in rows.fetchall()}


def test_the_schema_is_made_once_and_again_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "fleetwatch.duckdb"
    with duckdb.connect(str(path)) as connection:  # from before the version marker, and
        connection.execute(duck.SCHEMA)  # its views
        connection.execute("DROP VIEW anomalies")
    assert views(path) == {"device_status"}
    duck.ensure_schema(path)
    assert views(path) == {"anomalies", "device_status"}
    with duckdb.connect(str(path)) as connection:
        connection.execute("DROP VIEW anomalies")
    duck.ensure_schema(path)  # recorded as current: not made again
    assert views(path) == {"device_status"}
    monkeypatch.setattr(duck, "SCHEMA_VERSION", duck.SCHEMA_VERSION + 1)
    duck.ensure_schema(path)  # as a newer fleetwatch, with another schema, would
    assert views(path) == {"anomalies", "device_status"}
