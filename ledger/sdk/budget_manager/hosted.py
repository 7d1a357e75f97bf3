"""The hosted ``BudgetManager`` backend: users live in a running spend-ledger api.

- A user is the scope ``user:<id>``; its budget is the scope's overall limit (no model,
  a max budget), read from ``GET /v1/budgets/user/{id}``. ``model_cost`` is the user's
  spend per model since the window's start, from ``GET /v1/spend``: that reads the
  store, which trails the live state by about a second, so a call just charged may be
  missing from ``model_cost`` while ``current_cost`` already counts it.
- ``create`` goes through LiteLLM's ``POST /set_budget``: it replaces the overall limit
  only (per-model limits and soft budgets an admin set stay) and never overwrites another
  manager's users. The service anchors a new window when it applies the command;
  a ``created_at`` given is reported back but does not move windows.
- ``charge`` publishes the call as a usage event (its ``event_id`` makes a retry count
  once) and waits, bounded, until the scope's ``entry_count`` grows (read-your-writes).
  Another manager's call may be what grew it, and a call charged before (same
  completion id) grows nothing: the wait then ends at its bound (a repeat this manager
  published itself does not wait). A call the worker refuses (an unpriced model goes to
  the dead-letter topic, never charged $0) raises ``CallNotCharged``, as LiteLLM raises
  for a model it cannot price.
- ``project_name`` names the commands only: every ``user:`` scope is one namespace.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from pydantic import Field

from ledger.client import LedgerClient
from ledger.client.answers import (
    Answer,
    BudgetInfo,
    BudgetWrite,
    LedgerApiError,
    LedgerClientError,
    LimitInfo,
)
from ledger.client.calls import (
    Call,
    budget_path,
    decoder,
    json_body,
    key_of,
    publish_call,
    spend_call,
    usage_bodies,
)
from ledger.domain.events import UsageEvent
from ledger.domain.money import format_usd, usd_to_nanos
from ledger.domain.windows import parse_duration
from ledger.integrations.litellm_budget import usd_float
from ledger.sdk.budget_manager.records import UnknownUser, UserBudget

T = TypeVar("T")

CHARGE_WAIT_S = 5.0  # how long ``charge`` waits for the worker to fold the call in
CREATE_WAIT_S = 5.0  # how long ``create`` waits for the worker to apply the budget
POLL_INTERVAL_S = 0.02
DEAD_LETTER_AFTER_S = 0.5  # a call not charged by then: look for it among the dead letters
DEAD_LETTER_POLL_S = 0.5
DEAD_LETTERS_SCANNED = 500  # the latest dead letters searched for a call's event_id
SPEND_MODELS_MAX = 1_000
RECENT_EVENT_IDS_MAX = 10_000  # event ids this manager published: a repeat does not wait


class CallNotCharged(LedgerClientError):
    """The ledger refused to charge a call (e.g. ``unpriced``: no price for its model). The
    event is kept; a replay charges it once the model has a price."""

    def __init__(self, event_id: str, model: str, reason: str, detail: str) -> None:
        super().__init__(
            f"the call to {model!r} was not charged ({reason}): {detail}. The event {event_id} is kept in "
            "the ledger and a replay charges it once fixed (e.g. a price for the model)"
        )
        self.event_id = event_id
        self.model = model
        self.reason = reason
        self.detail = detail


class _Served(Answer):
    """``POST /get_budget``'s reply."""

    status: str
    data: dict[str, dict[str, Any]] = Field(default_factory=dict)
    message: str | None = None


class _Saved(Answer):
    """``POST /set_budget``'s reply."""

    status: str
    commands: int = 0
    message: str | None = None


class _DeadLetters(Answer):
    """``GET /v1/dead-letters``'s reply."""

    dead_letters: list[dict[str, Any]] = Field(default_factory=list)


def _overall(info: BudgetInfo) -> LimitInfo | None:
    """The limit LiteLLM's ``total_budget`` is (as ``litellm_budget.overall_limit``)."""
    return next((limit for limit in info.limits if limit.model is None and limit.max_budget_nanos is not None), None)


def _has_authorization(headers: Mapping[str, str]) -> bool:
    return any(name.lower() == "authorization" for name in headers)


