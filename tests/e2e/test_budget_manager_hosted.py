"""The drop-in ``BudgetManager(client_type="hosted")`` against a real `spend-ledger dev`
stack: LiteLLM's own BudgetManager tests (tests/local_testing/test_budget_manager.py),
ported with real assertions, plus what LiteLLM's hosted client cannot do: exact money,
calendar months, several processes charging one user without losing an update."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.broker import free_port
from ledger.client import LedgerApiError, LedgerConnectionError
from ledger.domain.events import TokenUsage, UsageEvent
from ledger.domain.pricing import price_event
from ledger.integrations.litellm_budget import usd_float
from ledger.pricebooks.genai import genai_prices_book
from ledger.sdk.budget_manager import BudgetManager, UnknownUser
from ledger.sdk.budget_manager.hosted import CallNotCharged
from ledger.tokenizer import count_tokens
from tests.e2e.waiting import until

MODEL = "gpt-4o-mini"
PROMPT_TOKENS = 1_000
COMPLETION_TOKENS = 200
PROCESS_CALLS = 20
PROCESS_TIMEOUT_S = 180.0


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def completion(
    completion_id: str | None = None, prompt_tokens: int = PROMPT_TOKENS, completion_tokens: int = COMPLETION_TOKENS
) -> dict[str, Any]:
    """A chat completion as OpenAI's API returns it (the fields ``update_cost`` reads)."""
    return {
        "id": completion_id or unique("chatcmpl"),
        "object": "chat.completion",
        "model": MODEL,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def price_nanos(
    prompt_tokens: int = PROMPT_TOKENS,
    completion_tokens: int = COMPLETION_TOKENS,
    model: str = MODEL,
    provider: str | None = None,
) -> int:
    """The exact price of a call by the bundled book (the one the dev stack prices with)."""
    event = UsageEvent(
        event_id="expected",
        occurred_at=datetime.now(UTC),
        model=model,
        provider=provider,
        usage=TokenUsage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens),
    )
    return price_event(event, genai_prices_book()).cost_nanos


@pytest.fixture
def manager_of(stack_url: str, stack_key: str) -> Iterator[Callable[..., BudgetManager]]:
    """Hosted managers of the session stack, configured as a LiteLLM user would; closed after the test."""
    made: list[BudgetManager] = []

    def make(project_name: str = "hosted-tests", **options: Any) -> BudgetManager:
        manager = BudgetManager(
            project_name,
            client_type="hosted",
            api_base=stack_url,
            headers={"Authorization": f"Bearer {stack_key}"},
            **options,
        )
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.close()


@pytest.fixture
def manager(manager_of: Callable[..., BudgetManager]) -> BudgetManager:
    return manager_of()


# -- LiteLLM's scenarios ------------------------------------------------------------------


def test_budget_enough_charges_a_call_at_its_exact_price(manager: BudgetManager):
    user = unique("user")
    created = manager.create_budget(total_budget=10, user=user, duration="daily")
    assert created["total_budget"] == 10.0
    assert created["total_budget_nanos"] == 10_000_000_000
    assert created["duration"] == 1  # LiteLLM's days
    assert created["duration_text"] == "daily"
    assert manager.get_current_cost(user) <= manager.get_total_budget(user)

    answer = manager.update_cost(user=user, completion_obj=completion())

    expected = price_nanos()
    assert expected > 0
    entry = answer["user"]
    assert entry["current_cost_nanos"] == expected
    assert entry["current_cost"] == usd_float(expected)
    assert manager.get_current_cost_nanos(user) == expected
    assert manager.get_current_cost(user) < manager.get_total_budget(user)
    # The per-model breakdown comes from the store, about a second behind the live state.
    until(lambda: manager.get_model_cost(user) == {MODEL: usd_float(expected)}, "the per-model cost")


