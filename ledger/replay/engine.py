"""The replay: every event priced under a book and every scope's windows, spend and
crossings recomputed, set-based in DuckDB over the store.

What the commands decide (limits, anchors, specs) comes from the fold itself
(``ledger.replay.timeline``); the SQL adds up charges inside it and finds where spend
crossed a threshold. ``ledger.replay.reference`` is the same replay done by folding
event by event; property tests hold the two equal to the nano.

Event-time semantics: a command takes effect at its ``issued_at``, before any event at
the same instant; events count in the window holding their ``occurred_at``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import duckdb
import pyarrow as pa

from ledger.domain.budgets import AlertKind, BudgetCommand, BudgetState, LimitState, all_fields
from ledger.domain.fold import advance, new_state
from ledger.domain.prices import PriceBook
from ledger.domain.scopes import parse_scope_key
from ledger.domain.windows import epoch_us, from_epoch_us
from ledger.replay import sql
from ledger.replay.rates import price_intervals
from ledger.replay.timeline import (
    CalendarRule,
    LimitSegment,
    calendar_boundaries,
    calendar_rule,
    fixed_step,
    scope_history,
)

_STATE_FIELDS = all_fields(BudgetState)
_LIMIT_FIELDS = all_fields(LimitState)
_NO_END_US = 2**62


class Crossing(NamedTuple):
    """A threshold crossed in a window: what the live side alerts once per window."""

    scope_key: str
    limit_name: str
    window_start: datetime
    kind: AlertKind
    threshold_nanos: int


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """What to replay: up to ``as_of``, under ``book``. Only events that occurred in
    ``[reprice_from, reprice_to)`` are priced anew; the others, and events the book does
    not price, keep what the ledger charged them (never a $0 charge for a lost price).
    ``scopes`` limits the events to those charging any of them, and the result to them."""

    book: PriceBook
    as_of: datetime
    trust_reported_cost: bool = False
    scopes: tuple[str, ...] = ()
    reprice_from: datetime | None = None
    reprice_to: datetime | None = None


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """Every scope's state at ``as_of`` and how many crossings up to it. Per-event costs stay
    in the connection: ``replay_costs`` (row_id of ``replay_events``, status, cost_nanos:
    what the event should cost)."""

    as_of: datetime
    book_version: str
    states: dict[str, BudgetState]
    crossing_count: int  # all of them: ``load_crossings`` reads them from the connection
    events: int
    charged: int
    unpriced: int


REPLAY_STAGES = ("events", "pricing", "commands", "windows", "states")


def replay(
    connection: duckdb.DuckDBPyConnection,
    options: ReplayOptions,
    on_stage: Callable[[str], None] = lambda stage: None,
) -> ReplayResult:
    """Replay the store behind ``connection`` (read-only is enough: only temp tables).
    ``on_stage`` hears each of ``REPLAY_STAGES`` as it begins (for a progress bar)."""
    as_of_us = epoch_us(options.as_of)
    on_stage("events")
    _select_events(connection, options, as_of_us)
    on_stage("pricing")
    if (
        options.reprice_from is not None
        and options.reprice_to is not None
        and options.reprice_from >= options.reprice_to
    ):
        connection.execute(sql.KEPT_COSTS)
    else:
        _price(connection, options)
    (unpriced_now,) = connection.execute(
        "SELECT count(*) FROM replay_costs WHERE cost_nanos IS NULL AND status != 'kept'"
    ).fetchall()[0]
    if unpriced_now:
        connection.execute(sql.KEEP_CHARGED)
    (negative,) = connection.execute("SELECT count(*) FROM replay_costs WHERE cost_nanos < 0").fetchall()[0]
    if negative:
        raise AssertionError(f"{negative} events would cost less than nothing: the ledger's entries are corrupt")
    connection.execute(sql.CHARGED)

    on_stage("commands")
    commands = _commands(connection, options)
    states, segments = _histories(commands, options.as_of)
    _load_segments(connection, segments, options.as_of)
    _load_names(connection)
    on_stage("windows")
    _run(connection, sql.WINDOWS, {"as_of_us": as_of_us})
    on_stage("states")

    window_spend: dict[tuple[str, str, int, int], int] = {}
    for scope, name, series, window_us, spend in connection.execute(
        "SELECT DISTINCT w.scope_key, w.limit_name, w.series, w.window_us, w.spend_nanos"
        " FROM replay_window_spend w"
        " SEMI JOIN (SELECT scope_key, limit_name, series FROM replay_segments WHERE end_us = $no_end) current"
        " ON current.scope_key = w.scope_key AND current.limit_name = w.limit_name AND current.series = w.series",
        {"no_end": _NO_END_US},
    ).fetchall():
        window_spend[(scope, name, series, window_us)] = spend
    current_windows = [
        (scope, limit.spec.limit_name, epoch_us(limit.window_start))
        for scope, state in states.items()
        for limit in state.limits
    ]
    crossings = _crossings(connection, current_windows)
    totals = connection.execute(sql.TOTALS).fetchall()
    result_states = _states(states, segments, totals, window_spend, crossings, options)
    events, charged, unpriced = connection.execute(
        "SELECT count(*), count(*) FILTER (status IN ('price_book', 'reported')),"
        " count(*) FILTER (status = 'unpriced') FROM replay_costs"
    ).fetchone() or (0, 0, 0)
    return ReplayResult(
        as_of=options.as_of,
        book_version=options.book.version,
        states=result_states,
        crossing_count=connection.execute("SELECT count(*) FROM replay_crossings").fetchall()[0][0],
        events=events,
        charged=charged,
        unpriced=unpriced,
    )


def _price(connection: duckdb.DuckDBPyConnection, options: ReplayOptions) -> None:
    """``replay_costs`` with the events in the repricing range priced under the book."""
    references = connection.execute(
        "SELECT model, provider, min(occurred_at), max(occurred_at) FROM replay_events GROUP BY ALL"
    ).fetchall()
    connection.register("replay_prices_arrow", price_intervals(options.book, references))
    connection.execute(sql.PRICES)
    connection.unregister("replay_prices_arrow")
    keeps_charged = options.reprice_from is not None or options.reprice_to is not None
    _run(
        connection,
        sql.costs(keeps_charged),
        {
            "trust": options.trust_reported_cost,
            "from_us": None if options.reprice_from is None else epoch_us(options.reprice_from),
            "to_us": None if options.reprice_to is None else epoch_us(options.reprice_to),
        },
    )


def load_crossings(connection: duckdb.DuckDBPyConnection) -> frozenset[Crossing]:
    """Every crossing of the replay last run on ``connection``, in every window."""
    return _crossings(connection, None)


_CURRENT_SCHEMA = pa.schema([("scope_key", pa.string()), ("limit_name", pa.string()), ("window_us", pa.int64())])


def _crossings(
    connection: duckdb.DuckDBPyConnection, windows: list[tuple[str, str, int]] | None
) -> frozenset[Crossing]:
    """The replay's crossings, only those in ``windows`` when given."""
    query = "SELECT scope_key, limit_name, window_us, kind, threshold_nanos FROM replay_crossings"
    if windows is not None:
        rows = [{"scope_key": s, "limit_name": n, "window_us": w} for s, n, w in windows]
        connection.register("replay_current_arrow", pa.Table.from_pylist(rows, schema=_CURRENT_SCHEMA))
        query += " SEMI JOIN replay_current_arrow USING (scope_key, limit_name, window_us)"
    try:
        found = connection.execute(query).fetchall()
    finally:
        if windows is not None:
            connection.unregister("replay_current_arrow")
    return frozenset(
        Crossing(scope, name, from_epoch_us(window_us), kind, threshold)
        for scope, name, window_us, kind, threshold in found
    )


