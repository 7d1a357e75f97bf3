"""Admission holds and rate shares, as pure functions over real domain objects
(DESIGN section 10): no broker, no api."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from ledger.domain.admission import (
    AdmissionBook,
    AdmissionEvent,
    AdmitRequest,
    Estimate,
    RequestIdUsed,
    SettledCharge,
    charge_source,
)
from ledger.domain.budgets import BudgetCommand, BudgetSpec
from ledger.domain.errors import UnpricedModel
from ledger.domain.events import TokenUsage
from ledger.domain.fold import Charge, apply_batch, apply_command, new_state
from ledger.domain.model_groups import CallModels, PricedEstimate, call_models, dearest_estimate
from ledger.domain.pricing import usage_cost_nanos
from ledger.domain.rate_shares import RateBook, RateLimitRecord
from ledger.domain.snapshots import BudgetSnapshot
from ledger.pricebooks.genai import genai_prices_book

T0 = datetime(2026, 11, 26, 12, 0, 5, tzinfo=UTC)
USD = 1_000_000_000
TEAM = "team:ml"


def budget(scope: str, max_nanos: int, model: str | None = None) -> BudgetSnapshot:
    command = BudgetCommand(
        command_id=f"c-{scope}",
        scope_key=scope,
        action="upsert",
        issued_at=T0 - timedelta(hours=1),
        budgets=(BudgetSpec(max_budget_nanos=max_nanos, duration="1d", model=model),),
    )
    state, _ = apply_command(new_state(scope), command)
    return BudgetSnapshot(state=state, applied={})


def charged(snapshot: BudgetSnapshot, cost_nanos: int, source: str, offset: int, at: datetime = T0) -> BudgetSnapshot:
    state, _ = apply_batch(snapshot.state, [Charge(f"e{offset}", at, "gpt-4o", cost_nanos)])
    return BudgetSnapshot(state=state, applied={**snapshot.applied, source: offset})


def book(ttl_s: float = 600, reservation: dict[str, float] | None = None) -> AdmissionBook:
    return AdmissionBook("api-1", ttl_s, RateBook(reservation or {}, 0.8))


def request(
    request_id: str,
    cost_nanos: int,
    *,
    tokens: int = 30,
    key: str = "k1",
    scopes: tuple[str, ...] = ("global:*", TEAM),
    model: str = "gpt-4o",
    priority: str | None = None,
) -> AdmitRequest:
    return AdmitRequest(request_id, scopes, model, key, priority, Estimate(cost_nanos, tokens))


def limits(model: str, tpm: int | None = None, rpm: int | None = None) -> RateLimitRecord:
    return RateLimitRecord(record_id=f"r-{model}", issued_at=T0, kind="model", model=model, tpm=tpm, rpm=rpm)


class States:
    """The snapshots the api would hold, changeable as the worker publishes."""

    def __init__(self, **snapshots: BudgetSnapshot) -> None:
        self.by_scope = {snapshot.state.scope_key: snapshot for snapshot in snapshots.values()}

    def __call__(self, scope: str) -> BudgetSnapshot | None:
        return self.by_scope.get(scope)


def test_a_budget_for_exactly_five_estimates_admits_five_of_fifty():
    states = States(team=budget(TEAM, 5 * USD))
    admissions = book()
    answers = [admissions.admit(request(f"r{i}", USD), states, T0) for i in range(50)]
    assert [a.status for a in answers].count(200) == 5
    assert [a.status for a in answers].count(402) == 45
    refused = answers[5]
    assert refused.refused_scope == TEAM
    assert refused.message is not None
    assert refused.message.startswith("Budget has been exceeded! Current cost: 5, Max budget: 5 (team:ml")
    assert admissions.refusals["budget"] == 45


def test_settled_holds_count_their_actual_cost_until_the_state_shows_it():
    states = States(team=budget(TEAM, 5 * USD))
    admissions = book()
    for i in range(5):
        assert admissions.admit(request(f"r{i}", USD), states, T0).status == 200
    snapshot = states.by_scope[TEAM]
    for i in range(5):  # each call cost half its estimate; the worker has not folded it yet
        admissions.settle(
            SettledCharge(f"r{i}", ("global:*", TEAM), "gpt-4o", USD // 2, 30, T0, "u1", 10 + i), states, T0
        )
    assert admissions.held_by_scope()[TEAM] == 5 * (USD // 2)
    assert admissions.admit(request("early", USD // 2 * 5 + 1), states, T0).status == 402
    for i in range(5):
        snapshot = charged(snapshot, USD // 2, "u1", 10 + i)
    states.by_scope[TEAM] = snapshot
    # the freed budget fits exactly: 2.5 USD, and not a nano more
    assert admissions.admit(request("one-nano-more", 5 * USD // 2 + 1), states, T0).status == 402
    exact = admissions.admit(request("exact", 5 * USD // 2), states, T0)
    assert exact.status == 200
    assert exact.scopes[1].remaining_nanos == 0
    assert admissions.admit(request("after", 1), states, T0).status == 402


def test_a_charge_the_state_already_shows_frees_the_hold_at_once():
    states = States(team=budget(TEAM, 5 * USD))
    admissions = book()
    admissions.admit(request("r", USD), states, T0)
    states.by_scope[TEAM] = charged(states.by_scope[TEAM], 2 * USD, "u3", 7)
    hold = admissions.settle(SettledCharge("r", ("global:*", TEAM), "gpt-4o", 2 * USD, 30, T0, "u3", 7), states, T0)
    assert hold is not None
    assert hold.state == "settled"
    assert admissions.held_by_scope() == {"global:*": 2 * USD}  # global's state has not folded it
    assert admissions.holds == {"r": hold}
    states.by_scope["global:*"] = charged(BudgetSnapshot(state=new_state("global:*")), 2 * USD, "u3", 7)
    admissions.drain_all(states)
    assert admissions.held_by_scope() == {}
    assert admissions.holds == {}


def test_a_usage_event_naming_other_scopes_frees_the_scopes_it_does_not_charge():
    states = States(team=budget(TEAM, 5 * USD))
    admissions = book()
    admissions.admit(request("r", USD), states, T0)
    admissions.settle(SettledCharge("r", ("global:*",), "gpt-4o", USD, 30, T0, "u0", 1), states, T0)
    assert admissions.held_by_scope() == {"global:*": USD}


def test_per_model_limits_count_only_holds_for_their_model():
    states = States(team=budget(TEAM, 2 * USD, model="gpt-4o"))
    admissions = book()
    assert admissions.admit(request("a", 2 * USD, model="claude-3"), states, T0).status == 200
    assert admissions.admit(request("b", 2 * USD), states, T0).status == 200
    assert admissions.admit(request("c", 1), states, T0).status == 402


def test_a_free_model_is_never_refused_for_budget():
    states = States(team=budget(TEAM, USD))
    admissions = book()
    assert admissions.admit(request("a", USD), states, T0).status == 200
    assert admissions.admit(request("b", 0), states, T0).status == 200


def test_released_and_expired_holds_free_their_budget_and_ids_are_not_reused():
    states = States(team=budget(TEAM, USD))
    admissions = book(ttl_s=60)
    assert admissions.admit(request("a", USD), states, T0).status == 200
    assert admissions.admit(request("b", USD), states, T0).status == 402
    assert admissions.end("a", "released", T0) is not None
    assert admissions.admit(request("b2", USD), states, T0).status == 200
    assert admissions.due(T0 + timedelta(seconds=59), timedelta(seconds=5)) == []
    due = admissions.due(T0 + timedelta(seconds=60), timedelta(seconds=5))
    assert [hold.request_id for hold in due] == ["b2"]
    admissions.end("b2", "expired", T0 + timedelta(seconds=60))
    assert admissions.held_by_scope() == {}
    with pytest.raises(RequestIdUsed, match="released"):
        admissions.admit(request("a", USD), states, T0)


def test_the_same_request_id_again_answers_its_open_hold():
    states = States(team=budget(TEAM, USD))
    admissions = book()
    first = admissions.admit(request("a", USD), states, T0)
    again = admissions.admit(request("a", USD), states, T0)
    assert again.status == 200
    assert again.repeated
    assert again.hold is first.hold
    assert admissions.held_by_scope()[TEAM] == USD
    with pytest.raises(RequestIdUsed):
        admissions.admit(request("a", USD, model="other"), states, T0)


def test_another_instances_holds_count_and_expire_after_a_grace():
    states = States(team=budget(TEAM, 2 * USD))
    ours, theirs = book(ttl_s=60), AdmissionBook("api-2", 60, RateBook({}, 0.8))
    taken = theirs.admit(request("x", USD), states, T0)
    assert taken.hold is not None
    event = taken.hold.event("held", T0, "api-2")
    ours.follow(AdmissionEvent.model_validate_json(event.model_dump_json()), states, T0)
    ours.follow(event, states, T0)  # read twice: no change
    assert ours.held_by_scope()[TEAM] == USD
    assert ours.admit(request("y", USD + 1), states, T0).status == 402
    grace = timedelta(seconds=5)
    assert ours.due(T0 + timedelta(seconds=62), grace) == []
    assert [h.request_id for h in ours.due(T0 + timedelta(seconds=65), grace)] == ["x"]
    ours.follow(taken.hold.event("released", T0, "api-2"), states, T0)
    assert ours.held_by_scope() == {}


def test_cancel_forgets_a_hold_that_was_never_published():
    states = States(team=budget(TEAM, USD))
    admissions = book()
    admissions.admit(request("a", USD), states, T0)
    admissions.cancel("a")
    assert admissions.held_by_scope() == {}
    assert admissions.admit(request("a", USD), states, T0).status == 200


# -- rate shares ------------------------------------------------------------------------------


def test_litellm_walkthrough_two_keys_share_sixty_tpm():
    admissions = book()
    admissions.rates.configure(limits("gpt-4o", tpm=60))
    states = States()
    assert admissions.admit(request("k1-1", 0, key="key-1"), states, T0).status == 200
    second = admissions.admit(request("k2-1", 0, key="key-2"), states, T0)
    assert second.status == 200
    assert second.rate.tokens is not None
    assert second.rate.tokens.share == 30
    refused = admissions.admit(request("k2-2", 0, key="key-2"), states, T0)
    assert refused.status == 429
    assert refused.message == "Key=key-2 over available TPM=0. Model TPM=0, Active keys=2"
    assert refused.rate.headers()["x-ratelimit-remaining-tokens"] == "0"
    assert admissions.refusals["tpm"] == 1


def test_priority_reservation_zero_refuses_dev_and_admits_prod():
    admissions = book(reservation={"dev": 0, "prod": 1})
    admissions.rates.configure(limits("gpt-4o", rpm=100))
    states = States()
    dev = admissions.admit(request("d", 0, key="dev-key", priority="dev"), states, T0)
    assert dev.status == 429
    assert dev.message is not None
    assert "over available RPM=0. Model RPM=100" in dev.message
    assert admissions.admit(request("p", 0, key="prod-key", priority="prod"), states, T0).status == 200
    with pytest.raises(KeyError):
        admissions.admit(request("q", 0, key="k", priority="staging"), states, T0)


def test_a_key_priority_set_on_the_key_applies_when_the_request_names_none():
    rates = RateBook({"dev": 0, "prod": 1}, 0.8)
    rates.configure(RateLimitRecord(record_id="p", issued_at=T0, kind="key_priority", key_id="k9", priority="dev"))
    assert rates.priority_of("k9", None) == "dev"
    assert rates.priority_of("k9", "prod") == "prod"


def test_below_saturation_a_key_borrows_and_at_saturation_shares_are_strict():
    admissions = book()
    admissions.rates.configure(limits("gpt-4o", rpm=10))
    states = States()
    n = 0

    def admit(key: str) -> int:
        nonlocal n
        n += 1
        return admissions.admit(request(f"r{n}", 0, key=key, tokens=1), states, T0).status

    assert admit("a") == 200
    assert admit("b") == 200  # two active keys: an even share is 5 each
    for _ in range(6):  # a borrows past its share of 5 while the model is under 80%
        assert admit("a") == 200
    assert admissions.rates.use["gpt-4o"].keys["a"].requests == 7  # more than an even share
    assert admissions.rates.use["gpt-4o"].requests == 8  # 80%: saturated
    assert admit("a") == 429  # over its share, and shares are strict now
    assert admit("c") == 200  # a newly active key still gets its share
    assert admit("b") == 200  # b has used 1 of its share of 3
    assert admit("b") == 429  # the model is full


def test_rate_use_starts_over_each_minute_and_settles_to_actual_tokens():
    admissions = book()
    admissions.rates.configure(limits("gpt-4o", tpm=100))
    states = States()
    admissions.admit(request("a", 0, key="k", tokens=90), states, T0)
    admissions.settle(SettledCharge("a", ("global:*",), "gpt-4o", 0, 20, T0, "u0", 1), states, T0)
    assert admissions.rates.use["gpt-4o"].keys["k"].tokens == 20
    # usage with no admission counts too
    admissions.settle(SettledCharge("other", ("global:*", "key:k"), "gpt-4o", 0, 50, T0, "u0", 2), states, T0)
    assert admissions.rates.use["gpt-4o"].tokens == 70
    next_minute = T0 + timedelta(minutes=1)
    decision = admissions.rates.decide("gpt-4o", "k", None, next_minute)
    assert decision.tokens is not None
    assert decision.tokens.key_used == 0


def test_reservation_fractions_are_exact():
    rates = RateBook({"dev": Decimal("0.1"), "prod": 0.9}, 0.8)
    rates.configure(limits("m", rpm=10))
    decision = rates.decide("m", "k", "dev", T0)
    assert decision.requests is not None
    assert decision.requests.share == 1
    with pytest.raises(ValueError, match="fraction"):
        RateBook({"x": 1.5})


def test_rate_limit_records_are_consistent():
    with pytest.raises(ValueError, match="model record"):
        RateLimitRecord(record_id="r", issued_at=T0, kind="model", tpm=5)
    record = RateLimitRecord(record_id="r", issued_at=T0, kind="priority_reservation", reservation={"dev": Decimal(0)})
    assert record.topic_key == "priority_reservation"


def test_charge_source_reads_the_workers_batch_ids():
    assert charge_source("p.internal.usage-by-event/3/1234") == ("u3", 1234)
    assert charge_source("api-batch") is None


def test_a_settled_charge_never_folded_stops_being_held_at_the_holds_expiry():
    states = States(team=budget(TEAM, 5 * USD))
    admissions = book(ttl_s=60)
    admissions.admit(request("r", USD), states, T0)
    admissions.settle(SettledCharge("r", ("global:*", TEAM), "gpt-4o", USD, 30, T0, "u1", 99), states, T0)
    assert admissions.stop_waiting(T0 + timedelta(seconds=59)) == 0
    assert admissions.held_by_scope()[TEAM] == USD
    assert admissions.stop_waiting(T0 + timedelta(seconds=60)) == 1
    assert admissions.held_by_scope() == {}
    assert admissions.holds == {}


def test_a_released_call_gives_back_its_estimated_tokens_but_not_its_request():
    admissions = book()
    admissions.rates.configure(limits("gpt-4o", tpm=100, rpm=10))
    states = States()
    admissions.admit(request("a", 0, key="k", tokens=60), states, T0)
    admissions.end("a", "released", T0)
    use = admissions.rates.use["gpt-4o"]
    assert (use.tokens, use.requests) == (0, 1)
    assert (use.keys["k"].tokens, use.keys["k"].requests) == (0, 1)


def test_an_estimate_costs_what_the_worker_would_charge_for_the_same_usage():
    from ledger.domain.events import TokenUsage, UsageEvent
    from ledger.domain.pricing import price_event, usage_cost_nanos
    from ledger.pricebooks.genai import genai_prices_book

    book = genai_prices_book()
    usage = TokenUsage(prompt_tokens=1_234, completion_tokens=567)
    for model in ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4-20250514"):
        event = UsageEvent(event_id="e", occurred_at=T0, model=model, usage=usage)
        assert usage_cost_nanos(book, model, usage, T0) == price_event(event, book).cost_nanos > 0


def test_an_admits_rate_answer_is_what_deciding_again_after_it_gives():
    admissions = book(reservation={"dev": 0.5, "prod": 0.5})
    admissions.rates.configure(limits("gpt-4o", tpm=1_000, rpm=10))
    states = States()
    for i, (key, priority) in enumerate([("a", "dev"), ("b", "dev"), ("a", "dev"), ("c", "prod")]):
        admitted = admissions.admit(request(f"r{i}", 0, key=key, tokens=40 + i, priority=priority), states, T0)
        assert admitted.status == 200
        assert admitted.rate == admissions.rates.decide("gpt-4o", key, priority, T0)


# -- model groups: rate shares on the group, prices on its models ---------------------------


def test_an_admit_naming_a_group_is_priced_as_its_recorded_models_and_limited_on_the_group():
    recorded = {"team-gpt": ("gpt-4o-mini", "gpt-4o")}
    assert call_models("team-gpt", None, (), recorded) == CallModels("team-gpt", ("gpt-4o-mini", "gpt-4o"))
    assert call_models(None, "team-gpt", (), recorded) == CallModels("team-gpt", ("gpt-4o-mini", "gpt-4o"))
    assert call_models("gpt-4o", "team-gpt", (), recorded) == CallModels("team-gpt", ("gpt-4o",))
    assert call_models(None, "team-gpt", ("gpt-4o", "gpt-4o"), {}) == CallModels("team-gpt", ("gpt-4o",))
    assert call_models("gpt-4o", None, (), recorded) == CallModels("gpt-4o", ("gpt-4o",))
    with pytest.raises(ValueError, match="model or its model_group"):
        call_models(None, None, (), recorded)


def test_a_group_is_estimated_as_its_dearest_model():
    prices = genai_prices_book()
    usage = TokenUsage(prompt_tokens=1_000, completion_tokens=1_000)
    group = CallModels("team-gpt", ("gpt-4o-mini", "gpt-4o"))
    found = dearest_estimate(prices, group, usage, T0, None)
    assert found == PricedEstimate("gpt-4o", usage_cost_nanos(prices, "gpt-4o", usage, T0))
    assert found.cost_nanos > usage_cost_nanos(prices, "gpt-4o-mini", usage, T0)


def test_an_unpriced_model_is_refused_unless_a_fallback_estimate_is_set():
    prices = genai_prices_book()
    usage = TokenUsage(prompt_tokens=10, completion_tokens=10)
    alias = CallModels("team-gpt", ("team-gpt",))
    with pytest.raises(UnpricedModel, match="team-gpt"):
        dearest_estimate(prices, alias, usage, T0, None)
    assert dearest_estimate(prices, alias, usage, T0, 500_000) == PricedEstimate("team-gpt", 500_000, fallback=True)
    half_priced = CallModels("team-gpt", ("gpt-4o-mini", "azure/my-deployment"))
    with pytest.raises(UnpricedModel, match="azure/my-deployment"):
        dearest_estimate(prices, half_priced, usage, T0, None)  # an upper bound needs every deployment's price


def test_an_endpoint_named_deployment_is_priced_as_its_group_when_the_group_has_a_price():
    prices = genai_prices_book()
    usage = TokenUsage(prompt_tokens=10, completion_tokens=10)
    found = dearest_estimate(prices, CallModels("gpt-4o", ("azure/gpt-4o-eu",)), usage, T0, None)
    assert found == PricedEstimate("gpt-4o", usage_cost_nanos(prices, "gpt-4o", usage, T0))


def test_rate_shares_count_on_the_group_and_budgets_on_the_priced_model():
    admissions = book()
    admissions.rates.configure(limits("team-gpt", rpm=2))
    states = States(team=budget(TEAM, 20 * USD, model="gpt-4o"))
    aliased = [
        AdmitRequest(f"r{i}", ("global:*", TEAM), "gpt-4o", "k1", None, Estimate(4 * USD, 30), "team-gpt")
        for i in range(4)
    ]
    answers = [admissions.admit(call, states, T0).status for call in aliased]
    assert answers == [200, 200, 429, 429]  # over rpm=2 on the group
    [room] = admissions.rooms((TEAM,), "gpt-4o", 0, states, T0)
    assert room.remaining_nanos == 12 * USD  # the per-model limit of the priced model holds both
    hold = admissions.holds["r0"]
    assert (hold.model, hold.model_group, hold.rate_model) == ("gpt-4o", "team-gpt", "team-gpt")
    assert admissions.rates.decide("gpt-4o", "k1", None, T0).allowed  # the priced model has no capacity
    record = hold.event("held", T0, "api-1")
    assert record.model_group == "team-gpt"
    other = book()
    other.rates.configure(limits("team-gpt", rpm=2))
    other.follow(record, states, T0)
    assert other.rates.decide("team-gpt", "k1", None, T0).requests.key_used == 1  # type: ignore[union-attr]


def test_a_model_record_carries_its_groups_models_and_a_tombstone_forgets_them():
    rates = RateBook({}, 0.8)
    record = RateLimitRecord(record_id="r", issued_at=T0, kind="model", model="team-gpt", models=("gpt-4o",), rpm=2)
    rates.configure(record)
    assert rates.group_models == {"team-gpt": ("gpt-4o",)}
    rates.configure(RateLimitRecord(record_id="r2", issued_at=T0, kind="model", model="team-gpt", models=("x",)))
    assert (rates.group_models, rates.capacities) == ({"team-gpt": ("x",)}, {})
    rates.forget(record.topic_key)
    assert rates.group_models == {}
    with pytest.raises(ValueError, match="models belong to a model record"):
        RateLimitRecord(record_id="r3", issued_at=T0, kind="key_priority", key_id="k", models=("x",))
