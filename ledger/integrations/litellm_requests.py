"""What a LiteLLM call or proxy request names for the ledger: its scopes, its messages and
reply cap for an admission's estimate, its key's priority; and the errors the LiteLLM
proxy expects back when the ledger refuses it (``ledger.integrations.litellm_callback``
wires these)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import litellm

from ledger.client import LedgerApiError, RateLimited
from ledger.sdk.guard import BudgetExceededError

# Where a call names its scopes: LiteLLM's own metadata keys (the proxy sets the same ones,
# and the standard logging payload carries them), and ``user`` for the end user.
META_USER = "user_api_key_user_id"
META_TEAM = "user_api_key_team_id"
META_KEY = "user_api_key_hash"
META_END_USER = "user_api_key_end_user_id"
META_TAGS = "tags"
PROXY_BUDGET_STATUS = 400  # what the LiteLLM proxy answers for its own budget_exceeded
PROXY_UNPRICED_STATUS = 400  # a request a proxy hook refuses for its input, as the proxy answers it
PROXY_SERVER_MODULE = "litellm.proxy.proxy_server"  # holds the running proxy's ``llm_router``
# LiteLLM tags every proxy request with its User-Agent header, twice ("User-Agent: OpenAI",
# "User-Agent: OpenAI/Python 2.54.0"; StandardLoggingPayloadSetup._get_user_agent_tags), and
# its own spend reports tell those tags apart by this prefix (_is_user_agent_tag).
USER_AGENT_TAG_PREFIX = "user-agent:"


@dataclass(frozen=True, slots=True)
class CallScopes:
    """The ledger scopes a would-be call charges, and its model (for per-model limits)."""

    user: str | None = None
    team: str | None = None
    key: str | None = None
    end_user: str | None = None
    tags: tuple[str, ...] = ()
    model: str | None = None

    @property
    def named(self) -> bool:
        return any((self.user, self.team, self.key, self.end_user, self.tags))


def text_of(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _call_metadata(call: Mapping[str, Any]) -> Mapping[str, Any]:
    for field in ("metadata", "litellm_metadata"):
        value = call.get(field)
        if isinstance(value, Mapping) and value:
            return value
    return {}


def _bare_model(model: str | None) -> str | None:
    """``openai/gpt-4o`` -> ``gpt-4o``: the model name LiteLLM's payload (and so the event) has."""
    if model is None:
        return None
    try:
        bare = litellm.get_llm_provider(model=model)[0]
    except Exception:  # LiteLLM raises several types for a model it cannot route; keep the name
        return model
    return bare if isinstance(bare, str) and bare else model


def is_user_agent_tag(tag: str) -> bool:
    """Whether ``tag`` is one LiteLLM adds from the request's User-Agent header (one per
    client version), not one the caller or the key gave."""
    return tag.strip().lower().startswith(USER_AGENT_TAG_PREFIX)


def request_tags(raw_tags: Any, keep_user_agent_tags: bool = False) -> tuple[str, ...]:
    """The tags a call is charged to: its non-empty string tags, each once, in order;
    LiteLLM's User-Agent tags left out unless ``keep_user_agent_tags``."""
    if not isinstance(raw_tags, list | tuple):
        return ()
    tags = (tag for tag in raw_tags if isinstance(tag, str) and tag)
    return tuple(dict.fromkeys(tag for tag in tags if keep_user_agent_tags or not is_user_agent_tag(tag)))


def payload_with_request_tags(payload: Mapping[str, Any], keep_user_agent_tags: bool = False) -> Mapping[str, Any]:
    """The standard logging payload with ``request_tags`` as ``request_tags()`` keeps them."""
    raw_tags = payload.get("request_tags")
    if not isinstance(raw_tags, list | tuple):
        return payload
    kept = list(request_tags(raw_tags, keep_user_agent_tags))
    return payload if kept == list(raw_tags) else {**payload, "request_tags": kept}


