"""Printing results for people (text) and scripts (``--format json|csv``), and progress bars."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # rich takes 0.05 s to import: only when a bar is shown
    from rich.progress import Progress


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def emit_record(title: str, record: Mapping[str, Any], fmt: str, out: TextIO | None = None) -> None:
    """One summary record: aligned ``key: value`` lines, one JSON object, or a header+row CSV."""
    out = out or sys.stdout
    plain = {k: _plain(v) for k, v in record.items()}
    if fmt == "json":
        out.write(json.dumps(plain, sort_keys=False) + "\n")
    elif fmt == "csv":
        flat = {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in plain.items()}
        writer = csv.DictWriter(out, fieldnames=list(flat), lineterminator="\n")
        writer.writeheader()
        writer.writerow(flat)
    else:
        out.write(f"{title}\n")
        width = max((len(k) for k in plain), default=0)
        for key, value in plain.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
            out.write(f"  {key:<{width}}  {value}\n")
    out.flush()


def emit_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], fmt: str) -> str:
    """Rows as an aligned text table, JSON lines array or CSV; returned as a string."""
    plain_rows = [{c: _plain(r.get(c)) for c in columns} for r in rows]
    if fmt == "json":
        return json.dumps(plain_rows) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(plain_rows)
        return buffer.getvalue()
    text = [[("" if r[c] is None else str(r[c])) for c in columns] for r in plain_rows]
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
