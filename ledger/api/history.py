"""Routes over the store: spend, alerts, dead letters, and replay.

Each request reads through its own connection onto the store (the projector keeps
writing meanwhile; a read sees committed batches), in a worker thread, since DuckDB
calls block.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any

import duckdb
from fastapi import APIRouter, Body, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import AfterValidator, BaseModel, ValidationError

from ledger.api.deps import ADMIN, ApiError, Services, now
from ledger.api.schemas import ReplayRequest, usd
from ledger.api.services import ApiServices
from ledger.domain.budgets import AlertKind
from ledger.domain.errors import InvalidPriceBook
from ledger.domain.prices import PriceBook, load_price_book
from ledger.pricebooks.genai import genai_prices_book
from ledger.replay.compare import compare_states
from ledger.replay.service import StoreBehind, apply_replay, current_book, default_as_of, replay_store, store_lag
from ledger.store.queries import (
    DEFAULT_TIME_ZONE,
    FILTER_VALUES_MAX,
    GROUP_BY_NAMES,
    TIME_ZONE_CHARS_MAX,
    WINDOWS,
    InvalidSpendQuery,
    SpendFilters,
    Window,
    dead_letter_summary,
    recent_alerts,
    recent_dead_letters,
    spend_by,
    time_zone_named,
)

router = APIRouter(dependencies=[ADMIN])
CATCH_UP_WAIT_S = 15.0
DIFFERENCES_LISTED_MAX = 1_000
_replay_lock = asyncio.Lock()


def _time(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


async def _read(api: ApiServices, query: Any, *args: Any, **kwargs: Any) -> Any:
    def run() -> Any:
        connection = api.reader()
        try:
            return query(connection, *args, **kwargs)
        finally:
            connection.close()

    try:
        return await run_in_threadpool(run)
    except InvalidSpendQuery as exc:
        raise ApiError(422, str(exc), "invalid_query") from exc


class SpendRowView(BaseModel):
    groups: dict[str, str | datetime | None]
    window_start: datetime | None = None
    window_end: datetime | None = None
    spend: float
    spend_nanos: int
    entry_count: int
    prompt_tokens: int
    completion_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int


class SpendView(BaseModel):
    group_by: list[str]
    window: Window | None = None
    tz: str = DEFAULT_TIME_ZONE
    start: datetime | None
    end: datetime | None
    rows: list[SpendRowView]
    truncated: bool
    total_spend: float
    total_spend_nanos: int


def _known_time_zone(name: str) -> str:
    time_zone_named(name)  # an InvalidSpendQuery (a ValueError) is a field error naming it
    return name


TimeZoneName = Annotated[
    str,
    Query(
        max_length=TIME_ZONE_CHARS_MAX,
        description="IANA time zone of the windows and time groups, e.g. America/New_York",
    ),
    AfterValidator(_known_time_zone),
]


def _filter(dimension: str) -> Any:
    return Query(
        max_length=FILTER_VALUES_MAX,
        description=f"only entries of this {dimension}; repeat for any of several",
    )


@router.get("/v1/spend", response_model=SpendView, tags=["spend"], summary="Spend, grouped and windowed")
async def spend(
    api: Services,
    group_by: Annotated[
        list[str] | None, Query(description=f"one or more of {', '.join(GROUP_BY_NAMES)}; comma-separated or repeated")
    ] = None,
    window: Annotated[
        Window | None,
        Query(description=f"one of {', '.join(WINDOWS)}: a row per window (ISO weeks start on Monday)"),
    ] = None,
    tz: TimeZoneName = DEFAULT_TIME_ZONE,
    start: Annotated[datetime | None, Query(alias="from", description="occurred at or after (ISO 8601)")] = None,
    end: Annotated[datetime | None, Query(alias="to", description="occurred before (ISO 8601)")] = None,
    scope: Annotated[str | None, Query(description="only entries charged to this scope key")] = None,
    team: Annotated[list[str] | None, _filter("team id")] = None,
    user: Annotated[list[str] | None, _filter("user id")] = None,
    key: Annotated[list[str] | None, _filter("key id")] = None,
    end_user: Annotated[list[str] | None, _filter("end user id")] = None,
    tag: Annotated[list[str] | None, _filter("tag")] = None,
    model: Annotated[list[str] | None, _filter("model")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1_000,
) -> SpendView:
    """Spend from the store, grouped by scope kinds, model and time buckets, per window, with
    tokens beside cost. Windows and time buckets start at local boundaries in ``tz``."""
    names = [name.strip() for item in (group_by or []) for name in item.split(",") if name.strip()]
    filters = SpendFilters.given(team=team, user=user, key=key, end_user=end_user, tag=tag, model=model)
    report = await _read(
        api,
        spend_by,
        names,
        start=_time(start),
        end=_time(end),
        scope_key=scope,
        filters=filters,
        window=window,
        time_zone=tz,
        limit=limit,
    )
    rows = [
        SpendRowView(
            groups=row.groups,
            window_start=row.window_start,
            window_end=row.window_end,
            spend=usd(row.spend_nanos) or 0.0,
            spend_nanos=row.spend_nanos,
            entry_count=row.entry_count,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            cache_read_tokens=row.cache_read_tokens,
            cache_write_tokens=row.cache_write_tokens,
            reasoning_tokens=row.reasoning_tokens,
        )
        for row in report.rows
    ]
    total = sum(row.spend_nanos for row in report.rows)
    return SpendView(
        group_by=list(report.group_by),
        window=window,
        tz=report.time_zone,
        start=report.start,
        end=report.end,
        rows=rows,
        truncated=report.truncated,
        total_spend=usd(total) or 0.0,
        total_spend_nanos=total,
    )


@router.get("/v1/alerts", tags=["spend"], summary="Budget alerts")
async def alerts(
    api: Services,
    scope: Annotated[str | None, Query(description="only this scope key")] = None,
    kind: Annotated[AlertKind | None, Query(description="exceeded, soft-threshold, reset or recovered")] = None,
    since: Annotated[datetime | None, Query(description="occurred at or after (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> dict[str, Any]:
    """The latest alerts from the store, newest first."""
    found = await _read(api, recent_alerts, scope_key=scope, kind=kind, since=_time(since), limit=limit)
    return {"alerts": [{**asdict(alert), "spend": usd(alert.spend_nanos)} for alert in found]}


@router.get("/v1/dead-letters", tags=["spend"], summary="What the ledger refused, and why")
async def dead_letters(
    api: Services,
    reason: Annotated[str | None, Query(description="only this reason, e.g. unpriced")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> dict[str, Any]:
    """Dead letters counted by topic, stage and reason, and the latest ones."""
    summary = await _read(api, dead_letter_summary)
    latest = await _read(api, recent_dead_letters, reason=reason, limit=limit)
    return {"summary": [asdict(group) for group in summary], "dead_letters": [asdict(item) for item in latest]}


@router.post("/v1/replay", tags=["replay"], summary="Replay the store; with apply, correct live state")
async def replay(api: Services, request: Annotated[ReplayRequest, Body()]) -> dict[str, Any]:
    """Recompute every budget from the stored events and commands under a price book, and
    diff it against live state; ``apply`` publishes the adjustments that make live equal it
    (after waiting for the store to catch up with the topics)."""
    if request.apply and request.as_of is not None:
        raise ApiError(422, "apply makes live state equal the replay now; it does not go with as_of", "invalid_request")
    book: PriceBook | None = None
    if request.prices is not None:
        try:
            book = load_price_book(PriceBook.model_validate(request.prices).model_dump_json().encode())
        except (ValidationError, InvalidPriceBook) as exc:
            raise ApiError(422, f"prices is not a valid price book: {exc}", "invalid_request") from exc
    async with _replay_lock:  # one replay at a time: each holds a full pass over the store
        if request.apply:
            await _wait_caught_up(api)
        connection = api.reader()
        try:
            return await _replay(api, connection, request, book)
        except StoreBehind as exc:
            raise ApiError(409, str(exc), "store_behind") from exc
        except duckdb.Error as exc:
            raise ApiError(500, f"replay failed: {exc}", "replay_failed") from exc
        finally:
            connection.close()


async def _replay(
    api: ApiServices, connection: duckdb.DuckDBPyConnection, request: ReplayRequest, given: PriceBook | None
) -> dict[str, Any]:
    book: PriceBook = (
        given if given is not None else await run_in_threadpool(current_book, connection, genai_prices_book)
    )
    requested = _time(request.as_of)
    as_of: datetime = requested if requested is not None else await run_in_threadpool(default_as_of, connection, now())
    result = await run_in_threadpool(
        lambda: replay_store(
            connection,
            book,
            as_of,
            api.settings,
            scopes=tuple(request.scope),
            reprice_from=_time(request.reprice_from),
            reprice_to=_time(request.reprice_to),
        )
    )
    answer: dict[str, Any] = {
        "as_of": as_of,
        "book_id": book.book_id,
        "book_version": result.book_version,
        "events": result.events,
        "charged": result.charged,
        "unpriced": result.unpriced,
        "crossings": result.crossing_count,
    }
    if request.as_of is not None:
        answer["states"] = {key: state.model_dump(mode="json") for key, state in sorted(result.states.items())}
        return answer
    differences = compare_states(api.budget_state.all_states(), result.states, as_of)
    if request.scope:
        differences = [d for d in differences if d.scope_key in set(request.scope)]
    answer["difference_count"] = len(differences)
    answer["differences"] = [
        {
            "scope_key": d.scope_key,
            "field": d.field,
            "live": _shown(d.live),
            "replayed": _shown(d.replayed),
            "delta_nanos": d.delta_nanos,
        }
        for d in differences[:DIFFERENCES_LISTED_MAX]
    ]
    if request.apply:
        applied = await apply_replay(api.settings, connection, result)
        answer["applied"] = {"adjustments": applied.adjustments, "net_nanos": applied.net_nanos}
    return answer


def _shown(value: object) -> object:
    if isinstance(value, frozenset | set):
        return sorted(value)
    return value


async def _wait_caught_up(api: ApiServices) -> None:
    """Wait until the projector has stored every record on the topics (bounded)."""
    deadline = time.monotonic() + CATCH_UP_WAIT_S
    while True:
        connection = api.reader()
        try:
            lag = await store_lag(api.settings, connection)
        finally:
            connection.close()
        if not lag or time.monotonic() > deadline:
            return  # apply_replay refuses with StoreBehind if the store still lags
        await asyncio.sleep(0.2)
