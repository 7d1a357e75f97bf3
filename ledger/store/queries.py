"""Typed spend queries over the store: the one home of the spend SQL (DESIGN section 7).

Callers (the CLI, the HTTP API's ``GET /v1/spend``) pass names from fixed sets and
values, never SQL. Every amount is an ``int`` of nanos; ``adjustment`` entries count in
spend; ranges are ``[start, end)`` of ``occurred_at``. Time buckets (windows) start at
local boundaries of an IANA time zone (UTC unless given) and come back as aware
datetimes in that zone's local time with a fixed UTC offset (``_in_zone``);
``_bucket_sql`` keeps the rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ledger.domain.budgets import BudgetCommand, BudgetSpec
from ledger.domain.scopes import InvalidScope, parse_scope_key
from ledger.replay.timeline import scope_history

if TYPE_CHECKING:
    import duckdb

GroupBy = Literal["scope", "user", "team", "key", "end_user", "tag", "model", "model_group", "hour", "day", "month"]
GROUP_BY_NAMES: tuple[str, ...] = get_args(GroupBy)
SpenderKind = Literal["user", "team", "key", "end_user", "tag"]
SPENDER_KINDS: tuple[str, ...] = get_args(SpenderKind)
TIME_BUCKETS = ("hour", "day", "month")
Window = Literal["hour", "day", "week", "month"]
WINDOWS: tuple[str, ...] = get_args(Window)
DEFAULT_TIME_ZONE = "UTC"
TIME_ZONE_CHARS_MAX = 64  # the longest IANA name is 32 characters
FILTER_VALUES_MAX = 100  # values of one filter dimension (team, user, ...) in one query

SPEND_ROWS_MAX = 10_000
TOP_SPENDERS_MAX = 1_000
BUDGET_SCOPES_MAX = 10_000


class InvalidSpendQuery(ValueError):
    """A spend query the store cannot answer as asked; the message lists what it accepts."""


@dataclass(frozen=True, slots=True)
class SpendFilters:
    """Which entries a spend query keeps: for each dimension given, the entries matching any
    of its values (OR within a dimension, AND across them). Scope dimensions match the
    entry's scope keys (``team`` ``ml`` keeps entries charged to ``team:ml``); ``model``
    matches the entry's (priced) model."""

    team: tuple[str, ...] = ()
    user: tuple[str, ...] = ()
    key: tuple[str, ...] = ()
    end_user: tuple[str, ...] = ()
    tag: tuple[str, ...] = ()
    model: tuple[str, ...] = ()

    @classmethod
    def given(cls, **values: Sequence[str] | None) -> SpendFilters:
        """Filters from optional value lists, as a route's or a command's options arrive."""
        return cls(**{dimension: tuple(found or ()) for dimension, found in values.items()})


@dataclass(frozen=True, slots=True)
class SpendRow:
    """Spend of one group. ``groups`` maps each group-by name to its value: a scope id (the
    part after ``kind:``), a full scope key for ``scope``, a model or model group, or a
    time bucket's start (aware, in the query's zone); None for entries that name no scope
    of that kind, or no group. ``window_start`` and ``window_end`` bound the row's window
    ``[start, end)`` when the query asked for one. Tokens count charges only (an
    adjustment corrects the cost of a call already counted); cache and reasoning tokens
    come from the charge's usage event and are parts of prompt and completion tokens."""

    groups: dict[str, str | datetime | None]
    spend_nanos: int
    entry_count: int
    prompt_tokens: int
    completion_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    window_start: datetime | None = None
    window_end: datetime | None = None


@dataclass(frozen=True, slots=True)
class SpendReport:
    """The rows of a spend query, and whether ``limit`` cut them short."""

    group_by: tuple[str, ...]
    start: datetime | None
    end: datetime | None
    rows: tuple[SpendRow, ...]
    truncated: bool
    window: str | None = None
    time_zone: str = DEFAULT_TIME_ZONE


