"""OpenAI usage objects and LiteLLM's standard logging payload become UsageEvents."""

from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from ledger.domain.errors import InvalidUsage
from ledger.domain.events import TokenUsage
from ledger.domain.usage_shapes import event_from_litellm_payload, event_from_openai, usage_from_openai

AT = datetime(2025, 11, 3, 9, 30, tzinfo=UTC)

CHAT_COMPLETION = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
}

RESPONSES_USAGE = {
    "input_tokens": 328,
    "input_tokens_details": {"cached_tokens": 128},
    "output_tokens": 52,
    "output_tokens_details": {"reasoning_tokens": 40},
    "total_tokens": 380,
}

# Anthropic through LiteLLM: prompt_tokens already counts cache reads and writes.
LITELLM_ANTHROPIC_USAGE = {
    "completion_tokens": 210,
    "prompt_tokens": 3_500,
    "total_tokens": 3_710,
    "prompt_tokens_details": {"cached_tokens": 2_000},
    "cache_creation_input_tokens": 1_200,
    "cache_read_input_tokens": 2_000,
}


def litellm_payload(**changes):
    payload = {
        "id": "chatcmpl-5f0e2d0b-7d35-4bb6-9f55-6a2a1e0b1c7d",
        "trace_id": "b9a1c0de-0000-4000-8000-000000000001",
        "call_type": "acompletion",
        "stream": False,
        "response_cost": 0.0135,
        "status": "success",
        "custom_llm_provider": "anthropic",
        "total_tokens": 3_710,
        "prompt_tokens": 3_500,
        "completion_tokens": 210,
        "startTime": 1762162200.25,
        "endTime": 1762162203.5,
        "completionStartTime": 1762162201.0,
        "response_time": 3.25,
        "model": "claude-sonnet-4-5",
        "model_id": "model-abc",
        "model_group": "claude-sonnet",
        "api_base": "https://api.anthropic.com/v1/messages",
        "metadata": {
            "user_api_key_hash": "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b",
            "user_api_key_alias": "research-bot",
            "user_api_key_team_id": "research",
            "user_api_key_user_id": "alice",
            "user_api_key_team_alias": "Research",
            "user_api_key_end_user_id": None,
            "spend_logs_metadata": None,
            "requester_ip_address": "127.0.0.1",
            "requester_metadata": {},
            "usage_object": LITELLM_ANTHROPIC_USAGE,
        },
        "cache_hit": None,
        "cache_key": None,
        "saved_cache_cost": 0.0,
        "request_tags": ["prod", "chat", "prod"],
        "end_user": "customer-42",
        "requester_ip_address": "127.0.0.1",
        "messages": [{"role": "user", "content": "hi"}],
        "response": {"id": "msg_01", "usage": LITELLM_ANTHROPIC_USAGE},
        "error_str": None,
        "model_parameters": {"max_tokens": 1024},
        "hidden_params": {"model_id": "model-abc", "cache_key": None, "api_base": None, "response_cost": None},
    }
    payload.update(changes)
    return payload


def test_a_chat_completion_maps_cached_tokens_to_cache_reads():
    event = event_from_openai(CHAT_COMPLETION, event_id="req-1", occurred_at=AT, team_id="research")
    assert event.model == "gpt-4o-2024-08-06"
    assert event.provider == "openai"
    assert event.usage == TokenUsage(prompt_tokens=1117, completion_tokens=46, cache_read_tokens=1024)
    assert event.scope_keys() == ("global:*", "team:research")


def test_a_responses_api_usage_maps_input_and_output():
    assert usage_from_openai(RESPONSES_USAGE) == TokenUsage(
        prompt_tokens=328, completion_tokens=52, cache_read_tokens=128, reasoning_tokens=40
    )


def test_litellm_usage_carries_cache_writes():
    assert usage_from_openai(LITELLM_ANTHROPIC_USAGE) == TokenUsage(
        prompt_tokens=3_500, completion_tokens=210, cache_read_tokens=2_000, cache_write_tokens=1_200
    )


