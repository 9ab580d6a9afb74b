"""Values settings are made of: secrets, durations, timestamps, and how a string becomes each."""

from __future__ import annotations

import math
import re
import types
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from fleetwatch.storage.store import check_location

#: The most a command reads of a file it reads whole (a configuration, a suite, a baseline): they
#: are a few KiB; past this it is no such file (``/dev/zero`` would fill the memory).
MAX_SMALL_FILE = 16 << 20


class FileTooLargeError(ValueError):
    """A file read whole is larger than :data:`MAX_SMALL_FILE`."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} is larger than {MAX_SMALL_FILE >> 20} MiB")


def read_small(path: Path) -> bytes:
    """The bytes of ``path``, read whole (a pipe too), refused past :data:`MAX_SMALL_FILE`
    (:class:`FileTooLargeError`) before more is read; ``OSError`` as ``open`` raises it."""
    with path.open("rb") as handle:
        data = handle.read(MAX_SMALL_FILE + 1)
    if len(data) > MAX_SMALL_FILE:
        raise FileTooLargeError(path)
    return data


class Secret:
    """A string that never shows itself in a repr, a log line or a printed settings dump."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The real value, for handing to a client library and nowhere else."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
#: No duration is longer: a longer one is a slip (a clock, a socket or an int64 of milliseconds
#: cannot hold it), refused where it is read rather than where it overflows.
MAX_DURATION = 100 * 365.25 * 86400.0


def parse_duration(text: str | float) -> float:
    """Seconds in a duration such as ``90``, ``30s``, ``5m``, ``2h``, ``7d``.

    >>> parse_duration("2h"), parse_duration("1.5m"), parse_duration(45)
    (7200.0, 90.0, 45.0)
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    elif match := _DURATION_RE.match(str(text)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    else:
        raise ValueError(f"bad duration {text!r} (use e.g. 30s, 5m, 2h, 7d)")
    if not 0 <= seconds <= MAX_DURATION:  # also NaN, from a TOML float
        raise ValueError(f"bad duration {text!r} (0 to 100 years, e.g. 30s, 5m, 2h, 7d)")
    return seconds


def parse_timestamp(text: str | datetime) -> datetime:
    """An aware UTC datetime from ISO-8601; ``2026-11-22T10`` means 10:00, no offset means UTC.

    >>> parse_timestamp("2026-11-22T10").isoformat()
    '2026-11-22T10:00:00+00:00'
    """
    if isinstance(text, datetime):
        value = text
    else:
        raw = str(text).strip()
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}", raw):
            raw += ":00"
        try:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"bad timestamp {text!r} (use ISO-8601, e.g. 2026-11-22T10:00:00Z)"
            ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def format_duration(seconds: float) -> str:
    """A duration as a person writes it (the inverse of :func:`parse_duration`).

    >>> format_duration(3600), format_duration(90), format_duration(0.5), format_duration(86400)
    ('1h', '90s', '500ms', '1d')
    """
    for unit, size in (("w", 604800.0), ("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def coerce(raw: Any, annotation: Any, meta: Mapping[str, Any]) -> Any:
    """Turn a raw value (a TOML value, an env string or an argparse string) into ``annotation``."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        nullable = len(members) < len(get_args(annotation))
        if nullable and (
            raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "null"))
        ):
            return None
        return coerce(raw, members[0], meta)
    kind = meta.get("kind", "plain")
    if isinstance(raw, list | dict) and kind != "list":
        # a TOML array or table where one value goes (data_dir = ['x'] made a folder "['x']")
        raise ValueError(f"{raw!r} is not one value: give one, e.g. a string or a number")
    if kind == "duration":
        value: Any = parse_duration(raw)
    elif kind == "timestamp":
        value = parse_timestamp(raw)
    elif kind == "location":
        value = parse_location(str(raw))
    elif kind == "list":
        items = raw if isinstance(raw, list) else str(raw).split(",")
        value = [str(item).strip() for item in items if str(item).strip()]
        if not value and not isinstance(raw, list) and str(raw).strip():
            # ",,," names nothing: a slip, not the default (an empty value is the default)
            raise ValueError(f"{raw!r} names nothing: give comma-separated names")
    elif origin is Literal:
        choices = get_args(annotation)
        text = str(raw)
        match = next((c for c in choices if str(c).lower() == text.lower()), None)
        if match is None:
            raise ValueError(f"{text!r} is not one of {', '.join(map(str, choices))}")
        value = match
    elif annotation is bool:
        if isinstance(raw, bool):
            value = raw
        elif str(raw).strip().lower() in ("1", "true", "yes", "on"):
            value = True
        elif str(raw).strip().lower() in ("0", "false", "no", "off"):
            value = False
        else:
            raise ValueError(f"{raw!r} is not a boolean (use true or false)")
    elif annotation is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError(f"{raw!r} is not a whole number")
        try:
            value = int(str(raw).replace("_", "")) if not isinstance(raw, int | float) else int(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a whole number") from None
    elif annotation is float:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{raw!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"{raw!r} is not a finite number")
    elif annotation is Path:
        value = Path(str(raw)).expanduser()
    elif annotation is Secret:
        value = raw if isinstance(raw, Secret) else Secret(str(raw))
    elif annotation is str:
        if not isinstance(raw, str):
            raise ValueError(f"{raw!r} is not a string")
        value = raw
    else:  # pragma: no cover - a declaration error, not a user error
        raise TypeError(f"unsupported setting type {annotation!r}")
    minimum, maximum = meta.get("minimum"), meta.get("maximum")
    show = format_duration if kind == "duration" else repr
    if minimum is not None and value < minimum:
        raise ValueError(f"{show(value)} is below the minimum {show(minimum)}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{show(value)} is above the maximum {show(maximum)}")
    return value


def parse_location(raw: str) -> Path | str:
    """A data directory: a local folder (a :class:`~pathlib.Path`), or an object-store URL
    (its text, the scheme and bucket checked): only the store opens it.

    >>> parse_location("s3://fleet/prod/")
    's3://fleet/prod'
    >>> parse_location("file:///tmp/x")
    PosixPath('/tmp/x')
    """
    text = check_location(raw)
    return text if "://" in text else Path(text).expanduser()
