"""The README's examples, as written, against a demo's data folder.

Every ``fleetwatch ...`` line of the README's ``bash`` blocks is taken as it stands (in the
folder that holds the demo's ``./fleetwatch-data``, the default data folder) and every query of
its ``sql`` block is run through ``fleetwatch sql``. Commands that read or score the data folder
are run and must succeed; those that need a Kafka broker or run until stopped (``broker``,
``topics``, ``simulate``, ``import``, ``aggregate``, ``schedule``, ``demo``) are parsed with
their settings, which must be valid. The demo starts at 2026-11-22T06:00Z, the hours the
examples name.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fleetwatch.cli import parser
from fleetwatch.cli.parser import overrides
from fleetwatch.config import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.scenario]
ROOT = Path(__file__).resolve().parents[2]
RUN = {"sql", "status", "models", "score", "train"}


def readme_commands() -> tuple[list[list[str]], list[str]]:
    text = (ROOT / "README.md").read_text()
    commands: list[list[str]] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["fleetwatch"]:
                commands.append(words[1:])
    queries = []
    questions = (ROOT / "docs" / "sql-questions.md").read_text()  # the README links them
    for block in re.findall(r"```sql\n(.*?)```", text + questions, flags=re.S):
        statement: list[str] = []
        for line in block.splitlines():
            if line.startswith("--"):
                continue
            statement.append(line)
            if line.rstrip().endswith(";"):
                queries.append(" ".join(statement).rstrip(";"))
                statement = []
    return commands, queries


def test_the_readme_has_examples_of_every_command() -> None:
    commands, queries = readme_commands()
    assert {c[0] for c in commands} >= RUN | {"broker", "topics", "simulate", "import",
                                              "aggregate", "schedule", "demo"}  # fmt: skip
    assert len(queries) == 12


def test_every_readme_example_runs_as_written(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    demo = subprocess.run(
        [sys.executable, "-m", "fleetwatch", "demo", "--data-dir", "fleetwatch-data",
         "--start", "2026-11-22T06:00Z", "--timeout", "170s"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=200, check=False,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    commands, queries = readme_commands()
    commands += [["sql", query] for query in queries]
    (tmp_path / "ranges.csv").write_text(  # the file `train --ranges ranges.csv` reads
        "device_id,since,until\npump-0001,2026-11-22T06,2026-11-22T08\n"
    )
    failures = []
    cluster = None
    for words in commands:
        if words[0] not in RUN:
            args = parser().parse_args(words)  # a UsageError fails the test, naming it
            load_settings(environ={}, overrides=overrides(args))
            continue
        if "--dask-scheduler" in words:  # the example's cluster: a local one, its address
            from distributed import LocalCluster

            cluster = cluster or LocalCluster(n_workers=1, processes=True, dashboard_address=None)
            words = [*words]
            words[words.index("--dask-scheduler") + 1] = cluster.scheduler_address
        result = subprocess.run(
            [sys.executable, "-m", "fleetwatch", *words],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if result.returncode != 0 or "Traceback" in result.stderr:
            failures.append((words, result.returncode, result.stderr.strip()[-500:]))
    if cluster is not None:
        cluster.close()
    assert failures == [], "\n".join(map(str, failures))
