"""The fault suite: every guarantee of docs/guarantees.md broken on purpose (kill -9 and SIGSTOP
at seeded random points of real `fleetwatch` processes, on a local folder and on an S3 bucket),
the end state compared with an answer computed independently. ``pytest -m faults`` (CI runs
it). A new feature adds its guarantee's test here.

Kill points are either a moment (a seeded random delay) or a named point of the code
(:mod:`fleetwatch.faults`, armed through ``FLEETWATCH_FAULTS``): a named point reaches the few
milliseconds where a crash hurts most, every run."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.conftest import S3Server

#: Every run is reproducible from this seed (a test adds its own offset); CI may change it.
SEED = int(os.environ.get("FLEETWATCH_FAULT_SEED", "20261205"))


@dataclass(frozen=True)
class Backend:
    """Where a test's data directory lives, and how the test reads it back without fleetwatch."""

    name: str
    data_dir: str  # a folder or an s3:// URL
    local_dir: Path  # this machine's folder (the data directory itself when it is local)
    env: dict[str, str]
    s3: S3Server | None = None

    def names(self, dataset: str) -> list[str]:
        """Every data file of a dataset (hidden names left out), listed with plain s3fs / a
        walk, not read: a poll while a process deletes files (compaction) cannot fail."""
        return [name for name in self.listed(dataset) if name.endswith(".parquet")]

    def hidden(self, dataset: str) -> list[str]:
        """A dataset's hidden files: staged files, temporaries of writes cut short."""
        return self.listed(dataset, hidden=True)

    def listed(self, dataset: str, hidden: bool = False) -> list[str]:
        if self.s3 is None:
            root = Path(self.data_dir) / dataset
            found = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        else:
            fs: Any = self.s3.filesystem()
            prefix = f"{self.data_dir.removeprefix('s3://')}/{dataset}/"
            found = [key[len(prefix) :] for key in fs.find(prefix)]
        return sorted(name for name in found if ("/." in f"/{name}") == hidden)

    def files(self, dataset: str) -> dict[str, bytes]:
        """Every data file of a dataset (as :meth:`names`), read with plain s3fs / open."""
        if self.s3 is None:
            root = Path(self.data_dir) / dataset
            return {name: (root / name).read_bytes() for name in self.names(dataset)}
        fs: Any = self.s3.filesystem()
        prefix = f"{self.data_dir.removeprefix('s3://')}/{dataset}/"
        return {name: fs.cat_file(prefix + name) for name in self.names(dataset)}

    def frame(self, dataset: str) -> pd.DataFrame:
        frames = [pd.read_parquet(io.BytesIO(data)) for data in self.files(dataset).values()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "local":
        folder = tmp_path / "data"
        yield Backend("local", str(folder), folder, {"FLEETWATCH_DATA_DIR": str(folder)})
        return
    s3: S3Server = request.getfixturevalue("s3_server")
    url = f"{s3.bucket()}/fleet"
    machine = tmp_path / "machine"
    env = {**s3.env, "FLEETWATCH_DATA_DIR": url, "FLEETWATCH_LOCAL_DIR": str(machine)}
    yield Backend("s3", url, machine, env, s3)


def rng_for(test: str, backend: str) -> random.Random:
    return random.Random(f"{SEED}-{test}-{backend}")


def fleetwatch(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A real `fleetwatch` process, its output appended to ``log``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "fleetwatch", *args],
            env={**base, **env},
            stdout=handle,
            stderr=handle,
        )


def processes_of(data_dir: str) -> list[int]:
    """Live processes (not zombies) whose environment names ``data_dir`` as their
    ``FLEETWATCH_DATA_DIR``: what a `fleetwatch` process started here left behind."""
    wanted = f"FLEETWATCH_DATA_DIR={data_dir}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environment = handle.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if wanted in environment and state != "Z":
            found.append(int(entry))
    return found


def assert_same_windows_as_a_clean_run(got: Backend, clean: Backend, records: list[Any]) -> None:
    """``got``'s windows are a clean worker's over the same topic (``clean``), each once, and
    its windows plus its late sink hold every valid reading of ``records`` (the topic's records,
    parsed here independently of the worker)."""
    from fleetwatch.telemetry import InvalidMessage, parse_message

    keys = ["device_id", "sensor", "window_start"]
    windows = got.frame("aggregates")
    assert not windows.duplicated(keys).any(), "duplicate windows"
    valid = 0
    for record in records:
        try:
            valid += len(parse_message(record.value, key=record.key).readings)
        except InvalidMessage:
            continue
    assert int(windows["count"].sum()) + len(got.frame("late")) == valid
    want = clean.frame("aggregates")
    assert len(windows) == len(want) > 1000
    pd.testing.assert_frame_equal(
        windows.sort_values(keys).reset_index(drop=True)[[*keys, "count"]],
        want.sort_values(keys).reset_index(drop=True)[[*keys, "count"]],
    )
