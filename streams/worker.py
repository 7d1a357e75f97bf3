"""Running the worker: create the topics, build the app, run it until a signal stops it.

Shutdown is bounded: a Faust worker whose broker is gone can wait on it for a long time,
so after ``worker_shutdown_timeout_s`` from the first SIGTERM/SIGINT the process exits
anyway. Nothing is lost by that: offsets are committed only after their outputs were
flushed, so unfinished input is read again by whoever owns the partition next.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
from typing import Any

import faust

from ledger.kafka import ensure_topics
from ledger.pricebooks.genai import genai_prices_book
from ledger.settings import Settings
from ledger.tokenizer import count_tokens
from streams.app import LedgerWorker

EXIT_SHUTDOWN_TIMEOUT = 3
GC_YOUNG_THRESHOLD = 100_000


def build_worker(settings: Settings) -> LedgerWorker:
    """The worker app for these settings, pricing with the bundled book by default."""
    return LedgerWorker(settings, default_book=genai_prices_book, count_tokens=count_tokens)


def run_worker(settings: Settings) -> None:
    """Create missing topics, then run the worker in this process until stopped."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(ensure_topics(settings))
    (settings.data_dir / "worker").mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    worker = build_worker(settings)
    # The worker keeps hundreds of thousands of long-lived objects (one snapshot per scope)
    # and allocates many short-lived ones per event: with the default thresholds the cyclic
    # collector ran so often that it took half of the fold's time (measured). Nothing here
    # relies on prompt collection of cycles.
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 100)
    _BoundedWorker(
        worker.app, shutdown_timeout_s=settings.worker_shutdown_timeout_s, loglevel=settings.log_level.upper()
    ).execute_from_commandline()


class _BoundedWorker(faust.Worker):
    """Faust's worker, with an exit timer armed by the first stop signal and no spinner."""

    def __init__(self, *args: Any, shutdown_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Faust's terminal spinner sets the root logger to DEBUG to spin on every record, so
        # every debug call in aiokafka built a log record on the hot path (measured).
        self.spinner = None
        self._shutdown_timeout_s = shutdown_timeout_s
        self._exit_timer: threading.Timer | None = None

    def _arm_exit(self) -> None:
        if self._exit_timer is None:
            self._exit_timer = threading.Timer(self._shutdown_timeout_s, os._exit, args=(EXIT_SHUTDOWN_TIMEOUT,))
            self._exit_timer.daemon = True
            self._exit_timer.start()

    def _on_sigint(self) -> None:
        self._arm_exit()
        super()._on_sigint()

    def _on_sigterm(self) -> None:
        self._arm_exit()
        super()._on_sigterm()
