"""Rate shares: each key's share of a model's TPM and RPM in the current UTC minute
(DESIGN section 10, LiteLLM's dynamic rate limiter with priority reservation).

A model has a capacity (``tpm``, ``rpm``). Its active keys this minute are those admitted
for it. A key's share is ``floor(capacity x weight / active keys of its priority)``, the
weight being the priority's reserved fraction (1 without a priority). A key is refused
when its own use this minute has reached its share, or the model has nothing left. Below
the saturation threshold a key may borrow unused capacity of its priority's reservation;
at or above it shares are strict, so a greedy key cannot starve a newly active one.

Pure: the minute comes from ``now``, passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Annotated, Literal, Self

from pydantic import AwareDatetime, BaseModel, Field, StringConstraints, model_validator

from ledger.domain.events import FROZEN, SCHEMA_VERSION, EventId, Identifier, ModelName
from ledger.domain.model_groups import DEPLOYMENT_MODELS_MAX

PriorityName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
Reservation = dict[PriorityName, Annotated[Decimal, Field(ge=0, le=1, allow_inf_nan=False)]]
CAPACITY_MAX = 10**12  # tokens or requests a minute; more is a typo
PRIORITIES_MAX = 64
RateLimitKind = Literal["model", "priority_reservation", "key_priority"]
PRIORITY_RESERVATION_KEY = "priority_reservation"


class RateLimitRecord(BaseModel):
    """One record of the compacted ``rate-limits`` topic (the last per key wins):

    - ``model``: a model group's ``tpm``/``rpm`` capacity (None: unlimited) and the models
      its deployments are priced as (``models``; None: the group is its own model);
    - ``priority_reservation``: LiteLLM's ``{"dev": 0, "prod": 1}`` fractions (None:
      back to the setting);
    - ``key_priority``: the priority of a key (None: no priority).
    """

    model_config = FROZEN

    schema_version: Literal[1] = SCHEMA_VERSION
    record_id: EventId
    issued_at: AwareDatetime
    kind: RateLimitKind
    model: ModelName | None = None
    tpm: int | None = Field(default=None, ge=1, le=CAPACITY_MAX)
    rpm: int | None = Field(default=None, ge=1, le=CAPACITY_MAX)
    models: tuple[ModelName, ...] | None = Field(default=None, min_length=1, max_length=DEPLOYMENT_MODELS_MAX)
    reservation: Reservation | None = Field(default=None, max_length=PRIORITIES_MAX)
    key_id: Identifier | None = None
    priority: PriorityName | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.kind == "model") != (self.model is not None):
            raise ValueError("a model record names its model, and only it does")
        if (self.kind == "key_priority") != (self.key_id is not None):
            raise ValueError("a key_priority record names its key_id, and only it does")
        if self.kind != "model" and (self.tpm is not None or self.rpm is not None or self.models is not None):
            raise ValueError("tpm, rpm and models belong to a model record")
        if self.kind != "priority_reservation" and self.reservation is not None:
            raise ValueError("reservation belongs to a priority_reservation record")
        if self.kind != "key_priority" and self.priority is not None:
            raise ValueError("priority belongs to a key_priority record")
        return self

    @property
    def topic_key(self) -> str:
        """``model:<name>``, ``priority_reservation`` or ``key:<id>``."""
        if self.kind == "model":
            return f"model:{self.model}"
        if self.kind == "key_priority":
            return f"key:{self.key_id}"
        return PRIORITY_RESERVATION_KEY


@dataclass(frozen=True, slots=True)
class ModelCapacity:
    tpm: int | None = None
    rpm: int | None = None


@dataclass(slots=True)
class KeyUse:
    tokens: int = 0
    requests: int = 0
    priority: str | None = None  # the first one it was admitted with this minute
    admitted: bool = False  # active: admitted for the model this minute


@dataclass(slots=True)
class PoolUse:
    """The keys of one priority on one model this minute: how many are active, and
    what they used together (the pool their priority's reservation bounds)."""

    active: int = 0
    tokens: int = 0
    requests: int = 0


@dataclass(slots=True)
class ModelMinute:
    """A model's use in one UTC minute: its total, each key's own, each priority's pool.
    Kept as running sums so a decision is O(1) whatever the number of keys."""

    tokens: int = 0
    requests: int = 0
    keys: dict[str, KeyUse] = field(default_factory=dict)
    pools: dict[str | None, PoolUse] = field(default_factory=dict)

    def pool(self, priority: str | None) -> PoolUse:
        found = self.pools.get(priority)
        if found is None:
            found = self.pools[priority] = PoolUse()
        return found

    def add(self, own: KeyUse, tokens: int, requests: int) -> None:
        pool = self.pool(own.priority)
        tokens = max(tokens, -own.tokens)  # never below zero
        own.tokens += tokens
        own.requests += requests
        pool.tokens += tokens
        pool.requests += requests
        self.tokens += tokens
        self.requests += requests


@dataclass(frozen=True, slots=True)
class Dimension:
    """One of TPM or RPM for one decision."""

    name: Literal["TPM", "RPM"]
    capacity: int
    share: int
    key_used: int
    model_used: int
    active_keys: int

    @property
    def available(self) -> int:
        return max(0, self.share - self.key_used)

    @property
    def model_remaining(self) -> int:
        return max(0, self.capacity - self.model_used)


@dataclass(frozen=True, slots=True)
class RateDecision:
    """Whether a key may make a call to a model now, and what is left of its share."""

    allowed: bool
    message: str | None = None
    refused_on: Literal["TPM", "RPM"] | None = None
    tokens: Dimension | None = None
    requests: Dimension | None = None
    reset_s: int = 60

    def counted(self, tokens: int) -> RateDecision:
        """This decision once its call is counted: one request and ``tokens`` more for the
        key and the model (the key was already counted as active when deciding)."""
        return replace(
            self,
            tokens=None if self.tokens is None else _used(self.tokens, tokens),
            requests=None if self.requests is None else _used(self.requests, 1),
        )

    def headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers for the dimensions the model limits."""
        found: dict[str, str] = {}
        for suffix, dimension in (("tokens", self.tokens), ("requests", self.requests)):
            if dimension is not None:
                found[f"x-ratelimit-limit-{suffix}"] = str(dimension.share)
                found[f"x-ratelimit-remaining-{suffix}"] = str(dimension.available)
                found[f"x-ratelimit-reset-{suffix}"] = f"{self.reset_s}s"
        return found


ALLOWED_WITHOUT_LIMITS = RateDecision(allowed=True)


def _used(dimension: Dimension, more: int) -> Dimension:
    return replace(dimension, key_used=dimension.key_used + more, model_used=dimension.model_used + more)


def minute_of(now: datetime) -> int:
    """The UTC minute ``now`` falls in, as minutes since the epoch."""
    return int(now.timestamp()) // 60


def seconds_to_next_minute(now: datetime) -> int:
    return 60 - int(now.timestamp()) % 60


class RateBook:
    """Model capacities, the models each group is priced as, priorities, and this
    minute's use per model and key."""

    def __init__(self, reservation: Mapping[str, Decimal | float] | None = None, saturation: Decimal | float = 0.8):
        self.default_reservation = _fractions(reservation or {})
        self.reservation: dict[str, Fraction] | None = None  # set by a record; None: the default
        self.saturation = Fraction(str(saturation))
        self.capacities: dict[str, ModelCapacity] = {}
        self.group_models: dict[str, tuple[str, ...]] = {}  # group -> its deployments' priced models
        self.key_priorities: dict[str, str] = {}
        self.minute = 0
        self.use: dict[str, ModelMinute] = {}

    # -- configuration -----------------------------------------------------------------

    def configure(self, record: RateLimitRecord) -> None:
        """Apply one ``rate-limits`` record (the last per key wins)."""
        if record.kind == "model":
            assert record.model is not None
            if record.tpm is None and record.rpm is None:
                self.capacities.pop(record.model, None)
            else:
                self.capacities[record.model] = ModelCapacity(record.tpm, record.rpm)
            if record.models is None:
                self.group_models.pop(record.model, None)
            else:
                self.group_models[record.model] = record.models
        elif record.kind == "key_priority":
            assert record.key_id is not None
            if record.priority is None:
                self.key_priorities.pop(record.key_id, None)
            else:
                self.key_priorities[record.key_id] = record.priority
        else:
            self.reservation = None if record.reservation is None else _fractions(record.reservation)

    def forget(self, topic_key: str) -> None:
        """A tombstone on ``rate-limits``: the key's setting is gone."""
        if topic_key.startswith("model:"):
            self.capacities.pop(topic_key.removeprefix("model:"), None)
            self.group_models.pop(topic_key.removeprefix("model:"), None)
        elif topic_key.startswith("key:"):
            self.key_priorities.pop(topic_key.removeprefix("key:"), None)
        elif topic_key == PRIORITY_RESERVATION_KEY:
            self.reservation = None

    @property
    def reservations(self) -> dict[str, Fraction]:
        return self.default_reservation if self.reservation is None else self.reservation

    def priority_of(self, key: str, requested: str | None) -> str | None:
        """A request's own priority wins over the key's."""
        return requested if requested is not None else self.key_priorities.get(key)

    def knows(self, priority: str | None) -> bool:
        """Whether ``priority`` may be used: no priority, no reservation, or one it names."""
        return priority is None or not self.reservations or priority in self.reservations

    def weight(self, priority: str | None) -> Fraction:
        """The priority's reserved fraction; 1 without a priority. Raises KeyError for a
        priority the reservation does not name (a typo must not get full capacity)."""
        if priority is None or not self.reservations:
            return Fraction(1)
        return self.reservations[priority]

    # -- this minute ---------------------------------------------------------------------

    def _minute(self, now: datetime) -> int:
        minute = minute_of(now)
        if minute != self.minute:
            self.minute = minute
            self.use = {}
        return minute

    def decide(self, model: str, key: str, priority: str | None, now: datetime) -> RateDecision:
        """May ``key`` call ``model`` now? Counts nothing."""
        capacity = self.capacities.get(model)
        if capacity is None:
            return ALLOWED_WITHOUT_LIMITS
        self._minute(now)
        weight = self.weight(priority)
        use = self.use.get(model) or ModelMinute()
        own = use.keys.get(key) or KeyUse(priority=priority)
        pool = use.pools.get(priority) or PoolUse()
        active = pool.active + (0 if own.admitted and own.priority == priority else 1)
        saturated = _saturated(capacity, use, self.saturation)
        reset_s = seconds_to_next_minute(now)
        dimensions: list[Dimension] = []
        for name, cap, key_used, model_used, pool_used in (
            ("TPM", capacity.tpm, own.tokens, use.tokens, pool.tokens),
            ("RPM", capacity.rpm, own.requests, use.requests, pool.requests),
        ):
            if cap is None:
                continue
            share = (cap * weight.numerator) // (weight.denominator * active)
            dimension = Dimension(name, cap, share, key_used, model_used, active)  # type: ignore[arg-type]
            dimensions.append(dimension)
            may_borrow = not saturated and pool_used * weight.denominator < cap * weight.numerator
            if dimension.model_remaining <= 0 or (dimension.available <= 0 and not may_borrow):
                message = (
                    f"Key={key} over available {name}={dimension.available}. "
                    f"Model {name}={dimension.model_remaining}, Active keys={active}"
                )
                return self._decision(False, dimensions, reset_s, message, name)  # type: ignore[arg-type]
        return self._decision(True, dimensions, reset_s)

    @staticmethod
    def _decision(
        allowed: bool,
        dimensions: list[Dimension],
        reset_s: int,
        message: str | None = None,
        refused_on: Literal["TPM", "RPM"] | None = None,
    ) -> RateDecision:
        by_name = {d.name: d for d in dimensions}
        return RateDecision(allowed, message, refused_on, by_name.get("TPM"), by_name.get("RPM"), reset_s)

    def count_admitted(
        self, model: str, key: str, priority: str | None, tokens: int, at: datetime, now: datetime
    ) -> None:
        """An admitted call: one request and its estimated tokens in the minute it was
        admitted (nothing when that minute is over)."""
        if minute_of(at) != self._minute(now):
            return
        use = self.use.setdefault(model, ModelMinute())
        own = use.keys.get(key)
        if own is None:
            own = use.keys[key] = KeyUse(priority=priority)
        if not own.admitted:
            if own.priority != priority and (own.tokens or own.requests):  # used before under another pool
                moved = use.pool(own.priority)
                moved.tokens -= own.tokens
                moved.requests -= own.requests
                use.pool(priority).tokens += own.tokens
                use.pool(priority).requests += own.requests
            own.priority = priority
            own.admitted = True
            use.pool(priority).active += 1
        use.add(own, tokens, 1)

    def count_tokens(self, model: str, key: str, tokens_delta: int, at: datetime, now: datetime) -> None:
        """Tokens of usage in the minute ``at`` (a settled call's actual minus its
        estimate, or a call made without admission); nothing when that minute is over."""
        if tokens_delta == 0 or model not in self.capacities or minute_of(at) != self._minute(now):
            return
        use = self.use.setdefault(model, ModelMinute())
        own = use.keys.get(key)
        if own is None:
            own = use.keys[key] = KeyUse(priority=self.key_priorities.get(key))
        use.add(own, tokens_delta, 0)


def _saturated(capacity: ModelCapacity, use: ModelMinute, threshold: Fraction) -> bool:
    for cap, used in ((capacity.tpm, use.tokens), (capacity.rpm, use.requests)):
        if cap is not None and used * threshold.denominator >= cap * threshold.numerator:
            return True
    return False


def _fractions(reservation: Mapping[str, Decimal | float]) -> dict[str, Fraction]:
    found = {}
    for name, value in reservation.items():
        fraction = Fraction(str(value))
        if not 0 <= fraction <= 1:
            raise ValueError(f"priority_reservation[{name!r}] = {value} is not a fraction from 0 to 1")
        found[name] = fraction
    return found


def rate_key(key: str | None, user: str | None) -> str:
    """Whose share a call uses: its key, else its user, else everyone without one."""
    if key is not None:
        return key
    return f"user:{user}" if user is not None else "anonymous"
