"""Scoring an hour for many devices: ``fleetwatch score`` against what a competent user would write.

    python benchmarks/score.py --data-dir /tmp/fw-score          # 10,000 devices, kept for reuse
    python benchmarks/score.py --devices 2000 --rounds 5 --format json
    python benchmarks/score.py --data-dir /tmp/fw-score --variants  # A/B of fleetwatch's tricks

Setup: one model per device (fleetwatch's pipeline, OneClassSVM nu=0.01) trained on a day
(1,440) of one-minute windows, saved through the registry (not timed); the model pack built as
``fleetwatch train`` builds it (timed, printed apart); the hour's aggregates written as Parquet
(60 windows x 10 sensors a device). Then, per round, each as a command (interpreter start
included, fleetwatch's bytecode compiled as an installed package has it):

(a) the script a competent user writes for a scheduled run (``SCRIPT`` below): the hour's
    Parquet read with pandas and pivoted to each device's feature matrix, every model loaded
    with ``joblib.load`` and scored with ``decision_function`` under ``joblib.Parallel`` over
    the same number of workers (chunks of devices), the scores written to DuckDB;
(b) the same scoring with the models and features already in memory: one process, a
    ``decision_function`` per device, nothing else (the floor of the per-model approach);
(c) ``fleetwatch score --hour``: Parquet in, model checks (stat + CRC-32 of the pack), forked
    workers, DuckDB out.

Printed: medians of the rounds, the ratios a/c and b/c with the absolute figures, (a)'s phases,
the largest difference to scikit-learn's scores, the pack's build time, and the peak RSS of
(c)'s process and its largest worker. ``--variants`` also times (c) with one piece of its
machinery turned off at a time (in the launcher only), for the A/B that decides what stays.
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa

import fleetwatch
from fleetwatch.scoring.features import feature_names
from fleetwatch.scoring.journal import Row
from fleetwatch.scoring.kinds.svm import extended_from_decision
from fleetwatch.scoring.pack import ModelPack
from fleetwatch.scoring.registry import ModelRegistry
from fleetwatch.scoring.train import FitJob, Fitted, fit_one, publish
from fleetwatch.storage.layout import DataLayout
from fleetwatch.storage.models import ESTIMATOR, PARAMS
from fleetwatch.storage.parquet import AGGREGATE_SCHEMA, write_table
from launch import launcher  # benchmarks/launch.py

HOUR = datetime(2026, 11, 22, 10, tzinfo=UTC)
SENSORS = [f"s{i:02d}" for i in range(10)]
NAMES = feature_names(SENSORS)


def device_features(device: int, rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = 10.0 + device % 97
    means = base + rng.normal(0, 1, (rows, len(SENSORS)))
    stds = np.abs(rng.normal(1, 0.1, (rows, len(SENSORS))))
    columns = []
    for s in range(len(SENSORS)):
        columns += [
            means[:, s],
            stds[:, s],
            means[:, s] - 2 * stds[:, s],
            means[:, s] + 2 * stds[:, s],
            np.full(rows, 60.0),  # readings in the window
        ]
    return np.column_stack(columns)


PARAMETERS = {"kind": "device", "nu": 0.01, "gamma": "scale", "kernel": "rbf", "target_far": 0.001}


def train_one(args: tuple[int, str]) -> tuple[str, Fitted]:
    """As a ``fleetwatch train`` worker fits a device (threshold held out by time); its
    scikit-learn pipeline also written where the baseline script keeps its models, one
    ``.joblib`` a device, and left out of the registry's row (as ``train`` does by default)."""
    device, root = args
    name = f"dev-{device:05d}"
    matrix = device_features(device, 1440, device)
    job = FitJob(name, matrix, NAMES, PARAMETERS, True, HOUR - timedelta(days=1), HOUR, "yes")
    fitted = fit_one(job)
    assert fitted.row is not None
    (Path(root) / f"{name}.joblib").write_bytes(fitted.row.files[ESTIMATOR])
    manifest = json.loads(fitted.row.manifest)
    del manifest["sha256"][ESTIMATOR]
    row = Row(name, json.dumps(manifest).encode(), {PARAMS: fitted.row.files[PARAMS]})
    return name, dataclasses.replace(fitted, row=row, packed=None)


