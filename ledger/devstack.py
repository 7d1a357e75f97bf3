"""``spend-ledger dev``: the embedded broker, a worker and the api on localhost, as child
processes of one dev process, with one log stream and one Ctrl-C that stops them all.

Each child runs in its own session, so a Ctrl-C in the terminal reaches only the dev
process, which stops the children in order (api, worker, broker: SIGTERM, then SIGKILL
after a bounded time), by pid. Should the dev process be killed outright, the kernel
SIGKILLs each child at once (PR_SET_PDEATHSIG), so a new one can start on the same ports
and store right away.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import httpx

from ledger.broker import broker_binary
from ledger.processes import ChildProcess
from ledger.store.catalog_server import CatalogServer, CatalogServerError
from ledger.store.location import EMBEDDED_DATABASE

HOST = "127.0.0.1"
BROKER_READY_TIMEOUT_S = 15.0
API_READY_TIMEOUT_S = 60.0
READY_PROBE_TIMEOUT_S = 1.0
POLL_INTERVAL_S = 0.1
LOG_TAIL_LINES = 20
LOG_LINE_BYTES_MAX = 64 * 1024
READER_JOIN_TIMEOUT_S = 2.0
PREFIX_WIDTH = 6  # "broker", "worker", "api   ", "dev   "
# Short consumer sessions: the embedded broker holds a group join for half of it.
SESSION_TIMEOUT_S = 2
HEARTBEAT_INTERVAL_S = 0.3
# The worker gives up on a clean shutdown after this; the dev process SIGKILLs a child
# that outlives its stop bound.
WORKER_SHUTDOWN_TIMEOUT_S = 8
# Each child bounds its own shutdown (the api within about 10 s, the worker at
# WORKER_SHUTDOWN_TIMEOUT_S); SIGKILL comes only well after, for a child that hangs.
STOP_TIMEOUT_S = {"api": 20.0, "worker": WORKER_SHUTDOWN_TIMEOUT_S + 12.0, "broker": 5.0}
MASTER_KEY_PREFIX = "sk-dev-"


class DevStackError(RuntimeError):
    """The stack could not start, or one of its processes failed; the message says which
    process and why (with the last lines of its output)."""


def generate_master_key() -> str:
    """A random master key for this dev stack (the api needs one for admin routes)."""
    return MASTER_KEY_PREFIX + secrets.token_urlsafe(24)


@dataclass(frozen=True)
class DevStackConfig:
    """Where the dev stack listens and keeps its store, and the api's master key."""

    api_port: int
    broker_port: int
    data_dir: Path
    store_path: Path
    master_key: str
    embedded_catalog: bool = True  # False: SPEND_LEDGER_STORE_CATALOG names the catalog

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.broker_port}"


def child_environment(config: DevStackConfig) -> dict[str, str]:
    """The one environment every child gets, on top of the dev process's own."""
    return {
        "SPEND_LEDGER_KAFKA_BOOTSTRAP_SERVERS": config.bootstrap_servers,
        "SPEND_LEDGER_MASTER_KEY": config.master_key,
        "SPEND_LEDGER_API_HOST": HOST,
        "SPEND_LEDGER_API_PORT": str(config.api_port),
        "SPEND_LEDGER_DATA_DIR": str(config.data_dir),
        "SPEND_LEDGER_STORE_PATH": str(config.store_path),
        "SPEND_LEDGER_KAFKA_SESSION_TIMEOUT_S": str(SESSION_TIMEOUT_S),
        "SPEND_LEDGER_KAFKA_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_INTERVAL_S),
        "SPEND_LEDGER_WORKER_SHUTDOWN_TIMEOUT_S": str(WORKER_SHUTDOWN_TIMEOUT_S),
        "PYTHONUNBUFFERED": "1",  # lines reach the log stream as they are written
        "RUST_LOG": os.environ.get("RUST_LOG", "warn"),
    }


def check_ports(config: DevStackConfig) -> None:
    """Raise ``DevStackError`` naming the option to change if a port cannot be listened on;
    called before anything is started."""
    if config.api_port == config.broker_port:
        raise DevStackError(f"the api and the broker cannot share port {config.api_port}; change --api-port")
    for process, port, option in (
        ("broker", config.broker_port, "--broker-port"),
        ("api", config.api_port, "--api-port"),
    ):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As a server binds: a port left in TIME_WAIT is free, one with a listener is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((HOST, port))
            except OSError as exc:
                why = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
                raise DevStackError(
                    f"port {port} on {HOST} for the {process} {why}; choose another with {option} PORT"
                ) from exc


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


