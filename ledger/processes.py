"""Child processes of the ledger (a worker, later the api), started and stopped by pid.

Used by ``spend-ledger dev``, the tests and the benchmarks: each child gets its settings
through the environment and dies with its parent (PR_SET_PDEATHSIG on Linux).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Self

from ledger.broker import _die_with_parent

STOP_TIMEOUT_S = 20.0


class ChildProcess:
    """One ``spend-ledger <command>`` child with its own environment and log file."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path | None = None) -> None:
        self._command = command
        self._env = env
        self._log_path = log_path
        self._log: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def command(cls, arguments: list[str], env: dict[str, str], log_path: Path | None = None) -> Self:
        """``spend-ledger <arguments>`` with ``env`` added to this process's environment."""
        return cls([sys.executable, "-m", "ledger.cli.main", *arguments], env, log_path)

    @classmethod
    def worker(cls, env: dict[str, str], log_path: Path | None = None) -> Self:
        """``spend-ledger worker``."""
        return cls.command(["worker"], env, log_path)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> Self:
        if self._log_path is not None:
            self._log = self._log_path.open("ab")
        output = self._log if self._log is not None else subprocess.DEVNULL
        self._process = subprocess.Popen(
            self._command,
            env={**os.environ, **self._env},
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        return self

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait(self, timeout_s: float) -> int:
        """Wait for the child to exit by itself; SIGKILL it and fail after ``timeout_s``."""
        assert self._process is not None, "not started"
        try:
            code = self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(f"{' '.join(self._command[3:])} did not exit within {timeout_s} s") from None
        self._close_log()
        return code

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._close_log()
        return self._process.returncode

    def kill(self) -> None:
        """SIGKILL: the crash a test wants, no shutdown code runs."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
