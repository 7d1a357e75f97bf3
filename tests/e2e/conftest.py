"""The dev stack as a user runs it: ``spend-ledger dev`` as a real process on free ports,
with a data folder of its own; every process it starts is checked, and stopped, by pid."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.broker import _die_with_parent, free_port
from tests.stores import let_the_catalog_server_through

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
SUMMARY_END = "\nTry:\n"


class DevRun:
    """One ``spend-ledger dev`` process and what it printed (stdout and stderr in files)."""

    def __init__(
        self,
        folder: Path,
        *arguments: str,
        api_port: int | None = None,
        broker_port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.folder = folder
        let_the_catalog_server_through(folder)  # the store's catalog lives under it
        self.api_port = api_port or free_port()
        self.broker_port = broker_port or free_port()
        self.data_dir = folder / "data"
        self.stdout_path = folder / "dev.out"
        self.stderr_path = folder / "dev.err"
        command = [
            *("dev", "--api-port", str(self.api_port), "--broker-port", str(self.broker_port)),
            *("--data-dir", str(self.data_dir), *arguments),
        ]
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SPEND_LEDGER_", "KAFKA_"))}
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ledger.cli.main", *command],
                cwd=folder,
                env={**base, **(env or {})},
                stdout=out,
                stderr=err,
                # Its own process group, like a command in a terminal: a Ctrl-C goes to the group.
                start_new_session=True,
                preexec_fn=_die_with_parent,  # a killed test run leaves no dev stack behind
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until stdout shows ``text``; fail with what it printed if the process exits first."""
        deadline = time.monotonic() + timeout_s
        while text not in self.stdout():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"no {text!r} (exit code {self.process.poll()}):\n{self.stdout()}\n{self.stderr()}"
                )
            time.sleep(0.1)

    def wait_ready(self) -> None:
        """Wait for the summary the dev process prints once the stack is ready."""
        self.wait_for_output(SUMMARY_END)

    @property
    def master_key(self) -> str:
        found = re.search(r"^  master key  (\S+)$", self.stdout(), re.M)
        assert found, self.stdout()
        return found.group(1)

    def started_pids(self) -> dict[str, int]:
        """The pid of each child, as the dev process announced it."""
        return {
            name: int(pid)
            for name, pid in re.findall(r"^dev +\| started the (\w+) \(pid (\d+)\)$", self.stdout(), re.M)
        }

    def try_commands(self) -> list[str]:
        """The ``curl`` lines of the summary, as printed."""
        block = self.stdout().split(SUMMARY_END, 1)[1]
        return [line.strip() for line in block.splitlines() if line.startswith("  curl ")]

    def ctrl_c(self) -> None:
        """What a Ctrl-C in its terminal does: SIGINT to the dev process's process group."""
        os.killpg(self.pid, signal.SIGINT)

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Send ``signum`` to the dev process (by pid) and wait for its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.wait(signum, timeout_s)

    def wait(self, signum: int | None = None, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """The dev process's exit code; kill everything by pid and fail after ``timeout_s``."""
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            after = "" if signum is None else f" of {signal.Signals(signum).name}"
            raise AssertionError(f"dev did not exit within {timeout_s} s{after}") from None

    def kill(self) -> None:
        """SIGKILL, by pid, every child the dev process announced, then the dev process
        (children first: while their parent lives, their pids cannot be reused)."""
        for pid in [*self.started_pids().values(), self.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()


def alive(pid: int) -> bool:
    """Whether ``pid`` names a process that has not exited (a zombie has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children_of(pid: int) -> set[int]:
    """Pids of the live processes whose parent is ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


@pytest.fixture
def start_dev(tmp_path: Path) -> Iterator[Callable[..., DevRun]]:
    """Start ``spend-ledger dev`` with these arguments; whatever is still running at the
    test's end is killed by pid."""
    runs: list[DevRun] = []

    def start(*arguments: str, **options: Any) -> DevRun:
        run = DevRun(tmp_path, *arguments, **options)
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.process.poll() is None:
            run.kill()


@pytest.fixture(scope="session")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevRun]:
    """One ``spend-ledger dev --demo`` for the session, ready, with a generated master key;
    stopped by SIGTERM to its pid (everything killed by pid if that does not stop it)."""
    run = DevRun(tmp_path_factory.mktemp("dev-stack"), "--demo")
    try:
        run.wait_ready()
        yield run
    finally:
        if run.process.poll() is None:
            with contextlib.suppress(AssertionError):  # stop() killed it by pid
                run.stop()


@pytest.fixture(scope="session")
def stack_url(dev_stack: DevRun) -> str:
    """Base URL of the session stack's api."""
    return dev_stack.api_url


@pytest.fixture(scope="session")
def stack_key(dev_stack: DevRun) -> str:
    """The master key the session stack generated."""
    return dev_stack.master_key


@pytest.fixture(scope="session")
def stack_broker(dev_stack: DevRun) -> str:
    """Bootstrap servers of the session stack's broker."""
    return f"127.0.0.1:{dev_stack.broker_port}"


@pytest.fixture(scope="session")
def admin(stack_url: str, stack_key: str) -> Iterator[httpx.Client]:
    """An HTTP client of the session stack's api with the master key."""
    with httpx.Client(base_url=stack_url, headers={"Authorization": f"Bearer {stack_key}"}, timeout=30) as client:
        yield client
