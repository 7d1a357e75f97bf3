"""One event loop per test for the asyncio calls the LiteLLM tests make.

LiteLLM's logging worker queues async success callbacks on the loop it is bound to.
With ``asyncio.run`` per call, a callback still queued when that loop closes never runs
(LiteLLM warns "coroutine ... was never awaited"); with one loop for the whole session it
runs during a later test, against that test's callbacks. So each test gets a loop of its
own, and before it closes, what LiteLLM queued on it is run (bounded).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
DRAIN_TIMEOUT_S = 20.0

_runner: asyncio.Runner | None = None


def run_async(work: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(work)`` on the current test's loop."""
    global _runner
    if _runner is None:
        _runner = asyncio.Runner()
    return _runner.run(work)


async def _drain_litellm_worker() -> None:
    # LiteLLM has no public "flush"; its worker's queue and tasks are read here, in tests only.
    from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER as worker

    if worker._bound_loop is not asyncio.get_running_loop():
        return
    if worker._queue is not None:
        await asyncio.wait_for(worker._queue.join(), DRAIN_TIMEOUT_S)
    running = list(worker._running_tasks)
    if running:
        await asyncio.wait(running, timeout=DRAIN_TIMEOUT_S)


def close_test_loop() -> None:
    """Run what LiteLLM queued on the test's loop, then close the loop."""
    global _runner
    runner, _runner = _runner, None
    if runner is None:
        return
    try:
        runner.run(_drain_litellm_worker())
    finally:
        runner.close()
