"""kafka-python clients built from :class:`~fleetwatch.config.KafkaSettings`.

Every client gets the same security settings and a bounded bootstrap wait, so an unreachable
broker is one clear error after ``--timeout`` seconds, never a hang.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from fleetwatch.brokers.kafka_adapter import fail_pending
from fleetwatch.config import KafkaSettings
from fleetwatch.errors import BrokerError, ConfigError

#: Producer batching tuned for many small JSON messages: large batches, a short linger.
PRODUCER_BATCH_BYTES = 512 * 1024
PRODUCER_LINGER_MS = 20
#: Beyond a producer's delivery and request timeouts, how long :func:`finish` waits.
FINISH_MARGIN_S = 5.0


def common_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection and security settings shared by producers, consumers and the admin client."""
    timeout_ms = int(kafka.timeout * 1000)
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in kafka.bootstrap_servers.split(",") if s.strip()],
        "security_protocol": kafka.security_protocol,
        "bootstrap_timeout_ms": timeout_ms,
        "request_timeout_ms": max(timeout_ms, 5000) + 1000,
        "client_id": "fleetwatch",
    }
    if kafka.security_protocol.startswith("SASL"):
        config["sasl_mechanism"] = kafka.sasl_mechanism
        config["sasl_plain_username"] = kafka.sasl_username
        config["sasl_plain_password"] = kafka.sasl_password.reveal()
    if kafka.ssl_cafile:
        if kafka.security_protocol.endswith("SSL"):
            ssl_context(kafka)  # a bad file named now, not as a broker that cannot be reached
        config["ssl_cafile"] = kafka.ssl_cafile
    return config


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext:
    """The TLS context of ``ssl_cafile`` (the system's CAs without one); a file that is
    missing or not PEM certificates is one line naming it. Made where a client is built, not
    when settings load (45 ms for a CA bundle: every command would pay it)."""
    path = kafka.ssl_cafile or None
    try:
        return ssl.create_default_context(cafile=path)
    except FileNotFoundError:
        raise ConfigError(f"ssl_cafile={path}: no such file (give the CA bundle's path)") from None
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise ConfigError(
            f"ssl_cafile={path}: not a readable bundle of PEM certificates ({reason})"
        ) from None


def describe_target(kafka: KafkaSettings) -> str:
    """Where we connect, for messages: never includes the password."""
    return f"{kafka.bootstrap_servers} ({kafka.security_protocol})"


def probe(kafka: KafkaSettings) -> None:
    """Fail at once, in one line, when no bootstrap server takes a TCP connection (refused,
    an unknown host): the clients would wait the whole ``--timeout`` to say the same."""
    problems = []
    for server in kafka.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=kafka.timeout).close()
            return
        except (OSError, ValueError) as exc:
            problems.append(
                f"{server.strip()}: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
            )
    raise BrokerError(
        f"cannot reach Kafka at {describe_target(kafka)} ({'; '.join(problems)}); start one "
        "with `fleetwatch broker` or set --bootstrap-servers"
    )


def _unreachable(kafka: KafkaSettings, exc: Exception) -> BrokerError:
    return BrokerError(
        f"cannot reach Kafka at {describe_target(kafka)} within {kafka.timeout:g}s "
        f"({type(exc).__name__}); start one with `fleetwatch broker` or set --bootstrap-servers"
    )


def make_producer(kafka: KafkaSettings, **overrides: Any) -> KafkaProducer:
    """A producer with acks=all, retries, batching and the configured compression."""
    base = common_config(kafka)
    config = base | {
        "acks": "all",
        "retries": 5,
        "linger_ms": PRODUCER_LINGER_MS,
        "batch_size": PRODUCER_BATCH_BYTES,
        "max_block_ms": int(kafka.timeout * 1000),
        # Give up on a message after a few broker timeouts rather than Kafka's default 2 minutes,
        # so a dead broker shows up as counted failures quickly.
        "delivery_timeout_ms": max(
            base["request_timeout_ms"] + PRODUCER_LINGER_MS, int(kafka.timeout * 3000)
        ),
        "compression_type": None if kafka.compression == "none" else kafka.compression,
    }
    config.update(overrides)
    probe(kafka)
    try:
        return KafkaProducer(**config)
    except (KafkaConnectionError, KafkaTimeoutError) as exc:
        raise _unreachable(kafka, exc) from None
    except (KafkaError, OSError) as exc:
        raise BrokerError(f"cannot connect to {describe_target(kafka)}: {exc}") from None