def scopes_of_call(call: Mapping[str, Any], keep_user_agent_tags: bool = False) -> CallScopes:
    """Scopes of an SDK call from its keyword arguments: user, team and key from
    ``metadata`` (``user_api_key_user_id``, ``user_api_key_team_id``, ``user_api_key_hash``),
    end user from ``metadata.user_api_key_end_user_id`` or else the call's ``user``,
    tags from ``metadata.tags`` (LiteLLM's User-Agent tags only with ``keep_user_agent_tags``)."""
    meta = _call_metadata(call)
    tags = request_tags(meta.get(META_TAGS), keep_user_agent_tags)
    return CallScopes(
        user=text_of(meta.get(META_USER)),
        team=text_of(meta.get(META_TEAM)),
        key=text_of(meta.get(META_KEY)),
        end_user=text_of(meta.get(META_END_USER)) or text_of(call.get("user")),
        tags=tags,
        model=_bare_model(text_of(call.get("model"))),
    )


def scopes_of_proxy_request(
    user_api_key_dict: Any, data: Mapping[str, Any], keep_user_agent_tags: bool = False
) -> CallScopes:
    """Scopes of a LiteLLM proxy request: the authenticated key's user, team, hashed key
    and end user (``UserAPIKeyAuth``), else what the request's metadata says."""
    from_data = scopes_of_call(data, keep_user_agent_tags)
    return CallScopes(
        user=text_of(getattr(user_api_key_dict, "user_id", None)) or from_data.user,
        team=text_of(getattr(user_api_key_dict, "team_id", None)) or from_data.team,
        key=text_of(getattr(user_api_key_dict, "api_key", None))
        or text_of(getattr(user_api_key_dict, "token", None))
        or from_data.key,
        end_user=text_of(getattr(user_api_key_dict, "end_user_id", None)) or from_data.end_user,
        tags=from_data.tags,
        model=from_data.model,
    )


def proxy_router() -> Any:
    """The running LiteLLM proxy's router (``proxy_server.llm_router``), or None when this
    process is no proxy: the module is only read if the proxy already loaded it."""
    return getattr(sys.modules.get(PROXY_SERVER_MODULE), "llm_router", None)


def deployment_models(router: Any, group: str) -> tuple[str, ...]:
    """The models a proxy model group's deployments are priced as, named as LiteLLM's
    payload names them (no provider): each deployment's ``model_info.base_model``, else
    ``litellm_params.base_model``, else ``litellm_params.model``. Empty when the router
    does not know the group (the ledger then uses the group's recorded models)."""
    if router is None:
        return ()
    try:
        deployments = router.get_model_list(model_name=group) or []
    except Exception:  # a router of another LiteLLM version; the recorded models still apply
        return ()
    found: dict[str, None] = {}
    for deployment in deployments:
        if not isinstance(deployment, Mapping):
            continue
        info = deployment.get("model_info") or {}
        params = deployment.get("litellm_params") or {}
        named = text_of(info.get("base_model")) or text_of(params.get("base_model")) or text_of(params.get("model"))
        if named is not None and "*" not in named:  # a wildcard route prices as the requested model
            found[_bare_model(named) or named] = None
    return tuple(found)


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (part.get("text") for part in content if isinstance(part, Mapping))
        return "\n".join(part for part in parts if isinstance(part, str))
    return ""


def admission_messages(data: Mapping[str, Any]) -> list[dict[str, str]] | None:
    """The request's prompt as ``/v1/admit`` counts it: each chat message's role and text
    (images, audio and tool calls are left out), or a text completion's ``prompt`` / an
    embedding's ``input`` as user messages. None when the request has no text."""
    messages = data.get("messages")
    if isinstance(messages, list):
        return [
            {"role": text_of(message.get("role")) or "user", "content": _message_text(message.get("content"))}
            for message in messages
            if isinstance(message, Mapping)
        ]
    for field in ("prompt", "input"):
        value = data.get(field)
        texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        if texts and all(isinstance(text, str) for text in texts):
            return [{"role": "user", "content": text} for text in texts]
    return None


def admission_max_tokens(data: Mapping[str, Any]) -> int | None:
    """The reply's cap: ``max_tokens``, else ``max_completion_tokens``; None lets the api
    use its ``admission_default_max_tokens``."""
    for field in ("max_tokens", "max_completion_tokens"):
        value = data.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def key_priority(user_api_key_dict: Any) -> str | None:
    """The key's priority where LiteLLM's dynamic rate limiter reads it: ``metadata.priority``."""
    metadata = getattr(user_api_key_dict, "metadata", None)
    return text_of(metadata.get("priority")) if isinstance(metadata, Mapping) else None


