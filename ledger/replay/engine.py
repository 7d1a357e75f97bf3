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
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa

from ledger.domain.budgets import AlertKind, BudgetCommand, BudgetState, LimitState, all_fields
from ledger.domain.fold import advance, new_state
from ledger.domain.prices import PriceBook
from ledger.replay.rates import rates_table
from ledger.replay.timeline import (
    CalendarRule,
    LimitSegment,
    calendar_boundaries,
    calendar_rule,
    fixed_step,
    scope_history,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STATE_FIELDS = all_fields(BudgetState)
_LIMIT_FIELDS = all_fields(LimitState)
_NO_END_US = 2**62


@dataclass(frozen=True, slots=True)
class Crossing:
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
    """Every scope's state at ``as_of`` and every crossing up to it. Per-event costs stay
    in the connection's temp table ``replay_costs`` (event_id, status, cost_nanos: what the
    event should cost, charged_nanos: what the ledger charged it so far)."""

    as_of: datetime
    book_version: str
    states: dict[str, BudgetState]
    crossings: frozenset[Crossing]
    events: int
    charged: int
    unpriced: int


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch (exact: datetimes hold microseconds)."""
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


REPLAY_STAGES = ("events", "pricing", "commands", "windows", "states")


def replay(
    connection: duckdb.DuckDBPyConnection,
    options: ReplayOptions,
    on_stage: Callable[[str], None] = lambda stage: None,
) -> ReplayResult:
    """Replay the store behind ``connection`` (read-only is enough: only temp tables).
    ``on_stage`` hears each of ``REPLAY_STAGES`` as it begins (for a progress bar)."""
    as_of_us = to_us(options.as_of)
    on_stage("events")
    _select_events(connection, options, as_of_us)
    on_stage("pricing")
    references = connection.execute("SELECT DISTINCT model, provider FROM replay_events").fetchall()
    connection.register("replay_rates_arrow", rates_table(options.book, references))
    _run(
        connection,
        _PRICE_SQL,
        {
            "trust": options.trust_reported_cost,
            "from_us": None if options.reprice_from is None else to_us(options.reprice_from),
            "to_us": None if options.reprice_to is None else to_us(options.reprice_to),
        },
    )
    connection.unregister("replay_rates_arrow")

    on_stage("commands")
    commands = _commands(connection, options)
    states, segments = _histories(commands, options.as_of)
    _load_segments(connection, segments, options.as_of)
    on_stage("windows")
    _run(connection, _WINDOW_SQL, {"as_of_us": as_of_us})
    on_stage("states")

    window_spend: dict[tuple[str, str, int, int], int] = {}
    for scope, name, series, window_us, spend in connection.execute(
        "SELECT scope_key, limit_name, series, window_us, spend_nanos FROM replay_window_spend"
    ).fetchall():
        window_spend[(scope, name, series, window_us)] = spend
    crossings = frozenset(
        Crossing(scope, name, from_us(window_us), kind, threshold)
        for scope, name, window_us, kind, threshold in connection.execute(
            "SELECT scope_key, limit_name, window_us, kind, threshold_nanos FROM replay_crossings"
        ).fetchall()
    )
    totals = connection.execute(_TOTALS_SQL).fetchall()
    result_states = _states(states, segments, totals, window_spend, crossings, options)
    events, charged, unpriced = connection.execute(
        "SELECT count(*), count(*) FILTER (status IN ('price_book', 'reported')),"
        " count(*) FILTER (status = 'unpriced') FROM replay_costs"
    ).fetchone() or (0, 0, 0)
    return ReplayResult(
        as_of=options.as_of,
        book_version=options.book.version,
        states=result_states,
        crossings=crossings,
        events=events,
        charged=charged,
        unpriced=unpriced,
    )


def _run(connection: duckdb.DuckDBPyConnection, script: str, parameters: dict[str, Any]) -> None:
    """Run a script statement by statement (DuckDB binds parameters to one statement),
    each with the parameters it names."""
    for statement in script.split(";"):
        if statement.strip():
            used = {name: value for name, value in parameters.items() if f"${name}" in statement}
            connection.execute(statement, used)


def _select_events(connection: duckdb.DuckDBPyConnection, options: ReplayOptions, as_of_us: int) -> None:
    scope_filter = "AND list_has_any(scope_keys, $scopes)" if options.scopes else ""
    parameters: dict[str, Any] = {"as_of_us": as_of_us}
    if options.scopes:
        parameters["scopes"] = list(options.scopes)
    connection.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE replay_events AS
        SELECT event_id, occurred_at, epoch_us(occurred_at) AS t_us,
               CAST(timezone('UTC', occurred_at) AS DATE) AS utc_date,
               CAST(timezone('UTC', occurred_at) AS TIME) AS utc_time, model, provider, scope_keys,
               prompt_tokens, completion_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,
               has_usage, tokens_estimated, reported_cost_nanos
        FROM usage_events
        WHERE epoch_us(occurred_at) <= $as_of_us {scope_filter}
        """,
        parameters,
    )


