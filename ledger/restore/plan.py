"""What a restore puts back, computed from the store (DESIGN section 7, "Restore").

The store is the durable record; the log is not (the dev broker keeps nothing across a
restart, Kafka deletes ``usage`` after its retention). ``plan_restore`` reads the store
and returns everything the live side needs to carry on as if its log had never been lost:

- every scope's state in its current window, from the replay with every event at what the
  ledger charged it (so live comes back exactly as it was, not re-priced), its crossings
  already alerted from the replay and the stored alerts (none is alerted again);
- the event ids that reached the log inside the dedup horizon (a producer's retry is
  still a duplicate);
- the current price book, the rate limits in force and the open admission holds, for their
  compacted topics.

Publishing the plan is ``streams.restore`` (the worker's record formats are its own).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ledger.domain.budgets import AlertKind, BudgetState, LimitState, all_fields
from ledger.domain.prices import PriceBook
from ledger.domain.windows import epoch_us
from ledger.replay.service import current_book, replay_store
from ledger.settings import Settings

_LIMIT_FIELDS = all_fields(LimitState)
_STATE_FIELDS = all_fields(BudgetState)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_Model = TypeVar("_Model", BudgetState, LimitState)
# Crossings a live limit remembers in its window (a "reset" is not one: it ends a window).
REMEMBERED_KINDS: tuple[AlertKind, ...] = ("exceeded", "soft-threshold", "recovered")
HISTORY_TABLES = (
    "usage_events",
    "ledger_entries",
    "budget_commands",
    "price_books",
    "rate_limit_records",
    "admission_events",
)
PLAN_STAGES = ("replay", "alerts", "event ids", "config")


@dataclass(frozen=True, slots=True)
class RestorePlan:
    """Everything a restore publishes, and what it was computed from."""

    stamp: int  # microseconds since the epoch when planned: orders restores, the fold's offset
    as_of: datetime
    states: dict[str, BudgetState]
    commands: int  # budget commands folded into ``states``
    events: int  # usage events in the store up to ``as_of``
    event_ids: list[tuple[str, float]]  # (id, seen at in epoch seconds), oldest first
    price_book: PriceBook | None  # None: the store holds none, the bundled default stays
    rate_limits: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, value) in force
    holds: list[tuple[bytes, bytes]] = field(default_factory=list)  # (request id, held event) still open

    @property
    def limited_scopes(self) -> int:
        return sum(1 for state in self.states.values() if state.limits)


def store_has_history(connection: duckdb.DuckDBPyConnection) -> bool:
    """Whether the store holds anything a restore would put back."""
    return any(connection.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0] for table in HISTORY_TABLES)  # type: ignore[index]


def plan_restore(
    connection: duckdb.DuckDBPyConnection,
    settings: Settings,
    default_book: Callable[[], PriceBook],
    *,
    as_of: datetime | None = None,
    on_stage: Callable[[str], None] = lambda stage: None,
) -> RestorePlan:
    """What to restore from the store behind ``connection`` (read-only is enough): live
    state as of ``as_of`` (default now). ``on_stage`` hears each of ``PLAN_STAGES``."""
    stamp = time.time_ns() // 1_000
    now = datetime.now(UTC)
    as_of = as_of or now
    on_stage("replay")
    book = current_book(connection, default_book)
    # An empty repricing range: every event keeps what the ledger charged it, so the
    # states are live's own, even if the book changed without a replay --apply.
    result = replay_store(connection, book, as_of, settings, reprice_from=_EPOCH, reprice_to=_EPOCH)
    on_stage("alerts")
    states = _with_stored_crossings(connection, result.states, as_of)
    states = _with_adjustment_counts(connection, states, as_of)
    on_stage("event ids")
    event_ids = _recent_event_ids(connection, as_of, settings.dedup_horizon_s, now)
    on_stage("config")
    (commands,) = connection.execute(
        "SELECT count(*) FROM budget_commands WHERE issued_at <= ?", [as_of]
    ).fetchone() or (0,)
    (stored_books,) = connection.execute("SELECT count(*) FROM price_books").fetchone() or (0,)
    return RestorePlan(
        stamp=stamp,
        as_of=as_of,
        states=states,
        commands=int(commands),
        events=result.events,
        event_ids=event_ids,
        price_book=book if stored_books else None,
        rate_limits=_rate_limits(connection, as_of),
        holds=_open_holds(connection, as_of),
    )


def _with_stored_crossings(
    connection: duckdb.DuckDBPyConnection, states: dict[str, BudgetState], as_of: datetime
) -> dict[str, BudgetState]:
    """Each current window's crossings: the replay's, and every crossing or recovery the
    store holds an alert of (a negative adjustment, a lowered and raised limit: live may
    have alerted what the summed replay does not cross)."""
    rows = connection.execute(
        """
        SELECT scope_key, limit_name, window_start, kind, threshold_nanos FROM budget_alerts
        WHERE list_contains(?, kind) AND occurred_at <= ? ORDER BY occurred_at, alert_id
        """,
        [list(REMEMBERED_KINDS), as_of],
    ).fetchall()
    stored: dict[tuple[str, str, datetime], list[tuple[AlertKind, int]]] = {}
    for scope, limit_name, window_start, kind, threshold in rows:
        stored.setdefault((scope, limit_name, window_start), []).append((kind, int(threshold)))
    restored = dict(states)
    for scope, state in states.items():
        if not state.limits:
            continue
        limits = []
        for limit in state.limits:
            alerted = list(stored.get((scope, limit.spec.limit_name, limit.window_start), ()))
            alerted += [crossing for crossing in limit.alerted if crossing not in alerted]
            limits.append(_changed(limit, _LIMIT_FIELDS, alerted=tuple(dict.fromkeys(alerted))))
        restored[scope] = _changed(state, _STATE_FIELDS, limits=tuple(limits))
    return restored


def _with_adjustment_counts(
    connection: duckdb.DuckDBPyConnection, states: dict[str, BudgetState], as_of: datetime
) -> dict[str, BudgetState]:
    """Live counts every ledger entry, a replay adjustment too; the replay counts events."""
    rows = connection.execute(
        """
        SELECT scope_key, count(*) FROM (
            SELECT unnest(scope_keys) AS scope_key FROM ledger_entries WHERE kind = 'adjustment' AND occurred_at <= ?
        ) GROUP BY scope_key
        """,
        [as_of],
    ).fetchall()
    restored = dict(states)
    for scope, count in rows:
        state = restored.get(scope)
        if state is not None:
            restored[scope] = _changed(state, _STATE_FIELDS, entry_count=state.entry_count + int(count))
    return restored


def _changed(model: _Model, fields: set[str], **changes: object) -> _Model:
    """A copy of a frozen model with ``changes`` (``model_copy`` needs a mutable fields set,
    which the fold's ``model_construct`` states do not have)."""
    values = {name: getattr(model, name) for name in fields}
    values.update(changes)
    return type(model).model_construct(fields, **values)


def _recent_event_ids(
    connection: duckdb.DuckDBPyConnection, as_of: datetime, horizon_s: int, now: datetime
) -> list[tuple[str, float]]:
    """Ids the live dedup would still hold: every event (priced or not) that reached the
    log within the horizon before ``as_of`` and occurred by then, and every adjustment
    of an event that occurred within it. An event's arrival is its message's timestamp
    (a store written before those were kept has only ``occurred_at``)."""
    since = as_of - timedelta(seconds=horizon_s)
    found = connection.execute(
        """
        SELECT id, epoch_us(least(seen_at, ?::TIMESTAMPTZ)) AS seen_us FROM (
            SELECT event_id AS id, coalesce(received_at, occurred_at) AS seen_at FROM usage_events
            WHERE coalesce(received_at, occurred_at) > ? AND occurred_at <= ?
            UNION ALL
            SELECT entry_id, occurred_at FROM ledger_entries
            WHERE kind = 'adjustment' AND occurred_at > ? AND occurred_at <= ?
        ) ORDER BY 2, 1
        """,
        [now, since, as_of, since, as_of],
    ).to_arrow_table()
    # Through Arrow columns, not fetchall: a million ids in a third of the time.
    seen_s = pc.divide(found.column("seen_us").cast(pa.float64()), 1e6)
    return list(zip(found.column("id").to_pylist(), seen_s.to_pylist(), strict=True))


def _rate_limits(connection: duckdb.DuckDBPyConnection, as_of: datetime) -> list[tuple[bytes, bytes]]:
    """The last record per key of ``rate-limits`` (what its compaction would keep)."""
    rows = connection.execute(
        """
        SELECT topic_key, record FROM rate_limit_records WHERE issued_at <= ?
        QUALIFY row_number() OVER (PARTITION BY topic_key ORDER BY source_partition DESC, source_offset DESC) = 1
        ORDER BY topic_key
        """,
        [as_of],
    ).fetchall()
    return [(key.encode(), record.encode()) for key, record in rows]


def _open_holds(connection: duckdb.DuckDBPyConnection, as_of: datetime) -> list[tuple[bytes, bytes]]:
    """Holds taken and not yet ended, expired or charged by ``as_of``."""
    rows = connection.execute(
        """
        SELECT request_id, event FROM admission_events h
        WHERE state = 'held' AND event_at <= ? AND expires_at > ?
          AND NOT EXISTS (SELECT 1 FROM admission_events e
                          WHERE e.request_id = h.request_id AND e.state != 'held' AND e.event_at <= ?)
          AND NOT EXISTS (SELECT 1 FROM ledger_entries l WHERE l.event_id = h.request_id AND l.occurred_at <= ?)
        ORDER BY event_at, request_id
        """,
        [as_of, as_of, as_of, as_of],
    ).fetchall()
    return [(request_id.encode(), event.encode()) for request_id, event in rows]


def plan_summary(plan: RestorePlan) -> dict[str, object]:
    """The plan's counts, for a summary line or a JSON answer."""
    return {
        "as_of": plan.as_of.isoformat(),
        "scopes": len(plan.states),
        "scopes_with_budgets": plan.limited_scopes,
        "budget_commands": plan.commands,
        "events": plan.events,
        "event_ids": len(plan.event_ids),
        "price_book": None if plan.price_book is None else plan.price_book.version,
        "rate_limits": len(plan.rate_limits),
        "open_holds": len(plan.holds),
        "stamp": plan.stamp,
        "as_of_us": epoch_us(plan.as_of),
    }
