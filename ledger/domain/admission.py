"""Admission: holds that stop concurrent callers from overspending (DESIGN section 10).

A gateway asks before a call. The call is refused when, for any scope it names and any
limit that counts for its model, ``window spend + held + estimate > max_budget``, where
``held`` is what open holds reserve on the scope. Otherwise the estimate is held on every
scope until the call's usage event is charged (the hold is *settled*: its actual cost
replaces the estimate until the scope's live state includes the charge), the caller
releases it, or it expires.

How a settled hold knows its charge reached a scope's state: the worker names each
ledger-entries message after its input, ``<usage-by-event topic>/<partition>/<offset>``,
and each scope's snapshot records the last offset of that partition it folded (source
``u<partition>``). So the charge is in the scope's state once
``snapshot.applied["u<p>"] >= offset``; until then the actual cost stays held.

The book is pure (``now`` is passed in, no I/O): the api decides, publishes and follows.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Literal, Self, get_args

from pydantic import AwareDatetime, BaseModel, Field, StringConstraints, model_validator

from ledger.domain.budgets import BudgetState, LimitState, Nanos, ScopeKey
from ledger.domain.checks import current_state
from ledger.domain.events import FROZEN, SCHEMA_VERSION, EventId, ModelName
from ledger.domain.money import MAX_NANOS, format_usd
from ledger.domain.rate_shares import PriorityName, RateBook, RateDecision
from ledger.domain.snapshots import BudgetSnapshot

AdmissionState = Literal["held", "settled", "released", "expired"]
ADMISSION_STATES: tuple[str, ...] = get_args(AdmissionState)
OPEN_HOLDS_MAX = 200_000  # a hold is a few hundred bytes; more open at once is a leak or an attack
SCOPES_PER_HOLD_MAX = 64
InstanceId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")]


class AdmissionEvent(BaseModel):
    """What the ``admissions`` topic carries, keyed by request id: a hold was taken
    (``held``, with everything needed to rebuild it), or it ended."""

    model_config = FROZEN

    schema_version: Literal[1] = SCHEMA_VERSION
    request_id: EventId
    state: AdmissionState
    at: AwareDatetime
    instance_id: InstanceId
    scope_keys: tuple[ScopeKey, ...] = Field(default=(), max_length=SCOPES_PER_HOLD_MAX)
    model: ModelName | None = None
    model_group: ModelName | None = None  # None: the group is ``model`` (records before groups)
    rate_key: str | None = Field(default=None, max_length=300)
    priority: PriorityName | None = None
    estimate_nanos: Nanos = 0
    estimated_tokens: int = Field(default=0, ge=0, le=10**12)
    expires_at: AwareDatetime | None = None
    cost_nanos: int | None = Field(default=None, ge=-MAX_NANOS, le=MAX_NANOS)
    tokens: int | None = Field(default=None, ge=0, le=10**12)

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.state == "held" and (
            not self.scope_keys or self.model is None or self.rate_key is None or self.expires_at is None
        ):
            raise ValueError("a held event names its scope_keys, model, rate_key and expires_at")
        return self


@dataclass(slots=True)
class Hold:
    """An open hold, or one settled whose charge some scope's state does not show yet.
    ``model`` is what it is priced as (per-model budget limits count it), ``model_group``
    whose TPM/RPM shares it uses."""

    request_id: str
    scope_keys: tuple[str, ...]
    model: str
    rate_key: str
    priority: str | None
    estimate_nanos: int
    estimated_tokens: int
    held_at: datetime
    expires_at: datetime
    instance_id: str
    model_group: str | None = None  # None: the model is its own group
    state: AdmissionState = "held"
    # While settled: per scope still waiting, the charge's (source, offset) and cost.
    waiting: dict[str, tuple[str, int, int]] = field(default_factory=dict)

    @property
    def rate_model(self) -> str:
        """What its rate shares are counted on: its group."""
        return self.model_group or self.model

    def event(self, state: AdmissionState, at: datetime, instance_id: str, **extra: int | None) -> AdmissionEvent:
        """The ``admissions`` record of this hold taking ``state``."""
        if state != "held":
            return AdmissionEvent(request_id=self.request_id, state=state, at=at, instance_id=instance_id, **extra)
        return AdmissionEvent(
            request_id=self.request_id,
            state="held",
            at=self.held_at,
            instance_id=self.instance_id,
            scope_keys=self.scope_keys,
            model=self.model,
            model_group=self.model_group,
            rate_key=self.rate_key,
            priority=self.priority,
            estimate_nanos=self.estimate_nanos,
            estimated_tokens=self.estimated_tokens,
            expires_at=self.expires_at,
        )


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a call is expected to cost and use."""

    cost_nanos: int
    tokens: int


