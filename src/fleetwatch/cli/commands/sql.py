"""``fleetwatch sql``: read-only SQL over the DuckDB tables and the Parquet aggregates."""

from __future__ import annotations

import argparse
import json
import sys

from fleetwatch.cli.parser import Command, UsageError
from fleetwatch.config import Settings
from fleetwatch.output import emit_table, json_value


def run(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.storage.duck import query, table_schema

    layout = settings.layout
    timeout = settings.score.lock_timeout
    if args.schema:
        results = table_schema(layout, timeout)
    elif args.query:
        limits = settings.sql
        results = query(layout, args.query, timeout, limits.query_timeout, limits.memory_limit)
    else:
        raise UsageError('give a query, e.g. fleetwatch sql "SELECT * FROM runs", or --schema')
    fmt = "text" if args.format == "table" else args.format
    for index, result in enumerate(results):
        if fmt == "json":  # one JSON array per statement, one per line
            rows = [[json_value(v) for v in row] for row in result.rows]
            sys.stdout.write(json.dumps([dict(zip(result.columns, r, strict=True)) for r in rows]))
            sys.stdout.write("\n")
            continue
        if index and fmt in ("text", "csv"):
            sys.stdout.write("\n")  # a blank line between the results of several statements
        sys.stdout.write(emit_table(result.records(), result.columns, fmt))
    return 0


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", nargs="?", help="one or more read-only statements")
    parser.add_argument(
        "--format",
        choices=["table", "text", "csv", "json"],
        default="table",
        help="table (for people), csv or json (exact; one JSON array per statement and line)",
    )
    parser.add_argument(
        "--schema", action="store_true", help="list the tables and views, their columns, types"
    )


COMMAND = Command(
    "sql",
    "read-only SQL over runs, scores, anomalies and the Parquet aggregates",
    """
    fleetwatch sql "SELECT device_id, count(*) FROM anomalies GROUP BY 1 ORDER BY 2 DESC"
    fleetwatch sql "SELECT * FROM runs ORDER BY window_start DESC LIMIT 5" --format csv
    fleetwatch sql "SELECT sensor, avg(mean) FROM aggregates GROUP BY 1" --format json
    fleetwatch sql --schema                      # or: "SHOW TABLES", "DESCRIBE scores"
    """,
    {"": "*", "score": ("lock_timeout",), "sql": "*"},
    run,
    arguments,
)
