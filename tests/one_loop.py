"""One event loop for every asyncio call the LiteLLM tests make, as an application has.

LiteLLM's logging worker binds to the event loop it first runs on and queues async
success callbacks there; with ``asyncio.run`` per call, a callback queued as one loop
closes is never run (LiteLLM warns "coroutine ... was never awaited"), and a test waiting
for it fails now and then. A loop kept for the whole session runs them on the next call.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_runner: asyncio.Runner | None = None


def run_async(work: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(work)`` on the session's one loop."""
    global _runner
    with _lock:
        if _runner is None:
            _runner = asyncio.Runner()
            atexit.register(_runner.close)
        runner = _runner
    return runner.run(work)
