"""``LedgerClient`` (synchronous) and ``AsyncLedgerClient``: the same methods over httpx."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Self, TypeVar

import httpx

from ledger.client.admission_calls import (
    Admitted,
    HoldInfo,
    ModelLimitsInfo,
    RateLimitsInfo,
    admissions_call,
    admit_call,
    delete_model_limits_call,
    key_priority_call,
    priority_reservation_call,
    rate_limits_call,
    release_call,
    set_model_limits_call,
)
from ledger.client.answers import (
    AlertRecord,
    BudgetExceeded,
    BudgetInfo,
    BudgetWrite,
    CheckAnswer,
    LedgerClientError,
    ModelLimit,
    Money,
    PublishFailed,
    PublishResult,
    SpendReport,
)
from ledger.client.calls import (
    PUBLISH_BYTES_MAX,
    PUBLISH_EVENTS_MAX,
    Call,
    UsageRecord,
    alerts_call,
    budget_path,
    check_call,
    connection_error,
    decoder,
    headers_for,
    json_body,
    key_of,
    list_decoder,
    publish_call,
    set_budget_call,
    spend_call,
    usage_bodies,
)
from ledger.settings import Settings

T = TypeVar("T")
TIMEOUT_S_DEFAULT = 30.0


class LedgerClient:
    """Synchronous client of the spend-ledger api. ``key``: the master key for budgets,
    spend and alerts; the ingest key is enough for ``publish`` and ``check``."""

    def __init__(
        self,
        base_url: str,
        key: str | None = None,
        timeout_s: float = TIMEOUT_S_DEFAULT,
        *,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={**headers_for(key), **(headers or {})},
            timeout=timeout_s,
            transport=transport,
        )

    @classmethod
    def from_settings(cls, settings: Settings | None = None, timeout_s: float = TIMEOUT_S_DEFAULT) -> Self:
        """A client of ``settings.api_url`` (default: from the environment) with the master
        key (else the ingest key)."""
        settings = settings if settings is not None else Settings()
        return cls(settings.api_url, key_of(settings), timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, call: Call[T]) -> T:
        """Send one prepared call (``ledger.client.calls``) and decode its answer."""
        try:
            response = self._http.request(
                call.method,
                call.path,
                params=call.params,
                content=call.body,
                headers={"Content-Type": "application/json"} if call.body is not None else None,
            )
        except httpx.TransportError as exc:
            raise connection_error(self.base_url, exc, self.timeout_s) from exc
        return call.decode(response)

    def set_budget(
        self,
        kind: str,
        scope_id: str,
        *,
        max_budget: Money | None = None,
        soft_budget: Money | None = None,
        budget_duration: str | None = None,
        model_max_budget: Mapping[str, Money | ModelLimit] | None = None,
        alias: str | None = None,
        timezone: str | None = None,
    ) -> BudgetWrite:
        """Set the scope's whole list of limits (``PUT /v1/budgets/{kind}/{id}``)."""
        return self.run(
            set_budget_call(
                kind,
                scope_id,
                max_budget=max_budget,
                soft_budget=soft_budget,
                budget_duration=budget_duration,
                model_max_budget=model_max_budget,
                alias=alias,
                timezone=timezone,
            )
        )

    def get_budget(self, kind: str, scope_id: str) -> BudgetInfo:
        """One scope's limits and spend in their current windows."""
        return self.run(Call("GET", budget_path(kind, scope_id), decoder(BudgetInfo)))

    def list_budgets(self, kind: str | None = None) -> list[BudgetInfo]:
        """Every scope with a budget (of ``kind``), by scope key."""
        params = [] if kind is None else [("kind", kind)]
        return self.run(Call("GET", "/v1/budgets", list_decoder(BudgetInfo), params=tuple(params)))

    def delete_budget(self, kind: str, scope_id: str) -> BudgetWrite:
        """Remove every limit of the scope (its spend history stays)."""
        return self.run(Call("DELETE", budget_path(kind, scope_id), decoder(BudgetWrite)))

    def reset_budget(self, kind: str, scope_id: str, limit_name: str | None = None) -> BudgetWrite:
        """Open a new window now, for every limit of the scope or only ``limit_name``."""
        body = json_body({"limit_name": limit_name}) if limit_name is not None else None
        return self.run(Call("POST", budget_path(kind, scope_id) + "/reset", decoder(BudgetWrite), body=body))

    def check(
        self,
        *,
        user: str | None = None,
        team: str | None = None,
        key: str | None = None,
        end_user: str | None = None,
        tags: Sequence[str] = (),
        model: str | None = None,
        raise_if_exceeded: bool = False,
    ) -> CheckAnswer:
        """May a call with these scopes go ahead? ``allowed`` False (HTTP 402) carries
        LiteLLM's message; with ``raise_if_exceeded`` that raises ``BudgetExceeded``."""
        answer = self.run(check_call(user=user, team=team, key=key, end_user=end_user, tags=tags, model=model))
        if raise_if_exceeded and not answer.allowed:
            raise BudgetExceeded(answer)
        return answer

    def publish(
        self,
        events: Iterable[UsageRecord],
        *,
        events_per_request_max: int = PUBLISH_EVENTS_MAX,
        bytes_per_request_max: int = PUBLISH_BYTES_MAX,
        on_request: Callable[[int], None] | None = None,
    ) -> PublishResult:
        """Publish usage events (dicts in wire shape, or ``UsageEvent``), split into
        requests the api takes whole or not at all; returns once the broker acknowledged
        every event. ``on_request(n)`` is called as each request's ``n`` events are accepted."""
        ids: list[str] = []
        requests = 0
        for body, count in usage_bodies(events, events_per_request_max, bytes_per_request_max):
            try:
                accepted = self.run(publish_call(body))
            except LedgerClientError as exc:
                if ids:
                    raise PublishFailed(exc, len(ids), ids) from exc
                raise
            ids.extend(accepted)
            requests += 1
            if on_request is not None:
                on_request(count)
        return PublishResult(len(ids), ids, requests)

    def spend(
        self,
        group_by: Sequence[str] = (),
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        scope: str | None = None,
        limit: int = 1_000,
    ) -> SpendReport:
        """Spend from the store, grouped by scope kinds, model and UTC time buckets; ``[start, end)``."""
        return self.run(spend_call(group_by, start, end, scope, limit))

    def alerts(
        self, *, scope: str | None = None, kind: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[AlertRecord]:
        """The latest budget alerts from the store, newest first."""
        return self.run(alerts_call(scope, kind, since, limit))

    # -- admission (DESIGN section 10) ---------------------------------------------------

    def admit(self, request_id: str, model: str | None, **call: Any) -> Admitted:
        """Hold a call's estimated cost and rate share (``POST /v1/admit``); ``call`` takes
        user, team, key, end_user, tags, priority, prompt_tokens or messages, max_tokens,
        or cost. Raises ``BudgetRefused`` (402) or ``RateLimited`` (429)."""
        return self.run(admit_call(request_id, model, **call))

    def release(self, request_id: str) -> HoldInfo:
        """Release a hold (the call failed or was not made)."""
        return self.run(release_call(request_id))

    def admissions(self, scope: str | None = None, limit: int = 1_000) -> list[HoldInfo]:
        """Open holds, oldest first (of ``scope`` only, if given)."""
        return self.run(admissions_call(scope, limit))

    def set_model_limits(
        self, model: str, *, tpm: int | None = None, rpm: int | None = None, models: Sequence[str] | None = None
    ) -> ModelLimitsInfo:
        """A model group's TPM/RPM capacity, shared by the keys that call it, and the
        models its deployments are priced as."""
        return self.run(set_model_limits_call(model, tpm=tpm, rpm=rpm, models=models))

    def delete_model_limits(self, model: str) -> ModelLimitsInfo:
        return self.run(delete_model_limits_call(model))

    def rate_limits(self) -> RateLimitsInfo:
        """Every model's capacity, the priority reservation and the keys' priorities."""
        return self.run(rate_limits_call())

    def set_priority_reservation(self, reservation: Mapping[str, Decimal | float | str] | None) -> dict[str, Any]:
        """LiteLLM's ``priority_reservation`` (``{"dev": 0, "prod": 1}``); None: the setting's."""
        return self.run(priority_reservation_call(reservation))

    def set_key_priority(self, key_id: str, priority: str) -> dict[str, Any]:
        """The priority of a key's calls when an admit names none."""
        return self.run(key_priority_call(key_id, priority))


class AsyncLedgerClient:
    """The asyncio twin of ``LedgerClient``: the same methods, awaited."""

    def __init__(
        self,
        base_url: str,
        key: str | None = None,
        timeout_s: float = TIMEOUT_S_DEFAULT,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers_for(key), timeout=timeout_s, transport=transport
        )

    @classmethod
    def from_settings(cls, settings: Settings | None = None, timeout_s: float = TIMEOUT_S_DEFAULT) -> Self:
        """A client of ``settings.api_url`` (default: from the environment) with the master
        key (else the ingest key)."""
        settings = settings if settings is not None else Settings()
        return cls(settings.api_url, key_of(settings), timeout_s)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, call: Call[T]) -> T:
        try:
            response = await self._http.request(
                call.method,
                call.path,
                params=call.params,
                content=call.body,
                headers={"Content-Type": "application/json"} if call.body is not None else None,
            )
        except httpx.TransportError as exc:
            raise connection_error(self.base_url, exc, self.timeout_s) from exc
        return call.decode(response)

    async def set_budget(
        self,
        kind: str,
        scope_id: str,
        *,
        max_budget: Money | None = None,
        soft_budget: Money | None = None,
        budget_duration: str | None = None,
        model_max_budget: Mapping[str, Money | ModelLimit] | None = None,
        alias: str | None = None,
        timezone: str | None = None,
    ) -> BudgetWrite:
        """See ``LedgerClient.set_budget``."""
        return await self._run(
            set_budget_call(
                kind,
                scope_id,
                max_budget=max_budget,
                soft_budget=soft_budget,
                budget_duration=budget_duration,
                model_max_budget=model_max_budget,
                alias=alias,
                timezone=timezone,
            )
        )

    async def get_budget(self, kind: str, scope_id: str) -> BudgetInfo:
        return await self._run(Call("GET", budget_path(kind, scope_id), decoder(BudgetInfo)))

    async def list_budgets(self, kind: str | None = None) -> list[BudgetInfo]:
        params = [] if kind is None else [("kind", kind)]
        return await self._run(Call("GET", "/v1/budgets", list_decoder(BudgetInfo), params=tuple(params)))

    async def delete_budget(self, kind: str, scope_id: str) -> BudgetWrite:
        return await self._run(Call("DELETE", budget_path(kind, scope_id), decoder(BudgetWrite)))

    async def reset_budget(self, kind: str, scope_id: str, limit_name: str | None = None) -> BudgetWrite:
        body = json_body({"limit_name": limit_name}) if limit_name is not None else None
        return await self._run(Call("POST", budget_path(kind, scope_id) + "/reset", decoder(BudgetWrite), body=body))

    async def check(
        self,
        *,
        user: str | None = None,
        team: str | None = None,
        key: str | None = None,
        end_user: str | None = None,
        tags: Sequence[str] = (),
        model: str | None = None,
        raise_if_exceeded: bool = False,
    ) -> CheckAnswer:
        """See ``LedgerClient.check``."""
        answer = await self._run(check_call(user=user, team=team, key=key, end_user=end_user, tags=tags, model=model))
        if raise_if_exceeded and not answer.allowed:
            raise BudgetExceeded(answer)
        return answer

    async def publish(
        self,
        events: Iterable[UsageRecord],
        *,
        events_per_request_max: int = PUBLISH_EVENTS_MAX,
        bytes_per_request_max: int = PUBLISH_BYTES_MAX,
        on_request: Callable[[int], None] | None = None,
    ) -> PublishResult:
        """See ``LedgerClient.publish``."""
        ids: list[str] = []
        requests = 0
        for body, count in usage_bodies(events, events_per_request_max, bytes_per_request_max):
            try:
                accepted = await self._run(publish_call(body))
            except LedgerClientError as exc:
                if ids:
                    raise PublishFailed(exc, len(ids), ids) from exc
                raise
            ids.extend(accepted)
            requests += 1
            if on_request is not None:
                on_request(count)
        return PublishResult(len(ids), ids, requests)

    async def spend(
        self,
        group_by: Sequence[str] = (),
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        scope: str | None = None,
        limit: int = 1_000,
    ) -> SpendReport:
        return await self._run(spend_call(group_by, start, end, scope, limit))

    async def alerts(
        self, *, scope: str | None = None, kind: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[AlertRecord]:
        return await self._run(alerts_call(scope, kind, since, limit))

    # -- admission ---------------------------------------------------------------------

    async def admit(self, request_id: str, model: str | None, **call: Any) -> Admitted:
        """See ``LedgerClient.admit``."""
        return await self._run(admit_call(request_id, model, **call))

    async def release(self, request_id: str) -> HoldInfo:
        return await self._run(release_call(request_id))

    async def admissions(self, scope: str | None = None, limit: int = 1_000) -> list[HoldInfo]:
        return await self._run(admissions_call(scope, limit))

    async def set_model_limits(
        self, model: str, *, tpm: int | None = None, rpm: int | None = None, models: Sequence[str] | None = None
    ) -> ModelLimitsInfo:
        return await self._run(set_model_limits_call(model, tpm=tpm, rpm=rpm, models=models))

    async def delete_model_limits(self, model: str) -> ModelLimitsInfo:
        return await self._run(delete_model_limits_call(model))

    async def rate_limits(self) -> RateLimitsInfo:
        return await self._run(rate_limits_call())

    async def set_priority_reservation(self, reservation: Mapping[str, Decimal | float | str] | None) -> dict[str, Any]:
        return await self._run(priority_reservation_call(reservation))

    async def set_key_priority(self, key_id: str, priority: str) -> dict[str, Any]:
        return await self._run(key_priority_call(key_id, priority))
