"""``GET /metrics``: Prometheus text exposition of budgets, ingest and the projector.

``spend_ledger_remaining_budget_usd{scope_kind,scope_id,alias}`` is the counterpart of
LiteLLM's ``litellm_remaining_team_budget_metric``: the room left in each scope's binding
limit (floats: metrics are for display; the api's JSON carries exact nanos).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from ledger.domain.budgets import BudgetState
from ledger.domain.checks import current_state
from ledger.domain.money import nanos_to_usd
from ledger.domain.scopes import parse_scope_key

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _usd(nanos: int) -> str:
    return repr(float(nanos_to_usd(nanos)))


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        self.name = name

    def add(self, value: str | int | float, labels: Mapping[str, str] | None = None) -> None:
        text = ""
        if labels:
            text = "{" + ",".join(f'{key}="{_label(val)}"' for key, val in labels.items()) + "}"
        self.lines.append(f"{self.name}{text} {value}")


def budget_metrics(states: Mapping[str, BudgetState], now: datetime) -> list[str]:
    """Per scope: spend in the binding limit's window, its max, what remains, whether
    exceeded; and every scope's total spend."""
    remaining = _Family("spend_ledger_remaining_budget_usd", "gauge", "USD left before a scope's budget is exceeded")
    maximum = _Family("spend_ledger_max_budget_usd", "gauge", "a scope's max budget per window (its binding limit)")
    window = _Family("spend_ledger_window_spend_usd", "gauge", "USD spent in the current window of the binding limit")
    exceeded = _Family("spend_ledger_budget_exceeded", "gauge", "1 when any limit of the scope is exceeded")
    total = _Family(
        "spend_ledger_total_spend_usd", "gauge", "USD charged to a scope since it began (adjustments included)"
    )
    for key in sorted(states):
        state = current_state(states[key], now)
        kind, scope_id = parse_scope_key(key)
        labels = {"scope_kind": kind, "scope_id": scope_id, "alias": state.alias or ""}
        total.add(_usd(state.total_spend_nanos), labels)
        capped = [limit for limit in state.limits if limit.remaining_nanos is not None and limit.spec.model is None]
        if not capped:
            continue
        binding = min(capped, key=lambda limit: limit.remaining_nanos or 0)
        assert binding.remaining_nanos is not None
        assert binding.spec.max_budget_nanos is not None
        remaining.add(_usd(binding.remaining_nanos), labels)
        maximum.add(_usd(binding.spec.max_budget_nanos), labels)
        window.add(_usd(binding.spend_nanos), labels)
        exceeded.add(int(state.exceeded), labels)
    return [*remaining.lines, *maximum.lines, *window.lines, *exceeded.lines, *total.lines]


def counter_metrics(
    counts: Mapping[str, int], accepted: int, lags: Mapping[str, int], alerts: Mapping[str, int] | None = None
) -> list[str]:
    """Events accepted over HTTP by this process, rows in the store, alerts stored by kind,
    and how far the projector and the budget-state follower are behind the topics."""
    families = []
    accepted_family = _Family(
        "spend_ledger_events_accepted_total", "counter", "usage events accepted by POST /v1/usage (this process)"
    )
    accepted_family.add(accepted)
    families.append(accepted_family)
    for name, key, help_text in (
        ("spend_ledger_events_stored_total", "usage_events", "unique usage events in the store"),
        ("spend_ledger_events_charged_total", "charges", "ledger entries charging an event, in the store"),
        ("spend_ledger_adjustments_total", "adjustments", "replay adjustments, in the store"),
        ("spend_ledger_events_dead_lettered_total", "dead_letters", "records refused with a reason, in the store"),
    ):
        family = _Family(name, "counter", help_text)
        family.add(counts.get(key, 0))
        families.append(family)
    alert_family = _Family("spend_ledger_alerts_total", "counter", "budget alerts in the store, by kind")
    for kind, count in (alerts or {}).items():
        alert_family.add(count, {"kind": kind})
    families.append(alert_family)
    lag = _Family("spend_ledger_lag_records", "gauge", "records on the topics not yet read")
    for reader, records in lags.items():
        lag.add(records, {"reader": reader})
    families.append(lag)
    return [line for family in families for line in family.lines]


def render(sections: Iterable[list[str]]) -> str:
    return "\n".join(line for section in sections for line in section) + "\n"


def admission_metrics(
    open_by_scope: Mapping[str, int], held_by_scope: Mapping[str, int], refusals: Mapping[str, int]
) -> list[str]:
    """Open holds and the USD they reserve per scope, and admits refused by reason
    (``budget``, ``tpm``, ``rpm``) by this process."""
    holds = _Family("spend_ledger_open_holds", "gauge", "open admission holds naming a scope")
    held = _Family("spend_ledger_held_usd", "gauge", "USD reserved on a scope by open or settling holds")
    refused = _Family("spend_ledger_admission_refusals_total", "counter", "admits refused by this process, by reason")
    for key in sorted(set(open_by_scope) | set(held_by_scope)):
        kind, scope_id = parse_scope_key(key)
        labels = {"scope_kind": kind, "scope_id": scope_id}
        holds.add(open_by_scope.get(key, 0), labels)
        held.add(_usd(held_by_scope.get(key, 0)), labels)
    for reason, count in sorted(refusals.items()):
        refused.add(count, {"reason": reason})
    return [*holds.lines, *held.lines, *refused.lines]