@dataclass(frozen=True, slots=True)
class ScopeSpend:
    """Spend charged to one scope key."""

    scope_key: str
    spend_nanos: int
    entry_count: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """A scope's configured limits and its spend, as far as plain sums can tell.

    ``limits`` come from the latest upsert (a later delete removes the scope from the
    report). ``spend_since_last_command_nanos`` sums the entries that occurred at or after
    the scope's latest upsert or reset: not the spend of each limit's current window,
    which may have opened later (a ``1d`` window) or earlier (an upsert keeps windows),
    and which counts one model only for a per-model limit. The replay computes that.
    """

    scope_key: str
    alias: str | None
    limits: tuple[BudgetSpec, ...]
    configured_at: datetime
    last_command_action: str
    last_command_at: datetime
    total_spend_nanos: int
    spend_since_last_command_nanos: int


@dataclass(frozen=True, slots=True)
class BudgetReport:
    """Budget status of each budgeted scope, by scope key, and whether ``limit`` cut it short."""

    statuses: tuple[BudgetStatus, ...]
    truncated: bool


@dataclass(frozen=True, slots=True)
class DeadLetterGroup:
    """Dead letters of one (source topic, stage, reason), with one example: the one at the
    highest source offset, the latest when the source topic has one partition (dead letters
    carry no time of their own, and the insert order is not kept)."""

    source_topic: str
    stage: str
    reason: str
    count: int
    example_detail: str
    example_event_id: str | None


def spend_by(
    connection: duckdb.DuckDBPyConnection,
    group_by: Sequence[str],
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    scope_key: str | None = None,
    filters: SpendFilters = SpendFilters(),
    window: str | None = None,
    time_zone: str = DEFAULT_TIME_ZONE,
    limit: int = SPEND_ROWS_MAX,
) -> SpendReport:
    """Spend grouped by any of ``GROUP_BY_NAMES`` (none: one total row), and by ``window``
    (one of ``WINDOWS``) when given, ordered by window, then by group.

    Scope kinds come from each entry's scope keys, so an entry with two tags counts once
    under each tag. ``scope_key`` keeps only the entries charged to that scope, ``filters``
    those matching it. Windows and the ``hour``, ``day`` and ``month`` groups are buckets in
    ``time_zone`` (see ``_bucket_sql``).
    """
    names = _checked_group_by(group_by)
    if window is not None and window not in WINDOWS:
        raise InvalidSpendQuery(f"unknown window {window!r}; expected one of: {', '.join(WINDOWS)}")
    zone = time_zone_named(time_zone)
    _check_range(start, end)
    _check_limit(limit, SPEND_ROWS_MAX)
    if window is not None or any(name in TIME_BUCKETS for name in names):
        _check_duckdb_knows_zone(connection, time_zone)
    columns: list[str] = []
    column_parameters: list[Any] = []
    joins: list[str] = []
    if window is not None:
        window_start, window_end = _bucket_sql(window)
        columns.extend([window_start, window_end])
        column_parameters.extend([time_zone] * (window_start + window_end).count("?"))
    for name in names:
        if name == "scope":
            joins.append("unnest(e.scope_keys) AS g_scope(value)")
            columns.append("g_scope.value")
        elif name in SPENDER_KINDS:
            joins.append(f"unnest({_scope_ids_or_null(name)}) AS g_{name}(value)")
            columns.append(f"g_{name}.value")
        elif name == "model":
            columns.append("e.model")
        elif name == "model_group":  # on the entry's usage event: the worker's entries name the priced model
            columns.append("u.model_group")
        else:  # a time bucket's start in the query's zone
            bucket_start, _ = _bucket_sql(name)
            columns.append(bucket_start)
            column_parameters.extend([time_zone] * bucket_start.count("?"))
    where, parameters = _entry_filters(start, end, scope_key, filters)
    # An entry's usage event (one per event_id) gives its model group and cache and reasoning tokens.
    sources = ", ".join(["ledger_entries AS e LEFT JOIN usage_events AS u ON u.event_id = e.event_id", *joins])
    sql = f"SELECT {', '.join([*columns, _SPEND_SUMS, _USAGE_TOKEN_SUMS])} FROM {sources} {where}"
    if columns:
        positions = range(1, len(columns) + 1)
        sql += f" GROUP BY {', '.join(map(str, positions))} ORDER BY {', '.join(f'{i} NULLS LAST' for i in positions)}"
    fetched = connection.execute(sql + " LIMIT ?", [*column_parameters, *parameters, limit + 1]).fetchall()
    offset = 2 if window is not None else 0
    rows = tuple(
        SpendRow(
            groups={
                name: _group_value(name, value, zone)
                for name, value in zip(names, row[offset : offset + len(names)], strict=True)
            },
            spend_nanos=int(row[-7]),
            entry_count=int(row[-6]),
            prompt_tokens=int(row[-5]),
            completion_tokens=int(row[-4]),
            cache_read_tokens=int(row[-3]),
            cache_write_tokens=int(row[-2]),
            reasoning_tokens=int(row[-1]),
            window_start=_in_zone(row[0], zone) if window is not None else None,
            window_end=_in_zone(row[1], zone) if window is not None else None,
        )
        for row in fetched[:limit]
    )
    return SpendReport(
        group_by=names,
        start=start,
        end=end,
        rows=rows,
        truncated=len(fetched) > limit,
        window=window,
        time_zone=time_zone,
    )