# The period in force: the last active one, else the first (ledger.domain.prices). Cost:
# tokens x rates in 1e-24 USD, one half-to-even division to nanos (ledger.domain.pricing).
_PRICE_SQL = """
CREATE OR REPLACE TEMP TABLE replay_rates AS
SELECT model, provider, period, starts_on, utc_time_from, utc_time_to, priced, priced_as,
       CAST(input_units AS HUGEINT) AS input_units, CAST(cache_read_units AS HUGEINT) AS cache_read_units,
       CAST(cache_write_units AS HUGEINT) AS cache_write_units, CAST(output_units AS HUGEINT) AS output_units,
       CAST(reasoning_units AS HUGEINT) AS reasoning_units, CAST(request_units AS HUGEINT) AS request_units,
       CAST(input_tiers AS STRUCT(start BIGINT, units HUGEINT)[]) AS input_tiers,
       CAST(cache_read_tiers AS STRUCT(start BIGINT, units HUGEINT)[]) AS cache_read_tiers,
       CAST(cache_write_tiers AS STRUCT(start BIGINT, units HUGEINT)[]) AS cache_write_tiers,
       CAST(output_tiers AS STRUCT(start BIGINT, units HUGEINT)[]) AS output_tiers,
       CAST(reasoning_tiers AS STRUCT(start BIGINT, units HUGEINT)[]) AS reasoning_tiers,
       count(*) OVER (PARTITION BY model, provider) AS periods
FROM replay_rates_arrow;

CREATE OR REPLACE TEMP TABLE replay_costs AS
WITH single AS (
    SELECT e.event_id, r.*
    FROM replay_events e JOIN replay_rates r
      ON r.model = e.model AND r.provider IS NOT DISTINCT FROM e.provider AND r.periods = 1
),
several AS (
    SELECT e.event_id, r.*
    FROM replay_events e JOIN replay_rates r
      ON r.model = e.model AND r.provider IS NOT DISTINCT FROM e.provider AND r.periods > 1
    QUALIFY row_number() OVER (
        PARTITION BY e.event_id
        ORDER BY
            CASE WHEN (r.starts_on IS NULL OR e.utc_date >= r.starts_on)
                  AND (r.utc_time_from IS NULL
                       OR (r.utc_time_to < r.utc_time_from
                           AND (e.utc_time >= r.utc_time_from
                                OR e.utc_time < r.utc_time_to))
                       OR (r.utc_time_to >= r.utc_time_from
                           AND e.utc_time >= r.utc_time_from
                           AND e.utc_time < r.utc_time_to))
                 THEN -r.period - 1 ELSE r.period END
    ) = 1
),
chosen AS (SELECT * FROM single UNION ALL SELECT * FROM several),
tokens AS (
    SELECT e.event_id, e.has_usage, e.tokens_estimated, e.reported_cost_nanos, e.prompt_tokens, c.*,
           CASE WHEN c.cache_read_units IS NULL THEN 0 ELSE e.cache_read_tokens END AS cr,
           CASE WHEN c.cache_write_units IS NULL THEN 0 ELSE e.cache_write_tokens END AS cw,
           CASE WHEN c.reasoning_units IS NULL THEN 0 ELSE e.reasoning_tokens END AS rs,
           e.completion_tokens
    FROM replay_events e LEFT JOIN chosen c USING (event_id)
),
units AS (
    SELECT event_id, has_usage, tokens_estimated, reported_cost_nanos, priced, priced_as,
        (CASE WHEN input_units IS NULL OR prompt_tokens - cr - cw = 0 THEN 0 ELSE (prompt_tokens - cr - cw)
              * coalesce(list_last(list_filter(input_tiers, lambda x: prompt_tokens > x.start)).units,
                         input_units) END)
      + (CASE WHEN cache_read_units IS NULL OR cr = 0 THEN 0 ELSE cr
              * coalesce(list_last(list_filter(cache_read_tiers, lambda x: prompt_tokens > x.start)).units,
                         cache_read_units) END)
      + (CASE WHEN cache_write_units IS NULL OR cw = 0 THEN 0 ELSE cw
              * coalesce(list_last(list_filter(cache_write_tiers, lambda x: prompt_tokens > x.start)).units,
                         cache_write_units) END)
      + (CASE WHEN output_units IS NULL OR completion_tokens - rs = 0 THEN 0 ELSE (completion_tokens - rs)
              * coalesce(list_last(list_filter(output_tiers, lambda x: prompt_tokens > x.start)).units,
                         output_units) END)
      + (CASE WHEN reasoning_units IS NULL OR rs = 0 THEN 0 ELSE rs
              * coalesce(list_last(list_filter(reasoning_tiers, lambda x: prompt_tokens > x.start)).units,
                         reasoning_units) END)
      + coalesce(request_units, CAST(0 AS HUGEINT)) AS cost_units
    FROM tokens
),
priced AS (
    SELECT event_id,
        CASE WHEN $trust AND reported_cost_nanos IS NOT NULL THEN 'reported'
             WHEN NOT has_usage AND NOT tokens_estimated THEN 'invalid_usage'
             WHEN priced IS NULL OR NOT priced THEN 'unpriced'
             ELSE 'price_book' END AS status,
        CASE WHEN $trust AND reported_cost_nanos IS NOT NULL THEN reported_cost_nanos
             WHEN NOT has_usage AND NOT tokens_estimated THEN NULL
             WHEN priced IS NULL OR NOT priced THEN NULL
             ELSE CAST(cost_units // 1000000000000000
                       + CASE WHEN 2 * (cost_units % 1000000000000000) > 1000000000000000
                                OR (2 * (cost_units % 1000000000000000) = 1000000000000000
                                    AND (cost_units // 1000000000000000) % 2 = 1)
                              THEN 1 ELSE 0 END AS BIGINT) END AS priced_nanos,
        CASE WHEN priced THEN priced_as END AS priced_as
    FROM units
),
charged AS (
    SELECT event_id, sum(cost_nanos)::BIGINT AS charged_nanos
    FROM ledger_entries WHERE event_id IN (SELECT event_id FROM replay_events) GROUP BY event_id
)
SELECT p.event_id,
    CASE WHEN NOT ($from_us IS NULL OR e.t_us >= $from_us) OR NOT ($to_us IS NULL OR e.t_us < $to_us)
              THEN 'kept' ELSE p.status END AS status,
    CASE WHEN ($from_us IS NULL OR e.t_us >= $from_us) AND ($to_us IS NULL OR e.t_us < $to_us)
              AND p.priced_nanos IS NOT NULL
         THEN p.priced_nanos ELSE c.charged_nanos END AS cost_nanos,
    c.charged_nanos,
    p.priced_as
FROM priced p JOIN replay_events e USING (event_id) LEFT JOIN charged c USING (event_id);

CREATE OR REPLACE TEMP TABLE replay_charges AS
SELECT e.event_id, e.t_us, e.occurred_at, e.model, c.cost_nanos, unnest(e.scope_keys) AS scope_key
FROM replay_events e JOIN replay_costs c USING (event_id)
WHERE c.cost_nanos IS NOT NULL;
"""

