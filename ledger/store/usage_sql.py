"""Usage messages into ``usage_events`` rows, unpacked in DuckDB: the projector's fast path
(and ``ledger-entries`` messages into ``ledger_entries`` rows, ``ledger_entry_rows``).

Validating each event with pydantic and building its row in Python cost ~60 us an event
(bench.projector: 13,000 events/s, 40% of the projector's time in ``usage_rows`` and 15% in
the garbage collector). The rules of a valid event keep their one home, ``UsageEvent``
(through ``records.usage_rows``): this query only *accepts*, never refuses. A message is
stored from here when every event in it passes a check that is stricter than the model
(plain ASCII text with no escapes, the common shapes of every field, no reported cost, no
text to count tokens from, each key once); any other message goes whole to
``usage_rows``, which decides as before. So an event is stored exactly when it was stored
before, with the same fields (tests/unit/test_usage_sql.py checks both paths agree).

Most messages are plainer still: no JSON null, no metadata, every field of its one type.
Arrow's JSON reader types those in one strict parse and ``_PLAIN_ROWS`` checks their
values, in about a third of the time of the general query, which reads each field as JSON
to learn its type. A message it does not take whole goes on to the general query.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import json as pa_json

from ledger.domain.events import (
    BATCH_EVENTS_MAX,
    EVENT_ID_CHARS_MAX,
    METADATA_KEYS_MAX,
    METADATA_VALUE_CHARS_MAX,
    MODEL_NAME_CHARS_MAX,
    OCCURRED_AT_MAX,
    OCCURRED_AT_MIN,
    TAGS_MAX,
    TOKENS_PER_FIELD_MAX,
    UsageBatch,
    UsageEvent,
)
from ledger.domain.scopes import GLOBAL_SCOPE, SCOPE_ID_MAX_CHARS
from ledger.domain.wire import MESSAGE_BYTES_MAX
from ledger.store.records import USAGE_COLUMNS

_EVENT_KEYS = tuple(UsageEvent.model_fields)
_BATCH_KEYS = tuple(UsageBatch.model_fields)
_TOKEN_KEYS = ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
_INTEGER = "('UBIGINT', 'BIGINT')"
# Texts here are printable ASCII without escapes (``_simple``): no control characters, and
# the only white space is the space, so an id's length and ends are all there is to check.
_TIME = (
    "'[0-9]{4}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?"
    "(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])'"
)
_NOT_NULL_WHEN_PRESENT = (
    "schema_version",
    "event_id",
    "occurred_at",
    "occurred_at_source",
    "model",
    "tags",
    "metadata",
)


def _name(text: str, chars_max: int) -> str:
    return f"len({text}) BETWEEN 1 AND {chars_max}"


def _identifier(text: str) -> str:
    return f"(len({text}) BETWEEN 1 AND {SCOPE_ID_MAX_CHARS} AND trim({text}) = {text})"


def _text(field: str, check: str) -> str:
    """A string field that is absent, JSON null, or a string that passes ``check``."""
    return f"(e.{field} IS NULL OR (json_type(e.{field}) = 'VARCHAR' AND {check}))"


def _value(field: str) -> str:
    return f"CASE WHEN json_type(e.{field}) = 'VARCHAR' THEN e.{field} ->> '$' END"


_BATCH_STRUCT = '{"schema_version": "JSON", "batch_id": "JSON", "events": ["JSON"]}'
_EVENT_STRUCT = "{" + ", ".join(f'"{key}": "JSON"' for key in _EVENT_KEYS) + "}"
_USAGE_STRUCT = "{" + ", ".join(f'"{key}": "JSON"' for key in _TOKEN_KEYS) + "}"
_KEY_TUPLE = "(" + ", ".join(f"'{key}'" for key in _EVENT_KEYS) + ")"
_BATCH_KEY_LIST = "[" + ", ".join(f"'{key}'" for key in _BATCH_KEYS) + "]"
_TOKEN_KEY_TUPLE = "(" + ", ".join(f"'{key}'" for key in _TOKEN_KEYS) + ")"
_TOKENS_OK = " AND ".join(
    f"(u.{key} IS NULL OR (json_type(u.{key}) IN {_INTEGER}"
    f" AND TRY_CAST(u.{key} AS UBIGINT) <= {TOKENS_PER_FIELD_MAX}))"
    for key in _TOKEN_KEYS
)
_ABSENT_OR_NULL = " AND ".join(f"e.{key} IS NULL" for key in ("reported_cost", "input_text", "output_text"))
_OPTIONAL_IDS = " AND ".join(
    _text(key, _identifier(f"(e.{key} ->> '$')")) for key in ("user_id", "team_id", "key_id", "end_user")
)
_NAMES = " AND ".join(
    _text(key, _name(f"(e.{key} ->> '$')", MODEL_NAME_CHARS_MAX)) for key in ("provider", "model_group")
)
# JSON null reads as SQL NULL: a key named with null is refused by the model for these fields.
_PRESENT_NOT_NULL = " AND ".join(
    f"(e.{key} IS NOT NULL OR NOT list_contains(keys, '{key}'))" for key in _NOT_NULL_WHEN_PRESENT
)
_USAGE_VALUES = " + ".join(f"(u.{key} IS NOT NULL)::INTEGER" for key in _TOKEN_KEYS)

# A metadata key as a JSON path: quoted, as a key such as "$0" is read as a path itself (an
# error that stopped the query). Keys here have no quote or backslash (``_simple``), and are
# not empty (an empty one is refused first: ``$.""`` is an error too).
_KEY_PATH = "('$.\"' || key || '\"')"

_USAGE_ROWS = f"""
WITH messages AS (  -- keys: NULL when the value is not JSON, empty when not an object
    SELECT ordinal, source_partition, source_offset, received_at, value, try(json_keys(value)) AS keys
    FROM usage_messages
), envelopes AS (
    SELECT *, CASE WHEN list_contains(keys, 'batch_id') THEN from_json(value, '{_BATCH_STRUCT}') END AS batch
    FROM messages WHERE keys IS NOT NULL
), listed AS (
    SELECT ordinal, source_partition, source_offset, received_at,
           CASE WHEN batch IS NULL THEN [value::JSON]
                WHEN list_unique(keys) = len(keys) AND list_has_all({_BATCH_KEY_LIST}, keys)
                     AND json_type(batch.batch_id) = 'VARCHAR' AND len(batch.batch_id ->> '$') >= 1
                     AND (batch.schema_version IS NULL OR (json_type(batch.schema_version) IN {_INTEGER}
                          AND TRY_CAST(batch.schema_version AS UBIGINT) = 1))
                     AND len(batch.events) BETWEEN 1 AND {BATCH_EVENTS_MAX}
                THEN batch.events END AS events
    FROM envelopes
), raw_events AS (
    SELECT ordinal, source_partition, source_offset, received_at,
           unnest(events) AS event, generate_subscripts(events, 1) AS place
    FROM listed WHERE events IS NOT NULL
), parsed AS (  -- an event that is not an object has no keys, and is not taken
    SELECT *, json_keys(event) AS keys, from_json(event, '{_EVENT_STRUCT}') AS e
    FROM raw_events
), parts AS (
    SELECT *,
           CASE WHEN json_type(e.usage) = 'OBJECT' THEN from_json(e.usage, '{_USAGE_STRUCT}') END AS u,
           CASE WHEN json_type(e.usage) = 'OBJECT' THEN json_keys(e.usage) END AS usage_keys,
           CASE WHEN json_type(e.metadata) = 'OBJECT' THEN json_keys(e.metadata) END AS metadata_keys,
           CASE WHEN json_type(e.tags) = 'ARRAY' THEN from_json(e.tags, '["JSON"]') END AS tag_list
    FROM parsed
), timed AS (
    SELECT *,
           CASE WHEN NOT list_contains(keys, 'occurred_at') THEN received_at
                WHEN json_type(e.occurred_at) = 'VARCHAR' AND regexp_full_match(e.occurred_at ->> '$', {_TIME})
                THEN TRY_CAST(e.occurred_at ->> '$' AS TIMESTAMPTZ) END AS occurred,
           CASE WHEN NOT list_contains(keys, 'occurred_at') THEN 'received'
                ELSE coalesce(e.occurred_at_source ->> '$', 'event') END AS occurred_source,
           CASE WHEN tag_list IS NOT NULL THEN list_transform(tag_list, lambda tag: tag ->> '$') END AS tag_texts
    FROM parts
), checked AS (
    SELECT *, len(keys) > 0 AND list_unique(keys) = len(keys)
        AND list_bool_and(list_transform(keys, lambda key: key IN {_KEY_TUPLE})) AND {_PRESENT_NOT_NULL}
        AND (e.schema_version IS NULL
             OR (json_type(e.schema_version) IN {_INTEGER} AND TRY_CAST(e.schema_version AS UBIGINT) = 1))
        AND json_type(e.event_id) = 'VARCHAR'
        AND {_name("(e.event_id ->> '$')", EVENT_ID_CHARS_MAX)}
        AND occurred IS NOT NULL
        AND occurred >= '{OCCURRED_AT_MIN.isoformat()}'::TIMESTAMPTZ
        AND occurred < '{OCCURRED_AT_MAX.isoformat()}'::TIMESTAMPTZ
        AND (NOT list_contains(keys, 'occurred_at') OR e.occurred_at_source IS NULL
             OR (json_type(e.occurred_at_source) = 'VARCHAR'
                 AND (e.occurred_at_source ->> '$') IN ('event', 'received')))
        AND json_type(e.model) = 'VARCHAR' AND {_name("(e.model ->> '$')", MODEL_NAME_CHARS_MAX)}
        AND {_NAMES} AND {_OPTIONAL_IDS}
        AND (e.tags IS NULL OR (tag_list IS NOT NULL AND len(tag_list) <= {TAGS_MAX}
             AND list_bool_and(list_transform(tag_list, lambda tag: coalesce(json_type(tag) = 'VARCHAR', false)))
             AND list_bool_and(list_transform(tag_texts, lambda tag: {_identifier("tag")}))
             AND len(list_distinct(tag_texts)) = len(tag_texts)))
        AND u IS NOT NULL AND list_unique(usage_keys) = len(usage_keys)
        AND list_bool_and(list_transform(usage_keys, lambda key: key IN {_TOKEN_KEY_TUPLE}))
        AND len(usage_keys) = {_USAGE_VALUES}
        AND {_TOKENS_OK}
        AND coalesce(TRY_CAST(u.cache_read_tokens AS UBIGINT), 0)
            + coalesce(TRY_CAST(u.cache_write_tokens AS UBIGINT), 0)
            <= coalesce(TRY_CAST(u.prompt_tokens AS UBIGINT), 0)
        AND coalesce(TRY_CAST(u.reasoning_tokens AS UBIGINT), 0)
            <= coalesce(TRY_CAST(u.completion_tokens AS UBIGINT), 0)
        AND {_ABSENT_OR_NULL}
        AND (e.metadata IS NULL OR (metadata_keys IS NOT NULL AND len(metadata_keys) <= {METADATA_KEYS_MAX}
             AND len(metadata_keys) = len(list_distinct(metadata_keys))
             AND list_bool_and(list_transform(metadata_keys, lambda key: CASE WHEN len(key) BETWEEN 1 AND 128
                 THEN (json_type(e.metadata, {_KEY_PATH}) IN ('UBIGINT', 'BIGINT', 'BOOLEAN', 'NULL')
                       OR (json_type(e.metadata, {_KEY_PATH}) = 'VARCHAR'
                           AND len(e.metadata ->> {_KEY_PATH}) <= {METADATA_VALUE_CHARS_MAX}))
                 ELSE false END)))) AS ok
    FROM timed
), judged AS (
    SELECT *, coalesce(ok, false) AS event_ok FROM checked
)
SELECT (e.event_id ->> '$') AS event_id, occurred AS occurred_at, (e.model ->> '$') AS model,
       {_value("provider")} AS provider,
       {_value("user_id")} AS user_id, {_value("team_id")} AS team_id, {_value("key_id")} AS key_id,
       {_value("end_user")} AS end_user, coalesce(tag_texts, []::VARCHAR[]) AS tags,
       list_concat(['{GLOBAL_SCOPE}'],
                   list_filter(['user:' || {_value("user_id")}, 'team:' || {_value("team_id")},
                                'key:' || {_value("key_id")}, 'end_user:' || {_value("end_user")}],
                               lambda key: key IS NOT NULL),
                   list_transform(coalesce(tag_texts, []::VARCHAR[]), lambda tag: 'tag:' || tag)) AS scope_keys,
       coalesce(TRY_CAST(u.prompt_tokens AS BIGINT), 0) AS prompt_tokens,
       coalesce(TRY_CAST(u.completion_tokens AS BIGINT), 0) AS completion_tokens,
       coalesce(TRY_CAST(u.cache_read_tokens AS BIGINT), 0) AS cache_read_tokens,
       coalesce(TRY_CAST(u.cache_write_tokens AS BIGINT), 0) AS cache_write_tokens,
       coalesce(TRY_CAST(u.reasoning_tokens AS BIGINT), 0) AS reasoning_tokens,
       true AS has_usage, false AS tokens_estimated, NULL::BIGINT AS reported_cost_nanos,
       CASE WHEN len(metadata_keys) > 0 THEN json(e.metadata)::VARCHAR END AS metadata,
       source_partition, source_offset, received_at, occurred_source AS occurred_at_source,
       {_value("model_group")} AS model_group, ordinal, place, event_ok