class ProxyBudgetExceededError(BudgetExceededError, litellm.BudgetExceededError):  # type: ignore[misc]
    """A budget refusal on the LiteLLM proxy, as both errors at once: LiteLLM's own
    ``litellm.BudgetExceededError`` (what the proxy, its loggers and ``except`` clauses
    written for LiteLLM know) and the SDK's ``BudgetExceededError`` (exact ``*_nanos``, the
    refusing ``scope``). The proxy answers with its ``status_code`` and ``type``."""

    def __init__(self, refused: BudgetExceededError) -> None:
        # LiteLLM's __init__ sets its fields and ends the chain at Exception; ours are copied.
        litellm.BudgetExceededError.__init__(self, refused.current_cost, refused.max_budget, message=refused.message)
        self.current_cost_nanos = refused.current_cost_nanos
        self.max_budget_nanos = refused.max_budget_nanos
        self.scope = refused.scope
        self.status_code = PROXY_BUDGET_STATUS
        self.type = "budget_exceeded"


def proxy_budget_error(refused: BudgetExceededError) -> ProxyBudgetExceededError:
    return refused if isinstance(refused, ProxyBudgetExceededError) else ProxyBudgetExceededError(refused)


def proxy_unpriced_error(refused: LedgerApiError) -> Exception:
    """A request the ledger cannot estimate (its model has no price and no fallback is
    set), refused as the LiteLLM proxy refuses a request its hooks reject: its
    ``ProxyException``, answered as it is, with the ledger's message naming the model and
    the setting."""
    from litellm.proxy._types import ProxyException

    error: Exception = ProxyException(
        message=refused.message, type="unpriced_model", param="model", code=PROXY_UNPRICED_STATUS
    )
    return error


def proxy_rate_limit_error(refused: RateLimited, model: str | None) -> Exception:
    """LiteLLM's own 429, as its dynamic rate limiter raises it from a proxy hook:
    ``ProxyRateLimitError`` (a FastAPI ``HTTPException`` and a ``litellm.RateLimitError``)
    with ``detail={"error": <message>}`` and a ``retry-after`` header; a plain
    ``HTTPException`` of the same shape on a LiteLLM that has no ``ProxyRateLimitError``."""
    detail = {"error": refused.message}
    headers = {**refused.headers, "retry-after": str(refused.retry_after_s)}
    try:
        from litellm.exceptions import RateLimitType
        from litellm.proxy.common_utils.proxy_rate_limit_error import ProxyRateLimitError
        from litellm.proxy.hooks.rate_limiter_utils import resolve_llm_provider_for_rate_limit
    except ImportError:
        from fastapi import HTTPException

        return HTTPException(status_code=429, detail=detail, headers=headers)
    resolved_model, provider = resolve_llm_provider_for_rate_limit(model)
    error: Exception = ProxyRateLimitError(
        detail=detail,
        headers=headers,
        rate_limit_type=RateLimitType.TOKENS if " TPM=" in refused.message else RateLimitType.REQUESTS,
        model=resolved_model,
        llm_provider=provider,
    )
    return error


def payload_with_bare_model(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """The payload with ``model`` as price books name it: the LiteLLM proxy logs a
    deployment's model as configured (``openai/gpt-4o-mini``) with the provider beside it
    in ``custom_llm_provider``; that prefix is dropped (``gpt-4o-mini``, provider ``openai``)."""
    model = text_of(payload.get("model"))
    provider = text_of(payload.get("custom_llm_provider"))
    if model is None or provider is None or not model.startswith(f"{provider}/"):
        return payload
    return {**payload, "model": model.removeprefix(f"{provider}/")}


def payload_with_call_user(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """The payload with ``end_user`` set from the call's ``user`` argument when LiteLLM left
    it empty (the SDK keeps ``user`` only in ``model_parameters``; the proxy copies it)."""
    if text_of(payload.get("end_user")) is not None:
        return payload
    meta = payload.get("metadata")
    if isinstance(meta, Mapping) and text_of(meta.get(META_END_USER)) is not None:
        return payload
    parameters = payload.get("model_parameters")
    user = text_of(parameters.get("user")) if isinstance(parameters, Mapping) else None
    return payload if user is None else {**payload, "end_user": user}