def _run(connection: duckdb.DuckDBPyConnection, script: str, parameters: dict[str, Any]) -> None:
    """Run a script statement by statement (DuckDB binds parameters to one statement),
    each with the parameters it names."""
    for statement in script.split(";"):
        if statement.strip():
            used = {name: value for name, value in parameters.items() if f"${name}" in statement}
            connection.execute(statement, used)


def _select_events(connection: duckdb.DuckDBPyConnection, options: ReplayOptions, as_of_us: int) -> None:
    """``replay_events``: a view of the events the replay counts (no copy of the store)."""
    connection.register("replay_scope_arrow", pa.table({"scope_key": pa.array(list(options.scopes), pa.string())}))
    connection.execute("CREATE OR REPLACE TEMP TABLE replay_scopes AS SELECT * FROM replay_scope_arrow")
    connection.unregister("replay_scope_arrow")
    scope_filter = ""
    if options.scopes:
        scope_filter = "AND list_has_any(scope_keys, (SELECT list(scope_key) FROM replay_scopes))"
    connection.execute(
        f"""
        CREATE OR REPLACE TEMP VIEW replay_events AS
        SELECT rowid AS row_id, event_id, occurred_at, epoch_us(occurred_at) AS t_us, model, provider,
               user_id, team_id, key_id, end_user, tags, scope_keys,
               prompt_tokens, completion_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,
               has_usage, tokens_estimated, reported_cost_nanos
        FROM usage_events
        WHERE epoch_us(occurred_at) <= {int(as_of_us)} {scope_filter}
        """
    )


