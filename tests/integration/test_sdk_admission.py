"""``ledger.admission`` against a real broker, worker and api: entering admits, an exception
in the block releases the hold, ``settle`` publishes the usage event that settles it, a
block that ends without settling leaves it for its usage event, and refusals raise the
SDK's typed errors."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

import ledger
from ledger.broker import EmbeddedBroker
from ledger.client import AsyncLedgerClient, LedgerClient
from ledger.domain.events import TokenUsage, UsageEvent
from tests.integration.builders import in_one_minute, unique, until
from tests.integration.conftest import ApiProcess, Ledger, running_ledger

MASTER_KEY = "sk-test-sdk-admission-master"
WAIT_S = 60.0
MESSAGES = [{"role": "user", "content": "Summarise the quarter in one line."}]
# gpt-4o-mini: $0.15 / $0.60 per Mtok
USAGE = TokenUsage(prompt_tokens=10, completion_tokens=20)
USAGE_NANOS = 10 * 150 + 20 * 600


@dataclass
class Stack:
    ledger: Ledger
    api: ApiProcess
    client: LedgerClient


@pytest.fixture(scope="module")
def stack(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with (
        running_ledger(broker, tmp_path_factory.mktemp("sdk-admission"), MASTER_KEY) as (running, api),
        LedgerClient(api.url, MASTER_KEY) as client,
    ):
        yield Stack(running, api, client)


def team_with_budget(stack: Stack, max_budget: str) -> str:
    team = unique("team")
    assert stack.client.set_budget("team", team, max_budget=max_budget).applied
    return team


def open_ids(stack: Stack, team: str) -> list[str]:
    return [hold.request_id for hold in stack.client.admissions(scope=f"team:{team}")]


def test_entering_admits_and_settle_publishes_the_event_that_settles_the_hold(stack: Stack) -> None:
    team = team_with_budget(stack, "1")

    async def admitted_call() -> tuple[ledger.AdmissionHold, UsageEvent, list[str]]:
        async with (
            AsyncLedgerClient(stack.api.url, MASTER_KEY) as client,
            ledger.admission(model="gpt-4o-mini", team=team, messages=MESSAGES, max_tokens=100, client=client) as hold,
        ):
            while_held = open_ids(stack, team)
            event = await hold.settle(usage=USAGE)
        return hold, event, while_held

    hold, event, while_held = asyncio.run(admitted_call())
    assert while_held == [hold.request_id]
    uuid.UUID(hold.request_id)  # generated
    assert hold.estimate_cost_nanos > USAGE_NANOS  # 100 reply tokens held, 20 used
    assert hold.expires_at > datetime.now(UTC)
    assert hold.state == "settled"
    assert (event.event_id, event.team_id, event.model) == (hold.request_id, team, "gpt-4o-mini")

    until(lambda: open_ids(stack, team), lambda ids: ids == [], "the usage event to settle the hold", timeout_s=WAIT_S)
    budget = until(
        lambda: stack.client.get_budget("team", team),
        lambda info: info.spend_nanos == USAGE_NANOS,
        "the team's spend",
        timeout_s=WAIT_S,
    )
    assert budget.spend_nanos == USAGE_NANOS  # the actual cost replaced the estimate


def test_an_exception_in_the_block_releases_the_hold(stack: Stack) -> None:
    team = team_with_budget(stack, "1")
    held: list[ledger.AdmissionHold] = []

    async def failing_call() -> None:
        async with (
            AsyncLedgerClient(stack.api.url, MASTER_KEY) as client,
            ledger.admission(
                model="gpt-4o-mini", request_id=unique("req"), team=team, prompt_tokens=50, client=client
            ) as hold,
        ):
            held.append(hold)
            assert open_ids(stack, team) == [hold.request_id]
            raise ConnectionError("the provider is down")

    with pytest.raises(ConnectionError, match="the provider is down"):
        asyncio.run(failing_call())
    assert held[0].state == "released"
    assert open_ids(stack, team) == []  # released at once, not at expiry


def test_a_block_without_settle_leaves_the_hold_for_its_usage_event(stack: Stack) -> None:
    """The sync twin; the caller publishes the usage event with the request id itself."""
    team = team_with_budget(stack, "1")
    with ledger.admission_sync(model="gpt-4o-mini", team=team, prompt_tokens=10, client=stack.client) as hold:
        pass  # the call was made elsewhere
    assert hold.state == "held"
    assert open_ids(stack, team) == [hold.request_id]

    event = UsageEvent(
        event_id=hold.request_id, occurred_at=datetime.now(UTC), model="gpt-4o-mini", team_id=team, usage=USAGE
    )
    stack.client.publish([event])
    until(lambda: open_ids(stack, team), lambda ids: ids == [], "the usage event to settle the hold", timeout_s=WAIT_S)


def test_refusals_raise_the_sdks_typed_errors(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """No client given: one from the settings (SPEND_LEDGER_API_URL and the master key)."""
    monkeypatch.setenv("SPEND_LEDGER_API_URL", stack.api.url)
    monkeypatch.setenv("SPEND_LEDGER_MASTER_KEY", MASTER_KEY)
    team = team_with_budget(stack, "0.01")
    model = unique("one-rpm-model")
    stack.client.set_model_limits(model, rpm=1)

    async def over_budget() -> None:
        async with ledger.admission(model="gpt-4o-mini", team=team, cost="0.010000001"):
            raise AssertionError("must not be admitted")

    with pytest.raises(ledger.BudgetExceededError) as refused:
        asyncio.run(over_budget())
    assert refused.value.scope == f"team:{team}"
    assert refused.value.max_budget_nanos == 10_000_000
    assert refused.value.message.startswith("Budget has been exceeded! Current cost: 0, Max budget: 0.01")
    assert open_ids(stack, team) == []

    in_one_minute()
    with ledger.admission_sync(model=model, key="sdk-key", cost="0.001") as first:
        first.release()  # a released request still counts in the key's minute
    with (
        pytest.raises(ledger.RateLimitExceededError) as limited,
        ledger.admission_sync(model=model, key="sdk-key", cost="0.001"),
    ):
        raise AssertionError("must not be admitted")
    assert limited.value.message.startswith("Key=sdk-key over available RPM=0.")
    assert 1 <= limited.value.retry_after_s <= 60
    assert limited.value.headers["x-ratelimit-remaining-requests"] == "0"
