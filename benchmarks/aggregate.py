"""Aggregation throughput against its peers and its ceiling, on the same topic, in one run.

    python benchmarks/aggregate.py                        # 1,000 devices x 10 sensors, 500k msgs
    python benchmarks/aggregate.py --messages 300000 --rounds 5 --peers   # issue 27's comparison
    python benchmarks/aggregate.py --against /tmp/old/src # also an earlier fleetwatch (A/B)
    python benchmarks/aggregate.py --memory-devices 10000 # also: RSS with 10k x 10 open windows

``--peers`` adds, each round: (d) the ceiling a Python consumer reaches doing the same job
without any rule: aiokafka, ``orjson.loads`` of every message and plain dict windows (count,
sum, sum of squares, min, max per device, sensor and window); (e) Quix Streams
``.tumbling_window(60s).reduce(...)`` over the same JSON (when ``quixstreams`` is installed;
its pins clash with fleetwatch's, so give it a virtualenv of its own: ``python -m venv
/tmp/quix && /tmp/quix/bin/pip install quixstreams``, then ``--quix-python
/tmp/quix/bin/python``); (f) fleetwatch's own Faust app and drain loop delivering the
same messages to a receiver that only counts them (the ceiling of the hot path under Faust);
(g) the job of (d) done by such a receiver (the ceiling under the Faust path the worker must
keep, timed as the worker's processing is: first delivered record to the last); and Faust's
public API (``--public-api``, below). It also
prints the in-process cost per message of decoding (``parse_message``) and of the whole
processor (decode, rules, windows; no Kafka).

The topic (4 partitions, embedded broker) is loaded once with simulator traffic. Each round then
measures (a) a bare aiokafka consumer reading every message (messages/s) and (b) a real
``fleetwatch aggregate`` worker process from its first record to every window on disk (the
last windows close by the idle timeout, 0.5 s, which is included). Medians are printed with the
ratio b/a and the worker's peak RSS. ``--public-api`` also measures (c) the ceiling of Faust's
public API: a worker whose agent reads the same messages with ``stream.take(10_000,
within=0.5)`` and does nothing with them but count (messages/s), which is why
``fleetwatch aggregate`` replaces the consumer's drain loop instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka import KafkaProducer

from fleetwatch.brokers.embedded import EmbeddedBroker
from fleetwatch.brokers.topics import ensure_topics
from fleetwatch.config import load_settings
from fleetwatch.simulators.fleet import FleetSpec, FleetStream
from fleetwatch.storage.checkpoints import CheckpointStore
from fleetwatch.storage.layout import DataLayout

START = datetime(2026, 11, 22, tzinfo=UTC)


def preload(
    bootstrap: str, topic: str, devices: int, sensors: int, messages: int
) -> dict[int, int]:
    settings = load_settings(
        environ={},
        overrides={
            "kafka": {
                "bootstrap_servers": bootstrap,
                "telemetry_topic": topic,
                "dead_letter_topic": f"{topic}.deadletter",
                "partitions": "4",
            }
        },
    )
    ensure_topics(settings.kafka)
    stream = FleetStream(
        FleetSpec(devices=devices, sensors=sensors, start=START, seed=1, anomaly_rate=0.0)
    )
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        batch_size=512 * 1024,
        compression_type="lz4",
        acks="all",
    )
    ends: dict[int, int] = {}
    futures = []
    for _, batch in stream.ticks(messages):
        for key, value in batch:
            futures.append(producer.send(topic, key=key, value=value))
    producer.flush()
    for future in futures:
        metadata = future.get()
        ends[metadata.partition] = max(ends.get(metadata.partition, 0), metadata.offset + 1)
    producer.close()
    return ends


async def raw_consume(bootstrap: str, topic: str, total: int) -> float:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        seen = 0
        started = time.perf_counter()
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=50_000)
            seen += sum(len(records) for records in batches.values())
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def dict_windows(windows: dict[tuple[str, str, int], list[float]], values: list[bytes]) -> None:
    """The ceiling's job: each message decoded (orjson), its event time read (an ISO string
    parsed, as the simulator writes them) and its readings folded into plain dict windows
    (count, sum, sum of squares, min, max per device, sensor and minute). No rule checked."""
    for value in values:
        message = orjson.loads(value)
        ts = message["ts"]
        if not isinstance(ts, int):
            ts = round(datetime.fromisoformat(ts).timestamp() * 1000)
        start = ts // 60_000
        device = message["device_id"]
        for sensor, reading in message["readings"].items():
            state = windows.get((device, sensor, start))
            if state is None:
                windows[(device, sensor, start)] = [1, reading, reading * reading, reading, reading]
            else:
                state[0] += 1
                state[1] += reading
                state[2] += reading * reading
                if reading < state[3]:
                    state[3] = reading
                if reading > state[4]:
                    state[4] = reading


async def ceiling_consume(bootstrap: str, topic: str, total: int) -> float:
    """(d): aiokafka + orjson + dict windows: the job without its rules (the event time read
    as the job must read it: an ISO string parsed, as the simulator writes them)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    windows: dict[tuple[str, str, int], list[float]] = {}
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        seen = 0
        started = time.perf_counter()
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=50_000)
            for records in batches.values():
                seen += len(records)
                dict_windows(windows, [record.value for record in records])
        return time.perf_counter() - started
    finally:
        await consumer.stop()


