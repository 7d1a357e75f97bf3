"""LiteLLM's hosted ``BudgetManager`` protocol (``POST /get_budget``, ``POST /set_budget``)
translated to and from the ledger's budget state and commands. Pure: no I/O, no clock.

What LiteLLM's client does (``litellm/budget_manager.py``, ``client_type="hosted"``):

- ``load_data`` (once, in ``__init__``) posts ``{"project_name": <str>}`` to
  ``<api_base>/get_budget`` and reads the JSON reply: ``status == "error"`` means
  "nothing stored yet" and the client silently starts from ``{}``; otherwise
  ``user_dict = reply["data"]``. Its HTTP client raises on a non-2xx status, so a real
  failure should be an HTTP error, not a 200 with ``status: "error"``.
- ``save_data`` posts ``{"project_name": <str>, "user_dict": <whole dict>}`` to
  ``<api_base>/set_budget`` from a background thread after ``create_budget``,
  ``update_cost`` and a duration reset, and returns the reply's JSON to nobody (LiteLLM's
  old hosted test only looked at ``reply["status"] == "error"``). Each save sends the
  whole dict the client holds, so concurrent managers overwrite each other.
- ``user_dict`` maps a user id to ``{"total_budget": float}``, plus after
  ``create_budget(total_budget, user, duration, created_at)`` with a duration:
  ``duration`` (a number of DAYS: daily 1, weekly 7, monthly 28, yearly 365; never the
  text), ``created_at`` and ``last_updated_at`` (both ``time.time()`` floats).
  ``create_budget`` replaces the user's whole entry (its costs too); without a duration
  it stores only ``total_budget`` and does not save. ``update_cost`` adds the call's
  cost to ``current_cost`` and to ``model_cost[model]`` (a ``{model: float}`` breakdown).
- ``reset_cost`` sets ``current_cost = 0`` and ``model_cost = {}`` (and does not save).
  ``reset_on_duration`` (called by ``update_budget_all_users`` for users that have a
  ``duration`` key) resets when ``now - last_updated_at >= duration * 86400``, then sets
  ``last_updated_at = now`` and saves. So ``last_updated_at`` is the start of the current
  window, not the time of the last call.

How the ledger answers it:

- ``user_dict`` reports every ``user:<id>`` scope with an overall limit (no model, with a
  max budget): ``duration`` in LiteLLM's days (omitted when the limit never resets, as
  LiteLLM omits it; ``update_budget_all_users`` would fail on ``None``),
  ``last_updated_at`` = the current window's start, plus exact companions
  (``total_budget_nanos``, ``current_cost_nanos``, ``model_cost_nanos``,
  ``duration_text``) that LiteLLM keeps and sends back untouched.
- A posted dict is read as commands, never as the truth: spend comes from usage events,
  so every posted cost is ignored, except LiteLLM's ``reset_cost`` (see
  ``commands_from_user_dict``). A user missing from the post is never deleted.
- A value the client sends back exactly as we served it (the companion key is there and
  agrees with LiteLLM's field) asserts nothing: it may be stale, and echoing it back must
  not undo what another manager changed since. Only a field the client changed
  (``create_budget`` drops the companions; an edit in place breaks the agreement) counts.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from pydantic import ValidationError

from ledger.domain.budgets import (
    BudgetCommand,
    BudgetSpec,
    BudgetState,
    CommandAction,
    LimitState,
    default_limit_name,
    is_overall,
)
from ledger.domain.errors import LedgerError
from ledger.domain.fold import advance
from ledger.domain.money import MAX_NANOS, MoneyError, nanos_to_usd, usd_to_nanos
from ledger.domain.scopes import InvalidScope, check_scope_id, parse_scope_key
from ledger.domain.windows import FIXED_SECONDS_MAX, parse_duration

USERS_PER_DICT_MAX = 10_000
ID_PREFIX_MAX_CHARS = 150  # the command id adds at most 32 characters; ids hold 200
PROJECT_NAME_MAX_CHARS = 256
SECONDS_PER_DAY = 86_400
# LiteLLM's create_budget stores these day counts; we read and report them both ways.
LITELLM_DAYS = {"daily": 1, "weekly": 7, "monthly": 28, "yearly": 365}
_CALENDAR_DAYS = {"day": 1, "week": 7, "month": 28, "year": 365}
_NAME_OF_DAYS = {days: name for name, days in LITELLM_DAYS.items()}
# A day count sent as a float (1/24 for an hour) may miss a whole second by rounding.
_SECONDS_TOLERANCE = Decimal("0.001")


class InvalidBudgetDict(LedgerError):
    """A posted LiteLLM ``user_dict`` (or one user's entry) that cannot be read."""

    reason = "invalid_budget_dict"

    def __init__(self, message: str, *, user: str | None = None, field: str | None = None) -> None:
        where = " ".join(part for part in (f"user {user!r}" if user is not None else "", field or "") if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.user = user
        self.field = field


def user_dict(states: Mapping[str, BudgetState], now: datetime) -> dict[str, dict[str, Any]]:
    """LiteLLM's ``user_dict`` for every user scope with an overall limit, as of ``now``
    (windows that ended by ``now`` are rolled over first, so their spend reads 0)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    result: dict[str, dict[str, Any]] = {}
    for state in sorted(states.values(), key=lambda s: s.scope_key):
        kind, user = parse_scope_key(state.scope_key)
        if kind != "user":
            continue
        current, _ = advance(state, now)
        overall = overall_limit(current)
        if overall is None:
            continue
        assert overall.spec.max_budget_nanos is not None
        model_nanos = {_model_of(limit): limit.spend_nanos for limit in _model_limits(current)}
        entry: dict[str, Any] = {
            "total_budget": usd_float(overall.spec.max_budget_nanos),
            "current_cost": usd_float(overall.spend_nanos),
            "model_cost": {model: usd_float(nanos) for model, nanos in model_nanos.items()},
            "created_at": overall.anchor.timestamp(),
            "last_updated_at": overall.window_start.timestamp(),
            "total_budget_nanos": overall.spec.max_budget_nanos,
            "current_cost_nanos": overall.spend_nanos,
            "model_cost_nanos": model_nanos,
            "duration_text": overall.spec.duration,
        }
        if overall.spec.duration is not None:
            entry["duration"] = litellm_duration_days(overall.spec.duration)
        result[user] = entry
    return result


def commands_from_user_dict(
    project_name: str,
    posted: Mapping[str, Any],
    current: Mapping[str, BudgetState],
    now: datetime,
    id_prefix: str,
) -> list[BudgetCommand]:
    """What a posted LiteLLM ``user_dict`` asks of the ledger, as budget commands.

    - A user whose ``total_budget`` or ``duration`` differs from its overall limit (or who
      has none) gets a ``set_overall`` of ``user:<id>``: the worker replaces only that
      limit and keeps the others as it finds them, so limits changed since ``current`` was
      read (an admin's, another manager's) survive.
    - A user missing from ``posted`` is left alone (LiteLLM saves whole dicts; a stale
      manager must not erase users another one created).
    - ``current_cost`` and ``model_cost`` are ignored (spend comes from usage events),
      except LiteLLM's ``reset_cost`` on what we served: ``current_cost == 0`` and an
      empty ``model_cost`` where we had reported ``current_cost_nanos > 0``, with
      ``last_updated_at`` still the current window's start. That is a ``reset`` of every
      limit LiteLLM sees (the overall one and the per-model ones in ``model_cost``) that
      has spend. A zero we served ourselves, a zero from an older window, and LiteLLM's
      own ``reset_on_duration`` (it moves ``last_updated_at``) reset nothing: our windows
      already roll over by event time, and a wrong reset would let a user overspend.

    Command ids derive from (``id_prefix``, project, user, what changed), so a retried
    request with the same prefix yields the same commands.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    _check_id_prefix(id_prefix)
    if not isinstance(project_name, str) or not 0 < len(project_name) <= PROJECT_NAME_MAX_CHARS:
        raise InvalidBudgetDict(f"must be a string of 1..{PROJECT_NAME_MAX_CHARS} characters", field="project_name")
    if not isinstance(posted, Mapping):
        raise InvalidBudgetDict(f"must be an object of users, got {type(posted).__name__}", field="user_dict")
    if len(posted) > USERS_PER_DICT_MAX:
        raise InvalidBudgetDict(f"has {len(posted)} users; at most {USERS_PER_DICT_MAX}", field="user_dict")
    entries = [_read_entry(user, posted[user]) for user in sorted(posted, key=str)]
    commands: list[BudgetCommand] = []
    for entry in entries:
        state = current.get(f"user:{entry.user}")
        rolled = None if state is None else advance(state, now)[0]
        commands.extend(_entry_commands(entry, rolled, project_name, now, id_prefix))
    return commands


def get_budget_response(served: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The reply to ``POST /get_budget`` for a ``user_dict(...)``: LiteLLM reads
    ``status`` and ``data``."""
    return {"status": "success", "data": dict(served)}


def set_budget_response(command_count: int) -> dict[str, Any]:
    """The reply to ``POST /set_budget`` (LiteLLM only looks at ``status``)."""
    return {"status": "success", "message": f"{command_count} budget command(s) accepted", "commands": command_count}


def error_response(message: str) -> dict[str, Any]:
    """LiteLLM's error shape. On ``/get_budget`` the client takes it for "no budgets yet"
    and starts empty, so send it with an HTTP 4xx/5xx status (the client then raises)."""
    return {"status": "error", "message": message}


def overall_limit(state: BudgetState) -> LimitState | None:
    """The limit LiteLLM's ``total_budget`` is: the first overall one (``is_overall``)."""
    return next((limit for limit in state.limits if is_overall(limit.spec)), None)


def litellm_duration_days(duration: str) -> int | float:
    """A duration in LiteLLM's unit, days: ``daily`` 1, ``weekly`` 7, ``monthly`` 28
    (LiteLLM's number, so it reads back as ``monthly``), ``yearly`` 365, ``12h`` 0.5."""
    seconds = _litellm_seconds(duration)
    days, rest = divmod(seconds, SECONDS_PER_DAY)
    return days if rest == 0 else seconds / SECONDS_PER_DAY


def usd_float(nanos: int) -> float:
    """Display USD for LiteLLM (the nearest float); never summed or stored."""
    return float(nanos_to_usd(nanos))


@dataclass(frozen=True, slots=True)
class _Entry:
    """One posted user, read and checked. ``None`` fields assert nothing."""

    user: str
    total_nanos: int | None  # asserted by the client
    echoed_total_nanos: int | None  # what we served, sent back unchanged
    duration_text: str | None
    duration_seconds: int | None  # set when sent as LiteLLM days: compared in that unit
    duration_asserted: bool
    echoed_duration_text: str | None
    reset_requested: bool
    last_updated_at: float | None


def _read_entry(user: object, value: object) -> _Entry:
    if not isinstance(user, str):
        raise InvalidBudgetDict(f"user ids are strings, got {type(user).__name__}", field="user_dict")
    try:
        check_scope_id(user)
    except InvalidScope as exc:
        raise InvalidBudgetDict(str(exc), user=user, field="user id") from exc
    if not isinstance(value, Mapping):
        raise InvalidBudgetDict(f"must be an object, got {type(value).__name__}", user=user)
    total_nanos: int | None = _read_total(user, value)
    echoed_total = _read_int(user, value, "total_budget_nanos", low=0)
    if echoed_total is not None and usd_float(echoed_total) == value["total_budget"]:
        total_nanos = None
    else:
        echoed_total = None
    duration_text, duration_seconds = _read_duration(user, value.get("duration"))
    duration_asserted = True
    echoed_duration: str | None = None
    if "duration_text" in value:
        served = value["duration_text"]
        if served is not None and not isinstance(served, str):
            raise InvalidBudgetDict("must be a duration text or null", user=user, field="duration_text")
        served_text = _parsed_duration(user, "duration_text", served) if served is not None else None
        served_days = None if served_text is None else litellm_duration_days(served_text)
        if value.get("duration") == served_days:
            duration_asserted, echoed_duration = False, served_text
    current_cost = _read_number(user, value, "current_cost")
    model_cost = value.get("model_cost")
    if model_cost is not None and not isinstance(model_cost, Mapping):
        raise InvalidBudgetDict("must be an object of model costs", user=user, field="model_cost")
    served_cost = _read_int(user, value, "current_cost_nanos", low=-MAX_NANOS)
    return _Entry(
        user=user,
        total_nanos=total_nanos,
        echoed_total_nanos=echoed_total,
        duration_text=duration_text,
        duration_seconds=duration_seconds,
        duration_asserted=duration_asserted,
        echoed_duration_text=echoed_duration,
        reset_requested=current_cost == 0 and not model_cost and served_cost is not None and served_cost > 0,
        last_updated_at=_read_number(user, value, "last_updated_at"),
    )


def _read_total(user: str, value: Mapping[str, Any]) -> int:
    if "total_budget" not in value:
        raise InvalidBudgetDict("is required", user=user, field="total_budget")
    amount = value["total_budget"]
    if isinstance(amount, bool) or not isinstance(amount, int | float | Decimal):
        raise InvalidBudgetDict(f"must be a number, got {type(amount).__name__}", user=user, field="total_budget")
    exact = Decimal(repr(amount)) if isinstance(amount, float) else Decimal(amount)
    if not exact.is_finite() or exact < 0:
        raise InvalidBudgetDict(f"must be a finite amount >= 0, got {amount!r}", user=user, field="total_budget")
    try:
        return usd_to_nanos(exact)
    except MoneyError as exc:
        raise InvalidBudgetDict(str(exc), user=user, field="total_budget") from exc


def _read_duration(user: str, duration: object) -> tuple[str | None, int | None]:
    """(our duration text, its length in seconds when sent as LiteLLM days)."""
    if duration is None:
        return None, None
    if isinstance(duration, str):
        return _parsed_duration(user, "duration", duration), None
    if isinstance(duration, bool) or not isinstance(duration, int | float | Decimal):
        raise InvalidBudgetDict(f"must be days or a duration text, got {duration!r}", user=user, field="duration")
    try:
        days = Decimal(repr(duration)) if isinstance(duration, float) else Decimal(duration)
        exact = days * SECONDS_PER_DAY
        seconds = int(exact.to_integral_value(rounding=ROUND_HALF_EVEN)) if exact.is_finite() else 0
    except (InvalidOperation, OverflowError):
        seconds, exact = 0, Decimal(0)
    if seconds < 1 or seconds > FIXED_SECONDS_MAX or abs(exact - seconds) > _SECONDS_TOLERANCE:
        raise InvalidBudgetDict(
            f"unknown duration {duration!r}: days must be a positive whole number of seconds, at most ten years",
            user=user,
            field="duration",
        )
    return _parsed_duration(user, "duration", _seconds_text(seconds)), seconds


def _seconds_text(seconds: int) -> str:
    if seconds % SECONDS_PER_DAY == 0:
        days = seconds // SECONDS_PER_DAY
        return _NAME_OF_DAYS.get(days, f"{days}d")
    for unit, size in (("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _parsed_duration(user: str, field: str, text: str) -> str:
    try:
        return parse_duration(text).text
    except LedgerError as exc:
        raise InvalidBudgetDict(exc.message, user=user, field=field) from exc


def _read_number(user: str, value: Mapping[str, Any], field: str) -> float | None:
    number = value.get(field)
    if number is None:
        return None
    if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
        raise InvalidBudgetDict(f"must be a finite number, got {number!r}", user=user, field=field)
    return float(number)


def _read_int(user: str, value: Mapping[str, Any], field: str, *, low: int) -> int | None:
    number = value.get(field)
    if number is None:
        return None
    if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= MAX_NANOS:
        raise InvalidBudgetDict(f"must be an integer in [{low}, {MAX_NANOS}], got {number!r}", user=user, field=field)
    return number


def _entry_commands(
    entry: _Entry, state: BudgetState | None, project_name: str, now: datetime, id_prefix: str
) -> list[BudgetCommand]:
    scope = f"user:{entry.user}"
    overall = None if state is None else overall_limit(state)
    commands: list[BudgetCommand] = []

    def command(action: CommandAction, change: str, **fields: Any) -> BudgetCommand:
        identity = "\x1f".join((project_name, scope, action, change))
        digest = hashlib.sha256(identity.encode()).hexdigest()[:24]
        try:
            return BudgetCommand(
                command_id=f"{id_prefix}:{action}:{digest}", scope_key=scope, action=action, issued_at=now, **fields
            )
        except ValidationError as exc:
            raise InvalidBudgetDict(str(exc.errors()[0]["msg"]), user=entry.user) from exc

    spec = _new_overall_spec(entry, overall)
    if spec is not None:  # the worker keeps the other limits as it finds them
        change = f"{spec.limit_name}\x1f{spec.max_budget_nanos}\x1f{spec.duration}"
        commands.append(command("set_overall", change, budgets=(spec,)))
    if state is not None and overall is not None and _is_reset(entry, overall):
        reopened = spec is not None and overall.spec.window_rules() != spec.window_rules()
        shown = ([] if reopened else [overall]) + list(_model_limits(state))
        for limit in shown:
            if limit.spend_nanos > 0:
                change = f"{limit.spec.limit_name}\x1f{limit.window_start.isoformat()}"
                commands.append(command("reset", change, limit_name=limit.spec.limit_name))
    return commands


def _new_overall_spec(entry: _Entry, overall: LimitState | None) -> BudgetSpec | None:
    """The overall limit the entry asks for, or None when it asks for nothing new."""
    if overall is None:
        total = entry.total_nanos if entry.total_nanos is not None else entry.echoed_total_nanos
        if entry.total_nanos is None and not entry.duration_asserted:
            return None  # everything is an echo of a limit since deleted: do not revive it
        duration = entry.duration_text if entry.duration_asserted else entry.echoed_duration_text
        base = BudgetSpec(max_budget_nanos=total, duration=duration)
    else:
        total_changed = entry.total_nanos is not None and entry.total_nanos != overall.spec.max_budget_nanos
        duration_changed = entry.duration_asserted and not _same_duration(entry, overall.spec.duration)
        if not total_changed and not duration_changed:
            return None
        # Soft budget, time zone and week start stay; a default name follows the duration.
        fields = overall.spec.model_dump()
        if overall.spec.name == default_limit_name(overall.spec.duration, None):
            fields["name"] = None
        fields["duration"] = entry.duration_text if duration_changed else overall.spec.duration
        fields["max_budget_nanos"] = entry.total_nanos if total_changed else overall.spec.max_budget_nanos
        base = BudgetSpec(**fields)
    return base


def _same_duration(entry: _Entry, current: str | None) -> bool:
    if entry.duration_text == current:
        return True
    return (
        entry.duration_seconds is not None
        and current is not None
        and _litellm_seconds(current) == entry.duration_seconds
    )


def _is_reset(entry: _Entry, overall: LimitState) -> bool:
    return entry.reset_requested and entry.last_updated_at == overall.window_start.timestamp()


def _model_limits(state: BudgetState) -> tuple[LimitState, ...]:
    """The per-model limits LiteLLM's ``model_cost`` shows: the first one of each model."""
    seen: set[str] = set()
    shown: list[LimitState] = []
    for limit in state.limits:
        if limit.spec.model is not None and limit.spec.model not in seen:
            seen.add(limit.spec.model)
            shown.append(limit)
    return tuple(shown)


def _model_of(limit: LimitState) -> str:
    assert limit.spec.model is not None
    return limit.spec.model


def _litellm_seconds(duration: str) -> int:
    parsed = parse_duration(duration)
    if parsed.calendar is not None:
        return _CALENDAR_DAYS[parsed.calendar] * SECONDS_PER_DAY
    assert parsed.seconds is not None
    return parsed.seconds


def _check_id_prefix(id_prefix: str) -> None:
    if not 0 < len(id_prefix) <= ID_PREFIX_MAX_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in id_prefix):
        raise ValueError(f"id_prefix must be 1..{ID_PREFIX_MAX_CHARS} printable characters")