def test_a_litellm_model_response_is_charged_at_its_exact_price(
    manager: BudgetManager, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    user = unique("user")
    manager.create_budget(10, user, "daily")
    response = litellm.completion(
        model=MODEL, messages=[{"role": "user", "content": "Hey, how's it going?"}], mock_response="hi"
    )

    answer = manager.update_cost(user=user, completion_obj=response)

    usage = response.usage
    expected = price_nanos(usage.prompt_tokens, usage.completion_tokens, provider="openai")
    assert answer["user"]["current_cost_nanos"] == expected > 0


def test_budget_not_enough_at_zero(manager: BudgetManager):
    user = unique("user")
    manager.create_budget(total_budget=0, user=user, duration="daily")
    assert manager.get_total_budget(user) == 0.0
    assert (manager.get_current_cost(user) < manager.get_total_budget(user)) is False

    manager.update_cost(user=user, completion_obj=completion())
    assert manager.get_current_cost(user) > manager.get_total_budget(user)


def test_save_data_succeeds_and_a_new_manager_sees_the_users(manager_of: Callable[..., BudgetManager]):
    first = manager_of()
    user = unique("user")
    first.create_budget(total_budget=2.5, user=user, duration="weekly")
    first.update_cost(user=user, completion_obj=completion())

    assert first.save_data() == {"status": "success"}

    second = manager_of()
    assert user in second.get_users()
    assert second.get_total_budget_nanos(user) == 2_500_000_000
    assert second.get_current_cost_nanos(user) == price_nanos()
    assert second.user_dict[user]["duration"] == 7


def test_get_users_lists_every_created_user(manager: BudgetManager):
    users = [unique("user") for _ in range(3)]
    for user in users:
        manager.create_budget(total_budget=1, user=user, duration="monthly")

    listed = manager.get_users()

    assert set(users) <= set(listed)
    assert all(manager.is_valid_user(user) for user in users)
    assert not manager.is_valid_user(unique("nobody"))


def test_cost_resets_when_the_duration_ends_and_on_reset_cost(manager: BudgetManager):
    user = unique("user")
    created = manager.create_budget(total_budget=1, user=user, duration="4s")
    assert created["duration_text"] == "4s"
    charged = manager.update_cost(user=user, completion_obj=completion())["user"]
    assert charged["current_cost_nanos"] == price_nanos()
    window_start = charged["last_updated_at"]
    assert manager.get_current_cost(user) > 0

    until(lambda: time.time() > window_start + 4.2, "the 4 s window to end", timeout_s=10)
    manager.update_budget_all_users()

    assert manager.get_current_cost(user) == 0
    assert manager.get_budget(user).last_updated_at >= window_start + 4

    manager.update_cost(user=user, completion_obj=completion())
    assert manager.get_current_cost_nanos(user) == price_nanos()
    reset = manager.reset_cost(user)["user"]
    assert reset["current_cost_nanos"] == 0
    assert reset["model_cost"] == {}
    assert manager.get_current_cost(user) == 0
    assert manager.get_model_cost(user) == {}


def test_update_cost_from_text_charges_the_counted_tokens(manager: BudgetManager):
    user = unique("user")
    manager.create_budget(total_budget=10, user=user, duration="daily")
    input_text, output_text = "hello world", "it's a sunny day in san francisco"

    answer = manager.update_cost(user=user, model=MODEL, input_text=input_text, output_text=output_text)

    expected = price_nanos(count_tokens(input_text), count_tokens(output_text))
    assert answer["user"]["current_cost_nanos"] == expected > 0


def test_created_at_is_taken_at_each_call(manager: BudgetManager):
    """LiteLLM issue 18459: ``created_at=time.time()`` as a default was frozen at import."""
    first = manager.create_budget(total_budget=1, user=unique("user"), duration="daily")
    time.sleep(0.1)
    second = manager.create_budget(total_budget=1, user=unique("user"), duration="daily")

    assert second["created_at"] > first["created_at"]
    assert second["created_at"] - first["created_at"] >= 0.1


def test_a_custom_created_at_is_reported_back(manager: BudgetManager):
    created = manager.create_budget(total_budget=1, user=unique("user"), duration="daily", created_at=1234567890.0)

    assert created["created_at"] == 1234567890.0


# -- beyond LiteLLM ---------------------------------------------------------------------


def test_monthly_is_a_calendar_month_not_28_days(manager: BudgetManager, admin: httpx.Client):
    user = unique("user")
    before = time.time()
    created = manager.create_budget(total_budget=100, user=user, duration="monthly")

    now = datetime.now(UTC)
    first_of_month = datetime(now.year, now.month, 1, tzinfo=UTC)
    next_month = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    assert created["duration"] == 28  # LiteLLM's number for monthly, so it reads back as monthly
    assert created["duration_text"] == "monthly"
    assert max(first_of_month.timestamp(), before - 5) <= created["last_updated_at"] <= time.time()
    view = admin.get(f"/v1/budgets/user/{user}").json()
    assert datetime.fromisoformat(view["budget_reset_at"]) == next_month


def test_two_processes_charging_one_user_lose_no_update(
    manager: BudgetManager, stack_url: str, stack_key: str, tmp_path: Path
):
    user = unique("user")
    manager.create_budget(total_budget=100, user=user, duration="daily")
    go = tmp_path / "go"
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from ledger.sdk.budget_manager import BudgetManager

        url, key, user, tag, calls, go = sys.argv[1:]
        manager = BudgetManager("hosted-tests", client_type="hosted", api_base=url,
                                headers={"Authorization": f"Bearer {key}"})
        deadline = time.monotonic() + 60
        while not Path(go).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        for i in range(int(calls)):
            manager.update_cost(user=user, completion_obj={
                "id": f"{tag}-{i}", "model": "gpt-4o-mini",
                "usage": {"prompt_tokens": 1000, "completion_tokens": 200},
            })
        manager.close()
        """
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, stack_url, stack_key, user, unique(f"p{n}"), str(PROCESS_CALLS), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(2)
    ]
    try:
        time.sleep(0.5)
        go.touch()
        for process in processes:
            _, err = process.communicate(timeout=PROCESS_TIMEOUT_S)
            assert process.returncode == 0, err.decode(errors="replace")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    expected = 2 * PROCESS_CALLS * price_nanos()
    until(lambda: manager.get_current_cost_nanos(user) >= expected, "every call to be charged")
    assert manager.get_current_cost_nanos(user) == expected


def test_the_same_completion_twice_is_charged_once(manager_of: Callable[..., BudgetManager]):
    manager = manager_of()
    user = unique("user")
    manager.create_budget(total_budget=10, user=user, duration="daily")
    call = completion()

    first = manager.update_cost(user=user, completion_obj=call)["user"]
    again = manager.update_cost(user=user, completion_obj=call)["user"]
    # Another manager (another process, say) retrying it: it waits its bounded time, no more.
    elsewhere = manager_of().update_cost(user=user, completion_obj=call)["user"]

    assert first["current_cost_nanos"] == again["current_cost_nanos"] == price_nanos()
    assert elsewhere["current_cost_nanos"] == price_nanos()
    manager.update_cost(user=user, completion_obj=completion())  # a new call is charged
    assert manager.get_current_cost_nanos(user) == 2 * price_nanos()


def test_create_budget_keeps_the_limits_an_admin_set(manager: BudgetManager, admin: httpx.Client):
    user = unique("user")
    put = admin.put(
        f"/v1/budgets/user/{user}",
        json={"max_budget": "5", "budget_duration": "daily", "model_max_budget": {MODEL: "0.5"}},
    )
    assert put.status_code == 200, put.text
    manager.update_cost(user=user, completion_obj=completion())

    created = manager.create_budget(total_budget="7.123456789", user=user, duration="daily")

    assert created["total_budget_nanos"] == 7_123_456_789
    assert created["current_cost_nanos"] == price_nanos()  # same duration: the window and its spend stay
    limits = admin.get(f"/v1/budgets/user/{user}").json()["limits"]
    by_model = {limit["model"]: limit for limit in limits}
    assert by_model[None]["max_budget_nanos"] == 7_123_456_789
    assert by_model[MODEL]["max_budget_nanos"] == 500_000_000
    assert by_model[MODEL]["spend_nanos"] == price_nanos()


def test_an_unpriced_model_is_refused_clearly_and_never_charged(manager: BudgetManager):
    user = unique("user")
    manager.create_budget(total_budget=10, user=user, duration="daily")
    call = {**completion(), "model": "acme-private-llm"}

    with pytest.raises(CallNotCharged) as refused:
        manager.update_cost(user=user, completion_obj=call)

    assert refused.value.reason == "unpriced"
    assert "acme-private-llm" in str(refused.value)
    assert manager.get_current_cost_nanos(user) == 0


def test_an_unknown_user_is_a_key_error(manager: BudgetManager):
    with pytest.raises(KeyError):
        manager.update_cost(user=unique("nobody"), completion_obj=completion())
    with pytest.raises(UnknownUser):
        manager.get_current_cost(unique("nobody"))


def test_a_wrong_key_and_a_dead_api_are_clear_errors(stack_url: str):
    wrong = BudgetManager("p", client_type="hosted", api_base=stack_url, headers={"Authorization": "Bearer nope"})
    with pytest.raises(LedgerApiError) as denied:
        wrong.get_users()
    assert denied.value.status == 403
    assert "master key" in str(denied.value)
    wrong.close()

    dead = BudgetManager("p", client_type="hosted", api_base=f"http://127.0.0.1:{free_port()}", key="k" * 16)
    with pytest.raises(LedgerConnectionError, match="connection refused"):
        dead.get_users()
    dead.close()
