"""Create and list fleetwatch's topics, idempotently."""

from __future__ import annotations

from dataclasses import dataclass

from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from fleetwatch.brokers.clients import admin_client
from fleetwatch.config import KafkaSettings
from fleetwatch.errors import BrokerError


@dataclass(frozen=True)
class TopicInfo:
    name: str
    partitions: int
    created: bool  # False: it existed already


def fleet_topics(kafka: KafkaSettings) -> list[str]:
    return [kafka.telemetry_topic, kafka.dead_letter_topic]


def ensure_topics(kafka: KafkaSettings, names: list[str] | None = None) -> list[TopicInfo]:
    """Create ``names`` (default: telemetry and dead-letter) unless they exist; say which were new.

    An existing topic is left as it is, even with another partition count: repartitioning a
    live topic reshuffles keys, which is the operator's decision, not ours.
    """
    wanted = names if names is not None else fleet_topics(kafka)
    results = []
    with admin_client(kafka) as admin:
        existing = set(admin.list_topics())
        for name in wanted:
            created = False
            if name not in existing:
                try:
                    admin.create_topics(
                        [NewTopic(name, kafka.partitions, kafka.replication_factor)],
                        timeout_ms=int(kafka.timeout * 1000),
                    )
                    created = True
                except TopicAlreadyExistsError:
                    pass  # another process won the race; that is fine
                except KafkaError as exc:
                    raise BrokerError(f"cannot create topic {name}: {exc}") from None
            results.append(TopicInfo(name, _partition_count(admin, name), created))
    return results


def list_topics(kafka: KafkaSettings) -> list[TopicInfo]:
    """Every topic on the broker with its partition count."""
    with admin_client(kafka) as admin:
        names = sorted(n for n in admin.list_topics() if not n.startswith("__"))
        return [TopicInfo(n, _partition_count(admin, n), False) for n in names]


def topic_id(kafka: KafkaSettings, name: str) -> str | None:
    """The topic's id (a new one each time a topic is created), where the broker has ids."""
    with admin_client(kafka) as admin:
        described = admin.describe_topics([name])
    found = described[0].get("topic_id") if described else None
    if not found or str(found).strip("0-") == "":  # the all-zero id: the broker has none
        return None
    return str(found)


def _partition_count(admin: object, name: str) -> int:
    described = admin.describe_topics([name])  # type: ignore[attr-defined]
    return len(described[0]["partitions"]) if described else 0
