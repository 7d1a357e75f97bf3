"""The bad-input corpus (tests/bad_inputs.py) against real processes: every kind on the
``usage`` topic of a real worker, every kind posted to a real api, and the api fuzzed from
its own OpenAPI spec. Nothing bad is charged, no process falls over, each refusal says why."""

from __future__ import annotations

import asyncio
import base64
import socket
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from ledger.domain.wire import decode_usage_message
from tests.bad_inputs import (
    BAD_USER,
    GOOD_USER,
    HTTP_KINDS,
    KAFKA_KINDS,
    BadInput,
    assert_refused_as,
    over_api_limit_request,
)
from tests.integration.builders import MakeLedger, charged, cost_nanos, usage
from tests.integration.conftest import Ledger
from tests.stores import lake_at

PRODUCER_REQUEST_BYTES_MAX = 16 * 1024 * 1024  # the worker's consumer fetches up to this
MASTER_KEY = "corpus-master-key"


def publish_large(ledger: Ledger, records: list[tuple[bytes, bytes]]) -> None:
    """Send records of up to 16 MiB to ``usage`` (aiokafka's default request limit is 1 MB)."""

    async def send() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=ledger.settings.kafka_bootstrap_servers, max_request_size=PRODUCER_REQUEST_BYTES_MAX
        )
        await producer.start()
        try:
            for key, value in records:
                await producer.send_and_wait(ledger.topics.usage, value, key=key)
        finally:
            await producer.stop()

    asyncio.run(send())


def good_events(prefix: str, count: int) -> list[dict[str, Any]]:
    return [usage(f"{prefix}-{n}", user=GOOD_USER, prompt=100 + n) for n in range(count)]


def test_every_bad_kind_on_kafka_is_dead_lettered_with_its_reason_and_none_is_charged(make_ledger: MakeLedger):
    ledger = make_ledger()
    worker = ledger.start_worker()
    pid = worker.pid
    before, after = good_events("corpus-before", 3), good_events("corpus-after", 3)
    ledger.publish_json(ledger.topics.usage, [(event["event_id"], event) for event in before])
    publish_large(ledger, [(kind.name.encode(), kind.body) for kind in KAFKA_KINDS])
    ledger.publish_json(ledger.topics.usage, [(event["event_id"], event) for event in after])

    good = [*before, *after, *(event for kind in KAFKA_KINDS for event in kind.good_events)]
    ledger.snapshots(charged("global:*", len(good)))
    ledger.wait_idle()

    # The worker went on: the same process, and it charged what came after the corpus.
    assert worker.running()
    assert worker.pid == pid
    states = ledger.snapshots(charged("global:*", len(good)))
    # Nothing bad was charged, not even $0: the global total is exactly the good events'.
    assert states["global:*"].state.entry_count == len(good)
    assert states["global:*"].state.total_spend_nanos == sum(cost_nanos(event) for event in good)
    assert states[f"user:{GOOD_USER}"].state.entry_count == len(good)
    assert f"user:{BAD_USER}" not in states
    entries = ledger.read_json(ledger.topics.ledger_entries)
    charged_ids = sorted(entry["event_id"] for batch in entries for entry in batch["entries"])
    assert charged_ids == sorted(event["event_id"] for event in good)

    # Each kind got exactly one dead letter, with its reason, its detail and its bytes.
    letters = ledger.read_json(ledger.topics.dead_letter)
    by_key: dict[str, list[dict[str, Any]]] = {}
    for letter in letters:
        by_key.setdefault(base64.b64decode(letter["original_key_b64"] or "").decode(), []).append(letter)
    assert sorted(by_key) == sorted(kind.name for kind in KAFKA_KINDS)
    for kind in KAFKA_KINDS:
        assert kind.letter is not None
        (letter,) = by_key[kind.name]
        assert (letter["stage"], letter["reason"]) == (kind.letter.stage, kind.letter.reason), kind.name
        assert kind.letter.detail in letter["detail"], (kind.name, letter["detail"])
        assert base64.b64decode(letter["original_value_b64"]) == kind.original, kind.name
        assert letter["source_topic"] == ledger.topics.usage
        assert letter["source_offset"] is not None


def post_kind(client: httpx.Client, kind: BadInput) -> httpx.Response:
    return client.post("/v1/usage", content=kind.body, headers={"content-type": kind.content_type})


def post_over_limit(url: str) -> tuple[int, dict[str, Any]]:
    """Declare a body over the api's limit and send none of it: the answer must come anyway."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(over_api_limit_request("/v1/usage", f"Bearer {MASTER_KEY}"))
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, orjson.loads(body)


def test_every_bad_kind_over_http_gets_a_4xx_naming_it_and_nothing_is_published(
    make_ledger: MakeLedger, tmp_path: Path
):
    ledger = make_ledger()
    ledger.start_worker()
    api = ledger.start_api(lake_at(tmp_path), master_key=MASTER_KEY)
    pid = api.process.pid
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    with httpx.Client(base_url=api.url, headers=headers, timeout=60) as client:
        first = good_events("http-before", 1)[0]
        assert client.post("/v1/usage", json=first).status_code == 202

        for kind in HTTP_KINDS:
            assert kind.refusal is not None
            if kind.name == "body_over_api_limit":
                status, answer = post_over_limit(api.url)
            else:
                response = post_kind(client, kind)
                status, answer = response.status_code, response.json()
            assert_refused_as(kind.refusal, status, answer["error"])
            assert api.process.running(), kind.name

        last = good_events("http-after", 1)[0]
        assert client.post("/v1/usage", json=last).status_code == 202
    assert api.process.running()
    assert api.process.pid == pid

    # The usage topic holds the two good events and nothing else.
    published = []
    for record in ledger.read(ledger.topics.usage):
        events, rejected = decode_usage_message(record.value)
        assert rejected == []
        published.extend(event.event_id for event in events)
    assert sorted(published) == sorted([first["event_id"], last["event_id"]])  # partitions: no order between them