def write_hour(data: Path, devices: int) -> dict[str, np.ndarray]:
    matrices = {}
    parts = []
    starts = pd.date_range(HOUR, periods=60, freq="1min", tz="UTC")
    for device in range(devices):
        matrix = device_features(device, 60, 10_000 + device)
        matrices[f"dev-{device:05d}"] = matrix
        for s, sensor in enumerate(SENSORS):
            block = matrix[:, s * 5 : s * 5 + 5]
            parts.append(
                pd.DataFrame(
                    {
                        "device_id": f"dev-{device:05d}",
                        "sensor": sensor,
                        "window_start": starts,
                        "window_end": starts + pd.Timedelta(minutes=1),
                        "count": block[:, 4].astype(np.int64),
                        "mean": block[:, 0],
                        "std": block[:, 1],
                        "min": block[:, 2],
                        "max": block[:, 3],
                    }
                )
            )
    frame = pd.concat(parts, ignore_index=True)
    for column in ("window_start", "window_end"):
        frame[column] = frame[column].astype("datetime64[ms, UTC]")
    store = DataLayout.open(data).store
    folder = f"aggregates/date={HOUR:%Y-%m-%d}/hour={HOUR:%H}"
    chunk = len(frame) // 4 + 1
    for i in range(4):  # as four partitions' files
        table = pa.Table.from_pandas(
            frame.iloc[i * chunk : (i + 1) * chunk], schema=AGGREGATE_SCHEMA, preserve_index=False
        )
        write_table(store, f"{folder}/p{i:04d}-{i:012d}-{i:012d}.parquet", table)
    return matrices


#: (a): the scheduled script a competent user writes (run as ``python -c SCRIPT DATA HOUR N``).
SCRIPT = """
import json, sys, time
from pathlib import Path
import duckdb, joblib, numpy as np, pandas as pd
from joblib import Parallel, delayed

data, hour, workers = Path(sys.argv[1]), pd.Timestamp(sys.argv[2]), int(sys.argv[3])
# the models' folder and their features: this benchmark's (a .joblib a device, 5 statistics a
# sensor), or those of benchmarks/train.py's plain loop (benchmarks/fleet.py: its 4
# statistics, in the loop's own pivot order)
models = Path(sys.argv[4]) if len(sys.argv) > 4 else data / "baseline-models"
plain = len(sys.argv) > 4
stats = ["mean", "std", "min", "max"] if plain else ["mean", "std", "min", "max", "count"]
t0 = time.perf_counter()
folder = data / "aggregates" / f"date={hour:%Y-%m-%d}" / f"hour={hour:%H}"
frame = pd.read_parquet(folder)
wide = frame.pivot_table(
    index=["device_id", "window_start"], columns="sensor", values=stats, aggfunc="first",
)
sensors = sorted(frame["sensor"].unique())
columns = [(stat, s) for s in sensors for stat in stats]
jobs = []
for device, rows in wide.groupby(level=0):
    matrix = (rows if plain else rows[columns]).to_numpy(dtype=float)
    jobs.append((device, rows.index.get_level_values(1).to_numpy(), matrix))
t1 = time.perf_counter()

def score(chunk):
    out = []
    for device, starts, matrix in chunk:
        model = joblib.load(models / f"{device}.joblib")
        out.append((device, starts, model.decision_function(matrix)))
    return out

chunks = [jobs[i : i + 500] for i in range(0, len(jobs), 500)]
scored = [r for part in Parallel(n_jobs=workers)(delayed(score)(c) for c in chunks) for r in part]
t2 = time.perf_counter()
result = pd.DataFrame({
    "device_id": np.repeat([d for d, _, _ in scored], [len(s) for _, _, s in scored]),
    "window_start": np.concatenate([w for _, w, _ in scored]),
    "score": np.concatenate([s for _, _, s in scored]),
})
with duckdb.connect(str(data / "baseline.duckdb")) as db:
    db.execute("CREATE OR REPLACE TABLE scores AS SELECT * FROM result")
t3 = time.perf_counter()
print(json.dumps({"read_s": t1 - t0, "load_score_s": t2 - t1, "write_s": t3 - t2}))
"""