#: (e): Quix Streams, the way its documentation aggregates: a tumbling window's reduce().
QUIX = """
import json, sys, time
from datetime import datetime
from quixstreams import Application

bootstrap, topic, total, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
# The embedded broker (Tansu) does not report a topic's retention.ms, which Quix Streams reads
# to derive its window store's changelog settings (unused here: no changelog topics).
from quixstreams.models.topics.manager import TopicManager
_derive = TopicManager.derive_topic_config.__func__
def _derived(cls, topics):
    for t in topics:
        t.broker_config.extra_config.setdefault("retention.ms", "-1")
    return _derive(cls, topics)
TopicManager.derive_topic_config = classmethod(_derived)
app = Application(
    broker_address=bootstrap, consumer_group=f"bench-quix-{time.time_ns()}",
    auto_offset_reset="earliest", state_dir=out + ".state", use_changelog_topics=False,
)
def event_time(value, headers, timestamp, timestamp_type):
    ts = value["ts"]
    return ts if isinstance(ts, int) else int(datetime.fromisoformat(ts).timestamp() * 1000)
source = app.topic(topic, value_deserializer="json", timestamp_extractor=event_time)
sdf = app.dataframe(source)
seen = {"n": 0, "first": None}
def count(value):
    seen["first"] = seen["first"] or time.time()
    seen["n"] += 1
    if seen["n"] >= total:
        open(out, "w").write(json.dumps({"seconds": time.time() - seen["first"]}))
        app.stop()
    return value
sdf = sdf.apply(count)
def reduce(state, message):  # per device (the message key) and window: each sensor's stats
    for sensor, value in message["readings"].items():
        s = state.get(sensor)
        if s is None:
            state[sensor] = [1, value, value * value, value, value]
        else:
            s[0] += 1; s[1] += value; s[2] += value * value
            s[3] = min(s[3], value); s[4] = max(s[4], value)
    return state
window = sdf.tumbling_window(60_000)
sdf = window.reduce(reducer=reduce, initializer=lambda m: reduce({}, m)).final()
app.run()
"""


def quix(bootstrap: str, topic: str, total: int, python: str) -> float | None:
    """(e) in ``python`` (an interpreter with ``quixstreams``: its dependencies may not fit
    fleetwatch's pins, so it can live in a virtualenv of its own); None without it."""
    probe = subprocess.run([python, "-c", "import quixstreams"], capture_output=True, check=False)
    if probe.returncode != 0:
        return None
    return _timed_process(QUIX, bootstrap, topic, total, "Quix Streams", python)


#: (c): Faust's public API, at its fastest: an agent taking batches and only counting them.
PUBLIC_API = """
import json, sys, time
import faust

bootstrap, topic, total, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
app = faust.App(
    f"bench-public-{time.time_ns()}", broker=f"kafka://{bootstrap}", web_enabled=False,
    store="memory://", consumer_auto_offset_reset="earliest", topic_disable_leader=True,
    broker_session_timeout=5, broker_rebalance_timeout=5, broker_heartbeat_interval=1,
    datadir=out + ".faust",
)
source = app.topic(topic, key_serializer="raw", value_serializer="raw")

@app.agent(source)
async def count(stream):
    seen, first = 0, None
    async for batch in stream.take(10_000, within=0.5):
        first = first or time.time()
        seen += len(batch)
        if seen >= total:
            open(out, "w").write(json.dumps({"seconds": time.time() - first, "messages": seen}))
            await app.stop()

faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()
"""


def public_api(bootstrap: str, topic: str, total: int) -> float:
    return _timed_process(PUBLIC_API, bootstrap, topic, total, "the Faust agent")


