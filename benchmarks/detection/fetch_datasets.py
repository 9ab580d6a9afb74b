"""Fetch the public labelled data sets of the detection suite into a cache outside the repository.

    python benchmarks/detection/fetch_datasets.py        # every set, ~/.cache/fleetwatch/datasets
    python benchmarks/detection/fetch_datasets.py tep --cache /data/fw-datasets

Each set becomes a folder of CSV files (one device each: ``timestamp``, its sensors and an
``anomaly`` label column) that ``fleetwatch evaluate`` reads as it is, plus, beside that folder,
``ranges.csv`` (each
device's training range, for ``--train-ranges``) where the set comes with its own split. Nothing
is ever written into the repository, and the data are never committed (their licences are their
authors'). Sets (see docs/detection.md, "The suite"):

- ``tep``: the Tennessee Eastman process (Braatz's simulation data, github.com/camaramm/
  tennessee-eastman-profBraatz): 52 sensors of one chemical plant, a reading every 3 minutes;
  one device per fault (IDV 1-21, and fault 0: no fault): 500 normal readings to train on, then
  48 h in which the fault starts after 8 h. Multi-sensor, many faults are slow drifts.
- ``msl``: NASA's Mars Science Laboratory telemetry (Hundman et al. 2018, as in github.com/
  imperial-qore/TranAD): 27 channels, each one sensor (its telemetry value) read every 2
  minutes, i.e. further apart than the 60 s windows; the given training part, then the test
  part with labelled anomaly sequences (level shifts, contextual anomalies).
- ``ucr``: the UCR anomaly archive's four InternalBleeding series (Keogh et al. 2021, as in
  github.com/imperial-qore/TranAD): single-sensor physiological series with one anomaly each,
  a reading every 10 s, training part given in the file's name.

Sources: GitHub's raw files, or, offline, local clones: ``--mirror DIR`` where DIR holds
``owner+name/repo`` git folders (``FLEETWATCH_DATASET_MIRROR`` too).
"""

from __future__ import annotations

import argparse
import ast
import csv
import io
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

DEFAULT_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fleetwatch" / "datasets"
)
START = datetime(2026, 1, 1, tzinfo=UTC)
TEP = ("camaramm/tennessee-eastman-profBraatz", "0643318858ce7c87292bd59820b459e12a13d009")
TRANAD = ("imperial-qore/TranAD", "7ffb98d0c18189cc3d9ab732b4cb0278200a0af0")
UCR_FILES = (
    "135_UCR_Anomaly_InternalBleeding16_1200_4187_4199.txt",
    "136_UCR_Anomaly_InternalBleeding17_1600_3198_3309.txt",
    "137_UCR_Anomaly_InternalBleeding18_2300_4485_4587.txt",
    "138_UCR_Anomaly_InternalBleeding19_3000_4187_4197.txt",
)


class Source:
    """Files of a pinned commit of a GitHub repository: from a local mirror, or downloaded."""

    def __init__(self, mirror: Path | None) -> None:
        self.mirror = mirror

    def get(self, repository: tuple[str, str], path: str) -> bytes:
        name, commit = repository
        if self.mirror is not None:
            git_dir = self.mirror / name.replace("/", "+") / "repo"
            if git_dir.exists():
                done = subprocess.run(
                    ["git", "-C", str(git_dir), "show", f"HEAD:{path}"],  # noqa: S607 - git on PATH
                    capture_output=True,
                    check=False,
                )
                if done.returncode == 0:
                    return done.stdout
        url = f"https://raw.githubusercontent.com/{name}/{commit}/{path}"
        with urllib.request.urlopen(url, timeout=60) as response:
            return bytes(response.read())