FROM judged
"""


# The plain shape: no JSON null, no metadata, no text, every field of one type. Arrow's JSON
# reader parses messages of that shape straight into typed columns (``_read_plain``): it
# refuses a message with any other field, a field of another type, or a key given twice, so
# ``_PLAIN_ROWS`` checks values only. bench.projector's messages, one thread: 8.1 us an
# event by ``json_structure`` and a typed ``from_json`` before, 3.6 here (warm, whole usage_table).
_STRING_KEYS = ("event_id", "occurred_at", "occurred_at_source", "model", "provider", "model_group")
_ID_KEYS = ("user_id", "team_id", "key_id", "end_user")
_PLAIN_EVENT = pa.struct(
    [
        ("schema_version", pa.int64()),
        *[(key, pa.string()) for key in (*_STRING_KEYS, *_ID_KEYS)],
        ("tags", pa.list_(pa.string())),
        ("usage", pa.struct([(key, pa.int64()) for key in _TOKEN_KEYS])),
    ]
)
# A message is a batch or one event: one schema holds both, and the query tells them apart.
_PLAIN_MESSAGE = pa.schema(
    [
        ("batch_id", pa.string()),
        ("events", pa.list_(_PLAIN_EVENT)),
        *[(field.name, field.type) for field in _PLAIN_EVENT],
    ]
)
_EVENT_FIELDS = [field.name for field in _PLAIN_EVENT]
_AS_EVENT = "{" + ", ".join(f"'{key}': {key}" for key in _EVENT_FIELDS) + "}"
_NO_EVENT_FIELD = " AND ".join(f"{key} IS NULL" for key in _EVENT_FIELDS if key != "schema_version")
_PLAIN_IDS_OK = " AND ".join(f"(e.{key} IS NULL OR {_identifier(f'e.{key}')})" for key in _ID_KEYS)
_PLAIN_NAMES_OK = " AND ".join(
    f"(e.{key} IS NULL OR {_name(f'e.{key}', MODEL_NAME_CHARS_MAX)})" for key in ("provider", "model_group")
)
_PLAIN_TOKENS_OK = " AND ".join(
    f"coalesce(e.usage.{key}, 0) BETWEEN 0 AND {TOKENS_PER_FIELD_MAX}" for key in _TOKEN_KEYS
)
_PLAIN_ROWS = f"""
WITH listed AS (
    SELECT ordinal, source_partition, source_offset, received_at, batch_id IS NOT NULL AS is_batch, batch_id,
           CASE WHEN batch_id IS NOT NULL THEN schema_version END AS batch_version,
           CASE WHEN batch_id IS NOT NULL THEN events ELSE [{_AS_EVENT}] END AS events,
           -- a batch names no field of an event beside it, an event no list of events
           CASE WHEN batch_id IS NOT NULL THEN {_NO_EVENT_FIELD} ELSE events IS NULL END AS one_kind
    FROM usage_parsed
), events AS (
    SELECT ordinal, source_partition, source_offset, received_at, is_batch, batch_id, batch_version,
           unnest(events) AS e, unnest(range(1, len(events) + 1)) AS place
    FROM listed
    WHERE one_kind AND len(events) BETWEEN 1 AND {BATCH_EVENTS_MAX}
), timed AS (
    SELECT *,
           CASE WHEN e.occurred_at IS NULL THEN received_at
                WHEN regexp_full_match(e.occurred_at, {_TIME}) THEN TRY_CAST(e.occurred_at AS TIMESTAMPTZ) END
               AS occurred,
           CASE WHEN e.occurred_at IS NULL THEN 'received' ELSE coalesce(e.occurred_at_source, 'event') END
               AS occurred_source
    FROM events
)
SELECT e.event_id AS event_id, occurred AS occurred_at, e.model AS model, e.provider AS provider,
       e.user_id AS user_id, e.team_id AS team_id, e.key_id AS key_id, e.end_user AS end_user,
       coalesce(e.tags, []::VARCHAR[]) AS tags,
       list_concat(['{GLOBAL_SCOPE}'],
                   list_filter(['user:' || e.user_id, 'team:' || e.team_id, 'key:' || e.key_id,
                                'end_user:' || e.end_user], lambda key: key IS NOT NULL),
                   list_transform(coalesce(e.tags, []::VARCHAR[]), lambda tag: 'tag:' || tag)) AS scope_keys,
       coalesce(e.usage.prompt_tokens, 0) AS prompt_tokens,
       coalesce(e.usage.completion_tokens, 0) AS completion_tokens,
       coalesce(e.usage.cache_read_tokens, 0) AS cache_read_tokens,
       coalesce(e.usage.cache_write_tokens, 0) AS cache_write_tokens,
       coalesce(e.usage.reasoning_tokens, 0) AS reasoning_tokens,
       true AS has_usage, false AS tokens_estimated, NULL::BIGINT AS reported_cost_nanos, NULL::VARCHAR AS metadata,
       source_partition, source_offset, received_at, occurred_source AS occurred_at_source,
       e.model_group AS model_group, ordinal, place,
       coalesce((NOT is_batch OR len(batch_id) >= 1) AND coalesce(batch_version, 1) = 1
        AND coalesce(e.schema_version, 1) = 1
        AND {_name("e.event_id", EVENT_ID_CHARS_MAX)}
        AND occurred >= '{OCCURRED_AT_MIN.isoformat()}'::TIMESTAMPTZ
        AND occurred < '{OCCURRED_AT_MAX.isoformat()}'::TIMESTAMPTZ
        AND (e.occurred_at IS NULL OR e.occurred_at_source IS NULL OR e.occurred_at_source IN ('event', 'received'))
        AND {_name("e.model", MODEL_NAME_CHARS_MAX)} AND {_PLAIN_NAMES_OK} AND {_PLAIN_IDS_OK}
        AND (e.tags IS NULL OR (len(e.tags) <= {TAGS_MAX}
             AND list_bool_and(list_transform(e.tags, lambda tag: {_identifier("tag")}))
             AND len(list_distinct(e.tags)) = len(e.tags)))
        AND e.usage IS NOT NULL AND {_PLAIN_TOKENS_OK}
        AND coalesce(e.usage.cache_read_tokens, 0)::HUGEINT + coalesce(e.usage.cache_write_tokens, 0)
            <= coalesce(e.usage.prompt_tokens, 0)
        AND coalesce(e.usage.reasoning_tokens, 0) <= coalesce(e.usage.completion_tokens, 0), false) AS event_ok
