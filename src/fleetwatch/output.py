"""Printing results for people (text) and scripts (``--format json|csv``), and progress bars."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # rich takes 0.05 s to import: only when a bar is shown
    from rich.progress import Progress


#: NaN and the infinities, which JSON has no number for, as the strings Python, pandas and
#: JavaScript read back (``float("NaN")``, ``float("-Infinity")``): never null, which is NULL.
NOT_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def json_value(value: Any) -> Any:
    """A value as JSON carries it exactly: times as ISO-8601, a float as its shortest exact
    form, a decimal as a number; NaN and infinities as ``"NaN"``, ``"Infinity"``,
    ``"-Infinity"`` (null is NULL only).

    >>> [json_value(v) for v in (1.5, float("nan"), float("-inf"), None)]
    [1.5, 'NaN', '-Infinity', None]
    """
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else NOT_FINITE[repr(value)]
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [json_value(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return json_value(value.item())
    return str(value)


def _csv_value(value: Any) -> Any:
    value = json_value(value)
    if isinstance(value, dict | list):
        return json.dumps(value)
    return "" if value is None else value


def _text_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_text_value(v)}" for k, v in value.items()) or "-"
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)


def emit_record(title: str, record: Mapping[str, Any], fmt: str, out: TextIO | None = None) -> None:
    """One summary record: aligned ``key: value`` lines, one JSON object, or a header+row CSV.
    The machine formats are exact (no rounding); the text one is for people."""
    out = out or sys.stdout
    if fmt == "json":
        out.write(json.dumps(json_value(dict(record))) + "\n")
    elif fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=list(record), lineterminator="\n")
        writer.writeheader()
        writer.writerow({k: _csv_value(v) for k, v in record.items()})
    else:
        out.write(f"{title}\n")
        width = max((len(k) for k in record), default=0)
        for key, value in record.items():
            out.write(f"  {key:<{width}}  {_text_value(value)}\n")
    out.flush()


def emit_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], fmt: str) -> str:
    """Rows as an aligned text table, one JSON array, or CSV; returned as a string. The
    machine formats are exact (floats as Python's shortest exact form, integers as integers);
    the text one rounds for people."""
    if fmt == "json":
        return json.dumps([{c: json_value(r.get(c)) for c in columns} for r in rows]) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[_csv_value(r.get(c)) for c in columns] for r in rows])
        return buffer.getvalue()
    text = [[_text_value(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in text]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in text
    ]
    return "\n".join(lines) + "\n"


@contextmanager
def progress_bar(description: str, total: float | None, enabled: bool) -> Iterator[Progress | None]:
    """A rich progress bar on stderr (rate, elapsed, remaining), or None when not wanted/no TTY."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    stderr_console = Console(stderr=True)
    if not stderr_console.is_terminal:
        yield None
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=stderr_console, transient=False) as progress:
        progress.add_task(description, total=total, rate="")
        yield progress
