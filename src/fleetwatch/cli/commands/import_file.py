"""``fleetwatch import FILE``: a CSV/Parquet file of readings, published or backfilled."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fleetwatch.cli.parser import Command
from fleetwatch.config import Settings
from fleetwatch.output import emit_record


def run(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.ingest.importer import import_file

    summary = import_file(settings, args.file)
    emit_record("fleetwatch import: summary", summary.as_record(), settings.import_.format)
    shown = summary.rejected[:20]
    label = "line" if args.file.suffix.lower() != ".parquet" else "row"
    for row in shown:
        print(f"{args.file}:{label} {row.line}: {row.reason}", file=sys.stderr)
    if len(summary.rejected) > len(shown):
        print(
            f"... and {len(summary.rejected) - len(shown)} more invalid rows "
            "(write them all with --rejects PATH)",
            file=sys.stderr,
        )
    for column in summary.label_like:
        print(
            f"fleetwatch import: warning: column {column!r} looks like a label and was imported "
            f"as a sensor; to keep it out of the readings pass --label-columns {column!r}",
            file=sys.stderr,
        )
    if summary.readings_closed and summary.closed_through is not None:
        print(
            f"fleetwatch import: warning: {summary.readings_closed} readings are for windows "
            f"the aggregation in {settings.data_dir} closed already (closed through "
            f"{summary.closed_through:%Y-%m-%dT%H:%M}Z): they go to its late sink; for a file "
            "of history, use --backfill",
            file=sys.stderr,
        )
    if summary.messages_failed:
        print(
            f"fleetwatch import: error: {summary.messages_failed} messages were not delivered "
            f"({summary.first_error})",
            file=sys.stderr,
        )
        return 1
    return 1 if summary.rejected else 0


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="a .csv or .parquet file")


COMMAND = Command(
    "import",
    "publish a CSV/Parquet file of readings, or backfill history into the aggregates",
    """
    fleetwatch import readings.csv                      # TS,Device,Tag,Value rows
    fleetwatch import pump7.csv --device-id pump-0007 --assume-timezone UTC
    fleetwatch import valve1-0.csv --device-id valve1-0 --assume-timezone UTC \\
        --sanitize-names --label-columns anomaly,changepoint --backfill
    fleetwatch import sensor_data.csv --backfill        # history: straight into aggregates
    """,
    {
        "": "*",
        "kafka": "*",
        "import": "*",
        "aggregate": ("window", "parquet_compression"),
    },
    run,
    arguments,
)