def test_sdk_objects_are_read_through_their_attributes():
    usage = SimpleNamespace(prompt_tokens=10, completion_tokens=5, prompt_tokens_details=None)
    assert usage_from_openai(usage) == TokenUsage(prompt_tokens=10, completion_tokens=5)


def test_a_bare_usage_needs_a_model():
    with pytest.raises(InvalidUsage, match="no model") as info:
        event_from_openai(RESPONSES_USAGE, event_id="r", occurred_at=AT)
    assert info.value.field == "model"
    event = event_from_openai(RESPONSES_USAGE, event_id="r", occurred_at=AT, model="o4-mini")
    assert event.usage is not None
    assert event.usage.reasoning_tokens == 40


def test_an_integral_float_count_is_accepted_as_an_integer():
    assert usage_from_openai({"prompt_tokens": 12.0, "completion_tokens": 3}).prompt_tokens == 12


@pytest.mark.parametrize(
    ("usage", "field"),
    [
        ({"prompt_tokens": -1, "completion_tokens": 1}, "usage.prompt_tokens"),
        ({"prompt_tokens": "12", "completion_tokens": 1}, "usage.prompt_tokens"),
        ({"prompt_tokens": True, "completion_tokens": 1}, "usage.prompt_tokens"),
        ({"prompt_tokens": 1, "completion_tokens": 1.5}, "usage.completion_tokens"),
        ({"prompt_tokens": 1, "completion_tokens": float("nan")}, "usage.completion_tokens"),
        (
            {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 11}},
            "usage",
        ),
        ({"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": 7}, "usage.prompt_tokens_details"),
    ],
)
def test_bad_counts_name_the_field(usage, field):
    with pytest.raises(InvalidUsage) as info:
        usage_from_openai(usage)
    assert info.value.field == field


def test_a_litellm_payload_names_every_scope_and_keeps_the_reported_cost_exact():
    event = event_from_litellm_payload(litellm_payload())
    assert event.event_id == "chatcmpl-5f0e2d0b-7d35-4bb6-9f55-6a2a1e0b1c7d"
    assert event.occurred_at == datetime(2025, 11, 3, 9, 30, 0, 250000, tzinfo=UTC)
    assert (event.model, event.provider) == ("claude-sonnet-4-5", "anthropic")
    assert event.scope_keys() == (
        "global:*",
        "user:alice",
        "team:research",
        "key:88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b",
        "end_user:customer-42",
        "tag:prod",
        "tag:chat",
    )
    assert event.usage == TokenUsage(
        prompt_tokens=3_500, completion_tokens=210, cache_read_tokens=2_000, cache_write_tokens=1_200
    )
    assert event.reported_cost == Decimal("0.0135")
    assert event.metadata == {
        "call_type": "acompletion",
        "model_group": "claude-sonnet",
        "api_base": "https://api.anthropic.com/v1/messages",
        "trace_id": "b9a1c0de-0000-4000-8000-000000000001",
        "user_api_key_alias": "research-bot",
        "user_api_key_team_alias": "Research",
    }


def test_a_litellm_payload_without_usage_details_uses_its_totals():
    meta = {**litellm_payload()["metadata"], "usage_object": None}
    event = event_from_litellm_payload(litellm_payload(metadata=meta, response=None, end_user=""))
    assert event.usage == TokenUsage(prompt_tokens=3_500, completion_tokens=210)
    assert "end_user:customer-42" not in event.scope_keys()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"status": "failure"}, "status"),
        ({"id": ""}, "id"),
        ({"startTime": None}, "startTime"),
        ({"response_cost": float("nan")}, "response_cost"),
        ({"response_cost": -0.5}, "response_cost"),
        ({"response_cost": "cheap"}, "response_cost"),
    ],
)
def test_bad_litellm_payloads_are_refused_with_the_field(changes, field):
    with pytest.raises(InvalidUsage) as info:
        event_from_litellm_payload(litellm_payload(**changes))
    assert info.value.field == field


def test_an_event_that_cannot_be_built_raises_a_field_level_validation_error():
    with pytest.raises(ValidationError) as info:
        event_from_litellm_payload(litellm_payload(model="", model_group=None))
    assert info.value.errors()[0]["loc"] == ("model",)