def _commands(connection: duckdb.DuckDBPyConnection, options: ReplayOptions) -> list[BudgetCommand]:
    sql = "SELECT command FROM budget_commands WHERE issued_at <= $as_of"
    parameters: dict[str, Any] = {"as_of": options.as_of}
    if options.scopes:
        sql += " AND list_contains($scopes, scope_key)"
        parameters["scopes"] = list(options.scopes)
    return [BudgetCommand.model_validate_json(row[0]) for row in connection.execute(sql, parameters).fetchall()]


def _histories(commands: Sequence[BudgetCommand], as_of: datetime) -> tuple[dict[str, BudgetState], list[LimitSegment]]:
    by_scope: dict[str, list[BudgetCommand]] = {}
    for command in commands:
        by_scope.setdefault(command.scope_key, []).append(command)
    states: dict[str, BudgetState] = {}
    segments: list[LimitSegment] = []
    for scope, scope_commands in by_scope.items():
        state, scope_segments = scope_history(scope_commands)
        states[scope], _ = advance(state, as_of)  # windows roll to the one holding as_of
        segments.extend(scope_segments)
    return states, segments


_SEGMENTS_SCHEMA = pa.schema(
    [
        ("segment_id", pa.int64()),
        ("scope_key", pa.string()),
        ("scope_kind", pa.string()),
        ("scope_id", pa.string()),
        ("limit_name", pa.string()),
        ("series", pa.int64()),
        ("start_us", pa.int64()),
        ("end_us", pa.int64()),
        ("anchor_us", pa.int64()),
        ("step_us", pa.int64()),
        ("rule_id", pa.int64()),
        ("model", pa.string()),
        ("max_nanos", pa.int64()),
        ("soft_nanos", pa.int64()),
        ("checks_at_start", pa.bool_()),
    ]
)
_BOUNDARIES_SCHEMA = pa.schema(
    [("rule_id", pa.int64()), ("utc_day", pa.int64()), ("start_us", pa.int64()), ("end_us", pa.int64())]
)
_DAY_US = 86_400 * 1_000_000