_TOTALS_SQL = """
SELECT scope_key, sum(cost_nanos)::BIGINT, count(*), max(occurred_at)
FROM replay_charges GROUP BY scope_key
"""

# Each charge in the limit segment holding its time, in the window holding it; the
# points where a changed limit is checked at the command's own time; running spend per
# window; where it passed a threshold. A command comes before a charge at the same instant.
_WINDOW_SQL = """
CREATE OR REPLACE TEMP TABLE replay_points AS
WITH placed AS (
    SELECT s.scope_key, s.limit_name, s.series, s.anchor_us, s.step_us, s.rule_id, s.max_nanos, s.soft_nanos,
           c.t_us, 1 AS ord, c.event_id, c.cost_nanos
    FROM replay_charges c JOIN replay_segments s
      ON c.scope_key = s.scope_key AND c.t_us >= s.start_us AND c.t_us < s.end_us
     AND (s.model IS NULL OR s.model = c.model)
    UNION ALL
    SELECT scope_key, limit_name, series, anchor_us, step_us, rule_id, max_nanos, soft_nanos,
           start_us, 0, '', 0
    FROM replay_segments WHERE checks_at_start AND start_us <= $as_of_us
),
fixed AS (
    SELECT p.*,
           CASE WHEN step_us IS NULL THEN anchor_us
                ELSE anchor_us + ((t_us - anchor_us) // step_us) * step_us END AS window_us
    FROM placed p WHERE rule_id IS NULL
),
calendar AS (
    SELECT p.*, greatest(p.anchor_us, b.start_us) AS window_us
    FROM (SELECT * FROM placed WHERE rule_id IS NOT NULL) p
    ASOF JOIN replay_boundaries b ON p.rule_id = b.rule_id AND p.t_us >= b.start_us
)
SELECT *, sum(cost_nanos) OVER (
        PARTITION BY scope_key, limit_name, series, window_us
        ORDER BY t_us, ord, event_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
    ) AS running_nanos
FROM (SELECT * FROM fixed UNION ALL SELECT * FROM calendar);

CREATE OR REPLACE TEMP TABLE replay_window_spend AS
SELECT scope_key, limit_name, series, window_us, sum(cost_nanos)::BIGINT AS spend_nanos
FROM replay_points GROUP BY ALL;

CREATE OR REPLACE TEMP TABLE replay_crossings AS
SELECT DISTINCT scope_key, limit_name, window_us, 'exceeded' AS kind, max_nanos AS threshold_nanos
FROM replay_points WHERE max_nanos IS NOT NULL AND running_nanos > max_nanos
UNION
SELECT DISTINCT scope_key, limit_name, window_us, 'soft-threshold', soft_nanos
FROM replay_points WHERE soft_nanos IS NOT NULL AND running_nanos >= soft_nanos;
"""


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


