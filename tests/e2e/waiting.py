"""Bounded waiting for the e2e tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

WAIT_S = 30.0


def until(probe: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")
