"""The projector's SQL path for usage messages agrees with the Python one (``usage_rows``,
which validates with ``UsageEvent``): the same events stored, with the same fields, and
every message the query does not take whole is left to the Python path. Copies of an
event within a batch are dropped by the writer, first copy kept, on either path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.store.records import usage_rows
from ledger.store.usage_sql import UsageMessage, usage_table
from ledger.store.writer import _first_copies_of, arrow_table

AT = "2025-11-03T09:00:00+00:00"
RECEIVED_US = 1_762_160_400_123_000


def words(text: str) -> int:
    return len(text.split())


def python_rows(message: UsageMessage) -> list[tuple[Any, ...]]:
    return usage_rows(message.value, message.partition, message.offset, words, message.received_at_us)


@pytest.fixture(scope="module")
def connection() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    yield connection
    connection.close()


def both_paths(connection: duckdb.DuckDBPyConnection, values: list[bytes]) -> tuple[pa.Table, pa.Table, int]:
    """(SQL path, Python path, messages the SQL path left to Python) for ``values``."""
    messages = [UsageMessage(value, 3, 70 + n, RECEIVED_US) for n, value in enumerate(values)]
    slow: list[UsageMessage] = []

    def counted(message: UsageMessage) -> list[tuple[Any, ...]]:
        slow.append(message)
        return python_rows(message)

    offered = usage_table(connection, messages, counted)
    expected_rows: dict[str, tuple[Any, ...]] = {}
    for message in messages:
        for row in python_rows(message):
            expected_rows.setdefault(row[0], row)  # first copy wins (the writer's _first_copies)
    expected = arrow_table("usage_events", list(expected_rows.values()))
    return _first_copies_of(offered.cast(expected.schema), "event_id"), expected, len(slow)


def event(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "e1",
        "occurred_at": AT,
        "model": "gpt-4o",
        "usage": {"prompt_tokens": 10, "completion_tokens": 2},
    }
    base.update(fields)
    return {key: value for key, value in base.items() if value is not DROP}


DROP = object()

# Events the SQL path takes, and events it must leave to the model (stored or refused there).
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": event(),
    "every_field": event(
        schema_version=1,
        occurred_at_source="event",
        provider="openai",
        model_group="team-gpt",
        user_id="u 1",
        team_id="t",
        key_id="k",
        end_user="x",
        tags=["a", "b c"],
        usage={
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "cache_read_tokens": 3,
            "cache_write_tokens": 2,
            "reasoning_tokens": 5,
        },
        metadata={"k": "v", "n": -3, "b": True, "z": None},
        input_text=None,
        reported_cost=None,
    ),
    "nulls_where_allowed": event(provider=None, model_group=None, user_id=None, team_id=None, key_id=None),
    "offset_time": event(occurred_at="2026-01-02T03:04:05.5+05:30"),
    "no_time": event(occurred_at=DROP),
    "no_time_with_source": event(occurred_at=DROP, occurred_at_source="event"),
    "empty_metadata": event(metadata={}),
    "received_source": event(occurred_at_source="received"),
    # refused by the model: the SQL path must not store them
    "null_time": event(occurred_at=None),
    "null_tags": event(tags=None),
    "null_metadata": event(metadata=None),
    "null_schema_version": event(schema_version=None),
    "null_source": event(occurred_at_source=None),
    "null_token_count": event(usage={"prompt_tokens": None, "completion_tokens": 1}),
    "string_token_count": event(usage={"prompt_tokens": "12"}),
    "float_token_count": event(usage={"prompt_tokens": 12.0}),
    "bool_token_count": event(usage={"prompt_tokens": True}),
    "negative_tokens": event(usage={"prompt_tokens": -1}),
    "too_many_tokens": event(usage={"prompt_tokens": 100_000_001}),
    "largest_token_counts": event(usage={"prompt_tokens": 2**64 - 1, "cache_read_tokens": 2**64 - 1}),
    "empty_tags": event(tags=[]),
    "empty_usage": event(usage={}),
    "digits_for_text": event(user_id="12", tags=["7"]),
    "cache_over_prompt": event(usage={"prompt_tokens": 1, "cache_read_tokens": 2}),
    "reasoning_over_completion": event(usage={"completion_tokens": 1, "reasoning_tokens": 2}),
    "unknown_usage_key": event(usage={"prompt_tokens": 1, "other": 2}),
    "unknown_key": event(colour="blue"),
    "schema_version_2": event(schema_version=2),
    "schema_version_true": event(schema_version=True),
    "numeric_id": event(event_id=5),
    "empty_id": event(event_id=""),
    "long_id": event(event_id="x" * 201),
    "numeric_model": event(model=5),
    "long_model": event(model="m" * 257),
    "padded_user": event(user_id=" u"),
    "trailing_space_team": event(team_id="t "),
    "empty_key": event(key_id=""),
    "long_end_user": event(end_user="e" * 257),
    "numeric_user": event(user_id=7),
    "repeated_tags": event(tags=["a", "a"]),
    "too_many_tags": event(tags=[f"t{n}" for n in range(33)]),
    "null_tag": event(tags=["a", None]),
    "padded_tag": event(tags=[" a"]),
    "bad_source": event(occurred_at_source="later"),
    "time_without_zone": event(occurred_at="2025-11-03T09:00:00"),
    "unix_time": event(occurred_at=1_762_160_400),
    "date_only": event(occurred_at="2025-11-03"),
    "impossible_date": event(occurred_at="2025-02-30T00:00:00Z"),
    "hour_24": event(occurred_at="2025-11-03T24:00:00Z"),
    "too_early": event(occurred_at="1999-12-31T23:59:59Z"),
    "space_separated_time": event(occurred_at="2025-11-03 09:00:00+00:00"),
    "nanosecond_time": event(occurred_at="2025-11-03T09:00:00.123456789Z"),
    "metadata_float": event(metadata={"f": 1.5}),
    "metadata_whole_float": event(metadata={"f": 1.0}),
    "metadata_nested": event(metadata={"o": {"x": 1}}),
    "metadata_list": event(metadata={"l": [1]}),
    "metadata_long_value": event(metadata={"v": "x" * 1025}),
    "metadata_keys_like_paths": event(metadata={"$0": 1, "$.a": "x", "a.b": True, "[0]": None, "$": 2}),
    "metadata_empty_key": event(metadata={"": 1}),
    "metadata_many_keys": event(metadata={f"k{n}": n for n in range(65)}),
    "reported_cost": event(reported_cost=0.25),
    "reported_cost_only": event(usage=DROP, reported_cost=0.25),
    "text_to_count": event(usage=DROP, input_text="three words here", output_text="two words"),
    "null_usage": event(usage=None, reported_cost=0.1),
    "nothing_to_price": event(usage=DROP),
    "not_an_object": "an event",  # type: ignore[dict-item]
    "non_ascii": event(user_id="ü"),
    "escaped": event(user_id="a\\u0041"),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_an_event_alone_is_stored_the_same_by_both_paths(connection: duckdb.DuckDBPyConnection, name: str) -> None:
    value = orjson.dumps(VARIANTS[name]).replace(b"a\\\\u0041", b"a\\u0041")
    table, expected, _ = both_paths(connection, [value])
    assert table.to_pylist() == expected.to_pylist()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_an_event_in_a_batch_is_stored_the_same_by_both_paths(connection: duckdb.DuckDBPyConnection, name: str) -> None:
    neighbour = event(event_id="e0")
    batch = {"batch_id": "b", "events": [neighbour, VARIANTS[name], event(event_id="e2")]}
    table, expected, _ = both_paths(connection, [orjson.dumps(batch)])
    assert table.to_pylist() == expected.to_pylist()


def test_the_sql_path_takes_a_well_formed_batch_whole(connection: duckdb.DuckDBPyConnection) -> None:
    events = [VARIANTS[name] | {"event_id": name} for name in ("plain", "every_field", "no_time", "offset_time")]
    table, expected, slow = both_paths(connection, [orjson.dumps({"batch_id": "b", "events": events})])
    assert slow == 0
    assert table.to_pylist() == expected.to_pylist()
    assert table.column("occurred_at_source").to_pylist() == ["event", "event", "received", "event"]


@pytest.mark.parametrize(
    "value",
    [
        b'{"batch_id": "b", "events": [{"event_id": "e1", "event_id": "e2", "occurred_at": "2025-11-03T09:00:00Z",'
        b' "model": "m", "usage": {"prompt_tokens": 1}}]}',
        b'{"batch_id": "b", "events": [{"event_id": "e1", "occurred_at": "2025-11-03T09:00:00Z", "model": "m",'
        b' "usage": {"prompt_tokens": 1, "prompt_tokens": 9}}]}',
        b'{"batch_id": "b", "batch_id": "c", "events": [{"event_id": "e1", "occurred_at": "2025-11-03T09:00:00Z",'
        b' "model": "m", "usage": {"prompt_tokens": 1}}]}',
        b'{"batch_id": "b", "extra": 1, "events": [{"event_id": "e1", "occurred_at": "2025-11-03T09:00:00Z",'
        b' "model": "m", "usage": {"prompt_tokens": 1}}]}',
        b'{"batch_id": "", "events": [{"event_id": "e1", "occurred_at": "2025-11-03T09:00:00Z", "model": "m",'
        b' "usage": {"prompt_tokens": 1}}]}',
        b'{"batch_id": "b", "events": []}',
        b'{"batch_id": "b", "events": [{"event_id": "e1", "occurred_at": "2025-11-03T09:00:00Z", "model": "m",'
        b' "usage": {"prompt_tokens": 1}}, {"event_id": "e2", "model": "m", "model": "n",'
        b' "usage": {"completion_tokens": 1, "completion_tokens": 2}}]}',
        b'{"batch_id": "b", "events": [{"event_id": "e1", "model": "m", "usage": {"prompt_tokens": 1}}, "e2"]}',
        b'{"event_id": "e1", "model": "m", "usage": {"prompt_tokens": 1}, "usage": {"prompt_tokens": 2}}',
        b'{"batch_id": "b", "events": {"event_id": "e1"}}',
        b'{"batch_id": "b", "schema_version": 2, "events": [{"event_id": "e1", "occurred_at": "2025-11-03T09:00:00Z",'
        b' "model": "m", "usage": {"prompt_tokens": 1}}]}',
        b'{"event_id": "e1", "occurred_at": "2025-11-03T09:00:00Z", "model": "m", "usage": {"prompt_tokens": 1}',
        b"[1, 2]",
        b"null",
        b"",
        b'{"event_id": "e1", "model": "m", "usage": {"prompt_tokens": -1}}',
        b'{"event_id": "e1", "model": "m", "usage": {"prompt_tokens": 1.0}}',
        b'{"event_id": "e1", "model": "m", "usage": {"prompt_tokens": 18446744073709551615}}',
        b'{"batch_id": "b", "model": "m", "events": [{"event_id": "e1", "model": "m", "usage": {"prompt_tokens": 1}}]}',
        b'{"batch_id": "b", "events": [{"event_id": "e1", "model": "m", "usage": {"prompt_tokens": 1}}],'
        b' "usage": {"prompt_tokens": 1}}',
        b'{"event_id": "e1", "model": "m", "usage": {"prompt_tokens": 1},'
        b' "events": [{"event_id": "e2", "model": "m", "usage": {"prompt_tokens": 1}}]}',
        b'{"event_id": "e1", "model": "m", "usage": {"prompt_tokens": 1}}'
        b' {"event_id": "e2", "model": "m", "usage": {"prompt_tokens": 1}}',
        b'{"event_id": "e1",\n "occurred_at": "2025-11-03T09:00:00Z", "model": "m", "usage": {"prompt_tokens": 1}}',
    ],
)
def test_repeated_keys_bad_envelopes_and_bad_json_agree(connection: duckdb.DuckDBPyConnection, value: bytes) -> None:
    table, expected, _ = both_paths(connection, [value])
    assert table.to_pylist() == expected.to_pylist()


def test_one_odd_message_among_plain_ones_leaves_the_others_to_the_fast_paths(
    connection: duckdb.DuckDBPyConnection,
) -> None:
    plain = [orjson.dumps({"batch_id": f"b{n}", "events": [event(event_id=f"e{n}")]}) for n in range(37)]
    odd = orjson.dumps(event(event_id="odd", metadata={"k": "v"}))  # not the plain shape: the general query's
    invalid = orjson.dumps(event(event_id="bad", usage={"prompt_tokens": "1"}))  # refused by the model
    values = [*plain[:20], odd, *plain[20:30], invalid, *plain[30:]]
    table, expected, slow = both_paths(connection, values)
    assert slow == 1  # only the invalid one reached the Python path, which refused it
    assert table.to_pylist() == expected.to_pylist()
    assert table.column("event_id").to_pylist() == [f"e{n}" for n in range(20)] + ["odd"] + [
        f"e{n}" for n in range(20, 37)
    ]


def test_the_first_copy_of_an_event_wins_across_messages_and_paths(connection: duckdb.DuckDBPyConnection) -> None:
    first = orjson.dumps({"batch_id": "b1", "events": [event(event_id="a", model="first"), event(event_id="b")]})
    slow = orjson.dumps({"batch_id": "b2", "events": [event(event_id="c", model="ü"), event(event_id="a")]})
    again = orjson.dumps(event(event_id="c", model="later"))
    table, expected, _ = both_paths(connection, [first, slow, again])
    assert table.to_pylist() == expected.to_pylist()
    assert table.column("model").to_pylist() == ["first", "gpt-4o", "ü"]


TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=6)
JSON_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**9), st.floats(-2, 2, allow_nan=False), TEXT)


@settings(max_examples=150, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "event_id": st.one_of(TEXT, JSON_VALUE),
            "occurred_at": st.sampled_from([AT, "2025-11-03T09:00:00Z", "2025-11-03T09:00:00.25-03:00", "x", None, 1]),
            "model": st.one_of(TEXT, JSON_VALUE),
            "user_id": st.one_of(TEXT, JSON_VALUE),
            "tags": st.one_of(st.lists(TEXT, max_size=3), JSON_VALUE),
            "usage": st.one_of(
                st.dictionaries(
                    st.sampled_from(
                        ["prompt_tokens", "completion_tokens", "cache_read_tokens", "reasoning_tokens", "x"]
                    ),
                    JSON_VALUE,
                ),
                JSON_VALUE,
            ),
            "metadata": st.one_of(st.dictionaries(TEXT, JSON_VALUE, max_size=3), JSON_VALUE),
            "schema_version": JSON_VALUE,
            "occurred_at_source": st.one_of(st.sampled_from(["event", "received"]), JSON_VALUE),
        },
    )
)
def test_generated_events_are_stored_the_same_by_both_paths(raw: dict[str, Any]) -> None:
    with duckdb.connect() as connection:
        connection.execute("SET TimeZone = 'UTC'")
        batch = {"batch_id": "b", "events": [raw, event(event_id="neighbour")]}
        table, expected, _ = both_paths(connection, [orjson.dumps(raw), orjson.dumps(batch)])
    assert table.to_pylist() == expected.to_pylist()
