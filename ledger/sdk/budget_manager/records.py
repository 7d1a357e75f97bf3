"""What both BudgetManager backends share: a user's budget as read, the backend
interface, and the completion objects LiteLLM's ``update_cost`` accepts, as usage events."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from ledger.domain.errors import InvalidUsage, LedgerError
from ledger.domain.events import TokenUsage, UsageEvent
from ledger.domain.pricing import price_event
from ledger.domain.scopes import InvalidScope, check_scope_id
from ledger.domain.usage_shapes import as_mapping, usage_from_openai
from ledger.integrations.litellm_budget import litellm_duration_days, usd_float

# LiteLLM's create_budget accepts these; any duration of ours (``1h``, ``30d``) works too.
LITELLM_DURATIONS = ("daily", "weekly", "monthly", "yearly")


class UnknownUser(KeyError):
    """A user with no budget (LiteLLM raises ``KeyError`` here, so this is one)."""

    def __init__(self, user: str) -> None:
        super().__init__(user)
        self.user = user

    def __str__(self) -> str:
        return f"user {self.user!r} has no budget: call create_budget first"


class InvalidUser(LedgerError):
    """A user id the ledger cannot hold (empty, too long, control characters)."""

    reason = "invalid_user"


@dataclass(frozen=True, slots=True)
class UserBudget:
    """One user's overall budget in its current window, read from a backend."""

    user: str
    total_budget_nanos: int
    current_cost_nanos: int
    duration: str | None
    created_at: float
    last_updated_at: float  # the current window's start, as LiteLLM's field means
    model_cost_nanos: Mapping[str, int] = field(default_factory=dict)

    def as_litellm(self) -> dict[str, Any]:
        """LiteLLM's ``user_dict`` entry: USD floats for display, with exact companions
        (``*_nanos``) and our ``duration_text``; ``duration`` is in LiteLLM's days."""
        entry: dict[str, Any] = {
            "total_budget": usd_float(self.total_budget_nanos),
            "current_cost": usd_float(self.current_cost_nanos),
            "model_cost": {model: usd_float(nanos) for model, nanos in self.model_cost_nanos.items()},
            "created_at": self.created_at,
            "last_updated_at": self.last_updated_at,
            "total_budget_nanos": self.total_budget_nanos,
            "current_cost_nanos": self.current_cost_nanos,
            "model_cost_nanos": dict(self.model_cost_nanos),
            "duration_text": self.duration,
        }
        if self.duration is not None:
            entry["duration"] = litellm_duration_days(self.duration)
        return entry


class BudgetBackend(Protocol):
    """Where a BudgetManager keeps its users: every method is one atomic step."""

    def load(self, user: str) -> UserBudget | None:
        """The user's budget as of now (a window that ended reads 0), or None."""

    def load_all(self) -> list[UserBudget]:
        """Every user of the project, as of now."""

    def create(self, user: str, total_budget_nanos: int, duration: str | None, created_at: float) -> UserBudget:
        """Set the user's overall budget; spend in the current window is kept."""

    def charge(self, user: str, event: UsageEvent) -> UserBudget:
        """Charge one call to an existing user (``UnknownUser`` otherwise); an event_id
        already charged is not charged again."""

    def reset(self, user: str) -> UserBudget:
        """Open a new window for the user now: current cost 0."""

    def close(self) -> None:
        """Release what the backend holds."""


def checked_user(user: object) -> str:
    """The user id, or ``InvalidUser`` naming what is wrong with it."""
    if not isinstance(user, str):
        raise InvalidUser(f"a user id is a string, got {type(user).__name__}")
    try:
        check_scope_id(user)
    except InvalidScope as exc:
        raise InvalidUser(f"user {user!r}: {exc}") from exc
    return user


def event_id_for(project_name: str, user: str, completion_id: str | None) -> str:
    """A completion's id makes its charge idempotent (a retried ``update_cost`` with the
    same completion counts once); without one, every call is new."""
    if completion_id is None:
        return f"budget-manager:{uuid.uuid4().hex}"
    digest = hashlib.sha256("\x00".join((project_name, user, completion_id)).encode()).hexdigest()
    return f"budget-manager:{digest[:40]}"


def _provider_of(completion: Any) -> str | None:
    hidden = getattr(completion, "_hidden_params", None)
    if isinstance(hidden, Mapping):
        provider = hidden.get("custom_llm_provider")
        if isinstance(provider, str) and provider:
            return provider
    return None


def event_from_completion(completion: Any, *, project_name: str, user: str, occurred_at: datetime) -> UsageEvent:
    """A usage event from a LiteLLM ``ModelResponse``, an OpenAI response object, or a
    plain dict with ``model`` and ``usage`` (``id`` optional)."""
    data = as_mapping(completion, "completion_obj")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidUsage("the completion has no model", field="completion_obj.model")
    if data.get("usage") is None:
        raise InvalidUsage("the completion has no usage", field="completion_obj.usage")
    completion_id = data.get("id")
    return UsageEvent(
        event_id=event_id_for(project_name, user, completion_id if isinstance(completion_id, str) else None),
        occurred_at=occurred_at,
        model=model,
        provider=_provider_of(completion),
        user_id=user,
        usage=usage_from_openai(data["usage"], field="completion_obj.usage"),
        metadata={"source": "budget_manager", "project": project_name[:1024]},
    )


def event_from_text(
    model: str, input_text: str, output_text: str, *, project_name: str, user: str, occurred_at: datetime
) -> UsageEvent:
    """A usage event whose tokens the ledger counts from the texts."""
    return UsageEvent(
        event_id=event_id_for(project_name, user, None),
        occurred_at=occurred_at,
        model=model,
        user_id=user,
        input_text=input_text,
        output_text=output_text,
        metadata={"source": "budget_manager", "project": project_name[:1024]},
    )


def message_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text of chat messages, as LiteLLM's ``projected_cost`` joins them (text parts
    of multi-part contents included)."""
    parts: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, Sequence):
            parts.extend(
                part["text"] for part in content if isinstance(part, Mapping) and isinstance(part.get("text"), str)
            )
    return "".join(parts)


def prompt_cost_nanos(model: str, prompt_tokens: int, at: datetime) -> int:
    """What ``prompt_tokens`` of input cost on ``model`` by the bundled price book."""
    from ledger.pricebooks.genai import genai_prices_book

    event = UsageEvent(event_id="projected", occurred_at=at, model=model, usage=TokenUsage(prompt_tokens=prompt_tokens))
    return price_event(event, genai_prices_book()).cost_nanos
