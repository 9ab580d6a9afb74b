"""Issue 24's net: every subcommand, given generated bad arguments, paths (missing, a file, a
folder, binary, read-only), configuration files and environment values. Each run must exit with
a documented code, say why on stderr in one line (or the documented short block: an import's
rejected rows), never print a traceback, and write nothing outside the data folder it was
given. Cases are drawn from a seeded generator (FLEETWATCH_FAULT_SEED changes them)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetwatch.cli.commands import COMMANDS
from fleetwatch.cli.parser import Command

pytestmark = pytest.mark.scenario  # ~1 min of subprocesses: CI runs it with -m scenario
SEED = int(os.environ.get("FLEETWATCH_FAULT_SEED", "20261205"))
DOCUMENTED_EXIT_CODES = {0, 1, 2, 130}
#: Commands that would wait (serve, stream) when everything they are given is right: each of
#: their cases carries at least one bad value, so they stop at once.
NEVER_ALL_GOOD = {"broker", "aggregate", "schedule", "dashboard", "demo", "simulate", "topics"}


@dataclass(frozen=True)
class Case:
    command: str
    arguments: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    what: str = ""


def bad_values(kind: str, annotation: object) -> list[str]:
    text = str(annotation)
    if kind == "duration":
        # 20 digits: past an int64 of milliseconds and a socket's time_t (tracebacks, once)
        return ["-5s", "soon", "0x10", "1e999s", "5 parsecs", "9" * 20]
    if kind == "timestamp":
        return ["yesterday", "2026-13-45T99", "0001-01-01T00:00+25:00", "9" * 40]
    if kind == "location":
        return ["ftp://host/x", "s3:///nobucket", "\x01bad"]
    if kind == "list":
        return [",,,", "a b/../c", "x" * 300]
    if "Literal" in text:
        return ["nope", ""]
    if "int" in text:
        return ["seven", "-1", "99999999999999999999", "1.5"]
    if "float" in text:
        return ["-nan", "lots", "-1e9"]
    return []


def cases(root: Path) -> list[Case]:
    rng = random.Random(SEED)
    files = root / "inputs"
    files.mkdir()
    (files / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (files / "not.toml").write_text("[kafka\nbootstrap_servers = ")
    (files / "unknown.toml").write_text("[kafka]\nbootstrap_server = 'x'\n")
    (files / "afile").write_text("a file, not a folder\n")
    (files / "folder").mkdir()
    bad_paths = {
        "missing": str(root / "no" / "such"),
        "a file": str(files / "afile"),
        "binary": str(files / "binary.bin"),
        "a folder": str(files / "folder"),
    }
    found: list[Case] = []
    for command in COMMANDS:
        settings = command.settings()
        flagged = [s for s in settings if bad_values(s.kind, s.annotation)]
        for info in rng.sample(flagged, min(4, len(flagged))):
            value = rng.choice(bad_values(info.kind, info.annotation))
            found.append(Case(command.name, (info.flag, value), what=f"{info.flag} {value!r}"))
        for name in ("missing", "a folder", "binary"):
            found.append(Case(command.name, ("--config", bad_paths[name]), what=f"--config {name}"))
        found.append(Case(command.name, ("--config", str(files / "not.toml")), what="bad TOML"))
        found.append(Case(command.name, ("--config", str(files / "unknown.toml")), what="key"))
        if any(s.name == "data_dir" for s in settings) and command.name in NEVER_ALL_GOOD:
            for name in ("a file", "binary"):
                found.append(
                    Case(command.name, ("--data-dir", bad_paths[name]), what=f"data dir {name}")
                )
        found.append(
            Case(command.name, (), (("FLEETWATCH_LOG_LEVEL", "LOUD"),), what="env log level")
        )
        found.append(Case(command.name, (), (("FLEETWATCH_PARTITON", "3"),), what="env typo"))
        found.append(Case(command.name, ("--no-such-flag", "1"), what="unknown flag"))
    for name, path in bad_paths.items():  # the positional file of import, evaluate
        found.append(Case("import", (path,), what=f"import {name}"))
        found.append(Case("evaluate", (path,), what=f"evaluate {name}"))
    for action in ("list", "show", "activate", "promote"):
        found.append(Case("models", (action, "../../etc", "v1"), what=f"models {action} bad id"))
    found.append(Case("sql", ("COPY scores TO '/tmp/x.csv'",), what="sql write"))
    found.append(Case("sql", ("SELECT * FROM read_text('/etc/passwd')",), what="sql read"))
    found.append(Case("score", ("--hour", "2026-11-22T10", "--missed"), what="score both"))
    return found


def run_case(
    case: Case, root: Path, index: int
) -> tuple[Case, subprocess.CompletedProcess[str], Path]:
    work = root / f"case{index:03d}"
    data = work / "data"
    home = work / "home"
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    env.update(
        {
            "HOME": str(home),
            "FLEETWATCH_DATA_DIR": str(data),
            "FLEETWATCH_BOOTSTRAP_SERVERS": "127.0.0.1:9",  # nothing answers: fast failures
            "FLEETWATCH_TIMEOUT": "1s",
            **dict(case.env),
        }
    )
    arguments = [case.command, *case.arguments]
    if case.command == "models" and not case.arguments:
        arguments.append("list")
    result = subprocess.run(
        [sys.executable, "-m", "fleetwatch", *arguments],
        env=env, cwd=work, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return case, result, work


def written_outside(work: Path) -> list[str]:
    allowed = {work / "data", work / "home"}
    found = []
    for path in work.rglob("*"):
        if path.is_file() and not any(path.is_relative_to(a) for a in allowed):
            found.append(str(path.relative_to(work)))
    found += [str(p) for p in (work / "home").rglob("*") if p.is_file()]
    return found


def test_no_bad_input_gets_a_traceback_or_an_undocumented_exit(tmp_path: Path) -> None:
    generated = cases(tmp_path)
    assert len(generated) > 100
    by_command: dict[str, Command] = {command.name: command for command in COMMANDS}
    assert set(by_command) <= {case.command for case in generated}
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(
            pool.map(lambda item: run_case(item[1], tmp_path, item[0]), enumerate(generated))
        )
    problems = []
    for case, result, work in outcomes:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        label = f"fleetwatch {case.command} {' '.join(case.arguments)} ({case.what})"
        if "Traceback" in result.stderr:
            problems.append(f"{label}: a traceback\n{result.stderr[-1500:]}")
        elif result.returncode not in DOCUMENTED_EXIT_CODES:
            problems.append(f"{label}: exit {result.returncode}\n{result.stderr[-500:]}")
        elif result.returncode != 0 and not (
            lines
            and lines[-1].startswith(f"fleetwatch {case.command}")
            and len(lines) <= (22 if case.command == "import" else 1)
        ):
            problems.append(f"{label}: not one line\n{result.stderr[-800:]}")
        elif case.command in NEVER_ALL_GOOD and result.returncode == 0:
            problems.append(f"{label}: exit 0 for a bad input\n{result.stdout[-300:]}")
        if outside := written_outside(work):
            problems.append(f"{label}: wrote outside the data folder: {outside[:5]}")
    assert not problems, "\n\n".join(problems[:15]) + f"\n\n({len(problems)} problems)"
