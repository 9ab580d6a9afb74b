"""``fleetwatch evaluate --suite FILE``: several labelled data sets in one run, their macro
average, and a stored baseline that fails loudly when a set gets worse.

A suite is a TOML file with one table per data set::

    [sets.skab]
    source = "../../../shared/datasets/skab/data"   # relative to this file; `simulator` too
    arguments = ["--label-columns", "changepoint", "--train-first", "400", "--window", "5s"]
    fetch = "the SKAB repository's data folder"     # printed when the source is absent

``source`` and ``arguments`` (``fleetwatch evaluate`` flags) may name ``${VARIABLE}``s of the
environment; ``${FLEETWATCH_DATASETS}`` defaults to the cache the fetch script fills
(``~/.cache/fleetwatch/datasets``). A set whose source is absent is skipped, and says how to
get it. Flags given on the command line apply to every set, over the set's own. A set's
name (1-64 of ``[A-Za-z0-9_.-]``, not starting with a dot) is also its folder under ``--keep``.

The comparison (``--compare previous.json``, a file ``--save`` wrote): a set is *worse* when its
F1 or its point-adjusted F1 fell by more than ``--margin``; any worse set fails the run (exit 1),
naming the set, the figure and both values. Sets only one of the runs has are listed, not judged.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from fleetwatch.config.values import FileTooLargeError, read_small
from fleetwatch.errors import FleetwatchError, InvalidInputError

#: The figures a comparison judges: higher is better for each.
JUDGED: Final = ("f1", "point_adjusted_f1")
#: The figures the macro average is taken of.
AVERAGED: Final = (
    "precision",
    "recall",
    "f1",
    "far_percent",
    "mar_percent",
    "point_adjusted_f1",
    "event_recall",
)
DEFAULT_MARGIN: Final = 0.02
DATASETS_VARIABLE: Final = "FLEETWATCH_DATASETS"


def default_datasets() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "fleetwatch" / "datasets"


class WorseError(FleetwatchError):
    """A suite run is worse than the stored baseline on some set."""

    exit_code = 1


@dataclass(frozen=True)
class SuiteSet:
    """One data set of a suite: where it is, the flags it is evaluated with."""

    name: str
    source: str
    arguments: list[str]
    fetch: str = ""

    def missing(self) -> str | None:
        """Why the set cannot run here (its source is absent), or None."""
        if self.source == "simulator" or Path(self.source).exists():
            return None
        hint = f"; {self.fetch}" if self.fetch else ""
        return f"{self.source} not found{hint}"


def read_suite(path: Path) -> list[SuiteSet]:
    """The sets of the suite file ``path`` (see the module docstring)."""
    try:
        document = tomllib.loads(read_small(path).decode())
    except FileNotFoundError:
        raise InvalidInputError(f"--suite {path}: no such file") from None
    except FileTooLargeError as exc:
        raise InvalidInputError(f"--suite {exc}: not a suite file") from None
    except IsADirectoryError:
        raise InvalidInputError(f"--suite {path}: a folder, not a TOML file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidInputError(f"--suite {path}: not valid TOML ({reason})") from None
    except OSError as exc:
        raise InvalidInputError(f"--suite {path}: {exc.strerror or exc}") from None
    tables = document.get("sets")
    if not isinstance(tables, dict) or not tables:
        raise InvalidInputError(
            f"--suite {path}: no [sets.NAME] tables (each: source = ..., arguments = [...])"
        )
    variables = {DATASETS_VARIABLE: str(default_datasets()), **os.environ}
    sets = []
    for name, table in tables.items():
        where = f"--suite {path}: [sets.{name}]"
        if not SET_NAME.fullmatch(name):  # it names the set's folder under --keep
            raise InvalidInputError(
                f"--suite {path}: {name!r} is not a set name (1-64 of [A-Za-z0-9_.-], not "
                "starting with a dot)"
            )
        if not isinstance(table, dict) or not isinstance(table.get("source"), str):
            raise InvalidInputError(f'{where}: needs source = "a folder, a file or simulator"')
        unknown = sorted(set(table) - {"source", "arguments", "fetch"})
        if unknown:
            raise InvalidInputError(f"{where}: unknown key {unknown[0]} (source, arguments, fetch)")
        arguments = table.get("arguments", [])
        if not isinstance(arguments, list) or not all(isinstance(a, str) for a in arguments):
            raise InvalidInputError(f"{where}: arguments must be a list of strings")
        source = _expand(table["source"], variables, where)
        if source != "simulator" and not Path(source).is_absolute():
            source = str((path.parent / source).resolve())
        sets.append(
            SuiteSet(
                str(name),
                source,
                [_expand(a, variables, where) for a in arguments],
                str(table.get("fetch", "")),
            )
        )
    return sets


#: A set's name: also its folder's name under ``--keep``.
SET_NAME: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


def _expand(text: str, variables: Mapping[str, str], where: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise InvalidInputError(f"{where}: ${{{name}}} is not set in the environment")
        return variables[name]

    return os.path.expanduser(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value, text))


def macro_average(records: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """The mean of each of :data:`AVERAGED` over the sets' records (NaN figures left out)."""
    average = {}
    for key in AVERAGED:
        values = [float(r[key]) for r in records.values() if _finite(r.get(key))]
        average[key] = sum(values) / len(values) if values else math.nan
    return average


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


@dataclass(frozen=True)
class Change:
    name: str  # the set, or "macro average"
    figure: str
    before: float
    now: float

    @property
    def drop(self) -> float:
        return self.before - self.now


def read_baseline(path: Path) -> dict[str, Any]:
    """A file ``--save`` wrote."""
    try:
        document = json.loads(read_small(path))
    except FileNotFoundError:
        raise InvalidInputError(f"--compare {path}: no such file (write one with --save)") from None
    except FileTooLargeError as exc:
        raise InvalidInputError(
            f"--compare {exc}: not a file `evaluate --suite --save` wrote"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(
            f"--compare {path}: not a file `evaluate --suite --save` wrote ({exc})"
        ) from None
    if not isinstance(document, dict) or not isinstance(document.get("sets"), dict):
        raise InvalidInputError(
            f"--compare {path}: not a file `evaluate --suite --save` wrote (no sets)"
        )
    return document


def compare(
    baseline: Mapping[str, Any], sets: Mapping[str, Mapping[str, Any]], margin: float
) -> tuple[list[Change], list[Change], list[str]]:
    """Every judged figure of the sets both runs have (``changes``), those worse by more
    than ``margin`` (``worse``), and the sets only one run has."""
    before = baseline["sets"]
    changes, worse = [], []
    for name in sorted(set(before) & set(sets)):
        for figure in JUDGED:
            old: Any = before[name].get(figure)
            new: Any = sets[name].get(figure)
            if not (_finite(old) and _finite(new)):
                continue
            change = Change(name, figure, float(old), float(new))
            changes.append(change)
            if change.drop > margin + 1e-12:
                worse.append(change)
    unmatched = sorted(set(before) ^ set(sets))
    return changes, worse, unmatched
