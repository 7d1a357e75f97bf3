"""Child processes of the ledger (a worker, the api, the broker), started and stopped by pid.

Used by ``spend-ledger dev``, the tests and the benchmarks: each child gets its settings
through the environment and dies with its parent (PR_SET_PDEATHSIG on Linux). Its output
goes to a log file, or to a pipe the parent reads (``pipe_output``).
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
    """One ``spend-ledger <command>`` child with its own environment and log file.

    ``pipe_output``: stdout and stderr go to one pipe, read through ``output`` (instead of
    ``log_path``). ``new_session``: the child runs in its own session, so a Ctrl-C in the
    terminal reaches only the parent, which then stops its children in its own order.
    """

    def __init__(
        self,
        command: list[str],
        env: dict[str, str],
        log_path: Path | None = None,
        *,
        pipe_output: bool = False,
        new_session: bool = False,
    ) -> None:
        if pipe_output and log_path is not None:
            raise ValueError("a child's output goes to a log file or to a pipe, not both")
        self._command = command
        self._env = env
        self._log_path = log_path
        self._pipe_output = pipe_output
        self._new_session = new_session
        self._log: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def command(
        cls,
        arguments: list[str],
        env: dict[str, str],
        log_path: Path | None = None,
        *,
        pipe_output: bool = False,
        new_session: bool = False,
    ) -> Self:
        """``spend-ledger <arguments>`` with ``env`` added to this process's environment."""
        return cls(
            [sys.executable, "-m", "ledger.cli.main", *arguments],
            env,
            log_path,
            pipe_output=pipe_output,
            new_session=new_session,
        )

    @classmethod
    def worker(cls, env: dict[str, str], log_path: Path | None = None) -> Self:
        """``spend-ledger worker``."""
        return cls.command(["worker"], env, log_path)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def output(self) -> IO[bytes]:
        """The read end of the child's stdout and stderr (``pipe_output`` only)."""
        assert self._process is not None, "not started"
        assert self._process.stdout is not None, "not started with pipe_output"
        return self._process.stdout

    @property
    def exit_code(self) -> int | None:
        """The child's exit code once it has exited (negative: killed by that signal)."""
        return None if self._process is None else self._process.poll()

    def start(self) -> Self:
        output: IO[bytes] | int
        if self._pipe_output:
            output = subprocess.PIPE
        elif self._log_path is not None:
            self._log = self._log_path.open("ab")
            output = self._log
        else:
            output = subprocess.DEVNULL
        self._process = subprocess.Popen(
            self._command,
            env={**os.environ, **self._env},
            stdin=subprocess.DEVNULL if self._new_session else None,
            stdout=output,
            stderr=subprocess.STDOUT,
            # setsid() runs in the child before preexec_fn, then exec: both apply.
            start_new_session=self._new_session,
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
