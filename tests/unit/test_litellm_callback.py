"""The LiteLLM callback on real LiteLLM calls (``mock_response``: no provider is reached):
the event it builds from LiteLLM's standard logging payload, what is not charged, and the
refusal of a call before it is made. Publishing goes to an in-memory publisher here; the
transports are tested against the real api and broker in tests/integration."""

from __future__ import annotations

import asyncio
import copy
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm loads: nothing is fetched

import litellm
from litellm.caching.dual_cache import DualCache
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import UserAPIKeyAuth
from litellm.proxy.types_utils.utils import get_instance_fn

import ledger
from ledger.broker import free_port
from ledger.client import LedgerConnectionError
from ledger.domain.events import TokenUsage, UsageEvent
from ledger.domain.money import usd_to_nanos
from ledger.integrations import litellm_callback
from ledger.integrations.litellm_callback import SpendLedgerCallback
from ledger.integrations.litellm_requests import (
    CallScopes,
    is_user_agent_tag,
    payload_with_bare_model,
    payload_with_request_tags,
    request_tags,
    scopes_of_call,
    scopes_of_proxy_request,
)
from ledger.sdk.guard import BudgetExceededError, current_cost_nanos, record_cost, reset_current_cost
from ledger.sdk.producer import Published, PublishUnconfirmed
from ledger.settings import Settings
from tests.one_loop import close_test_loop, run_async


@pytest.fixture(autouse=True)
def _one_loop_per_test() -> Iterator[None]:
    """Each test's asyncio calls share a loop, drained and closed after it (tests.one_loop)."""
    yield
    close_test_loop()


WAIT_S = 20.0
MESSAGES = [{"role": "user", "content": "SECRET-PROMPT: summarise the quarterly numbers"}]
# LiteLLM's mock usage is 10 prompt and 20 completion tokens; gpt-4o-mini is $0.15 / $0.60 per Mtok.
MOCK_USAGE = TokenUsage(prompt_tokens=10, completion_tokens=20)
GPT_4O_MINI_MOCK_NANOS = 10 * 150 + 20 * 600
SCOPED_METADATA = {
    "user_api_key_user_id": "alice",
    "user_api_key_team_id": "ml",
    "user_api_key_hash": "hashed-key-1",
    "tags": ["batch", "eval", "batch"],
}


class MemoryPublisher:
    """Keeps what it is given (the HTTP and Kafka transports are tested against the real api)."""

    def __init__(self) -> None:
        self.events: list[UsageEvent] = []
        self.closed = False

    async def publish(self, events: Sequence[UsageEvent]) -> Published:
        self.events.extend(events)
        return Published([event.event_id for event in events], 1, 1)

    async def close(self) -> None:
        self.closed = True


class RefusingPublisher(MemoryPublisher):
    """A transport that never confirms, as the SDK reports it after its last attempt."""

    async def publish(self, events: Sequence[UsageEvent]) -> Published:
        raise PublishUnconfirmed([event.event_id for event in events], 3, ConnectionError("the api is down"))


class Recorder(CustomLogger):  # type: ignore[misc]
    """LiteLLM's view of each call: the payloads it logs, and every pre-API-call log (LiteLLM
    writes one right before it calls the provider, a mock one included)."""

    def __init__(self) -> None:
        super().__init__()
        self.payloads: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.provider_calls = 0
        self._lock = threading.Lock()

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        with self._lock:
            self.provider_calls += 1

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self.payloads.append(kwargs["standard_logging_object"])

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self.payloads.append(kwargs["standard_logging_object"])

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self.failures.append(kwargs["standard_logging_object"])

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self.failures.append(kwargs["standard_logging_object"])