FROM timed
"""


@dataclass(frozen=True, slots=True)
class UsageMessage:
    """One ``usage`` record to unpack: its value, where it was read, and when it reached the log."""

    value: bytes
    partition: int
    offset: int
    received_at_us: int | None


# The Python path, for the messages this query does not take whole (``records.usage_rows``).
RowsOf = Callable[[UsageMessage], list[tuple[Any, ...]]]

_UTC = pa.timestamp("us", tz="UTC")


_PRINTABLE_NO_BACKSLASH = bytes(range(0x20, 0x7F)).replace(b"\\", b"")


def _simple(value: bytes) -> bool:
    """Printable ASCII with no backslash (so no escapes), within the message size limit."""
    return len(value) <= MESSAGE_BYTES_MAX and not value.translate(None, _PRINTABLE_NO_BACKSLASH)


def usage_table(
    connection: duckdb.DuckDBPyConnection,
    messages: Sequence[UsageMessage],
    rows_of: RowsOf,
    buffer: ValueBuffer | None = None,
) -> pa.Table:
    """The ``usage_events`` rows of ``messages`` in ``USAGE_COLUMNS`` order and in read
    order (by message, then place); copies of an event are left to the writer, as with
    ``usage_rows``. ``connection`` is any DuckDB connection: the query reads only what it is given.

    A message goes whole to the first of three paths that takes every event in it: the
    plain one (``_PLAIN_ROWS``), the general query (``_USAGE_ROWS``), ``rows_of``.
    ``buffer`` holds the plain candidates' text while Arrow reads it."""
    simple = [n for n, message in enumerate(messages) if _simple(message.value)]
    # no JSON null: no "null" anywhere in the text (one in a string sends it on, which is safe)
    candidates = [n for n in simple if b"null" not in messages[n].value]
    parts = [_plain_rows(connection, messages, candidates, buffer or ValueBuffer())]
    taken = set(pc.unique(parts[0].column("ordinal")).to_pylist())
    general = [n for n in simple if n not in taken]
    if general:
        values = pa.array([messages[n].value for n in general], pa.string())
        incoming = _read_at(messages, general).append_column("value", values)
        parts.append(_taken(connection, _USAGE_ROWS, incoming).cast(parts[0].schema))
        taken.update(pc.unique(parts[-1].column("ordinal")).to_pylist())
    slow_rows: list[tuple[Any, ...]] = []
    for n, message in enumerate(messages):
        if n not in taken:
            slow_rows.extend((*row, n, place) for place, row in enumerate(rows_of(message), start=1))
    if slow_rows:
        parts.append(
            pa.Table.from_arrays(
                [
                    pa.array(column, type=parts[0].schema.field(i).type)
                    for i, column in enumerate(zip(*slow_rows, strict=True))
                ],
                schema=parts[0].schema,
            )
        )
    found = [part for part in parts if part.num_rows]
    if len(found) <= 1:  # in read order: a query with no ORDER BY keeps its input's
        return (found or parts)[0].select(list(USAGE_COLUMNS))
    joined = pa.concat_tables(found)
    return joined.sort_by([("ordinal", "ascending"), ("place", "ascending")]).select(list(USAGE_COLUMNS))


