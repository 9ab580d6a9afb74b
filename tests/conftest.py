"""Shared fixtures: one embedded broker per test session, unique topics per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from fleetwatch.brokers.embedded import EmbeddedBroker
from fleetwatch.brokers.topics import ensure_topics
from fleetwatch.config import Settings, load_settings


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(port=0) as running:
        yield running


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def make_settings(bootstrap: str, prefix: str, **sections: dict[str, object]) -> Settings:
    overrides: dict[str, dict[str, object]] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "telemetry_topic": f"{prefix}.telemetry",
            "dead_letter_topic": f"{prefix}.deadletter",
            "timeout": "5s",
        }
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return load_settings(environ={}, overrides=overrides)


@pytest.fixture
def settings(broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path) -> Settings:
    """Settings pointing at the session broker with this test's own, freshly created topics."""
    result = make_settings(
        broker.bootstrap_servers, topic_prefix, **{"": {"data_dir": str(tmp_path / "data")}}
    )
    ensure_topics(result.kafka)
    return result


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def consume_all(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[Record]:
    """Every record of ``topic`` up to its high watermark, read with a plain consumer.

    The end is taken from the fetch responses' high watermark: Tansu answers ListOffsets(LATEST)
    with the last batch's base offset, so ``end_offsets()`` undercounts there.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        bootstrap_timeout_ms=5000,
    )
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        assert partitions, f"topic {topic} does not exist"
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[Record] = []
        deadline = time.monotonic() + timeout_s

        def at_end() -> bool:
            marks = [consumer.highwater(tp) for tp in partitions]
            return all(
                mark is not None and consumer.position(tp) >= mark
                for tp, mark in zip(partitions, marks, strict=True)
            )

        while True:
            for tp, batch in consumer.poll(timeout_ms=300).items():
                records.extend(
                    Record(tp.partition, m.offset, m.key, m.value, list(m.headers or []))
                    for m in batch
                )
            if at_end():
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end within {timeout_s}s")
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


def wait_for(
    condition: Callable[[], object], timeout: float, what: str, log: Path | None = None
) -> None:
    """Until ``condition()`` is true; fails after ``timeout`` seconds, saying what it waited for
    (and the end of ``log``)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{tail}")
        time.sleep(0.1)


def record_count(bootstrap: str, topic: str) -> int:
    """How many records ``topic`` holds (its partitions' high watermarks, from a fetch)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, bootstrap_timeout_ms=5000)
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        consumer.poll(timeout_ms=500, max_records=1)
        return sum(consumer.highwater(tp) or 0 for tp in partitions)
    finally:
        consumer.close()


@contextmanager
def small_disk(where: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (a full disk, a read-only one: remount it);
    the test is skipped where mounting is not allowed (not root, no tmpfs)."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount_read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)


def fill(disk: Path) -> None:
    """Write until the disk is full."""
    with (disk / "filler").open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass


def fleetwatch_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``fleetwatch`` command in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "fleetwatch", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


def docker_available() -> str | None:
    """None if a Docker engine answers, else why not (for skip reasons)."""
    if shutil.which("docker") is None and not Path("/var/run/docker.sock").exists():
        return "no docker client or socket on this machine"
    try:
        import docker

        docker.from_env().ping()
    except Exception as exc:
        return f"no Docker engine answers ({type(exc).__name__})"
    return None


def scrape_metrics(port: int) -> dict[str, float]:
    """A Prometheus endpoint's samples on 127.0.0.1:``port``, as ``name{label=value,...}``."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


@dataclass(frozen=True)
class S3Server:
    """A local S3-compatible server (moto's server mode) and the environment to reach it."""

    endpoint: str
    env: dict[str, str]

    def bucket(self) -> str:
        """A new, empty bucket of this test's own; its ``s3://`` URL."""
        import s3fs

        name = f"fw-{uuid.uuid4().hex[:12]}"
        s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
        return f"s3://{name}"

    def filesystem(self) -> object:
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on a free port, for the session; its credentials in this process's
    environment (fake ones, long enough to be masked in logs) and handed to subprocesses."""
    pytest.importorskip("moto", reason="the object-storage tests need moto[server] (dev extra)")
    pytest.importorskip("s3fs", reason="the object-storage tests need s3fs (s3 extra)")
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=log,
    )
    endpoint = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)  # noqa: S310
        except OSError:
            return server.poll() is not None
        return True

    wait_for(answers, 30, "moto server")
    assert server.poll() is None, "moto server exited"
    env = {
        "AWS_ACCESS_KEY_ID": "AKIAFLEETWATCHTEST01",
        "AWS_SECRET_ACCESS_KEY": "fleetwatch-test-secret-9f8e7d6c5b4a",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield S3Server(endpoint, env)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.terminate()
        server.wait(10)
        log.close()