def wait_until(holds: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not holds():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


async def await_until(holds: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not holds():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def mock_with_usage(model: str, prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    """A mock response with the usage a provider would report (LiteLLM's own mock has 10/20)."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return {
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "done"}}],
        "usage": usage,
    }


@pytest.fixture(autouse=True)
def process_budget() -> Iterator[None]:
    """Every test starts with no process-wide budget and nothing spent, and leaves it so."""
    saved = ledger.max_budget
    ledger.max_budget = None
    reset_current_cost()
    yield
    ledger.max_budget = saved
    reset_current_cost()


@pytest.fixture
def use_callbacks() -> Iterator[Callable[..., None]]:
    """Register callbacks as a user does (``litellm.callbacks = [...]``) on a clean slate:
    LiteLLM keeps instances it has seen in lists of its own and skips new ones of a seen type."""
    manager = litellm.logging_callback_manager
    manager._reset_all_callbacks()

    def use(*callbacks: CustomLogger) -> None:
        litellm.callbacks = list(callbacks)

    yield use
    manager._reset_all_callbacks()


@pytest.fixture
def publisher() -> MemoryPublisher:
    return MemoryPublisher()


@pytest.fixture
def callback(publisher: MemoryPublisher) -> Iterator[SpendLedgerCallback]:
    # A closed port: a scope check that reaches for the api fails at once, never a stray server.
    made = SpendLedgerCallback(api_url=f"http://127.0.0.1:{free_port()}", key="k" * 16, publisher=publisher)
    yield made
    made.close()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def test_a_sync_completion_publishes_one_event_built_from_the_standard_logging_payload(
    use_callbacks: Callable[..., None], callback: SpendLedgerCallback, publisher: MemoryPublisher
) -> None:
    use_callbacks(callback)
    response = litellm.completion(
        model="gpt-4o-mini", messages=MESSAGES, mock_response="fine", user="customer-7", metadata=SCOPED_METADATA
    )
    wait_until(lambda: callback.published == 1, "the event to be published")

    [event] = publisher.events
    assert event.event_id == response.id
    assert (event.user_id, event.team_id, event.key_id, event.end_user) == ("alice", "ml", "hashed-key-1", "customer-7")
    assert event.tags == ("batch", "eval")
    assert (event.model, event.provider, event.usage) == ("gpt-4o-mini", "openai", MOCK_USAGE)
    assert event.reported_cost == Decimal(repr(response._hidden_params["response_cost"]))
    assert event.scope_keys() == (
        "global:*",
        "user:alice",
        "team:ml",
        "key:hashed-key-1",
        "end_user:customer-7",
        "tag:batch",
        "tag:eval",
    )
    assert current_cost_nanos() == GPT_4O_MINI_MOCK_NANOS
    assert not callback.dropped


def test_an_async_completion_publishes_its_event_with_cache_reads_at_litellms_cost(
    use_callbacks: Callable[..., None], callback: SpendLedgerCallback, publisher: MemoryPublisher
) -> None:
    use_callbacks(callback)

    async def call() -> Any:
        response = await litellm.acompletion(
            model="gpt-4o",
            messages=MESSAGES,
            mock_response=mock_with_usage("gpt-4o", 3_000, 400, cached=2_048),
            metadata={"user_api_key_team_id": "research", "user_api_key_end_user_id": "acme"},
            user="ignored-when-the-key-names-an-end-user",
        )
        await await_until(lambda: callback.published == 1, "the event to be published")
        return response

    response = run_async(call())
    [event] = publisher.events
    assert (event.event_id, event.team_id, event.end_user, event.user_id) == (response.id, "research", "acme", None)
    assert event.usage == TokenUsage(prompt_tokens=3_000, completion_tokens=400, cache_read_tokens=2_048)
    litellm_nanos = usd_to_nanos(Decimal(repr(response._hidden_params["response_cost"])))
    assert current_cost_nanos() == litellm_nanos  # gpt-4o: both price books agree, cache reads included


def test_a_streamed_call_is_charged_once_when_its_stream_ends(
    use_callbacks: Callable[..., None], callback: SpendLedgerCallback, publisher: MemoryPublisher
) -> None:
    use_callbacks(callback)
    request: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES, "mock_response": "one two three four"}
    chunks = list(litellm.completion(**request, stream=True))
    wait_until(lambda: callback.published == 1, "the sync stream's event")

    async def stream() -> None:
        async for _ in await litellm.acompletion(**request, stream=True):
            pass
        await await_until(lambda: callback.published == 2, "the async stream's event")

    run_async(stream())
    assert len(chunks) > 1
    sync_event, async_event = publisher.events
    assert sync_event.event_id != async_event.event_id
    assert sync_event.usage == async_event.usage  # LiteLLM counts a stream's tokens itself
    assert sync_event.usage is not None
    assert sync_event.usage.completion_tokens == 4
    litellm_nanos = sum(usd_to_nanos(event.reported_cost or Decimal(0)) for event in publisher.events)
    assert current_cost_nanos() == litellm_nanos > 0


def test_a_model_our_book_does_not_price_counts_at_litellms_reported_cost(
    use_callbacks: Callable[..., None], callback: SpendLedgerCallback, publisher: MemoryPublisher
) -> None:
    model = "spend-ledger-private-test-model"
    litellm.register_model(
        {
            model: {
                "input_cost_per_token": 1e-06,
                "output_cost_per_token": 2e-06,
                "litellm_provider": "openai",
                "mode": "chat",
            }
        }
    )
    try:
        use_callbacks(callback)
        response = litellm.completion(model=f"openai/{model}", messages=MESSAGES, mock_response="fine")
        wait_until(lambda: callback.published == 1, "the event to be published")
    finally:
        litellm.model_cost.pop(model, None)
    [event] = publisher.events
    assert event.reported_cost == Decimal(repr(response._hidden_params["response_cost"]))
    assert current_cost_nanos() == 10 * 1_000 + 20 * 2_000


@pytest.mark.parametrize("use_async", [False, True], ids=["completion", "acompletion"])
def test_a_failed_call_is_not_charged(
    use_callbacks: Callable[..., None],
    callback: SpendLedgerCallback,
    publisher: MemoryPublisher,
    recorder: Recorder,
    use_async: bool,
) -> None:
    use_callbacks(callback, recorder)
    request: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES, "mock_response": "litellm.RateLimitError"}

    async def acall() -> None:
        with pytest.raises(litellm.RateLimitError):
            await litellm.acompletion(**request)
        await await_until(lambda: recorder.failures, "LiteLLM to log the failure")

    if use_async:
        run_async(acall())
    else:
        with pytest.raises(litellm.RateLimitError):
            litellm.completion(**request)
        wait_until(lambda: recorder.failures, "LiteLLM to log the failure")

    assert callback.flush()
    assert publisher.events == []
    assert current_cost_nanos() == 0


def test_a_cache_hit_is_not_charged(
    use_callbacks: Callable[..., None], callback: SpendLedgerCallback, publisher: MemoryPublisher, recorder: Recorder
) -> None:
    use_callbacks(callback, recorder)
    litellm.cache = litellm.Cache(type="local")
    try:
        for _ in range(2):
            litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="fine", caching=True)
        wait_until(lambda: len(recorder.payloads) == 2, "LiteLLM to log both calls")
    finally:
        litellm.cache = None
    assert sorted(str(payload["cache_hit"]) for payload in recorder.payloads) == ["None", "True"]
    assert callback.flush()
    assert len(publisher.events) == 1
    assert callback.dropped == {"cache_hit": 1}
    assert current_cost_nanos() == GPT_4O_MINI_MOCK_NANOS


def test_a_payload_that_is_not_an_event_is_logged_and_counted_never_raised(
    use_callbacks: Callable[..., None],
    callback: SpendLedgerCallback,
    publisher: MemoryPublisher,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    use_callbacks(recorder)
    litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="fine")
    wait_until(lambda: recorder.payloads, "a real payload")
    negative = copy.deepcopy(recorder.payloads[0])
    negative["metadata"]["usage_object"]["prompt_tokens"] = -5
    no_id = copy.deepcopy(recorder.payloads[0])
    no_id["id"] = ""
    no_model = copy.deepcopy(recorder.payloads[0])
    no_model["model"] = no_model["model_group"] = ""

    caplog.set_level(logging.WARNING, logger=litellm_callback.__name__)
    for payload in (negative, no_id, no_model):
        callback.log_success_event({"standard_logging_object": payload}, None, None, None)
    callback.log_success_event({}, None, None, None)
    run_async(callback.async_log_success_event({"standard_logging_object": "not a payload"}, None, None, None))

    assert callback.dropped == {"invalid_payload": 4, "no_payload": 1}
    assert publisher.events == []
    assert current_cost_nanos() == 0
    said = caplog.text
    assert "usage.prompt_tokens: a token count cannot be negative" in said
    assert "id: the payload has no id" in said
    assert "model: String should have at least 1 character" in said
    assert "standard_logging_object: expected an object, got str" in said
    assert "SECRET-PROMPT" not in said


def test_an_event_the_transport_never_confirms_is_logged_as_an_error(
    use_callbacks: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    callback = SpendLedgerCallback(api_url=f"http://127.0.0.1:{free_port()}", publisher=RefusingPublisher())
    use_callbacks(callback)
    caplog.set_level(logging.ERROR, logger=litellm_callback.__name__)
    try:
        response = litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="fine")
        wait_until(lambda: callback.dropped["publish_failed"] == 1, "the publish to fail")
    finally:
        callback.close()
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == litellm_callback.__name__]
    assert f"usage event {response.id} (model gpt-4o-mini) was NOT published" in record.getMessage()
    assert "3 attempts" in record.getMessage()
    assert callback.published == 0
    assert current_cost_nanos() == GPT_4O_MINI_MOCK_NANOS  # the money was spent all the same


def test_calls_are_refused_before_the_provider_once_the_process_budget_is_exceeded(
    use_callbacks: Callable[..., None], callback: SpendLedgerCallback, publisher: MemoryPublisher, recorder: Recorder
) -> None:
    use_callbacks(callback, recorder)
    ledger.max_budget = "0.00001"  # 10,000 nanos
    litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="fine")
    wait_until(lambda: callback.published == 1, "the first call to be charged")
    assert current_cost_nanos() == GPT_4O_MINI_MOCK_NANOS
    calls_before = recorder.provider_calls

    with pytest.raises(BudgetExceededError) as refused:
        litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="fine")
    assert (refused.value.current_cost_nanos, refused.value.max_budget_nanos) == (GPT_4O_MINI_MOCK_NANOS, 10_000)
    assert str(refused.value) == "Budget has been exceeded! Current cost: 1.35e-05, Max budget: 1e-05"
    with pytest.raises(BudgetExceededError):
        run_async(litellm.acompletion(model="gpt-4o-mini", messages=MESSAGES, mock_response="fine"))
    with pytest.raises(BudgetExceededError):
        callback.check_call(model="gpt-4o-mini", messages=MESSAGES)

    assert recorder.provider_calls == calls_before
    assert callback.flush()
    assert len(publisher.events) == 1

    ledger.max_budget = "0.0001"  # raised: calls go ahead again
    litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="fine")
    wait_until(lambda: callback.published == 2, "the call after the raise to be charged")


def test_an_async_call_is_refused_by_the_deployment_hook_alone(
    use_callbacks: Callable[..., None],
    callback: SpendLedgerCallback,
    recorder: Recorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(litellm, "pre_call_rules", [])  # no help from the sync path's rule
    use_callbacks(callback, recorder)
    ledger.max_budget = 0
    record_cost(cost_nanos=1)
    with pytest.raises(BudgetExceededError):
        run_async(litellm.acompletion(model="gpt-4o-mini", messages=MESSAGES, mock_response="fine"))
    assert recorder.provider_calls == 0
    # Without the rule a sync call has no hook that can refuse it: check_call is the way.
    litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="fine")
    assert recorder.provider_calls == 1
    # LiteLLM runs sync success callbacks in its thread pool, with the callbacks registered
    # when they run: wait for them here, or they land in the next test's callbacks.
    wait_until(lambda: recorder.payloads, "LiteLLM to log the call")


def test_without_budget_checks_nothing_is_refused(use_callbacks: Callable[..., None], recorder: Recorder) -> None:
    publisher = MemoryPublisher()
    quiet = SpendLedgerCallback(check_budgets=False, publisher=publisher)
    use_callbacks(quiet, recorder)
    ledger.max_budget = 0
    record_cost(cost_nanos=1)

    async def acall() -> Any:
        response = await litellm.acompletion(model="gpt-4o-mini", messages=MESSAGES, mock_response="fine")
        await await_until(lambda: quiet.published >= 2, "both calls published")
        return response

    try:
        sync_response = litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="fine")
        async_response = run_async(acall())
        quiet.check_call(model="gpt-4o-mini", metadata={"user_api_key_team_id": "ml"})
    finally:
        quiet.close()
    assert recorder.provider_calls == 2
    assert sorted(event.event_id for event in publisher.events) == sorted([sync_response.id, async_response.id])


def test_the_proxy_hook_refuses_over_the_process_budget_as_the_proxy_refuses_its_own(
    callback: SpendLedgerCallback,
) -> None:
    ledger.max_budget = 0
    record_cost(cost_nanos=1)
    key = UserAPIKeyAuth(api_key="sk-proxy-test-key", team_id="ml")
    with pytest.raises(BudgetExceededError) as refused:
        run_async(
            callback.async_pre_call_hook(
                user_api_key_dict=key, cache=DualCache(), data={"model": "gpt-4o-mini"}, call_type="completion"
            )
        )
    assert (getattr(refused.value, "status_code", None), getattr(refused.value, "type", None)) == (
        400,
        "budget_exceeded",
    )


def test_a_scope_check_the_api_cannot_answer_lets_the_call_go_unless_told_to_refuse(
    callback: SpendLedgerCallback, caplog: pytest.LogCaptureFixture
) -> None:
    key = UserAPIKeyAuth(api_key="sk-proxy-test-key", team_id="ml")
    request = {"user_api_key_dict": key, "cache": DualCache(), "data": {"model": "gpt-4o"}, "call_type": "completion"}
    caplog.set_level(logging.WARNING, logger=litellm_callback.__name__)
    assert run_async(callback.async_pre_call_hook(**request)) is None
    assert "budgets not checked, the call goes ahead" in caplog.text

    strict = SpendLedgerCallback(api_url=callback.api_url, refuse_if_unreachable=True, publisher=MemoryPublisher())
    try:
        with pytest.raises(LedgerConnectionError):
            run_async(strict.async_pre_call_hook(**request))
        with pytest.raises(LedgerConnectionError):
            strict.check_call(model="gpt-4o", metadata={"user_api_key_team_id": "ml"})
    finally:
        strict.close()


def test_scopes_of_an_sdk_call_come_from_litellms_metadata_keys_and_user() -> None:
    call = {"model": "openai/gpt-4o-mini", "messages": MESSAGES, "user": "customer-7", "metadata": SCOPED_METADATA}
    assert scopes_of_call(call) == CallScopes(
        user="alice", team="ml", key="hashed-key-1", end_user="customer-7", tags=("batch", "eval"), model="gpt-4o-mini"
    )
    named_end_user = {**call, "metadata": {"user_api_key_end_user_id": "acme"}}
    assert scopes_of_call(named_end_user).end_user == "acme"
    assert not scopes_of_call({"model": "gpt-4o", "metadata": {"tags": "not-a-list", "user_api_key_team_id": ""}}).named


def test_scopes_of_a_proxy_request_come_from_the_authenticated_key() -> None:
    key = UserAPIKeyAuth(api_key="sk-proxy-test-key", user_id="bob", team_id="ml", end_user_id="acme")
    data = {"model": "gpt-4o", "user": "someone-else", "metadata": {"tags": ["prod"], "user_api_key_team_id": "other"}}
    scopes = scopes_of_proxy_request(key, data)
    assert scopes == CallScopes(user="bob", team="ml", key=key.api_key, end_user="acme", tags=("prod",), model="gpt-4o")
    assert scopes.key != "sk-proxy-test-key"  # the proxy's hash of the key, as its logging payload has it


def test_litellms_user_agent_tags_are_left_out_of_the_scopes_unless_kept() -> None:
    # what LiteLLM 1.97 adds for the openai client (StandardLoggingPayloadSetup._get_user_agent_tags)
    litellm_tags = ["User-Agent: OpenAI", "User-Agent: OpenAI/Python 2.54.0"]
    assert all(is_user_agent_tag(tag) for tag in [*litellm_tags, "user-agent:curl/8.5.0", " User-Agent: x"])
    assert not any(is_user_agent_tag(tag) for tag in ["prod", "agent:build", "User-Agents", "x-user-agent: y"])
    assert request_tags(["prod", *litellm_tags, "prod", ""]) == ("prod",)
    assert request_tags(["prod", *litellm_tags], keep_user_agent_tags=True) == ("prod", *litellm_tags)
    payload = {"id": "call-1", "request_tags": ["batch", *litellm_tags]}
    assert payload_with_request_tags(payload) == {"id": "call-1", "request_tags": ["batch"]}
    assert payload_with_request_tags(payload, keep_user_agent_tags=True) is payload
    call = {"model": "gpt-4o", "metadata": {"tags": ["batch", "User-Agent: OpenAI"]}}
    assert scopes_of_call(call).tags == ("batch",)
    assert scopes_of_proxy_request(UserAPIKeyAuth(), call, keep_user_agent_tags=True).tags == (
        "batch",
        "User-Agent: OpenAI",
    )


def test_a_proxy_deployments_provider_prefix_is_dropped_from_the_events_model() -> None:
    # the LiteLLM proxy logs a deployment's model as its config names it (openai/gpt-4o-mini)
    payload = {"model": "openai/gpt-4o-mini", "custom_llm_provider": "openai", "model_group": "team-gpt"}
    assert payload_with_bare_model(payload) == {**payload, "model": "gpt-4o-mini"}
    for kept in (
        {"model": "gpt-4o-mini", "custom_llm_provider": "openai"},
        {"model": "openrouter/openai/gpt-4o", "custom_llm_provider": "openrouter/x"},
        {"model": "azure/gpt-4o-eu"},
    ):
        assert payload_with_bare_model(kept) is kept


def test_a_proxy_requests_user_agent_tags_are_not_charged_by_default(
    use_callbacks: Callable[..., None], publisher: MemoryPublisher
) -> None:
    dropping = SpendLedgerCallback(api_url="http://127.0.0.1:9", check_budgets=False, publisher=publisher)
    keeping = SpendLedgerCallback(
        check_budgets=False,
        publisher=publisher,
        settings=Settings(api_url="http://127.0.0.1:9", litellm_keep_user_agent_tags=True),
    )
    request = {"headers": {"user-agent": "OpenAI/Python 2.54.0"}, "body": {}}
    try:
        for callback in (dropping, keeping):
            litellm.logging_callback_manager._reset_all_callbacks()  # LiteLLM skips a second instance of a type
            use_callbacks(callback)
            litellm.completion(
                model="gpt-4o-mini",
                messages=MESSAGES,
                mock_response="fine",
                metadata={"tags": ["batch"]},
                proxy_server_request=request,  # LiteLLM adds its User-Agent tags from this request's headers
            )
            wait_until(lambda callback=callback: callback.published == 1, "the event to be published")
    finally:
        dropping.close()
        keeping.close()
    assert not dropping.keeps_user_agent_tags()
    assert keeping.keeps_user_agent_tags()
    assert [event.tags for event in publisher.events] == [
        ("batch",),
        ("batch", "User-Agent: OpenAI", "User-Agent: OpenAI/Python 2.54.0"),
    ]


def test_a_proxy_config_names_the_module_instance_by_its_dotted_path() -> None:
    instance = get_instance_fn("ledger.integrations.litellm_callback.proxy_handler_instance")
    assert instance is litellm_callback.proxy_handler_instance
    assert isinstance(instance, SpendLedgerCallback)
    assert (instance.transport, instance.check_budgets) == ("http", True)


def test_importing_the_callback_without_litellm_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "litellm", None)  # as if litellm were not installed
    monkeypatch.delitem(sys.modules, litellm_callback.__name__)
    with pytest.raises(ImportError, match=r"pip install 'spend-ledger\[litellm\]'"):
        importlib.import_module(litellm_callback.__name__)


def test_a_transport_other_than_http_or_kafka_is_refused() -> None:
    with pytest.raises(ValueError, match="transport must be 'http' or 'kafka'"):
        SpendLedgerCallback(transport="smtp")  # type: ignore[arg-type]