def in_memory_loop(
    root: Path, matrices: dict[str, np.ndarray]
) -> tuple[float, dict[str, np.ndarray]]:
    """(b): the models and features already in memory, one decision_function per device.
    Returned: its time, and scikit-learn's values on fleetwatch's score scale (log1p of the
    decision value over rho; NaN at its floor), for the agreement check."""
    models = {d: joblib.load(root / f"{d}.joblib") for d in matrices}
    started = time.perf_counter()
    out = {device: models[device].decision_function(matrix) for device, matrix in matrices.items()}
    seconds = time.perf_counter() - started
    rho = {d: -float(m.named_steps["svm"].intercept_[0]) for d, m in models.items()}
    return seconds, {d: extended_from_decision(v, rho[d]) for d, v in out.items()}


#: Runs the CLI as ``fleetwatch ...`` does and reports its peak RSS (and its workers') on stderr.
#: ``FW_BENCH_OFF`` turns one piece of scoring's machinery off, here only, for the A/B.
LAUNCHER = launcher("""
import os
off = os.environ.get("FW_BENCH_OFF", "")
if off == "pack":  # every model from its registry files, as without a pack
    import fleetwatch.scoring.pack as pack, fleetwatch.scoring.score as score
    pack.ModelPack.load = lambda self, device_id: None
    pack.ModelPack.preload = lambda self, devices, stop=None: 0
    score.refresh_quietly = lambda *a, **k: 0
elif off == "explanations":  # anomalies stored without their top sensors
    import fleetwatch.scoring.score as score
    score.explain_many = lambda kind, scorers, *a: [[] for _ in scorers]
elif off == "parts":  # the whole hour read at once, whatever its size (before issue 26)
    os.environ["FLEETWATCH_SCORE_PART_ROWS"] = str(1 << 62)
""")
VARIANTS = ("pack", "explanations", "parts")