def _plain_rows(
    connection: duckdb.DuckDBPyConnection, messages: Sequence[UsageMessage], candidates: list[int], buffer: ValueBuffer
) -> pa.Table:
    """The rows of the ``candidates`` (messages with no JSON null) that are of the plain
    shape and whose every event passed ``_PLAIN_ROWS``."""
    parsed, ordinals = _read_plain(messages, candidates, buffer)
    read_at = _read_at(messages, ordinals)
    table = pa.Table.from_arrays(
        [*read_at.columns, *parsed.columns], names=[*read_at.column_names, *parsed.column_names]
    )
    connection.register("usage_parsed", table)
    try:
        return _refused_dropped(connection.execute(_PLAIN_ROWS).to_arrow_table())
    finally:
        connection.unregister("usage_parsed")


def _read_plain(
    messages: Sequence[UsageMessage], candidates: list[int], buffer: ValueBuffer
) -> tuple[pa.Table, list[int]]:
    """The candidates Arrow's JSON reader parses with the plain shape, and their places.
    The reader stops at the first message it refuses: a refused group is halved and read
    again, so one odd message among thousands costs a few reads, and is left alone."""
    parsed: list[pa.Table] = []
    read: list[int] = []
    groups = [candidates] if candidates else []
    while groups:
        group = groups.pop()
        table = _read_json_lines([messages[n].value for n in group], buffer)
        if table is not None:
            parsed.append(table)
            read.extend(group)
        elif len(group) > 1:
            groups += [group[len(group) // 2 :], group[: len(group) // 2]]  # the first half next
    if not parsed:
        return _PLAIN_MESSAGE.empty_table(), []
    return pa.concat_tables(parsed), read


def _read_json_lines(values: list[bytes], buffer: ValueBuffer) -> pa.Table | None:
    """One row per value, or None if the reader refuses one (or finds other than one object
    in one). Values here have no line break (``_simple``): each is one line. The table
    holds copies: ``buffer`` is free again after."""
    text = buffer.join(values, b"\n")
    options = pa_json.ReadOptions(use_threads=True, block_size=len(text) + 1)
    parse = pa_json.ParseOptions(explicit_schema=_PLAIN_MESSAGE, unexpected_field_behavior="error")
    try:
        table = pa_json.read_json(pa.BufferReader(pa.py_buffer(text)), read_options=options, parse_options=parse)
    except pa.ArrowInvalid:
        return None
    return table if table.num_rows == len(values) else None


def _read_at(messages: Sequence[UsageMessage], ordinals: list[int]) -> pa.Table:
    """Where and when each chosen message was read, by ordinal."""
    return pa.table(
        {
            "ordinal": pa.array(ordinals, pa.int64()),
            "source_partition": pa.array([messages[n].partition for n in ordinals], pa.int32()),
            "source_offset": pa.array([messages[n].offset for n in ordinals], pa.int64()),
            "received_at": pa.array([messages[n].received_at_us for n in ordinals], pa.int64()).cast(_UTC),
        }
    )


def _taken(connection: duckdb.DuckDBPyConnection, query: str, incoming: pa.Table) -> pa.Table:
    """The rows ``query`` finds in ``incoming`` (``_read_at`` and each value), of the messages whose
    every event passed its checks."""
    connection.register("usage_messages", incoming)
    try:
        return _refused_dropped(connection.execute(query).to_arrow_table())
    finally:
        connection.unregister("usage_messages")


def _refused_dropped(found: pa.Table) -> pa.Table:
    """``found`` without the rows of any message one of whose events failed (``event_ok``)."""
    if pc.all(found.column("event_ok")).as_py() is not False:  # the common case: nothing to drop
        return found.drop_columns(["event_ok"])
    refused = pc.unique(found.filter(pc.invert(found.column("event_ok"))).column("ordinal"))
    return found.filter(pc.invert(pc.is_in(found.column("ordinal"), value_set=refused))).drop_columns(["event_ok"])


# The worker's LedgerEntryBatch JSON, unpacked in DuckDB (a Python loop cost ~19 us an entry)
# in one parse: a message that is not UTF-8 JSON with a list of entries is NULL here (``try``).
_ENTRY_JSON = (
    '{"batch_id": "VARCHAR", "entries": [{"entry_id": "VARCHAR", "event_id": "VARCHAR", "kind": "VARCHAR",'
    ' "occurred_at": "VARCHAR", "model": "VARCHAR", "provider": "VARCHAR", "priced_as": "VARCHAR",'
    ' "scope_keys": ["VARCHAR"], "cost_nanos": "BIGINT", "cost_source": "VARCHAR", "price_book_version": "VARCHAR",'
    ' "usage": {"prompt_tokens": "BIGINT", "completion_tokens": "BIGINT"}, "tokens_estimated": "BOOLEAN"}]}'
)
# A refused message leaves one row (refused, no entry) so it is told from a batch of none.
_ENTRY_ROWS = f"""
SELECT e.entry_id AS entry_id, coalesce(e.event_id, e.entry_id) AS event_id, coalesce(e.kind, 'charge') AS kind,
       occurred_at, e.model AS model, e.provider AS provider,
       e.priced_as AS priced_as, e.scope_keys AS scope_keys, e.cost_nanos AS cost_nanos,
       coalesce(e.cost_source, 'price_book') AS cost_source, e.price_book_version AS price_book_version,
       coalesce(e.usage.prompt_tokens, 0) AS prompt_tokens, coalesce(e.usage.completion_tokens, 0) AS completion_tokens,
       coalesce(e.tokens_estimated, false) AS tokens_estimated, coalesce(batch_id, '') AS batch_id, refused, ordinal
FROM (SELECT e, batch_id, refused, ordinal, TRY_CAST(e.occurred_at AS TIMESTAMPTZ) AS occurred_at
      FROM (SELECT unnest(CASE WHEN refused THEN [NULL] ELSE parsed.entries END) AS e, parsed.batch_id AS batch_id,
                   refused, ordinal
            FROM (SELECT parsed, parsed.entries IS NULL AS refused, ordinal
                  FROM (SELECT try(from_json(decode(value), '{_ENTRY_JSON}')) AS parsed, ordinal
                        FROM entry_messages))))
WHERE refused OR (e.entry_id IS NOT NULL AND occurred_at IS NOT NULL AND e.model IS NOT NULL
                  AND e.scope_keys IS NOT NULL AND e.cost_nanos IS NOT NULL)
"""


def ledger_entry_rows(
    connection: duckdb.DuckDBPyConnection, values: Sequence[bytes], buffer: ValueBuffer | None = None
) -> tuple[pa.Table, list[int]]:
    """The ``ledger_entries`` rows of ``ledger-entries`` messages (``LedgerEntryBatch``es
    the worker wrote), in read order, and the places of the messages refused: not UTF-8
    JSON objects with a list of entries. An entry lacking a field the table needs is left
    out. Copies are left to the writer. ``buffer`` holds the values while they are read."""
    messages = pa.table({"value": binary_array(values, buffer), "ordinal": range(len(values))})
    connection.register("entry_messages", messages)
    try:
        found = connection.execute(_ENTRY_ROWS).to_arrow_table()
    finally:
        connection.unregister("entry_messages")
    refused = found.column("refused")
    if not pc.any(refused).as_py():
        return found.drop_columns(["refused", "ordinal"]), []
    places = found.filter(refused).column("ordinal").to_pylist()
    return found.filter(pc.invert(refused)).drop_columns(["refused", "ordinal"]), places


def binary_array(values: Sequence[bytes], buffer: ValueBuffer | None = None) -> pa.Array:
    """``values`` as one Arrow array, copied once (``pa.array`` copied value by value at
    about half the speed, and checked UTF-8 for a string array: DuckDB's ``decode`` does).
    The array reads ``buffer``'s memory: it is good until the buffer's next use."""
    offsets = pa.array([0, *itertools.accumulate(len(value) for value in values)], pa.int64())
    data = pa.py_buffer((buffer or ValueBuffer()).join(values))
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(values), [None, offsets.buffers()[1], data])


class ValueBuffer:
    """Memory reused by one unpacker for each batch's values joined: a fresh join of 40 MB
    touched 10,000 new pages each time, 25 ms against 4 ms for copies into pages touched
    before. One thread uses it at a time, and what it returns only until its next use."""

    def __init__(self) -> None:
        self._memory = bytearray()

    def join(self, values: Sequence[bytes], separator: bytes = b"") -> memoryview:
        size = sum(len(value) for value in values) + len(separator) * max(len(values) - 1, 0)
        if len(self._memory) < size:  # a new one (the old may still be read): a quarter more, to grow seldom
            self._memory = bytearray(size + size // 4)
        view = memoryview(self._memory)
        at = 0
        for n, value in enumerate(values):
            if n and separator:
                view[at : at + len(separator)] = separator
                at += len(separator)
            view[at : at + len(value)] = value
            at += len(value)
        return view[:size]
