"""The stack a benchmark runs against: the embedded broker, one worker and the api as
child processes under a topic prefix of their own, stopped by pid at the end."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ledger.broker import EmbeddedBroker, free_port
from ledger.kafka import ensure_topics
from ledger.processes import ChildProcess
from ledger.settings import Settings

HOST = "127.0.0.1"


def log(message: str) -> None:
    """Progress, to stderr: stdout's last line is the benchmark's JSON."""
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class BenchStack:
    settings: Settings
    api_port: int
    master_key: str
    api_pid: int


@contextmanager
def bench_stack(
    work_dir: Path, partitions: int, prepare: Callable[[Settings], None] | None = None
) -> Iterator[BenchStack]:
    """Start the broker, create the topics (then ``prepare`` more), start a worker and the
    api with a master key; logs and the store go to ``work_dir``."""
    os.chmod(work_dir, 0o755)  # the api's catalog server may run as another user (ledger.store.catalog_server)
    prefix = f"bench-{uuid.uuid4().hex[:6]}."
    master_key = f"sk-bench-{uuid.uuid4().hex}"
    api_port = free_port(HOST)
    with EmbeddedBroker(log_path=work_dir / "tansu.log") as broker:
        settings = Settings(
            kafka_bootstrap_servers=broker.bootstrap_servers, topic_prefix=prefix, topic_partitions=partitions
        )
        asyncio.run(ensure_topics(settings))
        if prepare is not None:
            prepare(settings)
        env = {
            "SPEND_LEDGER_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "SPEND_LEDGER_TOPIC_PREFIX": prefix,
            "SPEND_LEDGER_TOPIC_PARTITIONS": str(partitions),
            "SPEND_LEDGER_KAFKA_SESSION_TIMEOUT_S": "2",
            "SPEND_LEDGER_KAFKA_HEARTBEAT_INTERVAL_S": "0.3",
            "SPEND_LEDGER_STORE_PATH": str(work_dir / "store"),
            "SPEND_LEDGER_DATA_DIR": str(work_dir / "data"),
            "SPEND_LEDGER_API_HOST": HOST,
            "SPEND_LEDGER_API_PORT": str(api_port),
            "SPEND_LEDGER_MASTER_KEY": master_key,
        }
        worker = ChildProcess.worker(env, work_dir / "worker.log")
        api = ChildProcess.command(["api"], env, work_dir / "api.log")
        try:
            worker.start()
            api.start()
            log(f"broker {broker.bootstrap_servers}, worker pid {worker.pid}, api pid {api.pid} on port {api_port}")
            yield BenchStack(settings, api_port, master_key, api.pid or 0)
        finally:
            api.stop()
            worker.stop()
