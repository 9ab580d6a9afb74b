"""Simulator throughput against a bare kafka-python producer, in the same run.

    python benchmarks/simulate.py                       # embedded broker, 3 rounds
    python benchmarks/simulate.py --messages 200000 --rounds 5 --format json
    python benchmarks/simulate.py --bootstrap-servers kafka:9092

Each round sends the same messages twice to fresh topics: (a) a bare loop over pre-built payloads
(the exact bytes the simulator makes for this seed) with the same producer settings, and (b)
``simulate()``, the function ``fleetwatch simulate`` runs, in this process (generation,
production and flush; not the interpreter's start). Printed: medians of the rounds, the ratio
b/a, readings/s and messages/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime

from fleetwatch.brokers.clients import make_producer
from fleetwatch.brokers.embedded import EmbeddedBroker
from fleetwatch.brokers.topics import ensure_topics
from fleetwatch.config import load_settings
from fleetwatch.simulators.fleet import FleetSpec, FleetStream
from fleetwatch.simulators.publish import simulate

START = datetime(2026, 11, 22, tzinfo=UTC)


def bare_producer(settings_kafka: object, topic: str, payloads: list[tuple[bytes, bytes]]) -> float:
    producer = make_producer(settings_kafka)  # type: ignore[arg-type]
    started = time.perf_counter()
    for key, value in payloads:
        producer.send(topic, key=key, value=value)
    producer.flush()
    elapsed = time.perf_counter() - started
    producer.close()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--bootstrap-servers", default="", help="default: start the embedded broker"
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--sensors", type=int, default=10)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compression", default="lz4")
    parser.add_argument("--format", choices=["text", "json"], default="text")
    args = parser.parse_args()

    broker = None
    bootstrap = args.bootstrap_servers
    if not bootstrap:
        broker = EmbeddedBroker(port=0).start()
        bootstrap = broker.bootstrap_servers
    try:
        spec = FleetSpec(
            devices=args.devices, sensors=args.sensors, start=START, seed=1, anomaly_rate=0.5
        )
        stream = FleetStream(spec)
        payloads = [m for _, batch in stream.ticks(args.messages) for m in batch]
        readings = stream.counters.readings
        bare_s, sim_s = [], []
        for round_index in range(args.rounds):
            base = load_settings(
                environ={},
                overrides={
                    "kafka": {
                        "bootstrap_servers": bootstrap,
                        "compression": args.compression,
                        "telemetry_topic": f"bench-bare-{round_index}",
                        "dead_letter_topic": f"bench-dl-{round_index}",
                    }
                },
            )
            ensure_topics(base.kafka)
            bare_s.append(bare_producer(base.kafka, base.kafka.telemetry_topic, payloads))
            sim_settings = load_settings(
                environ={},
                overrides={
                    "kafka": {
                        "bootstrap_servers": bootstrap,
                        "compression": args.compression,
                        "telemetry_topic": f"bench-sim-{round_index}",
                        "dead_letter_topic": f"bench-dl-{round_index}",
                    },
                    "simulate": {
                        "devices": args.devices,
                        "sensors": args.sensors,
                        "messages": args.messages,
                        "speed": 0,
                        "seed": 1,
                        "start": START.isoformat(),
                        "anomaly_rate": 0.5,
                        "progress": False,
                    },
                },
            )
            ensure_topics(sim_settings.kafka)
            summary = simulate(sim_settings)
            assert summary.messages_sent == args.messages and summary.messages_failed == 0
            assert summary.readings == readings
            sim_s.append(summary.elapsed_s)
            print(
                f"round {round_index + 1}: bare {args.messages / bare_s[-1]:,.0f} msg/s, "
                f"simulate {args.messages / sim_s[-1]:,.0f} msg/s",
                file=sys.stderr,
            )
    finally:
        if broker is not None:
            broker.stop()

    bare, sim = statistics.median(bare_s), statistics.median(sim_s)
    result = {
        "messages": args.messages,
        "sensors_per_message": args.sensors,
        "rounds": args.rounds,
        "bare_messages_per_s": args.messages / bare,
        "simulate_messages_per_s": args.messages / sim,
        "simulate_readings_per_s": readings / sim,
        "ratio_simulate_to_bare": bare / sim,
        "compression": args.compression,
    }
    if args.format == "json":
        print(json.dumps(result))
    else:
        print(
            f"bare producer : {result['bare_messages_per_s']:>10,.0f} messages/s "
            f"(median of {args.rounds})"
        )
        print(
            f"simulate      : {result['simulate_messages_per_s']:>10,.0f} messages/s, "
            f"{result['simulate_readings_per_s']:,.0f} readings/s"
        )
        print(f"ratio         : {result['ratio_simulate_to_bare']:.2f} of the bare producer's rate")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
