"""``fleetwatch broker``: the embedded Kafka-compatible broker, in the foreground."""

from __future__ import annotations

import argparse
import signal
import sys

from fleetwatch.cli.parser import Command
from fleetwatch.config import Settings


def run(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.brokers.embedded import EmbeddedBroker

    broker = EmbeddedBroker(settings.broker.host, settings.broker.port)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        broker.start()
        print(
            f"fleetwatch broker: ready at {broker.bootstrap_servers} "
            "(embedded Tansu, memory-only; Ctrl-C stops it)",
            flush=True,
        )
        code = broker.wait()
        print(f"fleetwatch broker: the broker exited with code {code}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        broker.stop()


COMMAND = Command(
    "broker",
    "run the embedded Kafka-compatible broker (foreground)",
    """
    fleetwatch broker                      # 127.0.0.1:9092 until Ctrl-C
    fleetwatch broker --port 19092
    """,
    {"": ("log_level",), "broker": "*"},
    run,
)