def write_device(
    folder: Path,
    device: str,
    values: np.ndarray,
    sensors: list[str],
    labels: np.ndarray,
    step: timedelta,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{device}.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", *sensors, "anomaly"])
        for index, (row, label) in enumerate(zip(values, labels, strict=True)):
            at = START + index * step
            writer.writerow(
                [at.strftime("%Y-%m-%dT%H:%M:%SZ"), *(f"{v:.6g}" for v in row), int(label)]
            )


def write_ranges(folder: Path, ranges: dict[str, int], step: timedelta) -> None:
    """Each device's training range: its first ``n`` readings (``until`` is exclusive)."""
    with (folder.parent / "ranges.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["device_id", "since", "until"])
        for device, count in sorted(ranges.items()):
            until = START + count * step
            writer.writerow(
                [device, START.strftime("%Y-%m-%dT%H:%M:%SZ"), until.strftime("%Y-%m-%dT%H:%M:%SZ")]
            )


def tep(source: Source, folder: Path) -> None:
    step = timedelta(minutes=3)
    sensors = [f"xmeas_{i}" for i in range(1, 42)] + [f"xmv_{i}" for i in range(1, 12)]
    normal = np.loadtxt(io.BytesIO(source.get(TEP, "d00.dat")))
    normal = normal.T if normal.shape[0] == len(sensors) else normal  # d00.dat is transposed
    for fault in range(22):
        test = np.loadtxt(io.BytesIO(source.get(TEP, f"d{fault:02d}_te.dat")))
        labels = np.zeros(len(normal) + len(test), dtype=int)
        if fault:
            labels[len(normal) + 160 :] = 1  # the fault starts after 8 h (160 readings)
        write_device(folder, f"fault{fault:02d}", np.vstack([normal, test]), sensors, labels, step)


def msl(source: Source, folder: Path) -> None:
    step = timedelta(minutes=2)
    table = source.get(TRANAD, "data/SMAP_MSL/labeled_anomalies.csv").decode()
    ranges = {}
    for row in csv.DictReader(io.StringIO(table)):
        if row["spacecraft"] != "MSL":
            continue
        channel = row["chan_id"]
        train = np.load(io.BytesIO(source.get(TRANAD, f"data/SMAP_MSL/train/{channel}.npy")))
        test = np.load(io.BytesIO(source.get(TRANAD, f"data/SMAP_MSL/test/{channel}.npy")))
        labels = np.zeros(len(train) + len(test), dtype=int)
        for begin, end in ast.literal_eval(row["anomaly_sequences"]):
            labels[len(train) + begin : len(train) + end + 1] = 1
        device = channel.lower()
        values = np.concatenate([train[:, :1], test[:, :1]])  # the telemetry value
        write_device(folder, device, values, ["value"], labels, step)
        ranges[device] = len(train)
    write_ranges(folder, ranges, step)


def ucr(source: Source, folder: Path) -> None:
    step = timedelta(seconds=10)
    ranges = {}
    for name in UCR_FILES:
        values = np.loadtxt(io.BytesIO(source.get(TRANAD, f"data/UCR/{name}")))
        parts = name.removesuffix(".txt").split("_")
        train_end, begin, end = (int(p) for p in parts[-3:])
        labels = np.zeros(len(values), dtype=int)
        labels[begin - 1 : end] = 1  # 1-based, inclusive
        device = parts[3].lower()
        write_device(folder, device, values[:, None], ["value"], labels, step)
        ranges[device] = train_end
    write_ranges(folder, ranges, step)


SETS: dict[str, Callable[[Source, Path], None]] = {"tep": tep, "msl": msl, "ucr": ucr}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="*", help=f"of {', '.join(SETS)} (default: every set)")
    parser.add_argument(
        "--cache", type=Path, default=Path(os.environ.get("FLEETWATCH_DATASETS", DEFAULT_CACHE))
    )
    parser.add_argument("--mirror", type=Path, default=os.environ.get("FLEETWATCH_DATASET_MIRROR"))
    parser.add_argument("--force", action="store_true", help="fetch again even when cached")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sets) - set(SETS))
    if unknown:
        parser.error(f"unknown set {', '.join(unknown)}: the sets are {', '.join(SETS)}")
    source = Source(Path(args.mirror) if args.mirror else None)
    failed = 0
    for name in args.sets or list(SETS):
        folder = args.cache / name
        if (folder / ".complete").exists() and not args.force:
            print(f"{name}: cached in {folder}")
            continue
        partial = folder.with_name(f"{name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            SETS[name](source, partial / "data")
        except (OSError, ValueError) as exc:
            print(f"{name}: not fetched: {exc}", file=sys.stderr)
            failed += 1
            continue
        (partial / ".complete").touch()
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        print(f"{name}: {len(list((folder / 'data').glob('*.csv')))} devices in {folder / 'data'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
