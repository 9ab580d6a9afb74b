"""Aggregation throughput against raw aiokafka consumption of the same topic, in one run.

    python benchmarks/aggregate.py                        # 1,000 devices x 10 sensors, 500k msgs
    python benchmarks/aggregate.py --messages 100000 --rounds 5 --format json
    python benchmarks/aggregate.py --memory-devices 10000 # also: RSS with 10k x 10 open windows

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
    out = Path(tempfile.mkdtemp(prefix="fw-bench-faust-")) / "result.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    process = subprocess.Popen(
        [sys.executable, "-c", PUBLIC_API, bootstrap, topic, str(total), str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while not out.exists():
            if process.poll() is not None and not out.exists():
                raise RuntimeError(f"the Faust agent exited with {process.returncode}")
            time.sleep(0.2)
        time.sleep(0.1)
        return float(json.loads(out.read_text())["seconds"])
    finally:
        process.kill()
        process.wait()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_worker(
    bootstrap: str, topic: str, group: str, idle_timeout: str
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
    process = subprocess.Popen(
        [sys.executable, "-m", "fleetwatch", "aggregate"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, data


def run_worker(bootstrap: str, topic: str, ends: dict[int, int], group: str) -> dict[str, float]:
    process, data = start_worker(bootstrap, topic, group, "0.5s")
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
        status = json.loads(next(store.root.glob("status-*.json")).read_text())
        return {
            "seconds": done - float(status["first_record_at"]),
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
    root = data / "state" / "aggregate" / topic
    total = sum(ends.values())
    try:
        while True:
            statuses = [json.loads(p.read_text()) for p in root.glob("status-*.json")]
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
    args = parser.parse_args()

    with EmbeddedBroker(port=0) as broker:
        bootstrap = broker.bootstrap_servers
        topic = "bench-aggregate"
        started = time.perf_counter()
        ends = preload(bootstrap, topic, args.devices, args.sensors, args.messages)
        total = sum(ends.values())
        print(
            f"preloaded {total:,} messages in {time.perf_counter() - started:.1f}s", file=sys.stderr
        )
        raw, worker, public = [], [], []
        for round_index in range(args.rounds):
            raw.append(asyncio.run(raw_consume(bootstrap, topic, total)))
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
                f"({total / result['seconds']:,.0f} msg/s), RSS {result['rss_mib']:,.0f} MiB",
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
        "ratio_aggregate_to_raw": raw_s / agg_s,
        "aggregate_peak_rss_mib": statistics.median(r["rss_mib"] for r in worker),
        "open_windows_peak_rss_mib": memory_rss,
        "faust_take_messages_per_s": total / statistics.median(public) if public else None,
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
        print(f"ratio        : {result['ratio_aggregate_to_raw']:.2f} of raw consumption")
        if public:
            print(
                f"Faust take() : {result['faust_take_messages_per_s']:>10,.0f} messages/s, "
                f"{result['faust_take_messages_per_s'] * args.sensors:,.0f} readings/s (counting "
                "only: the public API's ceiling)"
            )
        if memory_rss is not None:
            print(
                f"open windows : {args.memory_devices:,} devices x {args.sensors} sensors, "
                f"peak RSS {memory_rss:,.0f} MiB"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