class HostedBudgets:
    """``BudgetBackend`` over the spend-ledger api at ``api_base`` (default: the settings'
    ``api_url``). Auth: the ``headers`` given (LiteLLM passes ``Authorization``), else
    ``key``, else the settings' master key."""

    def __init__(
        self,
        project_name: str,
        api_base: str | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        key: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        given = dict(headers or {})
        settings_key: str | None = None
        if api_base is None or (key is None and not _has_authorization(given)):
            from ledger.settings import Settings

            settings = Settings()
            api_base = api_base or settings.api_url
            settings_key = key_of(settings)
        self.project_name = project_name
        self.api_base = api_base.rstrip("/")
        self.timeout_s = timeout_s
        key = None if _has_authorization(given) else (key or settings_key)
        self._client = LedgerClient(self.api_base, key, timeout_s, headers=given)
        self._published: OrderedDict[str, None] = OrderedDict()

    def close(self) -> None:
        self._client.close()

    # -- BudgetBackend ----------------------------------------------------------------

    def load(self, user: str) -> UserBudget | None:
        info = self._scope(user)
        return None if info is None else self._budget_of(user, info)

    def load_all(self) -> list[UserBudget]:
        """Every user with a budget, from LiteLLM's ``POST /get_budget``. Its ``model_cost``
        lists the models with a per-model limit only (what that protocol serves); ``load``
        gives the spend of every model."""
        served = self._run(Call("POST", "/get_budget", decoder(_Served), body=json_body(self._project())))
        if served.status != "success":
            raise LedgerApiError(200, "get_budget_error", served.message or f"get_budget answered {served.status!r}")
        return [_budget_from_entry(user, entry) for user, entry in sorted(served.data.items())]

    def create(self, user: str, total_budget_nanos: int, duration: str | None, created_at: float) -> UserBudget:
        """Set the overall limit with LiteLLM's ``POST /set_budget``, then wait (bounded)
        until the worker applied it. Not confirmed in time: the budget as it will be."""
        duration_text = None if duration is None else parse_duration(duration).text
        amount = usd_float(total_budget_nanos)
        if usd_to_nanos(Decimal(repr(amount))) != total_budget_nanos:
            raise ValueError(
                f"LiteLLM's set_budget carries total_budget as a float: {format_usd(total_budget_nanos)} USD "
                "cannot be sent exactly (at most 15 significant digits)"
            )
        # ``duration`` as our text (exact, unlike LiteLLM's days) and no ``*_nanos`` or
        # ``duration_text`` companion: a companion would mark the values as an echo.
        entry = {"total_budget": amount, "duration": duration_text}
        body = json_body({**self._project(), "user_dict": {user: entry}})
        self._run(Call("POST", "/set_budget", decoder(_Saved), body=body))

        def applied(info: BudgetInfo | None) -> bool:
            overall = None if info is None else _overall(info)
            return (
                overall is not None
                and overall.max_budget_nanos == total_budget_nanos
                and overall.budget_duration == duration_text
            )

        info = self._wait_scope(user, applied, CREATE_WAIT_S)
        found = None if info is None else self._budget_of(user, info, created_at=created_at)
        if found is not None and applied(info):
            return found
        kept = found is not None and found.duration == duration_text
        return UserBudget(
            user=user,
            total_budget_nanos=total_budget_nanos,
            current_cost_nanos=found.current_cost_nanos if found is not None and kept else 0,
            duration=duration_text,
            created_at=created_at,
            last_updated_at=found.last_updated_at if found is not None and kept else time.time(),
            model_cost_nanos=found.model_cost_nanos if found is not None and kept else {},
        )

    def charge(self, user: str, event: UsageEvent) -> UserBudget:
        """Publish the call and wait (bounded) until the worker charged it to the user."""
        before = self._scope(user)
        if before is None or _overall(before) is None:
            raise UnknownUser(user)
        repeat = event.event_id in self._published
        for body, _ in usage_bodies([event]):
            self._run(publish_call(body))
        self._remember(event.event_id)
        if repeat:  # charged once already (or pending): nothing will change
            return self._loaded(user)
        info = self._wait_charged(user, before.entry_count, event)
        found = self._budget_of(user, info)
        if found is None:
            raise UnknownUser(user)
        return found

    def reset(self, user: str) -> UserBudget:
        """``POST /v1/budgets/user/{id}/reset`` of the overall limit: a new window now.
        Per-model limits and other limits an admin set keep their spend."""
        for attempt in range(2):
            info = self._scope(user)
            overall = None if info is None else _overall(info)
            if info is None or overall is None:
                raise UnknownUser(user)
            path = budget_path("user", user) + "/reset"
            call = Call("POST", path, decoder(BudgetWrite), body=json_body({"limit_name": overall.name}))
            try:
                written = self._run(call)
            except LedgerApiError as exc:
                if exc.status == 404:
                    raise UnknownUser(user) from exc
                if exc.status == 422 and attempt == 0:
                    continue  # the limit was renamed meanwhile (its duration changed): again
                raise
            found = self._budget_of(user, written)
            if found is None:
                raise UnknownUser(user)
            return found
        raise AssertionError("unreachable")

    # -- reading ----------------------------------------------------------------------

    def _project(self) -> dict[str, str]:
        return {"project_name": self.project_name}

    def _scope(self, user: str) -> BudgetInfo | None:
        """The user's scope as the worker holds it; None when nothing is known of it."""
        try:
            return self._run(Call("GET", budget_path("user", user), decoder(BudgetInfo)))
        except LedgerApiError as exc:
            if exc.status == 404:
                return None
            raise

    def _loaded(self, user: str) -> UserBudget:
        found = self.load(user)
        if found is None:
            raise UnknownUser(user)
        return found

    def _budget_of(self, user: str, info: BudgetInfo, *, created_at: float | None = None) -> UserBudget | None:
        overall = _overall(info)
        if overall is None:
            return None
        assert overall.max_budget_nanos is not None
        anchor = overall.anchor or overall.window_start
        return UserBudget(
            user=user,
            total_budget_nanos=overall.max_budget_nanos,
            current_cost_nanos=overall.spend_nanos,
            duration=overall.budget_duration,
            created_at=anchor.timestamp() if created_at is None else created_at,
            last_updated_at=overall.window_start.timestamp(),
            model_cost_nanos=self._model_spend(user, overall.window_start),
        )

    def _model_spend(self, user: str, window_start: datetime) -> dict[str, int]:
        """The user's spend per model since ``window_start``, from the store (it trails
        the live state by about a second)."""
        report = self._run(spend_call(["model"], window_start, None, f"user:{user}", SPEND_MODELS_MAX))
        return {
            str(row.groups["model"]): row.spend_nanos for row in report.rows if isinstance(row.groups.get("model"), str)
        }

    def _wait_scope(self, user: str, done: Callable[[BudgetInfo | None], bool], timeout_s: float) -> BudgetInfo | None:
        """Poll the user's scope until ``done(info)``, at most ``timeout_s``; the last read."""
        deadline = time.monotonic() + timeout_s
        while True:
            info = self._scope(user)
            if done(info) or time.monotonic() >= deadline:
                return info
            time.sleep(POLL_INTERVAL_S)

    def _wait_charged(self, user: str, entries_before: int, event: UsageEvent) -> BudgetInfo:
        """The scope once its ``entry_count`` grew past ``entries_before`` (at most
        ``CHARGE_WAIT_S``; then the latest). Another manager's call may be the one that grew
        it. A call found among the dead letters raises ``CallNotCharged``."""
        started = time.monotonic()
        deadline = started + CHARGE_WAIT_S
        next_dead_letter_look = started + DEAD_LETTER_AFTER_S
        while True:
            info = self._scope(user)
            if info is None:
                raise UnknownUser(user)
            if info.entry_count > entries_before:
                return info
            now = time.monotonic()
            if now >= next_dead_letter_look or now >= deadline:
                self._raise_if_dead_lettered(event)
                next_dead_letter_look = now + DEAD_LETTER_POLL_S
            if now >= deadline:
                return info  # a duplicate charged before, or a slow worker: the latest state
            time.sleep(POLL_INTERVAL_S)

    def _raise_if_dead_lettered(self, event: UsageEvent) -> None:
        call = Call("GET", "/v1/dead-letters", decoder(_DeadLetters), params=(("limit", str(DEAD_LETTERS_SCANNED)),))
        for letter in self._run(call).dead_letters:
            if letter.get("event_id") == event.event_id:
                reason, detail = str(letter.get("reason") or "refused"), str(letter.get("detail") or "")
                raise CallNotCharged(event.event_id, event.model, reason, detail)

    # -- transport --------------------------------------------------------------------

    def _remember(self, event_id: str) -> None:
        self._published[event_id] = None
        self._published.move_to_end(event_id)
        while len(self._published) > RECENT_EVENT_IDS_MAX:
            self._published.popitem(last=False)

    def _run(self, call: Call[T]) -> T:
        try:
            return self._client.run(call)
        except LedgerApiError as exc:
            if exc.status in (401, 403):
                raise LedgerApiError(
                    exc.status,
                    exc.type,
                    f"{exc.message}. The BudgetManager needs the api's master key: pass headers="
                    "{'Authorization': 'Bearer <key>'} or key=..., or set SPEND_LEDGER_MASTER_KEY",
                    exc.fields,
                    exc.detail,
                ) from exc
            raise


def _budget_from_entry(user: str, entry: Mapping[str, Any]) -> UserBudget:
    """One served ``user_dict`` entry, from its exact ``*_nanos`` companions."""
    models = entry.get("model_cost_nanos") or {}
    return UserBudget(
        user=user,
        total_budget_nanos=int(entry["total_budget_nanos"]),
        current_cost_nanos=int(entry["current_cost_nanos"]),
        duration=entry.get("duration_text"),
        created_at=float(entry["created_at"]),
        last_updated_at=float(entry["last_updated_at"]),
        model_cost_nanos={str(model): int(nanos) for model, nanos in models.items()},
    )
