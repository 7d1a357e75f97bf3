"""The embedded broker (Tansu) speaks enough Kafka for the ledger: topics, keyed
records, consumer groups; and it stops when asked, leaving no process behind."""

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ledger.broker import EmbeddedBroker, _answers, free_port
from ledger.topics import topic_names


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited all the same.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


async def _round_trip(bootstrap: str, count: int) -> list[tuple[bytes, bytes]]:
    topic = f"it-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(count):
            await producer.send(topic, f"value-{i}".encode(), key=f"key-{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"group-{topic}",
        auto_offset_reset="earliest",
        session_timeout_ms=2_000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    received: list[tuple[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + 20
        while len(received) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            received.extend((r.key, r.value) for records in batches.values() for r in records)
    finally:
        await consumer.stop()
    return received


def test_keyed_records_reach_a_consumer_group_once_each(broker):
    received = asyncio.run(_round_trip(broker.bootstrap_servers, 200))
    assert sorted(received) == sorted((f"key-{i}".encode(), f"value-{i}".encode()) for i in range(200))


def test_the_broker_stops_by_its_own_pid():
    embedded = EmbeddedBroker().start()
    pid = embedded.pid
    assert pid is not None
    assert _alive(pid)
    embedded.stop()
    assert not _alive(pid)
    assert not _answers(embedded.host, embedded.port)


def test_spend_ledger_broker_runs_until_sigterm_and_leaves_no_broker_behind():
    port = free_port()
    command = subprocess.Popen(
        [sys.executable, "-m", "ledger.cli.main", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    children: list[int] = []
    try:
        deadline = time.monotonic() + 20
        while not _answers("127.0.0.1", port):
            assert command.poll() is None, command.stdout.read() if command.stdout else ""
            assert time.monotonic() < deadline, "the broker never answered"
            time.sleep(0.1)
        children_file = Path(f"/proc/{command.pid}/task/{command.pid}/children")
        children = [int(pid) for pid in children_file.read_text().split()]
        assert len(children) == 1
        command.send_signal(signal.SIGTERM)
        assert command.wait(timeout=15) == 0
        assert not _alive(children[0])
        assert not _answers("127.0.0.1", port)
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_broker_dies_with_the_process_that_started_it():
    port = free_port()
    script = (
        "from ledger.broker import EmbeddedBroker\n"
        f"running = EmbeddedBroker(port={port}).start()\n"
        "print(running.pid, flush=True)\n"
        "input()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    broker_pid = int(parent.stdout.readline()) if parent.stdout else 0
    try:
        assert _alive(broker_pid)
        parent.kill()  # SIGKILL: no cleanup code runs in the parent
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(broker_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(broker_pid)
    finally:
        if broker_pid and _alive(broker_pid):
            os.kill(broker_pid, signal.SIGKILL)


def test_topic_names_take_the_configured_prefix():
    names = topic_names("acme.")
    assert names.usage == "acme.usage"
    assert names.dead_letter == "acme.dead-letter"
    assert len(set(names.all())) == 9
    assert set(names.compacted()) == {"acme.prices", "acme.budget-state", "acme.rate-limits"}
    assert names.kept_forever() == ("acme.budget-commands",)
