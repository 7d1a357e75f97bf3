"""A LiteLLM callback that publishes one usage event per successful call and can refuse a
call before it is made when a budget is exceeded. On a LiteLLM proxy it admits each request
(DESIGN section 10): the request's estimated cost is held on its budgets and its tokens on
the key's share of the model's TPM/RPM until its usage event settles the hold, so
concurrent requests cannot overspend a budget, and keys share a model's capacity.

Enable it with one line::

    litellm.callbacks = [SpendLedgerCallback()]

or, on a LiteLLM proxy, in ``config.yaml``::

    litellm_settings:
      callbacks: ledger.integrations.litellm_callback.proxy_handler_instance

The proxy resolves that string with ``get_instance_fn``: ``importlib.import_module`` of
everything before the last dot, then ``getattr`` of the last part, so the dotted path works
wherever ``spend-ledger`` is installed next to the proxy.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import threading
import uuid
from collections import Counter, OrderedDict
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from pydantic import ValidationError

try:
    import litellm
    from litellm.integrations.custom_logger import CustomLogger
except ImportError as exc:  # pragma: no cover - exercised by a test that hides litellm
    raise ImportError(
        f"ledger.integrations.litellm_callback needs litellm ({exc}): pip install 'spend-ledger[litellm]'"
    ) from exc

from ledger.client import (
    Admitted,
    AsyncLedgerClient,
    BudgetRefused,
    LedgerApiError,
    LedgerClient,
    LedgerClientError,
    LedgerConnectionError,
    RateLimited,
)
from ledger.client.calls import key_of
from ledger.domain.errors import InvalidUsage, UnpricedModel
from ledger.domain.events import UsageEvent
from ledger.domain.money import usd_to_nanos
from ledger.domain.pricing import price_event
from ledger.domain.usage_shapes import as_mapping, event_from_litellm_payload
from ledger.integrations.litellm_requests import (
    CallScopes,
    ProxyBudgetExceededError,
    admission_max_tokens,
    admission_messages,
    deployment_models,
    key_priority,
    payload_with_bare_model,
    payload_with_call_user,
    payload_with_request_tags,
    proxy_budget_error,
    proxy_rate_limit_error,
    proxy_router,
    proxy_unpriced_error,
    scopes_of_call,
    scopes_of_proxy_request,
    text_of,
)
from ledger.pricebooks.genai import genai_prices_book
from ledger.sdk.admission import budget_error
from ledger.sdk.guard import BudgetExceededError, check_process_budget, guard, record_cost
from ledger.sdk.producer import HttpUsagePublisher, Published, SpendLedgerProducer
from ledger.settings import Settings
from ledger.tokenizer import count_tokens

log = logging.getLogger(__name__)

Transport = Literal["http", "kafka"]
T = TypeVar("T")

# Limits. LiteLLM gives an async success callback 20 s (LOGGING_WORKER_MAX_TIME_PER_COROUTINE);
# a publish that outlives it is shielded and still finishes, and is logged either way.
PUBLISH_ATTEMPTS_MAX = 3  # sends of one event, all with the same event_id
PUBLISH_REQUEST_TIMEOUT_S = 5.0  # one api request or one broker acknowledgement
PUBLISH_WAIT_S = 20.0  # the sync success callback waits this long for its publish
CHECK_TIMEOUT_S = 5.0  # one /v1/check, /v1/admit or release request
FLUSH_AT_EXIT_S = 10.0
RECENT_EVENT_IDS_MAX = 10_000  # an id LiteLLM reports twice is charged once
ADMITTED_CALLS_MAX = 100_000  # calls this process admitted, remembered until their success or failure


@dataclass(slots=True)
class _AdmittedCall:
    """A call this callback admitted: its model group (the proxy request's ``model``),
    whether its hold was released, and the id of the first response charged under it (a
    second, different response is another call that reused the ``litellm_call_id``, and is
    charged under its own id)."""

    model_group: str | None = None
    released: bool = False
    response_id: str | None = None


def _reason(exc: InvalidUsage | ValidationError) -> str:
    """Why a payload is not an event: field and message, never the input values."""
    if isinstance(exc, InvalidUsage):
        return str(exc)
    first = exc.errors(include_input=False, include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or "payload"
    more = f" (and {exc.error_count() - 1} more errors)" if exc.error_count() > 1 else ""
    return f"{field}: {first['msg']}{more}"


class UsagePublisher(Protocol):
    """What the callback publishes through: ``HttpUsagePublisher``, Kafka, or a test double."""

    async def publish(self, events: Sequence[UsageEvent]) -> Published: ...

    async def close(self) -> None: ...


class _KafkaPublisher:
    """``SpendLedgerProducer``, connected on first use (and again after a failed connect)."""

    def __init__(self, settings: Settings) -> None:
        self._producer = SpendLedgerProducer(
            settings,
            request_timeout_ms=int(PUBLISH_REQUEST_TIMEOUT_S * 1000),
            attempts_max=PUBLISH_ATTEMPTS_MAX,
        )
        self._starting = asyncio.Lock()  # concurrent first publishes must not each connect

    async def publish(self, events: Sequence[UsageEvent]) -> Published:
        async with self._starting:
            await self._producer.start()
        return await self._producer.publish(events)

    async def close(self) -> None:
        await self._producer.stop()


class _PublishLoop:
    """An event loop in a daemon thread of its own, started on first use. Every publish
    runs here, so neither LiteLLM's thread pool nor the caller's event loop waits on I/O
    they do not own, and the publisher's connections live on one loop."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pending: set[concurrent.futures.Future[Any]] = set()

    def submit(self, work: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            future = asyncio.run_coroutine_threadsafe(work, self._loop)
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)

    def wait(self, timeout_s: float) -> int:
        """Wait for every submitted publish (and admit or release); returns how many are still running."""
        with self._lock:
            pending = list(self._pending)
        _, not_done = concurrent.futures.wait(pending, timeout=timeout_s)
        return len(not_done)

    def stop(self, last: Coroutine[Any, Any, None], timeout_s: float) -> None:
        """Run ``last`` (closing the publisher), then end the loop and its thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            last.close()
            return
        try:
            asyncio.run_coroutine_threadsafe(last, loop).result(timeout_s)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout_s)
            if not thread.is_alive():
                loop.close()


class SpendLedgerCallback(CustomLogger):  # type: ignore[misc]
    """Publishes a ``UsageEvent`` per successful LiteLLM call (``litellm.completion`` and
    ``litellm.acompletion``, streaming or not), built from LiteLLM's standard logging
    payload; failed calls and cache hits are not charged. Each event's cost (our price
    book, else LiteLLM's ``response_cost``) is added to ``ledger.current_cost()``.

    Scopes: user, team and key from the call's ``metadata`` keys ``user_api_key_user_id``,
    ``user_api_key_team_id`` and ``user_api_key_hash`` (what the LiteLLM proxy sets), end
    user from ``metadata.user_api_key_end_user_id`` or the call's ``user`` argument, tags
    from ``metadata.tags`` (the payload's ``request_tags``). The tags LiteLLM adds from a
    proxy request's User-Agent header (``User-Agent: OpenAI/Python 2.54.0``) are left out
    unless ``keep_user_agent_tags`` (default ``SPEND_LEDGER_LITELLM_KEEP_USER_AGENT_TAGS``)::

        litellm.completion(model="gpt-4o-mini", messages=[...], user="customer-7",
                           metadata={"user_api_key_team_id": "ml", "tags": ["batch"]})

    With ``check_budgets``, a call is refused (``BudgetExceededError``) before it is made
    when ``ledger.max_budget`` is exceeded, or when any scope it names is over budget by
    the api's ``/v1/check``: for ``acompletion`` (and every other async SDK call) in
    ``async_pre_call_deployment_hook``, on the proxy in ``async_pre_call_hook``. LiteLLM
    1.97 runs no hook before a sync ``litellm.completion`` that may raise (it swallows
    ``log_pre_api_call`` errors), so sync calls get the ``ledger.max_budget`` check through
    ``litellm.pre_call_rules``, and scope checks by calling ``check_call(**kwargs)`` first.
    When the api cannot answer a check the call goes ahead (logged) unless
    ``refuse_if_unreachable``.

    With ``admission`` (default, with ``check_budgets``) the proxy's ``async_pre_call_hook``
    admits instead of checking (``POST /v1/admit``): the request id is LiteLLM's
    ``litellm_call_id`` (set in the hook when the proxy has not), the scopes are the
    key's, the estimate is the request's messages and ``max_tokens`` (or
    ``max_completion_tokens``), the priority the key's ``metadata.priority``. A 402 raises
    ``ProxyBudgetExceededError`` (LiteLLM's ``BudgetExceededError``), a 429 LiteLLM's
    ``ProxyRateLimitError`` with ``retry-after``, as its dynamic rate limiter does. The
    request's ``model`` is a model group (often an alias): rate shares count on it, and the
    estimate is priced as its deployments' models, read from the proxy's router (``router``,
    default the proxy's ``llm_router``), the dearest. A model the api cannot price (and no
    ``SPEND_LEDGER_ADMISSION_UNPRICED_ESTIMATE_USD`` fallback) is refused with LiteLLM's
    ``ProxyException`` (400 ``unpriced_model``), never run unheld. The admitted call's usage
    event carries the ``litellm_call_id`` as its event id and the group as ``model_group``,
    and settles the hold; a failed call (``async_log_failure_event``, or the proxy's
    ``async_post_call_failure_hook``) and a cache hit release it. If the api cannot admit
    for another reason (a priority it does not know), the request is checked instead.

    Publishing goes over HTTP (``POST /v1/usage``, default) or to Kafka, from a thread of
    the callback's own, with ``PUBLISH_ATTEMPTS_MAX`` sends that reuse the event id (a
    retry never charges twice). A payload that is not an event is logged and counted in
    ``dropped``; an event still unpublished after every attempt is logged as an error and
    counted too. Neither ever raises into the LiteLLM call.
    """

    def __init__(
        self,
        *,
        api_url: str | None = None,
        key: str | None = None,
        transport: Transport = "http",
        check_budgets: bool = True,
        admission: bool = True,
        refuse_if_unreachable: bool = False,
        settings: Settings | None = None,
        publisher: UsagePublisher | None = None,
        publish_wait_s: float = PUBLISH_WAIT_S,
        router: Any = None,
        keep_user_agent_tags: bool | None = None,
    ) -> None:
        """``api_url`` and ``key`` default to ``SPEND_LEDGER_API_URL`` and the master (else
        ingest) key; Kafka uses ``SPEND_LEDGER_KAFKA_*`` and the topic prefix. Settings are
        read on first use. ``publisher`` replaces the transport (tests, custom sinks);
        ``router`` is the LiteLLM ``Router`` whose model groups proxy requests name (default:
        the running proxy's ``llm_router``). ``keep_user_agent_tags`` None reads the setting."""
        super().__init__()
        if transport not in ("http", "kafka"):
            raise ValueError(f"transport must be 'http' or 'kafka', got {transport!r}")
        self.api_url = api_url
        self.transport: Transport = transport
        self.check_budgets = check_budgets
        self.admission = admission
        self.refuse_if_unreachable = refuse_if_unreachable
        self.publish_wait_s = publish_wait_s
        self.dropped: Counter[str] = Counter()
        self._published = 0  # private: LiteLLM tells callback instances apart by public str/bool/int fields
        self._key = key
        self._settings = settings
        self._given_publisher = publisher
        self._router = router
        self._keep_user_agent_tags = keep_user_agent_tags
        self._publisher = publisher
        self._client: LedgerClient | None = None
        self._admission_client: AsyncLedgerClient | None = None  # lives on the publish loop
        self._lock = threading.Lock()
        self._recent_ids: OrderedDict[str, None] = OrderedDict()
        self._admitted: OrderedDict[str, _AdmittedCall] = OrderedDict()  # by litellm_call_id
        self._loop = _PublishLoop("spend-ledger-litellm")
        self._exit_flush_registered = False
        if check_budgets:
            _install_process_budget_rule()

    @property
    def published(self) -> int:
        """Events the transport confirmed."""
        with self._lock:
            return self._published

    # --- settings and clients -------------------------------------------------------

    def settings(self) -> Settings:
        """The settings in use (from the environment unless given)."""
        with self._lock:
            if self._settings is None:
                self._settings = Settings()
            return self._settings

    def keeps_user_agent_tags(self) -> bool:
        """Whether LiteLLM's User-Agent tags become tag scopes (the option, else the setting)."""
        if self._keep_user_agent_tags is not None:
            return self._keep_user_agent_tags
        return self.settings().litellm_keep_user_agent_tags

    def _api(self) -> tuple[str, str | None]:
        settings = self.settings()
        return self.api_url or settings.api_url, self._key if self._key is not None else key_of(settings)

    def _ledger_client(self) -> LedgerClient:
        url, key = self._api()
        with self._lock:
            if self._client is None:
                self._client = LedgerClient(url, key, CHECK_TIMEOUT_S)
            return self._client

    def _admission_client_now(self) -> AsyncLedgerClient:
        """Runs on the publish loop, so the client's connections live on that loop."""
        if self._admission_client is None:
            url, key = self._api()
            self._admission_client = AsyncLedgerClient(url, key, CHECK_TIMEOUT_S)
        return self._admission_client

    def _publisher_now(self) -> UsagePublisher:
        """Runs on the publish loop, so an HTTP client is bound to that loop."""
        if self._publisher is None:
            if self.transport == "kafka":
                self._publisher = _KafkaPublisher(self.settings())
            else:
                url, key = self._api()
                self._publisher = HttpUsagePublisher(
                    url, key, timeout_s=PUBLISH_REQUEST_TIMEOUT_S, attempts_max=PUBLISH_ATTEMPTS_MAX
                )
        return self._publisher

    # --- budget checks before a call ------------------------------------------------

    def check_call(self, **call: Any) -> None:
        """Raise ``BudgetExceededError`` if a call with these ``litellm.completion`` keyword
        arguments may not go ahead (sync calls: LiteLLM has no hook that can refuse them)."""
        self._check(scopes_of_call(call, self.keeps_user_agent_tags()))

    def _check(self, scopes: CallScopes) -> None:
        if not self.check_budgets:
            return
        if not scopes.named:
            check_process_budget()
            return
        try:
            guard(
                user=scopes.user,
                team=scopes.team,
                key=scopes.key,
                end_user=scopes.end_user,
                tags=scopes.tags,
                model=scopes.model,
                client=self._ledger_client(),
            )
        except LedgerClientError as exc:
            if self.refuse_if_unreachable:
                raise
            log.warning("spend-ledger: budgets not checked, the call goes ahead: %s", exc)

    async def _acheck(self, scopes: CallScopes) -> None:
        if not self.check_budgets:
            return
        if not scopes.named:
            check_process_budget()
            return
        await asyncio.to_thread(self._check, scopes)

    async def async_pre_call_deployment_hook(self, kwargs: dict[str, Any], call_type: Any) -> dict[str, Any] | None:
        """LiteLLM runs this in every async SDK call before the provider call, and lets
        what it raises reach the caller. Proxy requests were checked in ``async_pre_call_hook``."""
        if kwargs.get("proxy_server_request") is None:
            await self._acheck(scopes_of_call(kwargs, self.keeps_user_agent_tags()))
        return None

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any] | None:
        """The LiteLLM proxy's pre-call hook: admit the request (hold its estimate), or
        without ``admission`` check it; refuse it, as the proxy refuses with its own errors,
        when its key, user, team, end user or tags are over budget or the key's rate share
        of the model is used up."""
        scopes = scopes_of_proxy_request(user_api_key_dict, data, self.keeps_user_agent_tags())
        try:
            if self.admission and self.check_budgets and scopes.model is not None:
                check_process_budget()
                await self._admit(scopes, data, key_priority(user_api_key_dict))
            else:
                await self._acheck(scopes)
        except BudgetExceededError as exc:
            raise proxy_budget_error(exc) from exc
        return None

    async def _admit(self, scopes: CallScopes, data: dict[str, Any], priority: str | None) -> None:
        assert scopes.model is not None
        request_id = text_of(data.get("litellm_call_id"))
        if request_id is None:  # LiteLLM's proxy sets one before the hooks; the success payload carries it
            request_id = str(uuid.uuid4())
            data["litellm_call_id"] = request_id
        group = text_of(data.get("model"))
        router = self._router if self._router is not None else proxy_router()
        models = deployment_models(router, group) if group is not None else ()
        work = self._admit_on_loop(
            request_id, scopes, group, models, priority, admission_messages(data), admission_max_tokens(data)
        )
        try:
            admitted = await asyncio.wrap_future(self._loop.submit(work))
        except BudgetRefused as exc:
            raise budget_error(exc) from exc
        except RateLimited as exc:
            raise proxy_rate_limit_error(exc, data.get("model")) from exc
        except LedgerConnectionError as exc:
            if self.refuse_if_unreachable:
                raise
            log.warning("spend-ledger: budgets not checked, the call goes ahead: %s", exc)
            return
        except LedgerApiError as exc:
            if exc.type == "unpriced_model":  # it cannot be held: never run unheld
                raise proxy_unpriced_error(exc) from exc
            log.warning("spend-ledger: call %s not admitted (%s); its budgets are checked instead", request_id, exc)
            await self._acheck(scopes)
            return
        if admitted.repeated:  # a client reused x-litellm-call-id while its first call is held
            log.warning("spend-ledger: call id %s is already held; this request is checked instead", request_id)
            await self._acheck(scopes)
            return
        with self._lock:
            self._admitted[request_id] = _AdmittedCall(model_group=group)
            if len(self._admitted) > ADMITTED_CALLS_MAX:
                self._admitted.popitem(last=False)

    async def _admit_on_loop(
        self,
        request_id: str,
        scopes: CallScopes,
        group: str | None,
        models: tuple[str, ...],
        priority: str | None,
        messages: list[dict[str, str]] | None,
        max_tokens: int | None,
    ) -> Admitted:
        """Admit as the group's deployment ``models`` when the router named them, else as
        the request's model (the api then uses the group's recorded models)."""
        assert scopes.model is not None
        return await self._admission_client_now().admit(
            request_id,
            None if models else scopes.model,
            model_group=group,
            models=models or None,
            user=scopes.user,
            team=scopes.team,
            key=scopes.key,
            end_user=scopes.end_user,
            tags=scopes.tags,
            priority=priority,
            messages=messages,
            max_tokens=max_tokens,
        )

    def _admitted_call_id(self, kwargs: Mapping[str, Any], payload: Mapping[str, Any] | None) -> str | None:
        """The call's ``litellm_call_id`` if this callback admitted it, else None."""
        call_id = text_of(payload.get("litellm_call_id")) if payload is not None else None
        call_id = call_id or text_of(kwargs.get("litellm_call_id"))
        with self._lock:
            return call_id if call_id is not None and call_id in self._admitted else None

    def _with_settling_id(self, call_id: str, payload: Mapping[str, Any]) -> Mapping[str, Any]:
        """An admitted call's payload with the call id as its ``id``, so that its event
        settles the hold (LiteLLM's repeat reports of the same response too). Another
        response under the same call id, from a client that reused ``x-litellm-call-id``,
        keeps its own id and is charged on its own."""
        response_id = text_of(payload.get("id"))
        with self._lock:
            call = self._admitted.get(call_id)
            if call is not None and call.response_id is None:
                call.response_id = response_id
            first = call is not None and call.response_id == response_id
        if not first:
            log.warning("spend-ledger: call id %s was reused by another call, charged as %s", call_id, response_id)
            return payload
        return {**payload, "id": call_id}

    def _with_model_group(self, call_id: str, payload: Mapping[str, Any]) -> Mapping[str, Any]:
        """The payload with ``model_group`` from the admitted request's ``model`` when
        LiteLLM left it empty (a call the proxy made without its router)."""
        with self._lock:
            call = self._admitted.get(call_id)
            group = None if call is None else call.model_group
        if group is None or text_of(payload.get("model_group")) is not None:
            return payload
        return {**payload, "model_group": group}

    def _release_soon(self, call_id: str | None) -> concurrent.futures.Future[None] | None:
        """Release the hold of an admitted call once (on the publish loop); None if there is none."""
        if call_id is None:
            return None
        with self._lock:
            call = self._admitted.get(call_id)
            if call is None or call.released:
                return None
            call.released = True
        return self._loop.submit(self._release(call_id))

    async def _release(self, call_id: str) -> None:
        try:
            await self._admission_client_now().release(call_id)
        except LedgerApiError as exc:
            if exc.status in (404, 409):  # settled or expired already
                log.debug("spend-ledger: hold %s already ended: %s", call_id, exc)
            else:
                log.warning("spend-ledger: hold %s not released (it expires on its own): %s", call_id, exc)
        except Exception as exc:  # reported here: a callback must never raise into LiteLLM
            log.warning("spend-ledger: hold %s not released (it expires on its own): %r", call_id, exc)

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """A failed call frees the budget and rate share its admission held."""
        try:
            payload = kwargs.get("standard_logging_object")
            mapping = as_mapping(payload, "standard_logging_object") if payload is not None else None
            future = self._release_soon(self._admitted_call_id(kwargs, mapping))
        except Exception as exc:  # a callback must never raise into the user's LiteLLM call
            log.warning("spend-ledger: a failed call's hold not released: %r", exc)
            return
        if future is not None:
            await asyncio.shield(asyncio.wrap_future(future))

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> None:
        """The proxy gave up on a request (a later hook refused it, or the call failed):
        release its hold, if this callback admitted it. The error is left as it is."""
        future = self._release_soon(self._admitted_call_id(request_data, None))
        if future is not None:
            await asyncio.shield(asyncio.wrap_future(future))

    # --- usage after a call ---------------------------------------------------------

    def log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        """Sync calls (LiteLLM runs this in its thread pool): publish and wait, bounded."""
        event = self._event_of(kwargs)
        if event is None:
            return
        future = self._loop.submit(self._charge(event))
        self._flush_at_exit()
        try:
            future.result(self.publish_wait_s)
        except concurrent.futures.TimeoutError:
            log.warning("spend-ledger: event %s still publishing after %s s", event.event_id, self.publish_wait_s)

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Async calls: publish on the callback's own thread; the caller's loop only awaits."""
        event = self._event_of(kwargs)
        if event is None:
            return
        future = self._loop.submit(self._charge(event))
        self._flush_at_exit()
        # LiteLLM cancels a logging task after 20 s; the publish itself carries on and reports.
        await asyncio.shield(asyncio.wrap_future(future))

    def _event_of(self, kwargs: Mapping[str, Any]) -> UsageEvent | None:
        """The call's event, or None (counted, and logged without the payload's content)."""
        try:
            payload = kwargs.get("standard_logging_object")
            if payload is None:
                self._drop("no_payload", None, "LiteLLM sent no standard_logging_object")
                return None
            try:
                payload = as_mapping(payload, "standard_logging_object")
                admitted_id = self._admitted_call_id(kwargs, payload)
                if payload.get("cache_hit") is True:
                    with self._lock:
                        self.dropped["cache_hit"] += 1
                    self._release_soon(admitted_id)  # nothing was spent
                    return None
                if admitted_id is not None:
                    payload = self._with_settling_id(admitted_id, payload)
                    payload = self._with_model_group(admitted_id, payload)
                payload = payload_with_request_tags(payload_with_bare_model(payload), self.keeps_user_agent_tags())
                event = event_from_litellm_payload(payload_with_call_user(payload))
            except (InvalidUsage, ValidationError) as exc:
                event_id = text_of(payload.get("id")) if isinstance(payload, Mapping) else None
                self._drop("invalid_payload", event_id, _reason(exc))
                return None
            with self._lock:
                if event.event_id in self._recent_ids:
                    self.dropped["duplicate"] += 1
                    return None
                self._recent_ids[event.event_id] = None
                if len(self._recent_ids) > RECENT_EVENT_IDS_MAX:
                    self._recent_ids.popitem(last=False)
            return event
        except Exception as exc:  # a callback must never raise into the user's LiteLLM call
            self._drop("callback_error", None, f"{type(exc).__name__}: {exc}")
            return None

    def _drop(self, reason: str, event_id: str | None, detail: str) -> None:
        with self._lock:
            self.dropped[reason] += 1
        which = f"call {event_id}" if event_id else "a call"
        log.warning("spend-ledger: %s not charged (%s): %s", which, reason, detail)

    async def _charge(self, event: UsageEvent) -> None:
        """Add the event's cost to this process's total (the money is spent whether or not
        the ledger hears of it), then publish it. Runs on the publish loop."""
        cost_nanos = self._cost_nanos(event)
        if cost_nanos is not None:
            record_cost(cost_nanos=cost_nanos)
        try:
            await self._publisher_now().publish([event])
        except Exception as exc:  # reported here: nobody awaits this to the end
            with self._lock:
                self.dropped["publish_failed"] += 1
            log.error(
                "spend-ledger: usage event %s (model %s) was NOT published and is not in the ledger: %r",
                event.event_id,
                event.model,
                exc,
            )
            return
        with self._lock:
            self._published += 1

    def _cost_nanos(self, event: UsageEvent) -> int | None:
        """Our price of the event, else LiteLLM's reported cost, else None (logged)."""
        try:
            return price_event(event, genai_prices_book(), count_tokens=count_tokens).cost_nanos
        except (UnpricedModel, InvalidUsage) as exc:
            if event.reported_cost is not None:
                return usd_to_nanos(event.reported_cost)
            log.warning("spend-ledger: %s is not in this process's current_cost: %s", event.event_id, exc)
            return None

    # --- lifecycle ------------------------------------------------------------------

    def _flush_at_exit(self) -> None:
        with self._lock:
            if self._exit_flush_registered:
                return
            self._exit_flush_registered = True
        atexit.register(self.flush, FLUSH_AT_EXIT_S)

    def flush(self, timeout_s: float = PUBLISH_WAIT_S) -> bool:
        """Wait until every event handed to the callback so far is published or given up
        on; False if some were still being sent at ``timeout_s``."""
        return self._loop.wait(timeout_s) == 0

    def close(self, timeout_s: float = PUBLISH_WAIT_S) -> None:
        """Flush, then close the publisher and the api clients (a later call reopens them)."""
        self.flush(timeout_s)
        publisher, self._publisher = self._publisher, self._given_publisher
        admission_client, self._admission_client = self._admission_client, None
        self._loop.stop(_close(publisher, admission_client), timeout_s)
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


async def _close(publisher: UsagePublisher | None, admission_client: AsyncLedgerClient | None) -> None:
    if publisher is not None:
        await publisher.close()
    if admission_client is not None:
        await admission_client.close()


def _process_budget_rule(_input: str) -> bool:
    """A ``litellm.pre_call_rules`` entry: raises ``BudgetExceededError`` over
    ``ledger.max_budget`` while a checking ``SpendLedgerCallback`` is registered."""
    if any(isinstance(cb, SpendLedgerCallback) and cb.check_budgets for cb in litellm.callbacks):
        check_process_budget()
    return True


def _install_process_budget_rule() -> None:
    if _process_budget_rule not in litellm.pre_call_rules:
        litellm.pre_call_rules.append(_process_budget_rule)


# For a LiteLLM proxy config: ``callbacks: ledger.integrations.litellm_callback.proxy_handler_instance``
proxy_handler_instance = SpendLedgerCallback()

__all__ = [
    "CallScopes",
    "ProxyBudgetExceededError",
    "SpendLedgerCallback",
    "UsagePublisher",
    "admission_max_tokens",
    "admission_messages",
    "key_priority",
    "payload_with_call_user",
    "payload_with_request_tags",
    "proxy_budget_error",
    "proxy_handler_instance",
    "proxy_rate_limit_error",
    "scopes_of_call",
    "scopes_of_proxy_request",
]