def run_cli(command: list[str], env: dict[str, str]) -> tuple[float, dict[str, float], Any]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *command],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    return seconds, json.loads(done.stderr.strip().splitlines()[-1]), json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--format", choices=["text", "json"], default="text")
    parser.add_argument("--variants", action="store_true", help="also time fleetwatch A/B")
    parser.add_argument(
        "--executor",
        choices=["local", "dask"],
        default="local",
        help="dask: also time `score --executor dask` on a LocalCluster of --workers processes",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="keep the models here and reuse them on the next run (training 10k takes minutes)",
    )
    args = parser.parse_args()

    data = args.data_dir or Path(tempfile.mkdtemp(prefix="fw-bench-score-"))
    root = data / "baseline-models"  # the baseline script's models, a .joblib a device
    marker = data / f".trained-{args.devices}-v3"  # v3: the columnar store (issue 26)
    if not marker.exists():
        started = time.perf_counter()
        shutil.rmtree(data / "models", ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        registry = ModelRegistry.of(data, live=False)
        with ProcessPoolExecutor(args.workers) as pool:
            jobs = [(d, str(root)) for d in range(args.devices)]
            fitted = list(pool.map(train_one, jobs, chunksize=50))
        for start in range(0, len(fitted), 2000):  # as train publishes its groups
            publish(registry, dict(fitted[start : start + 2000]))
        marker.touch()
        print(
            f"trained {args.devices:,} models in {time.perf_counter() - started:.0f}s",
            file=sys.stderr,
        )
    layout = DataLayout.open(data)
    shutil.rmtree(layout.model_pack, ignore_errors=True)
    started = time.perf_counter()
    ModelPack.open(layout.model_pack, ModelRegistry.of(layout)).refresh()  # as train does
    pack_seconds = time.perf_counter() - started
    matrices = write_hour(data, args.devices)
    command = [
        "score",
        "--hour",
        HOUR.isoformat(),
        "--data-dir",
        str(data),
        "--workers",
        str(args.workers),
        "--format",
        "json",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    # Python caches compiled modules on first import, unless PYTHONDONTWRITEBYTECODE is set
    # (as on our CI machines): then a source checkout compiles fleetwatch at every start
    # (0.08 s). An installed wheel has its bytecode from pip. Compile it, as a user has it.
    bytecode = compileall.compile_dir(Path(fleetwatch.__file__).parent, quiet=1)

    cluster = single = None
    on_dask: list[float] = []
    on_one_worker: list[float] = []  # the throughput scaling from 1 to --workers workers
    if args.executor == "dask":
        from distributed import LocalCluster

        cluster = LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        dask_command = [
            *command, "--executor", "dask", "--dask-scheduler", cluster.scheduler_address,
        ]  # fmt: skip
        if args.workers > 1:
            single = LocalCluster(
                n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
            )
            single_command = [
                *command, "--executor", "dask", "--dask-scheduler", single.scheduler_address,
            ]  # fmt: skip
    script, phases, memory, cli, rss = [], [], [], [], []
    variants: dict[str, list[float]] = {v: [] for v in (VARIANTS if args.variants else ())}
    variants_rss: dict[str, list[float]] = {v: [] for v in ("", *variants)}
    default: list[float] = []  # the default again, among the variants
    reference: dict[str, np.ndarray] = {}
    anomalies = 0
    for round_index in range(args.rounds):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(data), HOUR.isoformat(), str(args.workers)],
            check=True,
            env=env,
            capture_output=True,
            text=True,
        )
        script.append(time.perf_counter() - started)
        phases.append(json.loads(done.stdout))
        seconds, reference = in_memory_loop(root, matrices)
        memory.append(seconds)
        seconds, peak, run = run_cli(command, env)
        cli.append(seconds)
        rss.append(peak)
        assert run[0]["devices_scored"] == args.devices, run
        anomalies = run[0]["anomalies"]
        if cluster is not None:
            seconds, _, run = run_cli(dask_command, env)
            assert run[0]["devices_scored"] == args.devices, run
            on_dask.append(seconds)
        if single is not None:
            seconds, _, run = run_cli(single_command, env)
            assert run[0]["devices_scored"] == args.devices, run
            on_one_worker.append(seconds)
        if variants:
            # A/B: the default again and each variant, in an order rotated every round, after
            # the default warmed up (the first command after another workload is slower here)
            order = ["", *variants]
            order = order[round_index % len(order) :] + order[: round_index % len(order)]
            for variant in order:
                seconds, peak, _ = run_cli(command, {**env, "FW_BENCH_OFF": variant})
                (variants[variant] if variant else default).append(seconds)
                variants_rss[variant].append(peak["self_mib"])
        print(
            f"round {round_index + 1}: script {script[-1]:.2f}s, in memory {memory[-1]:.2f}s, "
            f"fleetwatch {cli[-1]:.2f}s"
            + (f", on dask {on_dask[-1]:.2f}s" if on_dask else "")
            + (f" (1 worker {on_one_worker[-1]:.2f}s)" if on_one_worker else "")
            + (f", again {default[-1]:.2f}s" if default else "")
            + "".join(f", without {v} {t[-1]:.2f}s" for v, t in variants.items()),
            file=sys.stderr,
        )

    # the scores written equal scikit-learn's own
    import duckdb

    with duckdb.connect(str(data / "fleetwatch.duckdb"), read_only=True) as db:
        written = db.execute(
            "SELECT device_id, score FROM scores ORDER BY device_id, window_start"
        ).fetchdf()
    got = written.groupby("device_id")["score"].apply(np.array)
    worst = max(float(np.nanmax(np.abs(got[d] - reference[d]), initial=0.0)) for d in reference)
    median = statistics.median
    result = {
        "devices": args.devices,
        "windows_per_device": 60,
        "features": len(NAMES),
        "rounds": args.rounds,
        "workers": args.workers,
        "script_s": median(script),
        "script_read_s": median(p["read_s"] for p in phases),
        "script_load_and_score_s": median(p["load_score_s"] for p in phases),
        "script_write_s": median(p["write_s"] for p in phases),
        "in_memory_loop_s": median(memory),
        "fleetwatch_s": median(cli),
        "ratio_script_to_fleetwatch": median(script) / median(cli),
        "ratio_in_memory_to_fleetwatch": median(memory) / median(cli),
        "pack_build_s": pack_seconds,
        "anomalous_windows": anomalies,
        "max_abs_difference_to_sklearn": worst,
        "fleetwatch_bytecode_compiled": bool(bytecode),
        "peak_rss_mib_score_process": max(r["self_mib"] for r in rss),
        "peak_rss_mib_largest_worker": max(r["child_mib"] for r in rss),
        **{f"fleetwatch_without_{v}_s": median(t) for v, t in variants.items()},
        **{
            f"peak_rss_mib_without_{v}" if v else "peak_rss_mib_among_variants": max(p)
            for v, p in variants_rss.items()
            if p
        },
    }
    if default:
        result["fleetwatch_among_variants_s"] = median(default)
    if on_dask:
        result["fleetwatch_dask_s"] = median(on_dask)
        result["ratio_dask_to_local"] = median(on_dask) / median(cli)
    if on_one_worker:
        result["fleetwatch_dask_one_worker_s"] = median(on_one_worker)
        result["dask_scaling_1_to_n_workers"] = median(on_one_worker) / median(on_dask)
    for running in (cluster, single):
        if running is not None:
            running.close()
    if args.format == "json":
        print(json.dumps(result))
        return 0
    rounds = f"median of {args.rounds}"
    print(
        f"script     : {result['script_s']:.2f} s (pandas pivot {result['script_read_s']:.2f} s, "
        f"joblib.load + decision_function under joblib.Parallel({args.workers}) "
        f"{result['script_load_and_score_s']:.2f} s, DuckDB {result['script_write_s']:.2f} s; "
        f"{rounds})"
    )
    print(
        f"in memory  : {result['in_memory_loop_s']:.2f} s (decision_function per device, models "
        "and features already loaded, one process)"
    )
    print(
        f"fleetwatch : {result['fleetwatch_s']:.2f} s `fleetwatch score --hour` as a command, "
        f"{args.workers} workers: {result['ratio_script_to_fleetwatch']:.1f}x the script, "
        f"{result['ratio_in_memory_to_fleetwatch']:.1f}x the in-memory loop"
    )
    if on_dask:
        print(
            f"on dask    : {result['fleetwatch_dask_s']:.2f} s `score --executor dask`, a "
            f"LocalCluster of {args.workers} worker processes "
            f"({result['ratio_dask_to_local']:.2f}x the local executor's time; the workers "
            "read the Parquet and the model files)"
        )
    if on_one_worker:
        one, many = result["fleetwatch_dask_one_worker_s"], result["fleetwatch_dask_s"]
        print(
            f"dask scale : 1 worker {one:.2f} s = {args.devices / one:,.0f} devices/s; "
            f"{args.workers} workers {many:.2f} s = {args.devices / many:,.0f} devices/s "
            f"({result['dask_scaling_1_to_n_workers']:.2f}x the throughput; the client shares "
            "the machine's cores with them)"
        )
    print(f"model pack : built in {pack_seconds:.1f} s by train (not in the figures above)")
    print(
        f"anomalies  : {anomalies:,} of {args.devices * 60:,} windows flagged (each explained: "
        "its top sensors)"
    )
    if default:
        base = result["fleetwatch_among_variants_s"]
        print(
            f"A/B        : fleetwatch {base:.2f} s among the variants (rotated, warm), peak "
            f"RSS {result['peak_rss_mib_among_variants']:,.0f} MiB"
        )
        for variant in variants:
            seconds = result[f"fleetwatch_without_{variant}_s"]
            print(
                f"  without {variant:<15}: {seconds:.2f} s ({seconds / base - 1:+.1%}), peak RSS "
                f"{result[f'peak_rss_mib_without_{variant}']:,.0f} MiB"
            )
    print(f"agreement  : max |score - sklearn| = {worst:.2e}")
    print(
        f"peak RSS   : {result['peak_rss_mib_score_process']:,.0f} MiB (fleetwatch score), "
        f"{result['peak_rss_mib_largest_worker']:,.0f} MiB largest worker process"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