def time_zone_named(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (e.g. ``America/New_York``), or ``InvalidSpendQuery`` naming it."""
    refusal = InvalidSpendQuery(f"unknown time zone {name!r}; give an IANA name such as UTC or America/New_York")
    if not name or len(name) > TIME_ZONE_CHARS_MAX:
        raise refusal
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise refusal from exc


def spend_by_scope(
    connection: duckdb.DuckDBPyConnection,
    scope_key: str | None = None,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = SPEND_ROWS_MAX,
) -> SpendReport:
    """Spend of one scope key, or of every scope key (``global:*`` included)."""
    if scope_key is None:
        return spend_by(connection, ["scope"], start=start, end=end, limit=limit)
    total = spend_by(connection, [], start=start, end=end, scope_key=scope_key, limit=limit)
    (row,) = total.rows
    only = SpendRow(
        {"scope": scope_key},
        row.spend_nanos,
        row.entry_count,
        row.prompt_tokens,
        row.completion_tokens,
        row.cache_read_tokens,
        row.cache_write_tokens,
        row.reasoning_tokens,
    )
    return SpendReport(group_by=("scope",), start=start, end=end, rows=(only,), truncated=False)


def spend_by_model(
    connection: duckdb.DuckDBPyConnection,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = SPEND_ROWS_MAX,
) -> SpendReport:
    """Spend per model."""
    return spend_by(connection, ["model"], start=start, end=end, limit=limit)


def spend_by_time(
    connection: duckdb.DuckDBPyConnection,
    bucket: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = SPEND_ROWS_MAX,
) -> SpendReport:
    """Spend per UTC ``hour``, ``day`` or ``month``, oldest first."""
    if bucket not in TIME_BUCKETS:
        raise InvalidSpendQuery(f"unknown time bucket {bucket!r}; expected one of: {', '.join(TIME_BUCKETS)}")
    return spend_by(connection, [bucket], start=start, end=end, limit=limit)


def top_spenders(
    connection: duckdb.DuckDBPyConnection,
    kind: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 10,
) -> tuple[ScopeSpend, ...]:
    """The ``limit`` scopes of ``kind`` that spent most, most first (ties by scope key)."""
    if kind not in SPENDER_KINDS:
        raise InvalidSpendQuery(f"unknown scope kind {kind!r}; expected one of: {', '.join(SPENDER_KINDS)}")
    _check_range(start, end)
    _check_limit(limit, TOP_SPENDERS_MAX)
    where, parameters = _entry_filters(start, end, None)
    sql = (
        f"SELECT k.value, {_SPEND_SUMS} FROM ledger_entries AS e, unnest(e.scope_keys) AS k(value) "
        f"{where} {'AND' if where else 'WHERE'} starts_with(k.value, ?) "
        "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?"
    )
    rows = connection.execute(sql, [*parameters, f"{kind}:", limit]).fetchall()
    return tuple(
        ScopeSpend(str(key), int(spend), int(count), int(prompt), int(out)) for key, spend, count, prompt, out in rows
    )


def budget_statuses(
    connection: duckdb.DuckDBPyConnection, scope_key: str | None = None, *, limit: int = BUDGET_SCOPES_MAX
) -> BudgetReport:
    """Each budgeted scope (or only ``scope_key``): its limits and spend; see ``BudgetStatus``."""
    if scope_key is not None:
        _check_scope_key(scope_key)
    _check_limit(limit, BUDGET_SCOPES_MAX)
    rows = connection.execute(_BUDGETS_SQL, [scope_key, scope_key, limit + 1]).fetchall()
    limits = scope_limits(connection, [row[0] for row in rows[:limit]])
    statuses = []
    for key, _, alias, configured_at, last_action, last_at, total, since in rows[:limit]:
        statuses.append(
            BudgetStatus(
                scope_key=key,
                alias=alias,
                limits=limits[key],
                configured_at=_utc(configured_at),
                last_command_action=last_action,
                last_command_at=_utc(last_at),
                total_spend_nanos=int(total),
                spend_since_last_command_nanos=int(since),
            )
        )
    return BudgetReport(statuses=tuple(statuses), truncated=len(rows) > limit)


def scope_limits(connection: duckdb.DuckDBPyConnection, scope_keys: list[str]) -> dict[str, tuple[BudgetSpec, ...]]:
    """Each scope's limits as its stored commands leave them, by the fold itself
    (``scope_history``): a ``set_overall`` keeps limits no SQL reading of one command sees."""
    commands: dict[str, list[BudgetCommand]] = {key: [] for key in scope_keys}
    rows = connection.execute(
        "SELECT scope_key, command FROM budget_commands WHERE list_contains(?, scope_key)", [scope_keys]
    ).fetchall()
    for key, command_json in rows:
        commands[key].append(BudgetCommand.model_validate_json(command_json))
    return {
        key: tuple(limit.spec for limit in scope_history(found)[0].limits) if found else ()
        for key, found in commands.items()
    }


def dead_letter_summary(connection: duckdb.DuckDBPyConnection) -> tuple[DeadLetterGroup, ...]:
    """Dead letters counted by source topic, stage and reason, most frequent first."""
    example = "ORDER BY source_offset DESC NULLS LAST, source_partition DESC NULLS LAST, dead_letter_id"
    rows = connection.execute(
        f"SELECT source_topic, stage, reason, count(*), first(detail {example}), first(event_id {example}) "
        "FROM dead_letters GROUP BY ALL ORDER BY 4 DESC, 1, 2, 3"
    ).fetchall()
    return tuple(DeadLetterGroup(*row) for row in rows)


# Sums over ``ledger_entries AS e``; tokens only from charges (see SpendRow).
_SPEND_SUMS = (
    "coalesce(sum(e.cost_nanos), 0), count(e.entry_id), "
    "coalesce(sum(e.prompt_tokens) FILTER (WHERE e.kind = 'charge'), 0), "
    "coalesce(sum(e.completion_tokens) FILTER (WHERE e.kind = 'charge'), 0)"
)

# Over ``ledger_entries AS e LEFT JOIN usage_events AS u``: the charge's usage event's tokens.
_USAGE_TOKEN_SUMS = ", ".join(
    f"coalesce(sum(u.{column}) FILTER (WHERE e.kind = 'charge'), 0)"
    for column in ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
)

# Per scope: the latest upsert, set_overall or delete by issued_at (then by offset) decides
# whether it has a budget; a delete drops the scope. "Since" is the latest change or reset
# from then on. Its limits come from the fold over its commands (``scope_limits``).
_BUDGETS_SQL = """
WITH in_force AS (
    SELECT scope_key, action, command, issued_at
    FROM budget_commands
    WHERE action IN ('upsert', 'set_overall', 'delete') AND (? IS NULL OR scope_key = ?)
    QUALIFY row_number() OVER (PARTITION BY scope_key ORDER BY issued_at DESC, source_offset DESC) = 1
),
budgeted AS (SELECT * FROM in_force WHERE action IN ('upsert', 'set_overall')),
last_change AS (
    SELECT c.scope_key, c.action, c.issued_at
    FROM budget_commands AS c JOIN budgeted AS b ON c.scope_key = b.scope_key
    WHERE c.action IN ('upsert', 'set_overall', 'reset') AND c.issued_at >= b.issued_at
    QUALIFY row_number() OVER (PARTITION BY c.scope_key ORDER BY c.issued_at DESC, c.source_offset DESC) = 1
),
aliases AS (
    SELECT scope_key, arg_max(alias, issued_at) AS alias
    FROM budget_commands WHERE alias IS NOT NULL GROUP BY scope_key
),
charged AS (
    SELECT k.value AS scope_key, e.cost_nanos, e.occurred_at
    FROM ledger_entries AS e, unnest(e.scope_keys) AS k(value)
    WHERE k.value IN (SELECT scope_key FROM budgeted)
)
SELECT
    b.scope_key, b.command, a.alias, b.issued_at, l.action, l.issued_at,
    coalesce(sum(s.cost_nanos), 0),
    coalesce(sum(s.cost_nanos) FILTER (WHERE s.occurred_at >= l.issued_at), 0)
FROM budgeted AS b
JOIN last_change AS l ON l.scope_key = b.scope_key
LEFT JOIN aliases AS a ON a.scope_key = b.scope_key
LEFT JOIN charged AS s ON s.scope_key = b.scope_key
GROUP BY ALL
ORDER BY b.scope_key
LIMIT ?
"""


def _scope_ids_or_null(kind: str) -> str:
    """SQL for the ids of ``e``'s scope keys of ``kind``, or ``[NULL]`` when it names none
    (so unnesting keeps the entry, under None). ``kind`` is one of SPENDER_KINDS."""
    assert kind in SPENDER_KINDS
    prefix = f"{kind}:"
    of_kind = f"list_filter(e.scope_keys, lambda k: starts_with(k, '{prefix}'))"
    ids = f"list_transform({of_kind}, lambda k: k[{len(prefix) + 1}:])"
    return f"CASE WHEN len({ids}) = 0 THEN [NULL::VARCHAR] ELSE {ids} END"


def _bucket_sql(unit: str) -> tuple[str, str]:
    """SQL for the start and end (TIMESTAMPTZ) of the ``unit`` bucket holding ``e.occurred_at``
    in the zone that each ``?`` in them binds.

    Days, ISO weeks (from Monday) and months start at local midnight: truncate the local
    time, then read it back in the zone, so a day across a DST change lasts 23 or 25 hours.
    An hour is truncated locally but keeps the instant's own UTC offset, so the hour that a
    fall-back repeats is two buckets, not one bucket of two hours; it lasts one hour.
    """
    local = "timezone(?, e.occurred_at)"
    if unit == "hour":
        start = f"(e.occurred_at - ({local} - date_trunc('hour', {local})))"
        return start, f"({start} + INTERVAL 1 HOUR)"
    assert unit in WINDOWS
    step = "INTERVAL 7 DAY" if unit == "week" else f"INTERVAL 1 {unit.upper()}"
    local_start = f"date_trunc('{unit}', {local})"
    return f"timezone(?, {local_start})", f"timezone(?, {local_start} + {step})"


def _check_duckdb_knows_zone(connection: duckdb.DuckDBPyConnection, time_zone: str) -> None:
    """DuckDB computes the buckets: refuse a zone its time zone database lacks."""
    if time_zone == DEFAULT_TIME_ZONE:
        return
    if connection.execute("SELECT 1 FROM pg_timezone_names() WHERE name = ?", [time_zone]).fetchone() is None:
        raise InvalidSpendQuery(f"unknown time zone {time_zone!r}; give an IANA name such as UTC or America/New_York")


def _entry_filters(
    start: datetime | None,
    end: datetime | None,
    scope_key: str | None,
    filters: SpendFilters | None = None,
) -> tuple[str, list[Any]]:
    conditions: list[str] = []
    parameters: list[Any] = []
    if start is not None:
        conditions.append("e.occurred_at >= ?")
        parameters.append(start)
    if end is not None:
        conditions.append("e.occurred_at < ?")
        parameters.append(end)
    if scope_key is not None:
        _check_scope_key(scope_key)
        conditions.append("list_contains(e.scope_keys, ?)")
        parameters.append(scope_key)
    for dimension, values in _filter_values(filters or SpendFilters()):
        if dimension == "model":
            conditions.append("list_contains(?::VARCHAR[], e.model)")
            parameters.append(list(values))
        else:
            scope_keys = [f"{dimension}:{value}" for value in values]
            for key in scope_keys:
                _check_scope_key(key)
            conditions.append("list_has_any(e.scope_keys, ?::VARCHAR[])")
            parameters.append(scope_keys)
    return ("WHERE " + " AND ".join(conditions) if conditions else ""), parameters


def _filter_values(filters: SpendFilters) -> list[tuple[str, tuple[str, ...]]]:
    """The dimensions ``filters`` names, with their values, checked against the limits."""
    given = [(field.name, getattr(filters, field.name)) for field in fields(filters) if getattr(filters, field.name)]
    for name, values in given:
        if len(values) > FILTER_VALUES_MAX:
            raise InvalidSpendQuery(f"'{name}' takes at most {FILTER_VALUES_MAX} values, got {len(values)}")
        if any(not value for value in values):
            raise InvalidSpendQuery(f"'{name}' values must not be empty")
    return given


def _group_value(name: str, value: Any, zone: ZoneInfo) -> str | datetime | None:
    if name in TIME_BUCKETS:
        return _in_zone(value, zone)
    return None if value is None else str(value)


def _in_zone(value: datetime, zone: ZoneInfo) -> datetime:
    """``value`` in ``zone``'s local time with that instant's fixed UTC offset as its tzinfo
    (``-04:00``, not ``America/New_York``): Python compares and subtracts two datetimes that
    share a ZoneInfo by wall clock, which gets the hours around a DST change wrong."""
    local = _utc(value).astimezone(zone)
    offset = local.utcoffset()
    assert offset is not None
    return local.replace(tzinfo=timezone(offset))


def _utc(value: datetime) -> datetime:
    """A naive UTC timestamp from DuckDB, or an aware one in any zone, as aware UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _checked_group_by(group_by: Sequence[str]) -> tuple[str, ...]:
    names = tuple(group_by)
    unknown = [name for name in names if name not in GROUP_BY_NAMES]
    if unknown:
        raise InvalidSpendQuery(
            f"cannot group by {', '.join(map(repr, unknown))}; accepted: {', '.join(GROUP_BY_NAMES)}"
        )
    if len(set(names)) != len(names):
        raise InvalidSpendQuery(f"group_by names a group twice: {', '.join(names)}")
    return names


def _check_range(start: datetime | None, end: datetime | None) -> None:
    for label, moment in (("from", start), ("to", end)):
        if moment is not None and moment.tzinfo is None:
            raise InvalidSpendQuery(f"'{label}' time {moment.isoformat()} has no time zone; give one (e.g. +00:00)")
    if start is not None and end is not None and start >= end:
        raise InvalidSpendQuery(f"'from' ({start.isoformat()}) must be before 'to' ({end.isoformat()})")


def _check_limit(limit: int, maximum: int) -> None:
    if not 1 <= limit <= maximum:
        raise InvalidSpendQuery(f"limit must be between 1 and {maximum}, got {limit}")


def _check_scope_key(scope_key: str) -> None:
    try:
        parse_scope_key(scope_key)
    except InvalidScope as exc:
        raise InvalidSpendQuery(str(exc)) from exc


ALERTS_LISTED_MAX = 10_000
DEAD_LETTERS_LISTED_MAX = 10_000


@dataclass(frozen=True, slots=True)
class StoredAlert:
    """One budget alert as stored."""

    alert_id: str
    scope_key: str
    alias: str | None
    limit_name: str
    kind: str
    window_start: datetime
    window_end: datetime | None
    spend_nanos: int
    max_budget_nanos: int | None
    soft_budget_nanos: int | None
    threshold_nanos: int
    occurred_at: datetime
    message: str


def recent_alerts(
    connection: duckdb.DuckDBPyConnection,
    *,
    scope_key: str | None = None,
    kind: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> tuple[StoredAlert, ...]:
    """The latest alerts (by when they occurred, newest first), optionally of one scope,
    one kind, or from ``since`` on."""
    _check_limit(limit, ALERTS_LISTED_MAX)
    if scope_key is not None:
        _check_scope_key(scope_key)
    rows = connection.execute(
        "SELECT alert_id, scope_key, alias, limit_name, kind, window_start, window_end, spend_nanos, "
        "max_budget_nanos, soft_budget_nanos, threshold_nanos, occurred_at, message FROM budget_alerts "
        "WHERE (?::VARCHAR IS NULL OR scope_key = ?) AND (?::VARCHAR IS NULL OR kind = ?) "
        "AND (?::TIMESTAMPTZ IS NULL OR occurred_at >= ?) "
        "ORDER BY occurred_at DESC, alert_id LIMIT ?",
        [scope_key, scope_key, kind, kind, since, since, limit],
    ).fetchall()
    return tuple(StoredAlert(*row) for row in rows)


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """One dead letter as stored (the original bytes stay in the store, base64)."""

    dead_letter_id: str
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    stage: str
    reason: str
    detail: str
    event_id: str | None


def recent_dead_letters(
    connection: duckdb.DuckDBPyConnection, *, reason: str | None = None, limit: int = 100
) -> tuple[StoredDeadLetter, ...]:
    """Dead letters, latest source offsets first, optionally of one reason."""
    _check_limit(limit, DEAD_LETTERS_LISTED_MAX)
    rows = connection.execute(
        "SELECT dead_letter_id, source_topic, source_partition, source_offset, stage, reason, detail, event_id "
        "FROM dead_letters WHERE (?::VARCHAR IS NULL OR reason = ?) "
        "ORDER BY source_offset DESC NULLS LAST, source_partition DESC NULLS LAST, dead_letter_id LIMIT ?",
        [reason, reason, limit],
    ).fetchall()
    return tuple(StoredDeadLetter(*row) for row in rows)


def ledger_counts(connection: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Rows stored: usage events, charges, adjustments and dead letters."""
    (events,) = connection.execute("SELECT count(*) FROM usage_events").fetchone() or (0,)
    entries = dict(connection.execute("SELECT kind, count(*) FROM ledger_entries GROUP BY kind").fetchall())
    (dead,) = connection.execute("SELECT count(*) FROM dead_letters").fetchone() or (0,)
    return {
        "usage_events": int(events),
        "charges": int(entries.get("charge", 0)),
        "adjustments": int(entries.get("adjustment", 0)),
        "dead_letters": int(dead),
    }


def alert_counts(connection: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Budget alerts stored, by kind (each alert once: the store keys them by alert id)."""
    return {kind: int(count) for kind, count in connection.execute(ALERT_COUNTS_SQL).fetchall()}


ALERT_COUNTS_SQL = "SELECT kind, count(*) FROM budget_alerts GROUP BY kind ORDER BY kind"
