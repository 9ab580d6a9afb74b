"""Time to alert: from a fault's first reading to its alert at the sink, with `schedule --live`.

    python benchmarks/time_to_alert.py                       # 1,000 devices, 10 s windows, 5 min
    python benchmarks/time_to_alert.py --devices 200 --minutes 3 --format json
    python benchmarks/time_to_alert.py --grace 1 --live-every 1 --target-far 0.003

Everything runs as a user runs it, as processes, on the embedded broker: a simulator fills the
topic with 15 simulated minutes of clean readings (as fast as it can), `fleetwatch aggregate`
(10 s windows, 5 s grace) aggregates them, `fleetwatch train` trains every device on them; then
`fleetwatch schedule --live --live-every 2s --jsonl alerts.jsonl` starts, and a second
simulator sends readings at real-time speed with injected, labelled faults (every kind, about
``--faults-per-device-hour``). The sink file is polled: each alert's arrival is the wall-clock
moment it first appears. A fault's first reading was sent at the wall-clock moment its event
time was reached by the real-time simulator (its start plus the event time since its first
reading). An alert answers a fault when it is the same device's and its windows overlap the
fault's span (its first window to its last plus one window). Faults that begin in the last 2
minutes are injected but not judged (they would be cut short); incidents are 3 windows apart at
most (``--incident-gap 30s``: with the 5 min default, a fault following a false alarm of the
same device within 5 minutes continues that incident, already alerted).

Printed: the live readings that came too late for their window (the late sink: what a short
``--grace`` costs) and the alerts that overlap no labelled fault (false alarms); per fault kind
and overall, the delay from the fault's first reading to its alert (median, p95, max), the
faults missed live and those that began inside an incident of their device alerted already
(they continue it: no alert of their own, no miss); beside it the hourly path on the same run: once
the live part is over the scheduler stops and ``fleetwatch score --hour`` scores each hour
whole, as its final run would, and a fault is found hourly when one of that run's incidents
overlaps it. Its alert would come at the next ``cron`` tick after the hour closed (minute 5 by
default): the fault's hour end plus 5 minutes, computed, as the benchmark does not wait an
hour. "found hourly" counts the faults missed live that the hourly run finds (the target: 0).
Then two lines about the slow drifts, which set the p95: a reference (a one-window detector
told the faulty sensor, on this run's windows) and a bound (each drift's chance of an alert
within 60 s for the best test there is, told its sensor, first reading and slope; and the
chance that every fault's p95 is within 60 s): see ``drift_bound``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import NormalDist
from typing import Any

import pandas as pd

from fleetwatch.brokers.embedded import EmbeddedBroker
from fleetwatch.config.sections import TrainSettings
from fleetwatch.scoring.incidents import began_in_alerted_incident

WINDOW_S = 10
GRACE_S = 5
LIVE_EVERY_S = 2.0
INTERVAL_S = 1  # between two readings of a device
SEED = 7
TARGET_P95_S = 60.0  # issue 28's target for every fault's p95
TRAIN_MINUTES = 15
TAIL_S = 120  # the real-time part runs this much longer: every fault judged has 2 min of data
TARGET_FAR = TrainSettings().target_far  # what `train` calibrates its thresholds to


def run(args: list[str], env: dict[str, str], log: Path, wait: bool = True) -> Any:
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "fleetwatch", *args], env=env, stdout=handle, stderr=handle
        )
    if wait:
        code = process.wait(1800)
        if code != 0:
            raise RuntimeError(f"fleetwatch {args[0]} exited {code}: see {log}")
    return process


def aligned(moment: datetime) -> datetime:
    """The window boundary at or before ``moment``: a simulator started mid-window would make
    its first window short of readings, which every model rightly finds anomalous."""
    seconds = int(moment.timestamp()) // WINDOW_S * WINDOW_S
    return datetime.fromtimestamp(seconds, UTC)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=5.0, help="real-time part, minutes")
    parser.add_argument("--faults-per-device-hour", type=float, default=1.0)
    parser.add_argument("--format", choices=["text", "json"], default="text")
    parser.add_argument("--keep", type=Path, help="keep the data folder and logs here")
    parser.add_argument(
        "--grace",
        type=float,
        default=GRACE_S,
        help=f"aggregate's grace, seconds ({GRACE_S}): late readings go to the late sink",
    )
    parser.add_argument(
        "--live-every", type=float, default=LIVE_EVERY_S, help=f"seconds ({LIVE_EVERY_S:g})"
    )
    parser.add_argument(
        "--target-far",
        type=float,
        default=TARGET_FAR,
        help=f"train's target false-alarm rate ({TARGET_FAR:g}); the reference and the bound "
        "test at it too",
    )
    options = parser.parse_args()
    folder = options.keep or Path(tempfile.mkdtemp(prefix="fw-time-to-alert-"))
    folder.mkdir(parents=True, exist_ok=True)
    data, log = folder / "data", folder / "log.txt"
    sink, labels = folder / "alerts.jsonl", folder / "labels.parquet"
    with EmbeddedBroker(port=0) as broker:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")} | {
            "FLEETWATCH_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "FLEETWATCH_DATA_DIR": str(data),
            "FLEETWATCH_AGGREGATE_WINDOW": f"{WINDOW_S}s",
            "FLEETWATCH_AGGREGATE_GRACE": f"{options.grace:g}s",
            "FLEETWATCH_AGGREGATE_REBALANCE_TIMEOUT": "5s",
            # an incident of 10 s windows: anomalous windows at most 3 windows apart (the 5 min
            # default, meant for 60 s windows, would make a fault a continuation of any false
            # alarm in the 5 minutes before it, already alerted)
            "FLEETWATCH_SCORE_INCIDENT_GAP": f"{3 * WINDOW_S}s",
            "FLEETWATCH_LOG_LEVEL": "INFO",
        }
        fleet = ["--devices", str(options.devices), "--interval", f"{INTERVAL_S}s",
                 "--seed", str(SEED)]  # fmt: skip
        run(["topics", "create"], env, log)
        train_end = aligned(datetime.now(UTC))
        train_start = train_end - timedelta(minutes=TRAIN_MINUTES)
        run(["simulate", *fleet, "--start", train_start.isoformat(),
             "--duration", f"{TRAIN_MINUTES}m", "--speed", "0", "--anomaly-rate", "0",
             "--no-progress"], env, log)  # fmt: skip
        aggregate = run(["aggregate"], env, log, wait=False)
        scheduler = None
        try:
            deadline = time.monotonic() + 600
            while True:  # the training part aggregated: its hour folder has its last windows
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the training part was not aggregated: see {log}")
                done = subprocess.run(
                    [sys.executable, "-m", "fleetwatch", "status", "--format", "json"],
                    env=env, capture_output=True, text=True, check=False,
                )  # fmt: skip
                closed = json.loads(done.stdout).get("closed_through") if done.stdout else None
                if closed and datetime.fromisoformat(closed) >= train_end - timedelta(seconds=30):
                    break
                time.sleep(2)
            run(["train", "--since", train_start.isoformat(),
                 "--until", (train_end - timedelta(seconds=30)).isoformat(),
                 "--target-far", f"{options.target_far:g}", "--no-progress"], env, log)  # fmt: skip
            tick = f"{options.live_every:g}s"
            scheduler = run(["schedule", "--live", "--live-every", tick, "--jsonl", str(sink),
                             "--no-silent", "--workers", "2"], env, log, wait=False)  # fmt: skip
            time.sleep(3)
            live_start = aligned(datetime.now(UTC) + timedelta(seconds=WINDOW_S))
            time.sleep(max(0.0, (live_start - datetime.now(UTC)).total_seconds()))
            sent_from = time.time()
            live = ["simulate", *fleet, "--start", live_start.isoformat(),
                    "--duration", f"{options.minutes * 60 + TAIL_S:g}s", "--speed", "1",
                    "--anomaly-rate", str(options.faults_per_device_hour),
                    "--labels", str(labels), "--no-progress"]  # fmt: skip
            simulator = run(live, env, log, wait=False)
            arrivals: dict[str, float] = {}
            payloads: dict[str, dict[str, Any]] = {}
            end = time.time() + options.minutes * 60 + TAIL_S + 60
            while time.time() < end:
                if sink.exists():
                    for line in sink.read_text().splitlines():
                        try:
                            alert = json.loads(line)
                        except ValueError:
                            continue
                        arrivals.setdefault(alert["alert_id"], time.time())
                        payloads[alert["alert_id"]] = alert
                time.sleep(0.5)
            simulator.wait(60)
            scheduler.send_signal(signal.SIGTERM)
            scheduler.wait(120)
            # the hourly path on the same windows: each hour scored whole, as its final run
            # would score it once closed (it is provisional here: the hour is still open)
            hour = live_start.replace(minute=0, second=0, microsecond=0)
            while hour < live_start + timedelta(minutes=options.minutes, seconds=TAIL_S):
                run(["score", "--hour", hour.strftime("%Y-%m-%dT%H"), "--workers", "2"], env, log)
                hour += timedelta(hours=1)
            incidents = sql("SELECT device_id, window_start, window_end FROM incidents", env)
            since = live_start.isoformat()  # (this process's own time: no input reaches SQL)
            late = sql(f"SELECT count(*) AS n FROM late WHERE ts >= '{since}'", env)  # noqa: S608
            late_readings = int(late[0]["n"])
        finally:
            for process in (scheduler, aggregate):
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    process.wait(120)
    every_fault = pd.read_parquet(labels)  # judged or not
    starts = pd.to_datetime(every_fault["start"], utc=True)
    faults = every_fault[starts < pd.Timestamp(live_start + timedelta(minutes=options.minutes))]
    if faults.empty:
        print(
            f"no fault began in the {options.minutes:g} judged minutes: nothing to time "
            "(give more --devices or --minutes)",
            file=sys.stderr,
        )
        return 1
    result = judge(faults, payloads, arrivals, incidents, live_start, sent_from)
    result["late_readings"] = late_readings  # the live part's, lost to scoring
    result["false_alerts"] = false_alerts(payloads, every_fault)
    result["alerts"] = sum(1 for a in payloads.values() if a.get("kind") == "anomaly")
    drifts = faults[faults["kind"] == "drift_ramp"]
    if len(drifts):
        every = set(every_fault["device_id"])  # none is fault-free
        ideal = ideal_detector(drifts, read_windows(data), live_start, options.target_far, every)
        result["ideal_drift"] = reference(result, ideal)
        sized = drift_sizes(drifts, options, live_start)
        if sized is not None:
            others = [
                d
                for kind, delays in result["delays_by_kind"].items()
                if kind != "drift_ramp"
                for d in delays
            ]
            others += [math.inf] * (len(faults) - len(drifts) - len(others))  # missed: slow
            lag = result["lag_median_s"] or 0.0
            result["drift_bound"] = drift_bound(sized, others, lag, options.target_far)
    if options.format == "json":
        print(json.dumps(result))
    else:
        show(result, options)
    if options.keep is None:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def sql(query: str, env: dict[str, str]) -> list[dict[str, Any]]:
    """The rows of ``fleetwatch sql`` (as a user runs it) on the run's data folder."""
    done = subprocess.run(
        [sys.executable, "-m", "fleetwatch", "sql", "--format", "json", query],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


def false_alerts(alerts: dict[str, dict[str, Any]], faults: pd.DataFrame) -> int:
    """Anomaly alerts whose windows overlap no labelled fault of their device (judged or not:
    its span plus one window, as :func:`judge` matches them)."""
    spans = [
        (str(f.device_id), ms(f.start), ms(f.end) + WINDOW_S * 1000) for f in faults.itertuples()
    ]
    return sum(
        1
        for alert in alerts.values()
        if alert.get("kind") == "anomaly"
        and not any(overlaps(alert, device, first, last) for device, first, last in spans)
    )


def ms(at: Any) -> float:
    """A time (ISO text, Timestamp, datetime) in epoch milliseconds."""
    return float(pd.Timestamp(at).timestamp() * 1000)


def overlaps(item: dict[str, Any], device_id: str, first_ms: float, last_ms: float) -> bool:
    """Whether an alert's or incident's windows are ``device_id``'s and meet [first, last)."""
    return bool(
        item["device_id"] == device_id
        and ms(item["window_start"]) < last_ms
        and ms(item["window_end"]) > first_ms
    )


def read_windows(data: Path) -> pd.DataFrame:
    import duckdb

    files = str(data / "aggregates" / "**" / "*.parquet")
    query = (
        "SELECT device_id, sensor, window_start, mean "
        "FROM read_parquet(?, hive_partitioning = false)"
    )
    return duckdb.connect().execute(query, [files]).df()


def ideal_detector(
    faults: pd.DataFrame,
    windows: pd.DataFrame,
    live_start: datetime,
    far: float,
    faulty: set[str],
) -> list[float | None]:
    """A reference for the model, per fault: the time from its first reading to the end of
    the first window whose mean of the faulty sensor is more than ``c`` standard deviations
    from that sensor's mean over the training windows (those before ``live_start``): the
    textbook detector of a shift, told which sensor will fail. ``c`` is generous: the
    (1 - ``far``) quantile of that distance over every live window and sensor of the devices
    without a fault (``faulty``: every device with a labelled fault, judged or not), a
    false-alarm rate of ``far`` per sensor where the product's target is per device and
    window, over all its sensors. None: not reached before the fault's end plus two windows."""
    starts = pd.to_datetime(windows["window_start"], utc=True)
    before = windows[starts < pd.Timestamp(live_start)]
    normal = before.groupby(["device_id", "sensor"])["mean"].agg(["mean", "std"])
    live = windows[starts >= pd.Timestamp(live_start)].join(
        normal.rename(columns={"mean": "level", "std": "spread"}), on=["device_id", "sensor"]
    )
    live = live.assign(
        z=((live["mean"] - live["level"]) / live["spread"]).abs(),
        end=pd.to_datetime(live["window_start"], utc=True) + pd.Timedelta(seconds=WINDOW_S),
    )
    clean = live[~live["device_id"].isin(faulty)]
    c = float(clean["z"].quantile(1 - far))
    found: list[float | None] = []
    for fault in faults.itertuples():
        first, last = pd.Timestamp(fault.start), pd.Timestamp(fault.end)
        mine = live[
            (live["device_id"] == fault.device_id)
            & (live["sensor"] == fault.sensor)
            & (live["end"] > first)
            & (live["end"] <= last + pd.Timedelta(seconds=2 * WINDOW_S))
            & (live["z"] > c)
        ]
        found.append((mine["end"].min() - first).total_seconds() if len(mine) else None)
    return found


def drift_sizes(
    drifts: pd.DataFrame, options: argparse.Namespace, live_start: datetime
) -> pd.DataFrame | None:
    """The judged drifts with their slope in noise deviations per reading, which the labels do
    not carry: the live simulator's faults made again in process from its seed and settings.
    None when the faults made again are not the labelled ones."""
    from fleetwatch.config.sections import Settings
    from fleetwatch.simulators.fleet import FleetStream
    from fleetwatch.simulators.publish import spec_from_settings

    spec = replace(
        spec_from_settings(Settings(), SEED),
        devices=options.devices,
        start=live_start,
        interval_s=float(INTERVAL_S),
        anomaly_rate=options.faults_per_device_hour,
    )
    stream = FleetStream(spec)
    slopes: dict[tuple[str, int], float] = {}
    for tick, _ in stream.ticks():
        if tick * INTERVAL_S >= options.minutes * 60:  # later faults are not judged
            break
        for device, anomaly in stream.anomalies.active.items():
            if anomaly.kind == "drift_ramp":
                span = max(1, anomaly.end_tick - anomaly.start_tick)
                key = (stream.device_ids[device], anomaly.start_ms)
                slopes[key] = abs(anomaly.magnitude) / span
    keys = [
        (str(fault.device_id), round(pd.Timestamp(fault.start).timestamp() * 1000))
        for fault in drifts.itertuples()
    ]
    if any(key not in slopes for key in keys):
        return None
    return drifts.assign(slope=[slopes[key] for key in keys])


def drift_bound(
    drifts: pd.DataFrame,
    others: list[float],
    lag: float,
    far: float,
    within: float = TARGET_P95_S,
) -> dict[str, Any]:
    """The best any detector could do: each drift's chance of an alert within ``within`` s of
    its first reading for a detector told its sensor, first reading and slope (``slope``, in
    noise deviations per reading), testing once, at the false-alarm rate ``far``, every
    reading up to the last window that can still be alerted in time (its end plus ``lag``, the
    run's lag from a window's end to its alert). That is the Neyman-Pearson test of a known
    ramp in white noise, sum(k * x_k) / sqrt(sum(k^2)) against the normal (1 - far) quantile:
    no test with that false-alarm rate finds the ramp more often, and a real detector, told
    none of it and testing again at every window, finds it less often. Then the chance that
    the p95 of every fault (as printed: nearest rank) is within ``within``, the other faults
    taking the delays they had (``others``, ``math.inf`` for a missed one)."""
    normal = NormalDist()
    z = normal.inv_cdf(1 - far)
    chances = []
    for fault in drifts.itertuples():
        first = pd.Timestamp(fault.start).timestamp()
        last_end = math.floor(round(first + within - lag, 6) / WINDOW_S) * WINDOW_S
        readings = max(0, math.ceil(round(last_end - first, 6) / INTERVAL_S))
        signal = fault.slope * math.sqrt(sum(k * k for k in range(readings)))
        chances.append(normal.cdf(signal - z))
    total = len(others) + len(chances)
    allowed = total - 1 - round(0.95 * (total - 1)) - sum(d > within for d in others)
    slow = [1.0]  # slow[j]: the chance that j drifts are not alerted in time
    for chance in chances:
        slow = [
            (slow[j] * chance if j < len(slow) else 0.0)
            + (slow[j - 1] * (1 - chance) if j > 0 else 0.0)
            for j in range(len(slow) + 1)
        ]
    return {
        "within_s": within,
        "lag_s": lag,
        "chances": chances,
        "p95_within_chance": sum(slow[: allowed + 1]) if allowed >= 0 else 0.0,
    }


def reference(result: dict[str, Any], ideal: list[float | None]) -> dict[str, Any]:
    """The drifts' delays had each been alerted when the ideal detector first flags it,
    plus this run's median lag from a window's end to its alert; and the p95 of every fault
    with the drifts so."""
    lag = result["lag_median_s"] or 0.0
    drifts = [d + lag for d in ideal if d is not None]
    others = [
        float(d)
        for kind, delays in result["delays_by_kind"].items()
        if kind != "drift_ramp"
        for d in delays
    ]
    return {
        "faults": len(ideal),
        "unreached": sum(d is None for d in ideal),
        "window_end_s": ideal,
        "lag_s": lag,
        "median_s": statistics.median(drifts) if drifts else None,
        "p95_s": percentile(drifts, 0.95) if drifts else None,
        "p95_every_fault_s": percentile(others + drifts, 0.95) if drifts else None,
    }


def judge(
    faults: pd.DataFrame,
    alerts: dict[str, dict[str, Any]],
    arrivals: dict[str, float],
    incidents: list[dict[str, Any]],
    live_start: datetime,
    sent_from: float,
) -> dict[str, Any]:
    """Each fault's delay to its first alert, live; and the hourly path's: which faults its
    incidents find (measured) and when its alert would come (computed: the hour's end plus
    minute 5's tick). A fault without an alert of its own that began inside an incident of its
    device (the final one) that was alerted already, at a window before the fault's, continued
    that incident: counted apart ("continued"), neither a delay nor a miss."""
    start_ms = live_start.timestamp() * 1000
    anomalies = [a for a in alerts.values() if a.get("kind") == "anomaly"]
    alerted = {(a["device_id"], pd.Timestamp(a["window_start"])) for a in anomalies}
    spans = [
        (i["device_id"], pd.Timestamp(i["window_start"]), pd.Timestamp(i["window_end"]))
        for i in incidents
    ]

    rows = []
    for fault in faults.itertuples():
        fault_ms = pd.Timestamp(fault.start).timestamp() * 1000
        first = sent_from + (fault_ms - start_ms) / 1000  # its first reading sent
        last_ms = pd.Timestamp(fault.end).timestamp() * 1000 + WINDOW_S * 1000
        answered = sorted(
            (arrivals[a["alert_id"]], pd.Timestamp(a["window_end"]).timestamp() * 1000)
            for a in anomalies
            if overlaps(a, str(fault.device_id), fault_ms, last_ms)
        )
        hourly_found = any(overlaps(i, str(fault.device_id), fault_ms, last_ms) for i in incidents)
        continued = not answered and began_in_alerted_incident(
            str(fault.device_id), pd.Timestamp(fault.start), spans, alerted
        )
        hour_end = (int(fault_ms) // 3_600_000 + 1) * 3600
        rows.append(
            {
                "device_id": fault.device_id,
                "kind": fault.kind,
                "continued": continued,
                "delay_s": (answered[0][0] - first) if answered else None,
                # from the end of the window alerted (wall clock) to the alert
                "lag_s": answered[0][0] - first - (answered[0][1] - fault_ms) / 1000
                if answered
                else None,
                # closed, then minute 5's tick
                "hourly_delay_s": hour_end + 300 - fault_ms / 1000 if hourly_found else None,
            }
        )
    table = pd.DataFrame(rows)
    summary: dict[str, Any] = {"faults": len(table), "by_kind": {}}

    def figures(part: pd.DataFrame) -> dict[str, Any]:
        live = part["delay_s"].notna() | part["continued"]
        hourly = part["hourly_delay_s"].notna()
        found = [float(d) for d in part["delay_s"].dropna()]
        hourly_found = [float(d) for d in part["hourly_delay_s"][hourly]]
        return {
            "faults": len(part),
            "missed": int((~live).sum()),
            "continued": int(part["continued"].sum()),
            "median_s": statistics.median(found) if found else None,
            "p95_s": percentile(found, 0.95) if found else None,
            "max_s": max(found) if found else None,
            "hourly_missed": int((~hourly).sum()),
            "hourly_median_s": statistics.median(hourly_found) if hourly_found else None,
            "missed_live_found_hourly": int((hourly & ~live).sum()),
        }

    summary.update(figures(table))
    lags = table["lag_s"].dropna()
    summary["lag_median_s"] = float(lags.median()) if len(lags) else None
    summary["delays_by_kind"] = {
        str(kind): [float(d) for d in part["delay_s"].dropna()]
        for kind, part in table.groupby("kind")
    }
    for kind, part in table.groupby("kind"):
        summary["by_kind"][str(kind)] = figures(part)
    return summary


def show(result: dict[str, Any], options: argparse.Namespace) -> None:
    def line(name: str, row: dict[str, Any]) -> str:
        hourly = (
            "hourly: all missed"
            if row["hourly_median_s"] is None
            else f"hourly: median {row['hourly_median_s'] / 60:4.1f} min, "
            f"missed {row['hourly_missed']}"
        )
        if row["median_s"] is None:
            return f"{name:<14} {row['faults']:>4} faults, all missed live; {hourly}"
        return (
            f"{name:<14} {row['faults']:>4} faults: median {row['median_s']:5.1f} s, p95 "
            f"{row['p95_s']:5.1f} s, max {row['max_s']:6.1f} s, missed {row['missed']} "
            f"({row['missed_live_found_hourly']} of them found hourly)"
            + (
                f", {row['continued']} began in an incident already alerted"
                if row["continued"]
                else ""
            )
            + f"; {hourly}"
        )

    print(
        f"time to alert, {options.devices} devices, {WINDOW_S} s windows, {options.grace:g} s "
        f"grace, live ticks every {options.live_every:g} s, {options.minutes:g} min at "
        f"real-time speed, target false-alarm rate {options.target_far:g}; "
        f"{result['late_readings']:,} live readings came too late for their window (the late "
        f"sink); {result['false_alerts']} of {result['alerts']} alerts overlap no fault (false "
        "alarms)"
    )
    print(line("every fault", result))
    for kind, row in result["by_kind"].items():
        print(line(kind, row))
    ideal = result.get("ideal_drift")
    if ideal and ideal["median_s"] is not None:
        print(
            f"reference for drifts: a one-window detector told the faulty sensor, its "
            f"training mean and spread ({options.target_far:g} false alarms a sensor-window) flags "
            f"{ideal['faults'] - ideal['unreached']} of {ideal['faults']} drifts at median "
            f"{ideal['median_s']:.1f} s, p95 {ideal['p95_s']:.1f} s (this run's lag from "
            f"window end to alert, {ideal['lag_s']:.1f} s, included); every fault's p95 with "
            f"the drifts so: {ideal['p95_every_fault_s']:.1f} s"
        )
    bound = result.get("drift_bound")
    if bound:
        chances = ", ".join(f"{c:.2f}" for c in sorted(bound["chances"], reverse=True))
        print(
            f"bound for drifts: a detector told each drift's sensor, first reading and slope, "
            f"testing once at {options.target_far:g} false alarms (Neyman-Pearson: none does "
            "better), "
            f"alerts it within {bound['within_s']:g} s (this run's lag, {bound['lag_s']:.1f} s, "
            f"included) with the chances {chances}; every fault's p95 within "
            f"{bound['within_s']:g} s: a chance of {bound['p95_within_chance']:.0%}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