def finish(producer: KafkaProducer) -> None:
    """Wait for every record sent to be delivered or to fail, then close ``producer``: when this
    returns, each record's callback or errback has run, and nothing was raised.

    The wait is the producer's delivery timeout plus a request timeout (its I/O thread checks
    expiry between polls). A broker that stopped answering can hold in-flight records longer
    (kafka-python does not always expire them): those are failed then
    (:func:`~fleetwatch.brokers.kafka_adapter.fail_pending`: their errbacks count them), where
    ``close()`` raised from its own flush, twice (``__del__`` closes again), and the records
    were counted neither way. A Ctrl-C during the wait fails what is pending the same way.
    """
    patience_ms = producer.config["delivery_timeout_ms"] + producer.config["request_timeout_ms"]
    try:
        producer.flush(timeout=patience_ms / 1000 + FINISH_MARGIN_S)
    except KafkaTimeoutError:
        pass  # failed below, each record by its errback
    finally:
        fail_pending(producer)
        producer.close(timeout=FINISH_MARGIN_S)


def delivery_error(exc: BaseException) -> str:
    """A failed delivery in a few words: its type and text, the type once (kafka-python's errors
    already start their text with it: "KafkaTimeoutError: KafkaTimeoutError: Expiring ...")."""
    name, text = type(exc).__name__, str(exc)
    return text if text.startswith(name) else f"{name}: {text}" if text else name


def make_consumer(kafka: KafkaSettings, *topics: str, **overrides: Any) -> KafkaConsumer:
    """A consumer of ``topics`` (none: assign partitions yourself)."""
    config = common_config(kafka) | {"enable_auto_commit": False}
    config.update(overrides)
    probe(kafka)
    try:
        return KafkaConsumer(*topics, **config)
    except (KafkaConnectionError, KafkaTimeoutError) as exc:
        raise _unreachable(kafka, exc) from None


@contextmanager
def admin_client(kafka: KafkaSettings) -> Iterator[KafkaAdminClient]:
    """An admin client that is closed afterwards."""
    probe(kafka)
    try:
        client = KafkaAdminClient(**common_config(kafka))
    except (KafkaConnectionError, KafkaTimeoutError) as exc:
        raise _unreachable(kafka, exc) from None
    try:
        yield client
    finally:
        client.close()


def event_time_span(kafka: KafkaSettings, topic: str, tail: int = 200) -> tuple[int, int] | None:
    """The first and the newest event time (epoch ms) among the valid messages at the start and
    the end of every partition of ``topic``, or None when it holds none.

    Reads at most ``tail`` records at each end of each partition. The end is the high watermark
    of a fetch response: the embedded broker answers a LATEST offset request with the last
    batch's base offset instead of the log's end."""
    from kafka import TopicPartition

    from fleetwatch.telemetry import InvalidMessage, parse_message

    def events(batch: list[Any]) -> list[int]:
        found = []
        for record in batch:
            try:
                found.append(parse_message(record.value, record.key).ts_ms)
            except InvalidMessage:
                continue
        return found

    consumer = make_consumer(kafka)
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return None
        consumer.assign(partitions)
        starts = consumer.beginning_offsets(partitions)
        first: list[int] = []
        newest: list[int] = []
        for tp in partitions:
            consumer.seek(tp, starts[tp])
            head = consumer.poll(timeout_ms=2000, max_records=tail).get(tp, [])
            first += events(head)[:1]
            end = consumer.highwater(tp)
            if end is None or end <= starts[tp]:
                continue
            consumer.seek(tp, max(starts[tp], end - tail))
            while consumer.position(tp) < end:
                batch = consumer.poll(timeout_ms=2000, max_records=tail).get(tp, [])
                if not batch:
                    break
                newest += events(batch)
        if not first or not newest:
            return None
        return min(first), max(newest)
    except KafkaError as exc:
        raise BrokerError(f"cannot read {topic} on {describe_target(kafka)}: {exc}") from None
    finally:
        consumer.close()
