"""``fleetwatch topics create|list``."""

from __future__ import annotations

import argparse
import sys

from fleetwatch.cli.parser import Command
from fleetwatch.config import Settings
from fleetwatch.output import emit_table


def run(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.brokers.topics import ensure_topics, list_topics

    if args.action == "create":
        topics = ensure_topics(settings.kafka)
        columns = ["topic", "partitions", "created"]
        asked = settings.kafka.partitions
        for topic in topics:
            if not topic.created and topic.partitions != asked:
                print(
                    f"fleetwatch topics: warning: {topic.name} exists and has "
                    f"{topic.partitions} partitions, not {asked}: left as it is (to add some: "
                    f"kafka-topics --alter --topic {topic.name} --partitions {asked}; keys then "
                    "map to other partitions)",
                    file=sys.stderr,
                )
    else:
        topics = list_topics(settings.kafka)
        columns = ["topic", "partitions"]
    rows = [{"topic": t.name, "partitions": t.partitions, "created": t.created} for t in topics]
    sys.stdout.write(emit_table(rows, columns, args.format))
    return 0


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["create", "list"], help="what to do")
    parser.add_argument("--format", choices=["text", "json", "csv"], default="text")


COMMAND = Command(
    "topics",
    "create fleetwatch's topics (idempotent) or list topics",
    """
    fleetwatch topics create --partitions 8
    fleetwatch topics list --format json
    """,
    {"": ("log_level",), "kafka": "*"},
    run,
    arguments,
)
