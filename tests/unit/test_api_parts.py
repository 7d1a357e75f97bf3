"""The api's pure parts: request bodies, keys, budget fields, metrics text."""

from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest
from pydantic import ValidationError

from ledger.api.auth import AuthError, Keys, authorize
from ledger.api.deps import repeated_names, repeated_query_error
from ledger.api.ingest import BODY_BYTES_MAX, BodyError, parse_usage_body, wire_events
from ledger.api.metrics import budget_metrics, counter_metrics, render
from ledger.api.schemas import BudgetRequest
from ledger.domain.budgets import BudgetCommand
from ledger.domain.events import BATCH_EVENTS_MAX
from ledger.domain.fold import Charge, apply_batch, apply_command, new_state

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
GOOD = {"event_id": "e1", "model": "gpt-4o", "usage": {"prompt_tokens": 10, "completion_tokens": 2}}


def body(value: object) -> bytes:
    return orjson.dumps(value)


def refusal(raw: bytes) -> BodyError:
    with pytest.raises(BodyError) as caught:
        parse_usage_body(raw, NOW)
    return caught.value


# -- POST /v1/usage bodies -------------------------------------------------------------


def test_one_event_a_batch_and_a_list_are_all_accepted():
    assert [e.event_id for e in parse_usage_body(body(GOOD), NOW)] == ["e1"]
    batch = {"events": [GOOD, {**GOOD, "event_id": "e2"}]}
    assert [e.event_id for e in parse_usage_body(body(batch), NOW)] == ["e1", "e2"]
    assert len(parse_usage_body(body([GOOD, {**GOOD, "event_id": "e3"}]), NOW)) == 2


def test_missing_occurred_at_is_stamped_with_the_receive_time_and_given_ones_are_kept():
    (stamped,) = parse_usage_body(body(GOOD), NOW)
    assert stamped.occurred_at == NOW
    (kept,) = parse_usage_body(body({**GOOD, "occurred_at": "2026-11-25T08:00:00Z"}), NOW)
    assert kept.occurred_at == datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def test_one_bad_event_refuses_the_whole_batch_with_its_field_errors():
    bad = {**GOOD, "event_id": "e2", "usage": {"prompt_tokens": "12", "completion_tokens": -1}}
    error = refusal(body({"events": [GOOD, bad, "not an object"]}))
    assert error.status == 422
    assert error.message == "2 of 3 events are invalid; nothing was published"
    locations = {tuple(field["loc"]) for field in error.fields or []}
    assert ("events", 1, "usage", "prompt_tokens") in locations
    assert ("events", 1, "usage", "completion_tokens") in locations
    assert ("events", 2) in locations


def test_malformed_empty_and_wrong_shapes_get_clear_4xx():
    assert refusal(b'{"event_id": ').status == 400
    assert refusal(b"   ").status == 400
    assert refusal(b"42").status == 422
    assert refusal(body({"events": {"a": 1}})).status == 422
    assert refusal(body({"events": []})).message == "the batch holds no events"
    extra = refusal(body({"events": [GOOD], "tenant": "x"}))
    assert "unexpected fields: ['tenant']" in extra.message


def test_a_batch_over_the_limit_is_a_field_error_and_a_body_over_the_limit_a_413():
    too_many = refusal(body({"events": [GOOD] * (BATCH_EVENTS_MAX + 1)}))
    assert too_many.status == 422
    assert str(BATCH_EVENTS_MAX) in too_many.message
    assert too_many.fields[0]["loc"] == ["events"]
    assert refusal(b" " * (BODY_BYTES_MAX + 1)).status == 413


def test_nan_infinity_and_floats_as_token_counts_are_refused():
    for usage in ({"prompt_tokens": 1.5}, {"prompt_tokens": 10**12}):
        assert refusal(body({**GOOD, "usage": usage})).status == 422
    assert refusal(b'{"event_id": "e1", "model": "m", "reported_cost": NaN}').status == 400


def test_wire_events_leave_defaults_out_and_validate_again():
    (event,) = parse_usage_body(body(GOOD), NOW)
    (wire,) = wire_events([event])
    assert wire["occurred_at"].startswith("2026-11-26T12:00:00")
    assert "tags" not in wire
    assert "schema_version" not in wire
    assert parse_usage_body(body(wire), NOW) == [event]


# -- keys ------------------------------------------------------------------------------

KEYS = Keys(master="master-key-0123456789", ingest="ingest-key-0123456789")


def test_no_master_key_leaves_every_route_open():
    authorize(Keys(master=None, ingest=None), None, "admin")


@pytest.mark.parametrize(
    ("header", "role", "status"),
    [
        (None, "admin", 401),
        ("Basic abc", "admin", 401),
        ("Bearer ", "client", 401),
        ("Bearer wrong-key-0123456789", "admin", 403),
        ("Bearer wrong-key-0123456789", "client", 403),
        ("Bearer ingest-key-0123456789", "admin", 403),
    ],
)
def test_missing_malformed_wrong_or_insufficient_keys_are_refused(header, role, status):
    with pytest.raises(AuthError) as caught:
        authorize(KEYS, header, role)
    assert caught.value.status == status


def test_the_master_key_opens_everything_and_the_ingest_key_only_client_routes():
    authorize(KEYS, "Bearer master-key-0123456789", "admin")
    authorize(KEYS, "bearer master-key-0123456789", "client")
    authorize(KEYS, "Bearer ingest-key-0123456789", "client")