#: (f): what fleetwatch's own Faust path hands over, doing nothing with it: the worker's app
#: (``build_app``: its options, drain loop, record tuples, timer and rebalance handlers), a
#: receiver that only counts. The ceiling of the hot path under Faust, as (d) is without it.
FAUST_DRAIN = """
import json, sys, time
import faust
from fleetwatch.aggregate.faust_adapter import install_record_tuples
from fleetwatch.aggregate.worker import build_app
from fleetwatch.config import load_settings

bootstrap, topic, total, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
settings = load_settings(environ={}, overrides={
    "": {"data_dir": out + ".data"},
    "kafka": {"bootstrap_servers": bootstrap, "telemetry_topic": topic,
              "dead_letter_topic": topic + ".deadletter"},
    "aggregate": {"group_id": f"bench-drain-{time.time_ns()}", "rebalance_timeout": "5s"},
})
install_record_tuples()
app, _ = build_app(settings)

WINDOWS = sys.argv[5] == "windows"
if WINDOWS:
    sys.path.insert(0, sys.argv[6])
    from aggregate import dict_windows

class Counter:
    seen, first, done = 0, None, False
    windows = {}

    async def rewind(self, tps):
        pass

    async def deliver(self, records):
        self.first = self.first or time.time()
        self.seen += sum(len(batch) for batch in records.values())
        if WINDOWS:  # the ceiling's job, as ceiling_consume does it
            for batch in records.values():
                dict_windows(self.windows, [record[2] for record in batch])
        if self.seen >= total and not self.done:
            self.done = True
            open(out, "w").write(json.dumps({"seconds": time.time() - self.first}))

app.receiver = Counter()
faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()
"""


def faust_drain(bootstrap: str, topic: str, total: int, windows: bool = False) -> float:
    """(f), or with ``windows`` (g): the ceiling's job (d) done by a receiver of fleetwatch's
    Faust path, timed as the worker's processing is (first delivered record to the last)."""
    name = "the Faust ceiling" if windows else "the Faust drain"
    extra = ("windows" if windows else "count", str(Path(__file__).parent))
    return _timed_process(FAUST_DRAIN, bootstrap, topic, total, name, extra=extra)


