"""Records for the integration tests: usage events, budget commands, and predicates on
the live budget state."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ledger.domain.events import UsageEvent
from ledger.domain.pricing import price_event
from ledger.domain.snapshots import BudgetSnapshot
from ledger.pricebooks.genai import genai_prices_book
from streams.codec import partition_of
from tests.integration.conftest import Ledger
from tests.stores import let_the_catalog_server_through

MakeLedger = Callable[..., Ledger]
T = TypeVar("T")
_ids = itertools.count()


def until(
    probe: Callable[[], T],
    holds: Callable[[T], bool],
    what: str,
    *,
    timeout_s: float = 30.0,
    shown: Callable[[T], str] = repr,
    interval_s: float = 0.2,
) -> T:
    """Call ``probe`` until ``holds`` its result (bounded); fail naming ``what`` and the last result."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if holds(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {shown(result)}")
        time.sleep(interval_s)


def usage(event_id: str, *, user: str = "u", team: str | None = None, prompt: int = 100, **fields: Any) -> dict:
    event = {
        "event_id": event_id,
        "occurred_at": fields.pop("occurred_at", datetime.now(UTC).isoformat()),
        "model": fields.pop("model", "gpt-4o-mini"),
        "user_id": user,
        "usage": {"prompt_tokens": prompt, "completion_tokens": fields.pop("completion", 20)},
        **fields,
    }
    if team is not None:
        event["team_id"] = team
    return event


def cost_nanos(event: dict) -> int:
    return price_event(UsageEvent.model_validate(event), genai_prices_book()).cost_nanos


def command(scope_key: str, action: str = "upsert", **fields: Any) -> tuple[str, dict]:
    body = {
        "command_id": f"cmd-{next(_ids)}",
        "scope_key": scope_key,
        "action": action,
        "issued_at": fields.pop("issued_at", datetime.now(UTC).isoformat()),
        **fields,
    }
    return scope_key, body


def has_limits(scope_key: str) -> Callable[[dict[str, BudgetSnapshot]], bool]:
    return lambda states: scope_key in states and bool(states[scope_key].state.limits)


def charged(scope_key: str, count: int) -> Callable[[dict[str, BudgetSnapshot]], bool]:
    return lambda states: scope_key in states and states[scope_key].state.entry_count >= count


def alerts_of(alerts: list[dict], scope_key: str, kind: str) -> list[dict]:
    return [alert for alert in alerts if alert["scope_key"] == scope_key and alert["kind"] == kind]


def name_routed_to(partition: int, prefix: str, partitions: int, template: str = "{}") -> str:
    """A name starting with ``prefix`` such that the worker routes ``template`` filled with
    it (an event id, or a scope key such as ``user:{}``) to ``partition``."""
    for n in itertools.count():
        name = f"{prefix}-{n}"
        if partition_of(template.format(name).encode(), partitions) == partition:
            return name
    raise AssertionError("unreachable")


def in_one_minute() -> None:
    """Rate shares count per UTC minute: start a short test well inside one."""
    second = datetime.now(UTC).second
    if second >= 45:
        time.sleep(60.5 - second)


def unique(name: str) -> str:
    """``name`` with a random suffix: a scope or model no other test touches."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def run_bench(main: Callable[[list[str]], dict[str, Any]], argv: list[str]) -> tuple[str, dict[str, Any]]:
    """A benchmark's ``main`` run in this process: what it printed and what it returned."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        returned = main(argv)
    return printed.getvalue(), returned


def bench_work_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A fresh work directory for a benchmark whose store's catalog server may run as
    another user (tests/stores.py): the folders above it let that user through."""
    folder = tmp_path_factory.mktemp(name)
    let_the_catalog_server_through(folder)
    return folder


def last_json_line(printed: str) -> dict[str, Any]:
    """A benchmark's result: the last line it printed, as JSON."""
    result: dict[str, Any] = json.loads(printed.strip().splitlines()[-1])
    return result