class LogStream:
    """The dev process's stdout: every line of every process, prefixed with its name."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def line(self, process: str, text: str) -> None:
        with self._lock:
            try:
                self._out.write(f"{process:<{PREFIX_WIDTH}} | {text}\n")
                self._out.flush()
            except (OSError, ValueError):  # a closed stdout must not take the stack down
                pass


class _Child:
    """A child process and the thread that copies its output into the log stream."""

    def __init__(self, name: str, process: ChildProcess, log: LogStream) -> None:
        self.name = name
        self.process = process
        self._log = log
        self._tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self._tail_lock = threading.Lock()
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        # Started from the main thread: PR_SET_PDEATHSIG fires when the starting thread ends.
        self.process.start()
        self._reader = threading.Thread(target=self._copy_output, name=f"dev-log-{self.name}", daemon=True)
        self._reader.start()

    def _copy_output(self) -> None:
        pipe = self.process.output
        with pipe:
            for raw in iter(lambda: pipe.readline(LOG_LINE_BYTES_MAX), b""):
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                with self._tail_lock:
                    self._tail.append(text)
                self._log.line(self.name, text)

    def finish_output(self) -> None:
        """Wait (bounded) until the output of an exited child has been copied."""
        if self._reader is not None:
            self._reader.join(READER_JOIN_TIMEOUT_S)

    def last_lines(self) -> str:
        with self._tail_lock:
            lines = list(self._tail)
        if not lines:
            return "(no output)"
        return "\n".join(f"  {self.name:<{PREFIX_WIDTH}} | {line}" for line in lines)

    def describe_exit(self, code: int) -> str:
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        return f"the {self.name} (pid {self.process.pid}) {how}"


class DevStack:
    """Broker, worker and api as children of this process; ``start``, ``watch``, ``stop``.

    ``stop_requested`` is set by the caller's signal handlers; every wait here polls it,
    so a Ctrl-C during start-up stops the stack too.
    """

    def __init__(
        self,
        config: DevStackConfig,
        out: TextIO | None = None,
        before_worker: Callable[[], Callable[[], None] | None] | None = None,
    ) -> None:
        self.config = config
        # Runs once the broker answers, before the worker starts (a restore); what it
        # returns runs once the api is ready, before the stack says so.
        self.before_worker = before_worker
        self.log = LogStream(out or sys.stdout)
        self.stop_requested = threading.Event()
        self.stop_reason: str | None = None
        self._env = child_environment(config)
        self._children: list[_Child] = []  # in start order
        self._catalog: CatalogServer | None = None
        self._last_readyz = ""

    def say(self, text: str) -> None:
        """A line of the dev process's own in the log stream."""
        self.log.line("dev", text)

    def request_stop(self, reason: str) -> None:
        """Ask the stack to stop; safe in a signal handler (it prints nothing, takes no lock)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stop_requested.set()

    def start(self) -> bool:
        """Start the broker, then (after ``before_worker``) the worker and the api once the
        broker answers; wait until the api's ``/readyz`` is 200. False if a stop was requested first. On any
        failure, stops what it started and raises ``DevStackError``."""
        started = time.monotonic()
        try:
            self.config.data_dir.mkdir(parents=True, exist_ok=True)
            if self.config.embedded_catalog:
                self._start_catalog()
            listener = f"tcp://{self.config.bootstrap_servers}"
            broker = self._launch(
                "broker",
                ChildProcess(
                    [broker_binary(), "broker", "--listener-url", listener, "--advertised-listener-url", listener],
                    self._env,
                    pipe_output=True,
                    new_session=True,
                ),
            )
            if not self._wait_for(
                broker,
                lambda: _answers(self.config.broker_port),
                BROKER_READY_TIMEOUT_S,
                f"accept connections on {self.config.bootstrap_servers}",
            ):
                return False
            after_ready = self.before_worker() if self.before_worker is not None else None
            self._launch("worker", ChildProcess.command(["worker"], self._env, pipe_output=True, new_session=True))
            api_arguments = ["api", "--host", HOST, "--port", str(self.config.api_port)]
            api = self._launch(
                "api", ChildProcess.command(api_arguments, self._env, pipe_output=True, new_session=True)
            )
            if not self._wait_for(
                api, self._api_ready, API_READY_TIMEOUT_S, f"answer 200 on {self.config.api_url}/readyz"
            ):
                return False
            if after_ready is not None:
                after_ready()
            self.say(f"ready in {time.monotonic() - started:.1f} s")
            return True
        except BaseException:
            self.stop()
            raise

    def watch(self) -> None:
        """Block until a stop is requested; raise ``DevStackError`` if a child exits first."""
        while not self.stop_requested.wait(POLL_INTERVAL_S):
            self.check_children()

    def check_children(self) -> None:
        """Raise ``DevStackError`` if any child has exited."""
        for child in self._children:
            code = child.process.exit_code
            if code is not None:
                child.finish_output()
                raise DevStackError(f"{child.describe_exit(code)}; its last lines:\n{child.last_lines()}")

    def stop(self) -> bool:
        """Stop the children in reverse start order (api, worker, broker): SIGTERM, then
        SIGKILL after the child's bound. True if every child stopped on SIGTERM."""
        clean = True
        if self._children and self.stop_reason is not None:
            self.say(f"{self.stop_reason}: stopping the stack")
        while self._children:
            child = self._children.pop()
            running = child.process.exit_code is None
            if running:
                self.say(f"stopping the {child.name} (pid {child.process.pid})")
            bound_s = STOP_TIMEOUT_S[child.name]
            code = child.process.stop(bound_s)
            child.finish_output()
            if running and code == -signal.SIGKILL:
                self.say(f"the {child.name} did not stop within {bound_s:g} s of SIGTERM and was killed")
                clean = False
        if self._catalog is not None:
            catalog, self._catalog = self._catalog, None
            if catalog.started_here:
                self.say(f"stopping the catalog (pid {catalog.pid})")
            catalog.stop()
        return clean

    def _start_catalog(self) -> None:
        """The store's embedded catalog server, started first (from this thread: it dies
        with it) and stopped last; one already running (a reader started it) is used."""
        catalog = CatalogServer(self.config.store_path.absolute() / "catalog")
        try:
            catalog.start()
            catalog.ensure_database(EMBEDDED_DATABASE)
        except CatalogServerError as exc:
            catalog.stop()
            raise DevStackError(f"the store's catalog: {exc}") from exc
        self._catalog = catalog
        if catalog.started_here:
            self.say(f"started the catalog (pid {catalog.pid})")
            self.say(f"the catalog is PostgreSQL on the socket in {catalog.socket_dir}; its log: {catalog.log_path}")

    def _launch(self, name: str, process: ChildProcess) -> _Child:
        child = _Child(name, process, self.log)
        child.start()
        self._children.append(child)
        self.say(f"started the {name} (pid {process.pid})")
        return child

    def _wait_for(self, child: _Child, ready: Callable[[], bool], timeout_s: float, what: str) -> bool:
        """Poll ``ready`` until it holds (True) or a stop is requested (False); raise
        ``DevStackError`` if a child exits or ``timeout_s`` passes first."""
        deadline = time.monotonic() + timeout_s
        while not ready():
            if self.stop_requested.wait(POLL_INTERVAL_S):
                return False
            self.check_children()
            if time.monotonic() > deadline:
                detail = f" (last answer: {self._last_readyz})" if child.name == "api" and self._last_readyz else ""
                raise DevStackError(
                    f"the {child.name} (pid {child.process.pid}) did not {what} within {timeout_s:g} s{detail}; "
                    f"its last lines:\n{child.last_lines()}"
                )
        return True

    def _api_ready(self) -> bool:
        try:
            answer = httpx.get(f"{self.config.api_url}/readyz", timeout=READY_PROBE_TIMEOUT_S)
        except httpx.HTTPError as exc:
            self._last_readyz = f"{type(exc).__name__}: {exc}"
            return False
        self._last_readyz = f"{answer.status_code} {answer.text[:300]}"
        return answer.status_code == httpx.codes.OK
