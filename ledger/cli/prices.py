"""``spend-ledger prices import``: publish a price book to the ``prices`` topic.

The worker prices every event with the newest book on that topic (read by a plain
consumer of its one partition), and the api's projector stores every book. A book is
sent as one record keyed by its book id (the topic is compacted: the last book per id
stays), gzip-compressed: Kafka's default limit is about 1 MB per message, and a LiteLLM
book of some 2,000 models is larger than that uncompressed, a tenth of it compressed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ledger.cli.common import console, fail
from ledger.cli.remote import settings_or_fail
from ledger.domain.errors import LedgerError
from ledger.domain.prices import PriceBook, load_price_book
from ledger.settings import Settings
from ledger.topics import topic_names

PRICE_BOOK_BYTES_MAX = 16 * 1024 * 1024  # uncompressed; the worker fetches records up to 64 MiB
PUBLISH_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class PublishedBook:
    topic: str
    partition: int
    offset: int


def prices_import(
    source: Annotated[
        Path, typer.Argument(metavar="FILE", help="a price book JSON file (or, with --litellm, LiteLLM's price file)")
    ],
    litellm: Annotated[
        bool, typer.Option("--litellm", help="the file is LiteLLM's model_prices_and_context_window.json")
    ] = False,
    strict: Annotated[
        bool, typer.Option(help="with --litellm: refuse the file if a price is finer than 12 decimal places per token")
    ] = False,
    book_id: Annotated[
        str | None,
        typer.Option("--book-id", help="publish under this book id (default: the book's own; litellm for --litellm)"),
    ] = None,
) -> None:
    """Publish a price book to the workers: the prices topic, keyed by book id.

    Waits for the broker's ack (KAFKA_BOOTSTRAP_SERVERS); workers price new events with the book from then on.
    """
    from aiokafka.errors import KafkaError, MessageSizeTooLargeError

    from ledger.pricebooks.litellm import import_litellm_prices

    settings = settings_or_fail()
    try:
        raw = source.read_bytes()
        if litellm:
            book, report = import_litellm_prices(raw, source=f"litellm {source.name}", skip_imprecise=not strict)
            console.print(escape(report.summary()))
        else:
            book = load_price_book(raw)
        if book_id is not None and book_id != book.book_id:
            book = PriceBook(book_id=book_id, source=book.source, providers=book.providers, overrides=book.overrides)
    except (LedgerError, OSError, ValueError) as exc:
        raise fail(escape(str(exc))) from exc
    value = book.model_dump_json(exclude_none=True).encode()
    if len(value) > PRICE_BOOK_BYTES_MAX:
        raise fail(f"the book is {len(value)} bytes of JSON, over the {PRICE_BOOK_BYTES_MAX} bytes one record may hold")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its errors are reported below, once
    try:
        published = asyncio.run(asyncio.wait_for(_publish(settings, book, value), PUBLISH_TIMEOUT_S))
    except MessageSizeTooLargeError as exc:
        raise fail(
            f"the broker refused the book as too large ({len(value)} bytes before gzip): raise max.message.bytes "
            f"of the topic {topic_names(settings.topic_prefix).prices} ({exc})"
        ) from exc
    except (KafkaError, TimeoutError, OSError) as exc:
        raise fail(
            f"could not publish the book to {settings.kafka_bootstrap_servers}: {escape(str(exc) or repr(exc))}"
        ) from exc
    console.print(
        f"published price book {escape(book.book_id)} ({book.version[:19]}, {len(value)} bytes)"
        f" to {published.topic} partition {published.partition} offset {published.offset};"
        " workers price new events with it"
    )


async def _publish(settings: Settings, book: PriceBook, value: bytes) -> PublishedBook:
    from aiokafka import AIOKafkaProducer

    from ledger.kafka import client_options, ensure_topics

    await ensure_topics(settings)  # the prices topic is compacted, with one partition
    topic = topic_names(settings.topic_prefix).prices
    producer = AIOKafkaProducer(
        **client_options(settings),
        acks="all",
        compression_type="gzip",
        max_request_size=PRICE_BOOK_BYTES_MAX + 64 * 1024,
    )
    try:
        await producer.start()
        metadata = await producer.send_and_wait(topic, value, key=book.book_id.encode())
    finally:
        await producer.stop()
    return PublishedBook(topic, metadata.partition, metadata.offset)