@dataclass(frozen=True, slots=True)
class AdmitRequest:
    """A call to admit: ``model`` is what it is priced as, ``model_group`` (None: the
    model) whose TPM/RPM shares it uses."""

    request_id: str
    scope_keys: tuple[str, ...]
    model: str
    rate_key: str
    priority: str | None
    estimate: Estimate
    model_group: str | None = None

    @property
    def rate_model(self) -> str:
        return self.model_group or self.model


@dataclass(frozen=True, slots=True)
class ScopeRoom:
    """A scope as admission sees it: its state now, what holds reserve, what is left."""

    scope_key: str
    state: BudgetState | None  # None: nothing has happened to the scope yet
    held_nanos: int
    binding: LimitState | None  # the applicable capped limit with the least room
    remaining_nanos: int | None  # after this call's estimate; None: no cap


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to an admit: ``status`` 200 (held), 402 (budget) or 429 (rate)."""

    status: Literal[200, 402, 429]
    hold: Hold | None
    scopes: tuple[ScopeRoom, ...]
    rate: RateDecision
    message: str | None = None
    refused_scope: str | None = None
    repeated: bool = False  # the request id's open hold, answered again

    @property
    def reason(self) -> str | None:
        if self.status == 402:
            return "budget"
        if self.status == 429:
            return "tpm" if self.rate.refused_on == "TPM" else "rpm"
        return None


@dataclass(frozen=True, slots=True)
class SettledCharge:
    """A ledger entry as admission needs it."""

    event_id: str
    scope_keys: tuple[str, ...]
    model: str
    cost_nanos: int
    tokens: int
    occurred_at: datetime
    source: str  # u<partition> of usage-by-event
    offset: int


SnapshotOf = Callable[[str], BudgetSnapshot | None]


class RequestIdUsed(Exception):
    """An admit named a request id whose hold has ended (or differs from its open hold)."""


class AdmissionBook:
    """Every open hold of every api instance, what they reserve per scope, and the rate
    shares. One per api process; ``admit`` and every change are plain calls."""

    def __init__(self, instance_id: str, ttl_s: float, rates: RateBook, closed_kept_s: float | None = None):
        self.instance_id = instance_id
        self.ttl = timedelta(seconds=ttl_s)
        self.rates = rates
        self.holds: dict[str, Hold] = {}
        self._closed: dict[str, tuple[AdmissionState, datetime]] = {}  # request id -> how and when it ended
        # Long enough that a record of a hold read late (another instance's, or the topic read
        # again after a restart) finds it ended; 500 admits/s keep ~300,000 ids at 10 minutes.
        self._closed_kept = timedelta(seconds=closed_kept_s if closed_kept_s is not None else ttl_s + 60)
        self._held: dict[str, int] = {}  # scope -> nanos held, all models
        self._held_model: dict[tuple[str, str], int] = {}  # (scope, model) -> nanos held
        # scope -> source -> heap of (offset, request id): settled charges its state does not
        # show yet, drained in offset order as the scope's snapshots advance.
        self._waiting: dict[str, dict[str, list[tuple[int, str]]]] = {}
        self.refusals: dict[str, int] = {"budget": 0, "tpm": 0, "rpm": 0}

    # -- deciding ------------------------------------------------------------------------

    def admit(self, request: AdmitRequest, snapshot_of: SnapshotOf, now: datetime) -> Admission:
        """Check every scope and the key's rate share, and hold the estimate if all
        allow it: one step, so concurrent admits in one process cannot both take the
        last room. Raises ``RequestIdUsed`` for a request id already ended, and
        ``KeyError`` for a priority the reservation does not name (check it first:
        ``RateBook.knows``)."""
        existing = self.holds.get(request.request_id)
        if existing is not None:
            if existing.state != "held" or existing.scope_keys != request.scope_keys or existing.model != request.model:
                raise RequestIdUsed(f"request id {request.request_id!r} has a hold for another call, or it ended")
            scopes = self.rooms(existing.scope_keys, existing.model, 0, snapshot_of, now)
            return Admission(
                200,
                existing,
                scopes,
                self.rates.decide(existing.rate_model, existing.rate_key, existing.priority, now),
                repeated=True,
            )
        if request.request_id in self._closed:
            state, _ = self._closed[request.request_id]
            raise RequestIdUsed(f"request id {request.request_id!r} was already admitted and its hold was {state}")
        if len(self.holds) >= OPEN_HOLDS_MAX:
            raise OverflowError(f"{OPEN_HOLDS_MAX} holds are open; release or settle some first")
        estimate = request.estimate
        scopes = self.rooms(request.scope_keys, request.model, estimate.cost_nanos, snapshot_of, now)
        rate = self.rates.decide(request.rate_model, request.rate_key, request.priority, now)
        for room in scopes:
            limit = room.binding
            if (
                estimate.cost_nanos > 0
                and limit is not None
                and room.remaining_nanos is not None
                and room.remaining_nanos < 0
            ):
                assert limit.spec.max_budget_nanos is not None
                self.refusals["budget"] += 1
                current = format_usd(limit.spend_nanos + room.held_nanos)
                message = (
                    f"Budget has been exceeded! Current cost: {current}, "
                    f"Max budget: {format_usd(limit.spec.max_budget_nanos)} "
                    f"({room.scope_key}, limit {limit.spec.limit_name}: spent {format_usd(limit.spend_nanos)}, "
                    f"held {format_usd(room.held_nanos)}, this call's estimate {format_usd(estimate.cost_nanos)})"
                )
                return Admission(402, None, scopes, rate, message, room.scope_key)
        if not rate.allowed:
            self.refusals["tpm" if rate.refused_on == "TPM" else "rpm"] += 1
            return Admission(429, None, scopes, rate, rate.message)
        hold = Hold(
            request.request_id,
            request.scope_keys,
            request.model,
            request.rate_key,
            request.priority,
            estimate.cost_nanos,
            estimate.tokens,
            now,
            now + self.ttl,
            self.instance_id,
            request.model_group,
        )
        self._open(hold, now)
        return Admission(200, hold, scopes, rate.counted(estimate.tokens))

    def rooms(
        self, scope_keys: Iterable[str], model: str, estimate_nanos: int, snapshot_of: SnapshotOf, now: datetime
    ) -> tuple[ScopeRoom, ...]:
        """Each scope's state now, what is held on it, and the room its tightest capped
        limit has left after ``estimate_nanos`` (negative: the call does not fit)."""
        found = []
        for scope in scope_keys:
            self._drain(scope, snapshot_of)
            snapshot = snapshot_of(scope)
            held_total = self._held.get(scope, 0)
            if snapshot is None:  # no limits: nothing to refuse
                found.append(ScopeRoom(scope, None, held_total, None, None))
                continue
            state = current_state(snapshot.state, now)
            binding: LimitState | None = None
            remaining: int | None = None
            for limit in state.limits:
                cap = limit.spec.max_budget_nanos
                if cap is None or (limit.spec.model is not None and limit.spec.model != model):
                    continue
                held = held_total if limit.spec.model is None else self._held_model.get((scope, limit.spec.model), 0)
                room = cap - limit.spend_nanos - held - estimate_nanos
                if remaining is None or room < remaining:
                    binding, remaining = limit, room
            found.append(ScopeRoom(scope, state, held_total, binding, remaining))
        return tuple(found)

    # -- holds opening and ending ---------------------------------------------------------

    def _open(self, hold: Hold, now: datetime) -> None:
        self.holds[hold.request_id] = hold
        for scope in hold.scope_keys:
            self._reserve(scope, hold.model, hold.estimate_nanos)
        self.rates.count_admitted(
            hold.rate_model, hold.rate_key, hold.priority, hold.estimated_tokens, hold.held_at, now
        )

    def _reserve(self, scope: str, model: str, nanos: int) -> None:
        total = self._held.get(scope, 0) + nanos
        by_model = self._held_model.get((scope, model), 0) + nanos
        if total:
            self._held[scope] = total
        else:
            self._held.pop(scope, None)
        if by_model:
            self._held_model[(scope, model)] = by_model
        else:
            self._held_model.pop((scope, model), None)

    def _close(self, hold: Hold, state: AdmissionState, now: datetime) -> None:
        """Take an open hold's estimate off every scope."""
        for scope in hold.scope_keys:
            self._reserve(scope, hold.model, -hold.estimate_nanos)
        self.holds.pop(hold.request_id, None)
        self._closed[hold.request_id] = (state, now)

    def end(self, request_id: str, state: Literal["released", "expired", "settled"], now: datetime) -> Hold | None:
        """Release or expire an open hold (or settle one whose charge the state already
        shows); the hold, or None when none was open."""
        hold = self.holds.get(request_id)
        if hold is None or hold.state != "held":
            return None
        self._close(hold, state, now)
        hold.state = state
        if state == "released":  # the call failed: it used no tokens (its request still counts)
            self.rates.count_tokens(hold.rate_model, hold.rate_key, -hold.estimated_tokens, hold.held_at, now)
        return hold

    def cancel(self, request_id: str) -> None:
        """Undo a hold whose ``held`` record could not be published: as if never taken
        (its request id may be admitted again; its rate counts stay, the safe side)."""
        hold = self.holds.get(request_id)
        if hold is not None and hold.state == "held":
            self._close(hold, "released", hold.held_at)
            self._closed.pop(request_id, None)

    def ended(self, request_id: str) -> AdmissionState | None:
        """How the request id's hold ended, if it did (and is still remembered)."""
        found = self._closed.get(request_id)
        return None if found is None else found[0]

    def settle(self, charge: SettledCharge, snapshot_of: SnapshotOf, now: datetime) -> Hold | None:
        """A ledger entry was read: settle the open hold of its event id, if any, and count
        its tokens in the key's minute. Returns the hold it settled."""
        hold = self.holds.get(charge.event_id)
        if hold is None or hold.state != "held":
            self._count_unadmitted(charge, now)
            return None
        self.rates.count_tokens(
            hold.rate_model, hold.rate_key, charge.tokens - hold.estimated_tokens, hold.held_at, now
        )
        for scope in hold.scope_keys:
            self._reserve(scope, hold.model, -hold.estimate_nanos)
        hold.state = "settled"
        self._closed[hold.request_id] = ("settled", now)
        charged = set(charge.scope_keys)
        for scope in hold.scope_keys:
            if scope in charged and not _folded(snapshot_of(scope), charge.source, charge.offset):
                hold.waiting[scope] = (charge.source, charge.offset, charge.cost_nanos)
                self._reserve(scope, hold.model, charge.cost_nanos)
                heapq.heappush(
                    self._waiting.setdefault(scope, {}).setdefault(charge.source, []), (charge.offset, hold.request_id)
                )
        if not hold.waiting:
            self.holds.pop(hold.request_id, None)
        return hold

    def _count_unadmitted(self, charge: SettledCharge, now: datetime) -> None:
        keys = [scope.removeprefix("key:") for scope in charge.scope_keys if scope.startswith("key:")]
        if keys and charge.event_id not in self._closed:
            self.rates.count_tokens(charge.model, keys[0], charge.tokens, charge.occurred_at, now)

    def _drain(self, scope: str, snapshot_of: SnapshotOf) -> None:
        """Stop holding settled charges the scope's state now includes."""
        waiting = self._waiting.get(scope)
        if not waiting:
            return
        snapshot = snapshot_of(scope)
        applied = {} if snapshot is None else snapshot.applied
        for source in list(waiting):
            heap = waiting[source]
            folded = applied.get(source, -1)
            while heap and heap[0][0] <= folded:
                _, request_id = heapq.heappop(heap)
                self._unwait(scope, request_id)
            if not heap:
                del waiting[source]
        if not waiting:
            del self._waiting[scope]

    def _unwait(self, scope: str, request_id: str) -> None:
        hold = self.holds.get(request_id)
        if hold is None or scope not in hold.waiting:
            return
        _, _, cost = hold.waiting.pop(scope)
        self._reserve(scope, hold.model, -cost)
        if not hold.waiting:
            self.holds.pop(request_id, None)

    def drain_all(self, snapshot_of: SnapshotOf) -> None:
        for scope in list(self._waiting):
            self._drain(scope, snapshot_of)

    def due(self, now: datetime, grace: timedelta) -> list[Hold]:
        """Open holds past their expiry that this instance should expire now: its own at
        once, another instance's after ``grace`` (that instance may be gone)."""
        return [
            hold
            for hold in self.holds.values()
            if hold.state == "held"
            and (hold.expires_at <= now if hold.instance_id == self.instance_id else hold.expires_at + grace <= now)
        ]

    def stop_waiting(self, now: datetime) -> int:
        """Stop holding settled charges still not in a scope's state at their hold's
        expiry (a safety net: the worker folds every charge, and soon); how many."""
        stale = [hold for hold in self.holds.values() if hold.state == "settled" and hold.expires_at <= now]
        for hold in stale:
            for scope in list(hold.waiting):  # its heap entries are skipped when popped
                self._unwait(scope, hold.request_id)
        return len(stale)

    def forget_closed(self, now: datetime) -> None:
        """Drop the memory of holds that ended long ago (their ids may not be reused
        within that time)."""
        cutoff = now - self._closed_kept
        for request_id in [rid for rid, (_, at) in self._closed.items() if at < cutoff]:
            del self._closed[request_id]

    # -- following the topic ----------------------------------------------------------------

    def follow(self, event: AdmissionEvent, snapshot_of: SnapshotOf, now: datetime) -> None:
        """Apply a record of ``admissions`` (another instance's, or one's own read back).
        Applying one twice changes nothing."""
        if event.state == "held":
            if event.request_id in self.holds or event.request_id in self._closed:
                return
            assert event.expires_at is not None
            assert event.model is not None
            assert event.rate_key is not None
            if event.expires_at <= now - self.ttl:  # long over: only history
                return
            self._open(
                Hold(
                    event.request_id,
                    event.scope_keys,
                    event.model,
                    event.rate_key,
                    event.priority,
                    event.estimate_nanos,
                    event.estimated_tokens,
                    event.at,
                    event.expires_at,
                    event.instance_id,
                    event.model_group,
                ),
                now,
            )
            return
        if event.state in ("released", "expired"):
            if self.end(event.request_id, event.state, now) is None:
                self._closed.setdefault(event.request_id, (event.state, now))
            return
        # settled: this instance settles from the ledger entry itself; the record only
        # says that the hold ended, for an instance that has not read the entry yet it
        # stays held (the safe side) until it does.
        if event.request_id not in self.holds:
            self._closed.setdefault(event.request_id, ("settled", now))

    # -- views ------------------------------------------------------------------------------

    def open_holds(self) -> list[Hold]:
        return [hold for hold in self.holds.values() if hold.state == "held"]

    def held_by_scope(self) -> Mapping[str, int]:
        return dict(self._held)

    def open_by_scope(self) -> dict[str, int]:
        """How many open holds name each scope."""
        counts: dict[str, int] = {}
        for hold in self.holds.values():
            if hold.state == "held":
                for scope in hold.scope_keys:
                    counts[scope] = counts.get(scope, 0) + 1
        return counts


def _folded(snapshot: BudgetSnapshot | None, source: str, offset: int) -> bool:
    return snapshot is not None and snapshot.applied.get(source, -1) >= offset


def charge_source(batch_id: str) -> tuple[str, int] | None:
    """``(u<partition>, offset)`` of a ledger-entries batch id the worker wrote
    (``<usage-by-event topic>/<partition>/<offset>``); None for another shape."""
    parts = batch_id.rsplit("/", 2)
    if len(parts) != 3 or not parts[1].isdecimal() or not parts[2].isdecimal():
        return None
    return f"u{int(parts[1])}", int(parts[2])
