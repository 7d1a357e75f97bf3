"""Admission from Python (DESIGN section 10): hold a call's estimated cost and its share of
the model's TPM/RPM before making it, so concurrent callers cannot all spend the same room.

    async with ledger.admission(model="gpt-4o-mini", team="ml", messages=messages, max_tokens=500) as hold:
        response = await litellm.acompletion(model="gpt-4o-mini", messages=messages, max_tokens=500)
        await hold.settle(response)

Entering admits (``POST /v1/admit``) or raises ``BudgetExceededError`` (402) or
``RateLimitExceededError`` (429); nothing is held then. What happens to the hold after:

- ``hold.settle(response)`` publishes the call's usage event, with ``event_id`` equal to
  the request id, through ``POST /v1/usage``; the ledger charges it and the actual cost
  replaces the estimate. A failed settle raises and may be called again: the same event
  id is charged once.
- The block raises before ``settle`` was called: the call failed or was not made, so the
  hold is released (``DELETE /v1/admit/{id}``) and the exception goes on.
- The block ends without ``settle``: the hold stays open, because the call may have been
  made and spent money. It settles when a usage event with ``event_id == hold.request_id``
  arrives (publish one yourself with ``publish_usage``), else it expires after the api's
  ``admission_ttl`` (10 minutes by default) and frees the estimate then.
- ``hold.release()`` frees the hold by hand (you decided not to make the call).

``admission_sync`` is the same without asyncio.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from ledger.client import (
    Admitted,
    AsyncLedgerClient,
    BudgetRefused,
    LedgerClient,
    LedgerClientError,
    RateLimited,
)
from ledger.client.admission_calls import ScopeRoomInfo
from ledger.domain.errors import InvalidUsage
from ledger.domain.events import TokenUsage, UsageEvent
from ledger.domain.money import nanos_to_usd
from ledger.domain.usage_shapes import as_mapping, usage_from_openai
from ledger.sdk.guard import BudgetExceededError, Money, money_nanos

log = logging.getLogger(__name__)

HoldState = Literal["held", "settled", "released"]


class RateLimitExceededError(Exception):
    """The key's share of the model's TPM or RPM is used up this minute (HTTP 429). The
    message reads like LiteLLM's dynamic rate limiter's (``Key=<key> over available TPM=0.
    Model TPM=<left>, Active keys=<n>``); ``retry_after_s`` is when the minute turns, and
    ``headers`` the ``x-ratelimit-*`` headers of the answer."""

    def __init__(self, message: str, *, retry_after_s: int, headers: Mapping[str, str], request_id: str) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.headers = dict(headers)
        self.request_id = request_id


def budget_error(refused: BudgetRefused) -> BudgetExceededError:
    """The SDK's error for a 402 admit: the refusing scope, its spend plus what holds already
    reserve on it (the message's "Current cost"), and its max budget."""
    room: ScopeRoomInfo | None = next((room for room in refused.scopes if room.scope_key == refused.scope), None)
    committed = 0 if room is None else room.spend_nanos + room.held_nanos
    limit = 0 if room is None or room.max_budget_nanos is None else room.max_budget_nanos
    return BudgetExceededError(committed, limit, scope=refused.scope, message=refused.message)


def rate_limit_error(refused: RateLimited, request_id: str) -> RateLimitExceededError:
    return RateLimitExceededError(
        refused.message, retry_after_s=refused.retry_after_s, headers=refused.headers, request_id=request_id
    )


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    """What an admission asks for: the call's id, model, scopes and estimate."""

    request_id: str
    model: str
    user: str | None = None
    team: str | None = None
    key: str | None = None
    end_user: str | None = None
    tags: tuple[str, ...] = ()
    priority: str | None = None
    prompt_tokens: int | None = None
    messages: Sequence[Mapping[str, Any]] | None = None
    max_tokens: int | None = None
    cost: Money | None = None

    def admit_arguments(self) -> dict[str, Any]:
        """Keyword arguments of ``LedgerClient.admit`` after the request id and model."""
        return {
            "user": self.user,
            "team": self.team,
            "key": self.key,
            "end_user": self.end_user,
            "tags": self.tags,
            "priority": self.priority,
            "prompt_tokens": self.prompt_tokens,
            "messages": self.messages,
            "max_tokens": self.max_tokens,
            "cost": self.cost,
        }


def settling_event(
    request: AdmissionRequest,
    response: Any = None,
    *,
    usage: TokenUsage | Mapping[str, Any] | None = None,
    cost: Money | None = None,
    model: str | None = None,
    occurred_at: datetime,
) -> UsageEvent:
    """The usage event that settles the admitted call: ``event_id`` is the request id, the
    scopes are the admission's, the model is the admitted one unless ``model`` is given.
    Usage comes from ``usage`` or the ``response``'s ``usage`` (an OpenAI or LiteLLM
    response, or a dict); ``cost`` (USD), else LiteLLM's ``response_cost`` of the
    response, becomes the event's ``reported_cost``."""
    if response is not None and usage is not None:
        raise TypeError("give the call's response or its usage, not both")
    token_usage: TokenUsage | None = None
    if isinstance(usage, TokenUsage):
        token_usage = usage
    elif usage is not None:
        token_usage = usage_from_openai(usage)
    elif response is not None:
        found = as_mapping(response, "response").get("usage")
        if found is None:
            raise InvalidUsage("the response carries no usage; pass usage= instead", field="usage")
        token_usage = usage_from_openai(found)
    if cost is None and response is not None:
        cost = _litellm_response_cost(response)
    if token_usage is None and cost is None:
        raise TypeError("settle needs the call's response, its usage, or its cost")
    return UsageEvent(
        event_id=request.request_id,
        occurred_at=occurred_at,
        model=model or request.model,
        user_id=request.user,
        team_id=request.team,
        key_id=request.key,
        end_user=request.end_user,
        tags=request.tags,
        usage=token_usage,
        reported_cost=None if cost is None else nanos_to_usd(money_nanos(cost, "cost")),
    )


def _litellm_response_cost(response: Any) -> Decimal | float | None:
    hidden = getattr(response, "_hidden_params", None)
    value = hidden.get("response_cost") if isinstance(hidden, Mapping) else None
    return value if isinstance(value, float | int | Decimal) and not isinstance(value, bool) else None


class _Hold:
    """What both holds share: the admitted hold and its state."""

    def __init__(self, request: AdmissionRequest, admitted: Admitted) -> None:
        self.request = request
        self.admitted = admitted
        self.state: HoldState = "held"
        self.event: UsageEvent | None = None  # the settling event, once built
        self._usage_given = False  # settle was called: the call was made, never release it on an error

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def estimate_cost_nanos(self) -> int:
        """The estimated cost held on every scope of the call."""
        return self.admitted.estimate_cost_nanos

    @property
    def estimated_tokens(self) -> int:
        return self.admitted.estimated_tokens

    @property
    def expires_at(self) -> datetime:
        """When the api frees the hold if no usage event settles it."""
        return self.admitted.expires_at

    def _event(self, response: Any, usage: Any, cost: Money | None, model: str | None) -> UsageEvent:
        if self.state != "held":
            raise RuntimeError(f"the hold of {self.request_id!r} is already {self.state}")
        event = settling_event(
            self.request, response, usage=usage, cost=cost, model=model, occurred_at=datetime.now(UTC)
        )
        self._usage_given = True
        self.event = event
        return event

    def _releasable(self) -> bool:
        return self.state == "held" and not self._usage_given

    def __repr__(self) -> str:
        return f"{type(self).__name__}(request_id={self.request_id!r}, state={self.state!r})"


class AdmissionHold(_Hold):
    """An admitted call (``ledger.admission``): ``request_id``, the ``admitted`` answer
    (scopes' room, rate shares), ``estimate_cost_nanos``, ``expires_at`` and ``state``."""

    def __init__(self, request: AdmissionRequest, admitted: Admitted, client: AsyncLedgerClient) -> None:
        super().__init__(request, admitted)
        self._client = client

    async def settle(
        self,
        response: Any = None,
        *,
        usage: TokenUsage | Mapping[str, Any] | None = None,
        cost: Money | None = None,
        model: str | None = None,
    ) -> UsageEvent:
        """Publish the call's usage event (``event_id`` = the request id) over the api;
        the ledger charges it and settles the hold. Returns the event."""
        event = self._event(response, usage, cost, model)
        await self._client.publish([event])
        self.state = "settled"
        return event

    async def release(self) -> None:
        """Free the hold now: the call was not made, or failed."""
        if self.state == "held":
            await self._client.release(self.request_id)
            self.state = "released"


class SyncAdmissionHold(_Hold):
    """``AdmissionHold`` for ``admission_sync``: the same, without asyncio."""

    def __init__(self, request: AdmissionRequest, admitted: Admitted, client: LedgerClient) -> None:
        super().__init__(request, admitted)
        self._client = client

    def settle(
        self,
        response: Any = None,
        *,
        usage: TokenUsage | Mapping[str, Any] | None = None,
        cost: Money | None = None,
        model: str | None = None,
    ) -> UsageEvent:
        """See ``AdmissionHold.settle``."""
        event = self._event(response, usage, cost, model)
        self._client.publish([event])
        self.state = "settled"
        return event

    def release(self) -> None:
        """See ``AdmissionHold.release``."""
        if self.state == "held":
            self._client.release(self.request_id)
            self.state = "released"


def _request(
    request_id: str | None,
    model: str,
    user: str | None,
    team: str | None,
    key: str | None,
    end_user: str | None,
    tags: Sequence[str],
    priority: str | None,
    prompt_tokens: int | None,
    messages: Sequence[Mapping[str, Any]] | None,
    max_tokens: int | None,
    cost: Money | None,
) -> AdmissionRequest:
    return AdmissionRequest(
        request_id=request_id if request_id is not None else str(uuid.uuid4()),
        model=model,
        user=user,
        team=team,
        key=key,
        end_user=end_user,
        tags=tuple(tags),
        priority=priority,
        prompt_tokens=prompt_tokens,
        messages=messages,
        max_tokens=max_tokens,
        cost=cost,
    )


def _log_release_failure(request_id: str, exc: LedgerClientError) -> None:
    log.warning("spend-ledger: hold %s not released (it expires on its own): %s", request_id, exc)


@asynccontextmanager
async def admission(
    *,
    model: str,
    request_id: str | None = None,
    user: str | None = None,
    team: str | None = None,
    key: str | None = None,
    end_user: str | None = None,
    tags: Sequence[str] = (),
    priority: str | None = None,
    prompt_tokens: int | None = None,
    messages: Sequence[Mapping[str, Any]] | None = None,
    max_tokens: int | None = None,
    cost: Money | None = None,
    client: AsyncLedgerClient | None = None,
) -> AsyncIterator[AdmissionHold]:
    """Admit a call for the block: hold its estimate (``prompt_tokens`` or ``messages``,
    plus ``max_tokens``; or ``cost`` in USD) on its scopes and its rate share, or raise
    ``BudgetExceededError`` / ``RateLimitExceededError``. Released if the block raises
    before ``settle``; left open to be settled by its usage event if the block ends without
    it (module docstring). ``request_id`` defaults to a new uuid; ``client`` to one from the
    settings (``SPEND_LEDGER_API_URL``, master else ingest key), closed at the end."""
    request = _request(
        request_id, model, user, team, key, end_user, tags, priority, prompt_tokens, messages, max_tokens, cost
    )
    ledger_client = client if client is not None else AsyncLedgerClient.from_settings()
    try:
        try:
            admitted = await ledger_client.admit(request.request_id, request.model, **request.admit_arguments())
        except BudgetRefused as exc:
            raise budget_error(exc) from exc
        except RateLimited as exc:
            raise rate_limit_error(exc, request.request_id) from exc
        hold = AdmissionHold(request, admitted, ledger_client)
        try:
            yield hold
        except BaseException:
            if hold._releasable():
                try:
                    await hold.release()
                except LedgerClientError as release_failed:
                    _log_release_failure(hold.request_id, release_failed)
            raise
    finally:
        if client is None:
            await ledger_client.close()


@contextmanager
def admission_sync(
    *,
    model: str,
    request_id: str | None = None,
    user: str | None = None,
    team: str | None = None,
    key: str | None = None,
    end_user: str | None = None,
    tags: Sequence[str] = (),
    priority: str | None = None,
    prompt_tokens: int | None = None,
    messages: Sequence[Mapping[str, Any]] | None = None,
    max_tokens: int | None = None,
    cost: Money | None = None,
    client: LedgerClient | None = None,
) -> Iterator[SyncAdmissionHold]:
    """``admission`` without asyncio: ``with ledger.admission_sync(...) as hold``."""
    request = _request(
        request_id, model, user, team, key, end_user, tags, priority, prompt_tokens, messages, max_tokens, cost
    )
    ledger_client = client if client is not None else LedgerClient.from_settings()
    try:
        try:
            admitted = ledger_client.admit(request.request_id, request.model, **request.admit_arguments())
        except BudgetRefused as exc:
            raise budget_error(exc) from exc
        except RateLimited as exc:
            raise rate_limit_error(exc, request.request_id) from exc
        hold = SyncAdmissionHold(request, admitted, ledger_client)
        try:
            yield hold
        except BaseException:
            if hold._releasable():
                try:
                    hold.release()
                except LedgerClientError as release_failed:
                    _log_release_failure(hold.request_id, release_failed)
            raise
    finally:
        if client is None:
            ledger_client.close()


__all__ = [
    "AdmissionHold",
    "AdmissionRequest",
    "RateLimitExceededError",
    "SyncAdmissionHold",
    "admission",
    "admission_sync",
    "budget_error",
    "settling_event",
]