# -- budget fields ---------------------------------------------------------------------


def test_budget_fields_become_exact_limits():
    request = BudgetRequest.model_validate_json(
        b'{"max_budget": 0.1, "soft_budget": "0.05", "budget_duration": "Monthly",'
        b' "model_max_budget": {"gpt-4o": 0.02, "o3": {"budget_limit": 1, "time_period": "1d"}}}'
    )
    overall, gpt4o, o3 = request.specs()
    assert (overall.max_budget_nanos, overall.soft_budget_nanos, overall.duration) == (
        100_000_000,
        50_000_000,
        "monthly",
    )
    assert (gpt4o.model, gpt4o.max_budget_nanos, gpt4o.duration) == ("gpt-4o", 20_000_000, "monthly")
    assert (o3.model, o3.max_budget_nanos, o3.duration) == ("o3", 1_000_000_000, "1d")


@pytest.mark.parametrize(
    "raw",
    [
        b"{}",
        b'{"max_budget": -1}',
        b'{"max_budget": 1e-10}',
        b'{"max_budget": "NaN"}',
        b'{"max_budget": 1, "budget_duration": "fortnightly"}',
        b'{"max_budget": 1, "timezone": "Mars/Olympus"}',
        b'{"max_budget": 1, "colour": "red"}',
        b'{"model_max_budget": {"gpt-4o": {"budget_limit": 1, "max_budget": 2}}}',
    ],
)
def test_bad_budget_fields_are_refused(raw):
    with pytest.raises(ValidationError):
        BudgetRequest.model_validate_json(raw)


# -- metrics ---------------------------------------------------------------------------


def test_metrics_show_each_scopes_remaining_budget_with_escaped_labels():
    command = BudgetCommand(
        command_id="c1",
        scope_key="team:ml",
        action="upsert",
        issued_at=NOW,
        alias='Machine "Learning"',
        budgets=BudgetRequest(max_budget=Decimal("0.5"), budget_duration="1d").specs(),
    )
    team, _ = apply_command(new_state("team:ml"), command)
    team, _ = apply_batch(team, [Charge("e1", NOW, "gpt-4o", 200_000_000)])
    text = render([budget_metrics({"team:ml": team, "user:bob": new_state("user:bob")}, NOW)])
    labels = 'scope_kind="team",scope_id="ml",alias="Machine \\"Learning\\""'
    assert f"spend_ledger_remaining_budget_usd{{{labels}}} 0.3\n" in text
    assert f"spend_ledger_max_budget_usd{{{labels}}} 0.5\n" in text
    assert f"spend_ledger_budget_exceeded{{{labels}}} 0\n" in text
    assert 'spend_ledger_remaining_budget_usd{scope_kind="user"' not in text  # no budget, no remaining
    assert 'spend_ledger_total_spend_usd{scope_kind="user",scope_id="bob",alias=""} 0.0' in text


def test_counter_metrics_name_every_count_and_lag():
    text = render([counter_metrics({"charges": 7, "dead_letters": 2}, 9, {"projector": 3}, {"exceeded": 4})])
    assert 'spend_ledger_alerts_total{kind="exceeded"} 4\n' in text
    assert "spend_ledger_events_accepted_total 9\n" in text
    assert "spend_ledger_events_charged_total 7\n" in text
    assert "spend_ledger_events_dead_lettered_total 2\n" in text
    assert 'spend_ledger_lag_records{reader="projector"} 3\n' in text


def test_check_views_have_exactly_the_documented_fields():
    from ledger.api.schemas import ScopeCheckView, check_views
    from ledger.domain.checks import call_scopes, check

    command = BudgetCommand(
        command_id="c1",
        scope_key="team:ml",
        action="upsert",
        issued_at=NOW,
        budgets=BudgetRequest(max_budget=Decimal("0.5"), budget_duration="1d", model_max_budget={"o3": 1}).specs(),
    )
    team, _ = apply_command(new_state("team:ml"), command)
    views = check_views(check({"team:ml": team}, call_scopes(team="ml"), "o3", NOW))
    for view in views:
        assert ScopeCheckView.model_validate(view).model_dump() == view
    assert [limit["name"] for limit in views[1]["limits"]] == ["1d", "model:o3:1d"]


def test_api_refuses_a_non_loopback_address_without_a_master_key(monkeypatch):
    from typer.testing import CliRunner

    from ledger.cli.main import app
    from ledger.cli.serve import is_loopback

    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("10.0.0.5")
    monkeypatch.delenv("SPEND_LEDGER_MASTER_KEY", raising=False)
    result = CliRunner().invoke(app, ["api", "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 2
    assert "without a master key" in " ".join(result.output.split())


def test_a_parameter_that_takes_one_value_is_repeated_only_when_given_twice():
    items = [("user", "a"), ("tag", "x"), ("tag", "y"), ("limit", "5"), ("user", "b"), ("limit", "x"), ("user", "c")]
    assert repeated_names(items, {"user", "limit", "team"}) == ["user", "limit"]
    assert repeated_names(items, {"team"}) == []
    error = repeated_query_error(["limit"])
    assert error.errors() == [
        {"loc": ("query", "limit"), "msg": "takes one value; it was given more than once", "type": "repeated"}
    ]
