"""Usage events: one per LLM call, the input of the ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    field_validator,
    model_validator,
)

from ledger.domain.errors import InvalidUsage
from ledger.domain.scopes import GLOBAL_SCOPE, check_scope_id

SCHEMA_VERSION: Literal[1] = 1

# Limits (TIGER_STYLE: name them, test their edges).
TOKENS_PER_FIELD_MAX = 100_000_000  # larger than any context window; more is a bug upstream
REPORTED_COST_USD_MAX = Decimal(100_000)  # one call costing more is a bug upstream
TEXT_CHARS_MAX = 4_000_000
TAGS_MAX = 32
METADATA_KEYS_MAX = 64
METADATA_VALUE_CHARS_MAX = 1_024
BATCH_EVENTS_MAX = 10_000
EVENT_ID_CHARS_MAX = 200
MODEL_NAME_CHARS_MAX = 256
# Event time must lie in this absolute range; relative skew is checked by check_event_time.
OCCURRED_AT_MIN = datetime(2000, 1, 1, tzinfo=UTC)
OCCURRED_AT_MAX = datetime(2200, 1, 1, tzinfo=UTC)

# Lax parsing (ISO strings become datetimes) but never a silent numeric coercion:
# token counts are strict ints, so "12" and 12.5 are errors, not 12.
FROZEN = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

# "received": the event named no time; ``occurred_at`` is when it was received.
OccurredAtSource = Literal["event", "received"]


def _checked_id(value: str) -> str:
    check_scope_id(value)
    return value


Identifier = Annotated[str, AfterValidator(_checked_id)]
EventId = Annotated[str, StringConstraints(min_length=1, max_length=EVENT_ID_CHARS_MAX, pattern=r"^[^\x00-\x1f\x7f]+$")]
ModelName = Annotated[
    str, StringConstraints(min_length=1, max_length=MODEL_NAME_CHARS_MAX, pattern=r"^[^\x00-\x1f\x7f]+$")
]
TokenCount = Annotated[int, Strict(), Field(ge=0, le=TOKENS_PER_FIELD_MAX)]
MetadataValue = Annotated[str, StringConstraints(max_length=METADATA_VALUE_CHARS_MAX)] | int | bool | None


class TokenUsage(BaseModel):
    """Token counts of one call.

    ``prompt_tokens`` counts every input token, cache reads and cache writes included
    (OpenAI's convention); ``completion_tokens`` counts every output token, reasoning
    included. So cache and reasoning counts are parts of the totals, never additions.
    """

    model_config = FROZEN

    prompt_tokens: TokenCount = 0
    completion_tokens: TokenCount = 0
    cache_read_tokens: TokenCount = 0
    cache_write_tokens: TokenCount = 0
    reasoning_tokens: TokenCount = 0

    @model_validator(mode="after")
    def _parts_within_totals(self) -> TokenUsage:
        if self.cache_read_tokens + self.cache_write_tokens > self.prompt_tokens:
            raise ValueError(
                f"cache_read_tokens ({self.cache_read_tokens}) + cache_write_tokens "
                f"({self.cache_write_tokens}) exceed prompt_tokens ({self.prompt_tokens}); "
                "prompt_tokens must include cached tokens"
            )
        if self.reasoning_tokens > self.completion_tokens:
            raise ValueError(
                f"reasoning_tokens ({self.reasoning_tokens}) exceed completion_tokens "
                f"({self.completion_tokens}); completion_tokens must include reasoning tokens"
            )
        return self

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UsageEvent(BaseModel):
    """One completed LLM call, as any service reports it.

    It must carry ``usage``, or text to count tokens from, or a ``reported_cost``.
    """

    model_config = FROZEN

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: EventId
    occurred_at: AwareDatetime
    occurred_at_source: OccurredAtSource = "event"
    model: ModelName  # what the call is priced as
    provider: ModelName | None = None
    # The name the call asked for, when it differs or may (a LiteLLM proxy model_name, often
    # an alias for ``model``): rate shares count on it, and spend can be grouped by it.
    model_group: ModelName | None = None
    user_id: Identifier | None = None
    team_id: Identifier | None = None
    key_id: Identifier | None = None
    end_user: Identifier | None = None
    tags: tuple[Identifier, ...] = Field(default=(), max_length=TAGS_MAX)
    usage: TokenUsage | None = None
    reported_cost: Decimal | None = Field(default=None, ge=0, le=REPORTED_COST_USD_MAX)
    input_text: str | None = Field(default=None, max_length=TEXT_CHARS_MAX)
    output_text: str | None = Field(default=None, max_length=TEXT_CHARS_MAX)
    metadata: dict[Annotated[str, StringConstraints(min_length=1, max_length=128)], MetadataValue] = Field(
        default_factory=dict, max_length=METADATA_KEYS_MAX
    )

    # Field validators, not the model's: an error names the field it is about.
    @field_validator("occurred_at")
    @classmethod
    def _occurred_in_range(cls, occurred_at: datetime) -> datetime:
        if not OCCURRED_AT_MIN <= occurred_at < OCCURRED_AT_MAX:
            raise ValueError(
                f"{occurred_at.isoformat()} is outside [{OCCURRED_AT_MIN.date()}, {OCCURRED_AT_MAX.date()})"
            )
        return occurred_at

    @field_validator("tags")
    @classmethod
    def _tags_unique(cls, tags: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(tags)) != len(tags):
            repeated = sorted({tag for tag in tags if tags.count(tag) > 1})
            raise ValueError(f"tags contain duplicates: {repeated[:5]}")
        return tags

    @model_validator(mode="after")
    def _check(self) -> UsageEvent:
        if self.usage is None and self.input_text is None and self.output_text is None and self.reported_cost is None:
            raise ValueError("an event needs usage, input_text/output_text, or reported_cost")
        return self

    def scope_keys(self) -> tuple[str, ...]:
        """Every scope this event is charged to: global first, then user, team, key,
        end user and each tag."""
        # The ids were checked as Identifiers when the event was validated.
        keys = [GLOBAL_SCOPE]
        for kind, value in (
            ("user", self.user_id),
            ("team", self.team_id),
            ("key", self.key_id),
            ("end_user", self.end_user),
        ):
            if value is not None:
                keys.append(f"{kind}:{value}")
        keys.extend(f"tag:{tag}" for tag in self.tags)
        return tuple(keys)


class UsageBatch(BaseModel):
    """Several events in one message: per-message overhead dominates a Python stream
    processor, so our own producers batch. Dedup stays per event_id."""

    model_config = FROZEN

    schema_version: Literal[1] = SCHEMA_VERSION
    batch_id: EventId
    events: tuple[UsageEvent, ...] = Field(min_length=1, max_length=BATCH_EVENTS_MAX)


def with_received_time(raw: dict[str, Any], received_at: datetime | None) -> dict[str, Any]:
    """An event object that names no ``occurred_at`` occurred when it was received: the
    api's clock over HTTP, its record's timestamp on Kafka (every record carries one). It
    is marked ``occurred_at_source: "received"``, so the stored event says which. Without
    a ``received_at`` it is returned as it is, and refused for the missing field."""
    if received_at is None or "occurred_at" in raw or "adjustment_id" in raw:
        return raw
    if received_at.tzinfo is None:
        raise ValueError("received_at must be timezone-aware")
    return {**raw, "occurred_at": received_at.isoformat(), "occurred_at_source": "received"}


def check_event_time(
    occurred_at: datetime,
    now: datetime,
    *,
    max_future: timedelta = timedelta(minutes=5),
    max_past: timedelta = timedelta(days=400),
) -> None:
    """Refuse event times too far from ``now`` (clock skew or garbage), given by the caller
    since the domain never reads the clock."""
    if occurred_at > now + max_future:
        raise InvalidUsage(
            f"{occurred_at.isoformat()} is more than {max_future} ahead of {now.isoformat()}",
            field="occurred_at",
        )
    if occurred_at < now - max_past:
        raise InvalidUsage(
            f"{occurred_at.isoformat()} is more than {max_past.days} days before {now.isoformat()}",
            field="occurred_at",
        )