def _load_segments(connection: duckdb.DuckDBPyConnection, segments: list[LimitSegment], as_of: datetime) -> None:
    rules: dict[CalendarRule, int] = {}
    rows = []
    for segment in segments:
        rule = calendar_rule(segment.spec)
        step = fixed_step(segment.spec)
        rows.append(
            {
                "scope_key": segment.scope_key,
                "limit_name": segment.limit_name,
                "series": segment.series,
                "start_us": to_us(segment.starts_at),
                "end_us": _NO_END_US if segment.ends_at is None else to_us(segment.ends_at),
                "anchor_us": to_us(segment.anchor),
                "step_us": None if step is None else step // timedelta(microseconds=1),
                "rule_id": None if rule is None else rules.setdefault(rule, len(rules)),
                "model": segment.spec.model,
                "max_nanos": segment.spec.max_budget_nanos,
                "soft_nanos": segment.spec.soft_budget_nanos,
                "checks_at_start": segment.checks_at_start,
            }
        )
    schema = pa.schema(
        [
            ("scope_key", pa.string()),
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
    connection.register("replay_segments_arrow", pa.Table.from_pylist(rows, schema=schema))
    connection.execute("CREATE OR REPLACE TEMP TABLE replay_segments AS SELECT * FROM replay_segments_arrow")
    connection.unregister("replay_segments_arrow")

    boundary_rows = []
    if rules:
        (first,) = connection.execute("SELECT min(t_us) FROM replay_charges").fetchall()
        starts = [segment.anchor for segment in segments]
        if first is not None and first[0] is not None:
            starts.append(from_us(first[0]))
        earliest = min(starts)
        for rule, rule_id in rules.items():
            for start, end in calendar_boundaries(rule, earliest, as_of):
                boundary_rows.append({"rule_id": rule_id, "start_us": to_us(start), "end_us": to_us(end)})
    boundaries = pa.Table.from_pylist(
        boundary_rows, schema=pa.schema([("rule_id", pa.int64()), ("start_us", pa.int64()), ("end_us", pa.int64())])
    )
    connection.register("replay_boundaries_arrow", boundaries)
    connection.execute("CREATE OR REPLACE TEMP TABLE replay_boundaries AS SELECT * FROM replay_boundaries_arrow")
    connection.unregister("replay_boundaries_arrow")


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
    crossed: dict[tuple[str, str, datetime], list[tuple[AlertKind, int]]] = {}
    for crossing in sorted(crossings, key=lambda c: (c.kind, c.threshold_nanos)):
        key = (crossing.scope_key, crossing.limit_name, crossing.window_start)
        crossed.setdefault(key, []).append((crossing.kind, crossing.threshold_nanos))
    states: dict[str, BudgetState] = {}
    for scope, total, count, last in totals:
        states[scope] = BudgetState.model_construct(
            _STATE_FIELDS,
            scope_key=scope,
            alias=None,
            limits=(),
            total_spend_nanos=int(total),
            entry_count=int(count),
            last_occurred_at=last,
        )
    for scope, command_state in command_states.items():
        base = states.get(scope) or new_state(scope)
        limits = []
        for limit in command_state.limits:
            name = limit.spec.limit_name
            series = current_series[(scope, name)]
            spend = window_spend.get((scope, name, series, to_us(limit.window_start)), 0)
            limits.append(
                LimitState.model_construct(
                    _LIMIT_FIELDS,
                    spec=limit.spec,
                    anchor=limit.anchor,
                    window_start=limit.window_start,
                    window_end=limit.window_end,
                    spend_nanos=spend,
                    alerted=tuple(crossed.get((scope, name, limit.window_start), ())),
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