def _timed_process(
    script: str,
    bootstrap: str,
    topic: str,
    total: int,
    name: str,
    python: str = sys.executable,
    extra: tuple[str, ...] = (),
) -> float:
    out = Path(tempfile.mkdtemp(prefix="fw-bench-peer-")) / "result.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    process = subprocess.Popen(
        [python, "-c", script, bootstrap, topic, str(total), str(out), *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while not out.exists():
            if process.poll() is not None and not out.exists():
                raise RuntimeError(f"{name} exited with {process.returncode}")
            time.sleep(0.2)
        time.sleep(0.1)
        return float(json.loads(out.read_text())["seconds"])
    finally:
        process.kill()
        process.wait()


def processing_ratio(result: dict[str, float | None], other: str) -> float:
    """fleetwatch's processing rate over another's (both first record to last processed)."""
    return float(result["aggregate_processed_messages_per_s"] or 0) / float(result[other] or 1)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_worker(
    bootstrap: str, topic: str, group: str, idle_timeout: str, source: Path | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    """A `fleetwatch aggregate` process on a fresh data directory."""
    data = Path(tempfile.mkdtemp(prefix="fw-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")} | {
        "FLEETWATCH_BOOTSTRAP_SERVERS": bootstrap,
        "FLEETWATCH_TELEMETRY_TOPIC": topic,
        "FLEETWATCH_DEAD_LETTER_TOPIC": f"{topic}.deadletter",
        "FLEETWATCH_DATA_DIR": str(data),
        "FLEETWATCH_AGGREGATE_GROUP_ID": group,
        "FLEETWATCH_AGGREGATE_IDLE_TIMEOUT": idle_timeout,
        "FLEETWATCH_AGGREGATE_REBALANCE_TIMEOUT": "5s",
        "FLEETWATCH_AGGREGATE_LOG_INTERVAL": "1s",
        "FLEETWATCH_LOG_LEVEL": "WARNING",
    }
    if source is not None:  # another fleetwatch (--against)
        env["PYTHONPATH"] = str(source)
    process = subprocess.Popen(
        [sys.executable, "-m", "fleetwatch", "aggregate"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, data


def run_worker(
    bootstrap: str, topic: str, ends: dict[int, int], group: str, source: Path | None = None
) -> dict[str, float]:
    process, data = start_worker(bootstrap, topic, group, "0.5s", source)
    store = CheckpointStore(DataLayout.open(data).store, topic)
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"worker exited with {process.returncode}")
            checkpoints = {p: store.load(p) for p in ends}
            if all(
                c is not None and c.offset == c.next_offset == ends[p]
                for p, c in checkpoints.items()
            ):
                done = time.time()
                break
            time.sleep(0.1)
        rss = peak_rss_mib(process.pid)
        process.terminate()
        process.wait(60)
        status = store.statuses()[0]
        first = float(status["first_record_at"])  # type: ignore[arg-type]
        return {
            "seconds": done - first,
            # to the last batch processed: what the peers measure (they stop at the last
            # record); the rest is the idle timeout closing the last windows, and the polling
            "processed_seconds": float(status["last_activity_at"]) - first,  # type: ignore[arg-type]
            "rss_mib": rss,
            "readings": float(status["readings"]),
            "messages": float(status["messages"]),
        }
    finally:
        if process.poll() is None:
            process.kill()


def open_window_rss(bootstrap: str, devices: int, sensors: int) -> float:
    """Peak RSS of a worker holding one open window per (device, sensor): 10 readings each."""
    topic = f"bench-memory-{devices}"
    ends = preload(bootstrap, topic, devices, sensors, devices * 10)
    process, data = start_worker(bootstrap, topic, "bench-memory", "1h")
    store = CheckpointStore(DataLayout.open(data).store, topic)
    total = sum(ends.values())
    try:
        while True:
            statuses = store.statuses()
            if statuses and statuses[0]["messages"] >= total:
                open_windows = statuses[0]["open_windows"]
                break
            time.sleep(0.5)
        rss = peak_rss_mib(process.pid)
        print(f"memory: {open_windows:,} open windows, peak RSS {rss:,.0f} MiB", file=sys.stderr)
        return rss
    finally:
        process.kill()
        process.wait()


def per_message_costs(devices: int, sensors: int, count: int = 100_000) -> dict[str, float]:
    """In process, no Kafka: ``parse_message`` and the whole processor, per message (medians
    of 3; the processor's closed windows are built as frames and handed to a sink that drops
    them)."""
    from fleetwatch.aggregate.processor import PartitionProcessor
    from fleetwatch.aggregate.windows import WindowSpec
    from fleetwatch.telemetry import parse_message

    stream = FleetStream(
        FleetSpec(devices=devices, sensors=sensors, start=START, seed=1, anomaly_rate=0.0)
    )
    records: list[tuple[int, bytes, bytes, int]] = []
    for _, batch in stream.ticks(count):
        records += [(len(records) + i, k, v, -1) for i, (k, v) in enumerate(batch)]

    class Dropped:
        def write(self, *args: object, **kwargs: object) -> None:
            pass

    decode, whole = [], []
    for _ in range(3):
        started = time.perf_counter()
        for record in records:
            parse_message(record[2], record[1])
        decode.append((time.perf_counter() - started) / len(records))
        processor = PartitionProcessor(
            0,
            WindowSpec(60_000, 30_000),
            Dropped(),
            Dropped(),
            lambda *a: None,  # type: ignore[arg-type]
        )
        started = time.perf_counter()
        for begin in range(0, len(records), 2_000):
            processor.process(records[begin : begin + 2_000])
        whole.append((time.perf_counter() - started) / len(records))
    return {
        "decode_us_per_message": statistics.median(decode) * 1e6,
        "processor_us_per_message": statistics.median(whole) * 1e6,
    }


def per_message_costs_of(source: Path, devices: int, sensors: int) -> dict[str, float]:
    """:func:`per_message_costs` of another fleetwatch (its ``src``), in a process of its own."""
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import aggregate; "
        "print(json.dumps(aggregate.per_message_costs(int(sys.argv[2]), int(sys.argv[3]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).parent), str(devices), str(sensors)],
        env=os.environ | {"PYTHONPATH": str(source)},
        capture_output=True,
        text=True,
        check=True,
    )
    costs: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--sensors", type=int, default=10)
    parser.add_argument("--messages", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--memory-devices",
        type=int,
        default=0,
        help="also measure RSS with this many devices' windows open",
    )
    parser.add_argument("--format", choices=["text", "json"], default="text")
    parser.add_argument(
        "--public-api", action="store_true", help="also measure Faust's stream.take() ceiling"
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also the aiokafka+orjson+dict ceiling, Quix Streams and the Faust agent",
    )
    parser.add_argument(
        "--against", type=Path, metavar="SRC", help="also another fleetwatch's src (A/B)"
    )
    parser.add_argument(
        "--quix-python",
        default=sys.executable,
        metavar="PYTHON",
        help="the interpreter that runs Quix Streams (default: this one; e.g. a virtualenv "
        "with `pip install quixstreams`)",
    )
    args = parser.parse_args()
    args.public_api = args.public_api or args.peers
    in_process = per_message_costs(args.devices, args.sensors)
    if args.against is not None:  # the other fleetwatch's in-process costs, alternating
        theirs = [per_message_costs_of(args.against, args.devices, args.sensors)]
        ours = [in_process, per_message_costs(args.devices, args.sensors)]
        theirs.append(per_message_costs_of(args.against, args.devices, args.sensors))
        in_process = {key: statistics.median(c[key] for c in ours) for key in in_process} | {
            f"against_{key}": statistics.median(c[key] for c in theirs) for key in in_process
        }

    with EmbeddedBroker(port=0) as broker:
        bootstrap = broker.bootstrap_servers
        topic = "bench-aggregate"
        started = time.perf_counter()
        ends = preload(bootstrap, topic, args.devices, args.sensors, args.messages)
        total = sum(ends.values())
        print(
            f"preloaded {total:,} messages in {time.perf_counter() - started:.1f}s", file=sys.stderr
        )
        raw, worker, public, ceiling, quixed, other, drained = [], [], [], [], [], [], []
        faust_ceiling: list[float] = []
        for round_index in range(args.rounds):
            raw.append(asyncio.run(raw_consume(bootstrap, topic, total)))
            if args.peers:
                ceiling.append(asyncio.run(ceiling_consume(bootstrap, topic, total)))
                drained.append(faust_drain(bootstrap, topic, total))
                faust_ceiling.append(faust_drain(bootstrap, topic, total, windows=True))
                seconds = quix(bootstrap, topic, total, args.quix_python)
                if seconds is not None:
                    quixed.append(seconds)
                print(
                    f"round {round_index + 1}: ceiling {total / ceiling[-1]:,.0f} msg/s, "
                    f"Faust drain {total / drained[-1]:,.0f} msg/s, "
                    f"Faust ceiling {total / faust_ceiling[-1]:,.0f} msg/s"
                    + (f", Quix Streams {total / seconds:,.0f} msg/s" if seconds else ""),
                    file=sys.stderr,
                )
            if args.against is not None:
                before = run_worker(
                    bootstrap, topic, ends, f"bench-against-{round_index}", args.against
                )
                other.append(before)
                print(
                    f"round {round_index + 1}: {args.against}: "
                    f"{total / before['seconds']:,.0f} msg/s (processing "
                    f"{total / before['processed_seconds']:,.0f} msg/s)",
                    file=sys.stderr,
                )
            if args.public_api:
                public.append(public_api(bootstrap, topic, total))
                print(
                    f"round {round_index + 1}: Faust take() {total / public[-1]:,.0f} msg/s",
                    file=sys.stderr,
                )
            result = run_worker(bootstrap, topic, ends, f"bench-{round_index}")
            assert result["messages"] == total, result
            worker.append(result)
            print(
                f"round {round_index + 1}: raw {total / raw[-1]:,.0f} msg/s, aggregate "
                f"{result['readings'] / result['seconds']:,.0f} readings/s "
                f"({total / result['seconds']:,.0f} msg/s; processing "
                f"{total / result['processed_seconds']:,.0f} msg/s), "
                f"RSS {result['rss_mib']:,.0f} MiB",
                file=sys.stderr,
            )
        memory_rss = None
        if args.memory_devices:
            memory_rss = open_window_rss(bootstrap, args.memory_devices, args.sensors)

    raw_s = statistics.median(raw)
    agg_s = statistics.median(r["seconds"] for r in worker)
    readings = worker[0]["readings"]
    result = {
        "messages": total,
        "sensors_per_message": args.sensors,
        "rounds": args.rounds,
        "raw_aiokafka_messages_per_s": total / raw_s,
        "aggregate_messages_per_s": total / agg_s,
        "aggregate_readings_per_s": readings / agg_s,
        "aggregate_processed_messages_per_s": total
        / statistics.median(r["processed_seconds"] for r in worker),
        "ratio_aggregate_to_raw": raw_s / agg_s,
        "aggregate_peak_rss_mib": statistics.median(r["rss_mib"] for r in worker),
        "open_windows_peak_rss_mib": memory_rss,
        "faust_take_messages_per_s": total / statistics.median(public) if public else None,
        "ceiling_messages_per_s": total / statistics.median(ceiling) if ceiling else None,
        "quix_messages_per_s": total / statistics.median(quixed) if quixed else None,
        "faust_drain_messages_per_s": total / statistics.median(drained) if drained else None,
        "faust_ceiling_messages_per_s": (
            total / statistics.median(faust_ceiling) if faust_ceiling else None
        ),
        "against_messages_per_s": (
            total / statistics.median(r["seconds"] for r in other) if other else None
        ),
        "against_processed_messages_per_s": (
            total / statistics.median(r["processed_seconds"] for r in other) if other else None
        ),
        **in_process,
    }
    if args.format == "json":
        print(json.dumps(result))
    else:
        print(
            f"raw aiokafka : {result['raw_aiokafka_messages_per_s']:>10,.0f} messages/s "
            f"(median of {args.rounds})"
        )
        print(
            f"aggregate    : {result['aggregate_messages_per_s']:>10,.0f} messages/s, "
            f"{result['aggregate_readings_per_s']:,.0f} readings/s, peak RSS "
            f"{result['aggregate_peak_rss_mib']:,.0f} MiB"
        )
        print(
            f"  processing : {result['aggregate_processed_messages_per_s']:>10,.0f} messages/s "
            "(first record to the last one processed, as the peers measure; the figure above "
            "waits for the idle timeout to close the last windows)"
        )
        print(f"ratio        : {result['ratio_aggregate_to_raw']:.2f} of raw consumption")
        if public:
            print(
                f"Faust take() : {result['faust_take_messages_per_s']:>10,.0f} messages/s, "
                f"{result['faust_take_messages_per_s'] * args.sensors:,.0f} readings/s (counting "
                "only: the public API's ceiling)"
            )
        if ceiling:
            processing = result["aggregate_processed_messages_per_s"]
            print(
                f"ceiling      : {result['ceiling_messages_per_s']:>10,.0f} messages/s "
                "(aiokafka + orjson + dict windows, no rules); fleetwatch "
                f"{result['aggregate_messages_per_s'] / result['ceiling_messages_per_s']:.2f} of it"
                f" ({processing / result['ceiling_messages_per_s']:.2f} processing)"
            )
        if drained:
            print(
                f"Faust drain  : {result['faust_drain_messages_per_s']:>10,.0f} messages/s "
                "(fleetwatch's Faust app, counting only from its first delivery: an upper bound, "
                "the fetcher buffers while the group forms); fleetwatch "
                f"{result['aggregate_messages_per_s'] / result['faust_drain_messages_per_s']:.2f}"
                " of it"
            )
        if faust_ceiling:
            print(
                f"Faust ceiling: {result['faust_ceiling_messages_per_s']:>10,.0f} messages/s "
                "(the ceiling's job done by a receiver of fleetwatch's Faust app, timed as "
                "processing is); fleetwatch "
                f"{processing_ratio(result, 'faust_ceiling_messages_per_s'):.2f} of it (processing)"
            )
        if quixed:
            print(
                f"Quix Streams : {result['quix_messages_per_s']:>10,.0f} messages/s "
                "(tumbling_window().reduce()); fleetwatch "
                f"{result['aggregate_messages_per_s'] / result['quix_messages_per_s']:.2f}x"
            )
        elif args.peers:
            print(f"Quix Streams : not installed in {args.quix_python} (pip install quixstreams)")
        if other:
            print(
                f"against      : {result['against_messages_per_s']:>10,.0f} messages/s "
                f"({args.against}); fleetwatch "
                f"{result['aggregate_messages_per_s'] / result['against_messages_per_s']:.2f}x; "
                f"processing {result['against_processed_messages_per_s']:,.0f} messages/s, "
                "fleetwatch "
                f"{processing_ratio(result, 'against_processed_messages_per_s'):.2f}x"
            )
        print(
            f"in process   : decode {result['decode_us_per_message']:.1f} us/message, the "
            f"processor (decode, rules, windows) {result['processor_us_per_message']:.1f} "
            "us/message"
            + (
                f"; against: {result['against_decode_us_per_message']:.1f} / "
                f"{result['against_processor_us_per_message']:.1f} us/message"
                if other
                else ""
            )
        )
        if memory_rss is not None:
            print(
                f"open windows : {args.memory_devices:,} devices x {args.sensors} sensors, "
                f"peak RSS {memory_rss:,.0f} MiB"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