def _load_segments(connection: duckdb.DuckDBPyConnection, segments: list[LimitSegment], as_of: datetime) -> None:
    """``replay_segments`` and, for calendar durations, ``replay_boundaries``: each
    calendar period once per UTC day it touches, so a charge finds its period by a join on
    (rule, day) (periods are at least 23 hours long: at most two candidates a day)."""
    rules: dict[CalendarRule, int] = {}
    rows = []
    for segment_id, segment in enumerate(segments):
        rule = calendar_rule(segment.spec)
        step = fixed_step(segment.spec)
        kind, scope_id = parse_scope_key(segment.scope_key)
        rows.append(
            {
                "segment_id": segment_id,
                "scope_key": segment.scope_key,
                "scope_kind": kind,
                "scope_id": scope_id,
                "limit_name": segment.limit_name,
                "series": segment.series,
                "start_us": epoch_us(segment.starts_at),
                "end_us": _NO_END_US if segment.ends_at is None else epoch_us(segment.ends_at),
                "anchor_us": epoch_us(segment.anchor),
                "step_us": None if step is None else step // timedelta(microseconds=1),
                "rule_id": None if rule is None else rules.setdefault(rule, len(rules)),
                "model": segment.spec.model,
                "max_nanos": segment.spec.max_budget_nanos,
                "soft_nanos": segment.spec.soft_budget_nanos,
                "checks_at_start": segment.checks_at_start,
            }
        )
    connection.register("replay_segments_arrow", pa.Table.from_pylist(rows, schema=_SEGMENTS_SCHEMA))
    connection.execute(
        "CREATE OR REPLACE TEMP TABLE replay_segments AS"
        f" SELECT *, {sql.code('scope_id')} AS scope_code, {sql.code('model')} AS model_code FROM replay_segments_arrow"
    )
    connection.unregister("replay_segments_arrow")

    boundary_rows = []
    if rules:
        (first,) = connection.execute("SELECT min(occurred_at) FROM replay_events").fetchall()[0]
        earliest = min([segment.anchor for segment in segments] + ([first] if first is not None else []))
        for rule, rule_id in rules.items():
            for start, end in calendar_boundaries(rule, earliest, as_of):
                start_us, end_us = epoch_us(start), epoch_us(end)
                for day in range(start_us // _DAY_US, (end_us - 1) // _DAY_US + 1):
                    boundary_rows.append({"rule_id": rule_id, "utc_day": day, "start_us": start_us, "end_us": end_us})
    connection.register("replay_boundaries_arrow", pa.Table.from_pylist(boundary_rows, schema=_BOUNDARIES_SCHEMA))
    connection.execute("CREATE OR REPLACE TEMP TABLE replay_boundaries AS SELECT * FROM replay_boundaries_arrow")
    connection.unregister("replay_boundaries_arrow")


def _load_names(connection: duckdb.DuckDBPyConnection) -> None:
    """``replay_names``: the names behind the charges' codes, each code one name's."""
    connection.execute(sql.NAMES)
    shared = connection.execute(sql.NAMES_SHARING_A_CODE).fetchall()
    if shared:
        raise AssertionError(f"names share a 64-bit code, the replay would merge their charges: {shared[:3]}")


def _states(
    command_states: dict[str, BudgetState],
    segments: list[LimitSegment],
    totals: list[tuple[Any, ...]],
    window_spend: dict[tuple[str, str, int, int], int],
    crossings: frozenset[Crossing],
    options: ReplayOptions,
) -> dict[str, BudgetState]:
    current_series = {
        (segment.scope_key, segment.limit_name): segment.series for segment in segments if segment.ends_at is None
    }
    crossed: dict[tuple[str, str, datetime], list[tuple[AlertKind, int]]] = {
        (scope, limit.spec.limit_name, limit.window_start): []
        for scope, state in command_states.items()
        for limit in state.limits
    }
    for crossing in crossings:  # only the current windows' crossings go into the states
        found = crossed.get((crossing.scope_key, crossing.limit_name, crossing.window_start))
        if found is not None:
            found.append((crossing.kind, crossing.threshold_nanos))
    states: dict[str, BudgetState] = {}
    for scope, total, count, last in totals:
        states[scope] = BudgetState.model_construct(
            _STATE_FIELDS,
            scope_key=scope,
            alias=None,
            limits=(),
            total_spend_nanos=int(total),
            entry_count=int(count),
            last_occurred_at=from_epoch_us(last),
        )
    for scope, command_state in command_states.items():
        base = states.get(scope) or new_state(scope)
        limits = []
        for limit in command_state.limits:
            name = limit.spec.limit_name
            series = current_series[(scope, name)]
            spend = window_spend.get((scope, name, series, epoch_us(limit.window_start)), 0)
            limits.append(
                LimitState.model_construct(
                    _LIMIT_FIELDS,
                    spec=limit.spec,
                    anchor=limit.anchor,
                    window_start=limit.window_start,
                    window_end=limit.window_end,
                    spend_nanos=spend,
                    alerted=tuple(sorted(crossed[(scope, name, limit.window_start)])),
                )
            )
        states[scope] = BudgetState.model_construct(
            _STATE_FIELDS,
            scope_key=scope,
            alias=command_state.alias,
            limits=tuple(limits),
            total_spend_nanos=base.total_spend_nanos,
            entry_count=base.entry_count,
            last_occurred_at=base.last_occurred_at,
        )
    if options.scopes:
        wanted = set(options.scopes)
        states = {scope: state for scope, state in states.items() if scope in wanted}
    return states
