"""The CLI commands that talk to a running ledger, as a user runs them: budgets, check,
publish and alerts list through a real api process, alerts tail and prices import
straight to the broker. One worker and one api for the whole module."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner, Result

from ledger.broker import EmbeddedBroker
from ledger.cli.main import app
from ledger.domain.budgets import BudgetAlert
from ledger.domain.prices import PriceBook
from ledger.pricebooks.litellm import import_litellm_prices
from tests.integration.builders import unique, until, usage
from tests.integration.conftest import ApiProcess, Ledger, running_ledger

MASTER_KEY = "sk-test-cli-client-0123456789"
WAIT_S = 30.0
SAMPLE_LITELLM = Path(__file__).parent.parent / "data" / "litellm_prices_sample.json"

runner = CliRunner()


@dataclass
class Stack:
    ledger: Ledger
    api: ApiProcess
    env: dict[str, str]

    def run(self, *args: str, stdin: str | None = None) -> Result:
        return runner.invoke(app, list(args), env=self.env, input=stdin)

    def usage_records(self) -> int:
        """Records on the ``usage`` topic, every partition."""
        return len(self.ledger.read(self.ledger.topics.usage))


@pytest.fixture(scope="module")
def stack(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_ledger(broker, tmp_path_factory.mktemp("cli-client"), MASTER_KEY) as (ledger, api):
        env = {**ledger.env, "SPEND_LEDGER_API_URL": api.url, "SPEND_LEDGER_MASTER_KEY": MASTER_KEY}
        yield Stack(ledger, api, env)


def said(result: Result) -> str:
    """Everything the command printed, wrapped lines joined (Rich wraps at 80 columns off a terminal)."""
    return " ".join(result.output.split())


def jsonl(*events: dict | str) -> str:
    return "".join((event if isinstance(event, str) else json.dumps(event)) + "\n" for event in events)


def test_budgets_set_get_list_reset_delete_round_trip(stack: Stack):
    team = unique("research")
    written = stack.run(
        "budgets", "set", "team", team, "--max-budget", "10", "--soft-budget", "8", "--duration", "1d",
        "--model-budget", "gpt-4o=1.5", "--model-budget", "o1=2.25/1h", "--alias", "Research", "--json",
    )  # fmt: skip
    assert written.exit_code == 0, written.output
    budget = json.loads(written.stdout)
    assert budget["applied"] is True
    assert budget["scope_key"] == f"team:{team}"
    assert (budget["max_budget_nanos"], budget["soft_budget_nanos"]) == (10_000_000_000, 8_000_000_000)
    assert {limit["model"]: (limit["max_budget_nanos"], limit["budget_duration"]) for limit in budget["limits"]} == {
        None: (10_000_000_000, "1d"),
        "gpt-4o": (1_500_000_000, "1d"),
        "o1": (2_250_000_000, "1h"),
    }

    shown = stack.run("budgets", "get", "team", team)
    assert shown.exit_code == 0, shown.output
    for text in (f"team:{team} (Research)", "model:o1", "2.25", "ok"):
        assert text in shown.stdout

    listed = stack.run("budgets", "list", "--kind", "team", "--json")
    assert listed.exit_code == 0, listed.output
    assert f"team:{team}" in [scope["scope_key"] for scope in json.loads(listed.stdout)]
    assert stack.run("budgets", "list", "--kind", "user", "--json").stdout.count(f"team:{team}") == 0

    reset = stack.run("budgets", "reset", "team", team, "--json")
    assert reset.exit_code == 0, reset.output
    assert json.loads(reset.stdout)["applied"] is True
    unknown_limit = stack.run("budgets", "reset", "team", team, "--limit", "no-such-limit")
    assert unknown_limit.exit_code == 2
    assert "no limit named 'no-such-limit'" in said(unknown_limit)

    deleted = stack.run("budgets", "delete", "team", team)
    assert deleted.exit_code == 0, deleted.output
    assert f"deleted the budgets of team:{team}" in deleted.stdout
    assert json.loads(stack.run("budgets", "get", "team", team, "--json").stdout)["limits"] == []
    listed_after = json.loads(stack.run("budgets", "list", "--kind", "team", "--json").stdout)
    assert f"team:{team}" not in [scope["scope_key"] for scope in listed_after]
    gone = stack.run("budgets", "delete", "team", team)
    assert gone.exit_code == 2
    assert "has no budget" in said(gone)


def test_a_wrong_key_amount_or_kind_exits_2_with_the_reason(stack: Stack):
    refused = stack.run("budgets", "list", "--key", "sk-not-the-master-key-000")
    assert refused.exit_code == 2
    assert "invalid key (HTTP 403)" in said(refused)
    assert "set SPEND_LEDGER_MASTER_KEY" in said(refused)
    bad_money = stack.run("budgets", "set", "team", "t", "--max-budget", "0.0000000001")
    assert bad_money.exit_code == 2
    assert "finer than one nano-USD" in said(bad_money)
    bad_kind = stack.run("budgets", "get", "galaxy", "x")
    assert bad_kind.exit_code == 2
    assert "unknown scope kind 'galaxy'" in said(bad_kind)


def test_publish_refuses_a_bad_line_then_check_turns_from_0_to_1(stack: Stack, tmp_path: Path):
    user = unique("alice")
    assert stack.run("budgets", "set", "user", user, "--max-budget", "0.000001").exit_code == 0
    allowed = stack.run("check", "--user", user, "--model", "gpt-4o-mini")
    assert allowed.exit_code == 0, allowed.output
    assert "allowed" in allowed.stdout

    before = stack.usage_records()
    bad_file = tmp_path / "bad.jsonl"
    bad_file.write_text(
        jsonl(usage(unique("e"), user=user), {"event_id": "no-model", "user_id": user}, "", "{not json")
    )
    refused = stack.run("publish", str(bad_file))
    assert refused.exit_code == 2
    assert f"{bad_file}:2: model: Field required" in refused.output
    assert f"{bad_file}:4: not JSON" in refused.output
    assert f"2 invalid lines in {bad_file}; nothing was published" in refused.output  # one line, path whole
    assert stack.usage_records() == before

    good_file = tmp_path / "good.jsonl"
    good_file.write_text(jsonl(*(usage(unique("e"), user=user) for _ in range(3))))
    published = stack.run("publish", str(good_file), "--batch-size", "2")
    assert published.exit_code == 0, published.output
    assert "published 3 events in 2 requests" in published.stdout

    over = until(
        lambda: stack.run("check", "--user", user, "--tag", "cli"),
        lambda result: result.exit_code != 0,
        "the check to refuse",
        timeout_s=WAIT_S,
        shown=lambda result: result.output,
    )
    assert over.exit_code == 1, over.output
    assert f"refused by user:{user}: Budget has been exceeded! Current cost: 0.0000" in over.stdout
    assert "Max budget: 0.000001" in over.stdout
    as_json = stack.run("check", "--user", user, "--json")
    assert as_json.exit_code == 1
    answer = json.loads(as_json.stdout)
    assert (answer["allowed"], answer["scope"]) == (False, f"user:{user}")


def test_alerts_tail_from_the_beginning_prints_the_exceeded_alert(stack: Stack):
    user = unique("bob")
    assert stack.run("budgets", "set", "user", user, "--max-budget", "0.000001", "--duration", "1d").exit_code == 0
    published = stack.run("publish", "-", stdin=jsonl(usage(unique("e"), user=user, prompt=2_000)))
    assert published.exit_code == 0, published.output

    tailed = stack.run(
        "alerts", "tail", "--from-beginning", "--limit", "1", "--scope", f"user:{user}", "--timeout-s", "60"
    )
    assert tailed.exit_code == 0, tailed.output
    assert f"exceeded       user:{user} [1d]  Budget has been exceeded! Current cost: 0.0" in tailed.stdout

    as_json = stack.run("alerts", "tail", "--from-beginning", "--limit", "1", "--scope", f"user:{user}", "--json")
    alert = BudgetAlert.model_validate_json(as_json.stdout.splitlines()[0])
    assert (alert.scope_key, alert.kind, alert.max_budget_nanos) == (f"user:{user}", "exceeded", 1_000)

    stored = until(
        lambda: stack.run("alerts", "list", "--scope", f"user:{user}", "--json"),
        lambda result: result.exit_code == 0 and bool(json.loads(result.stdout)),
        "the alert in the store",
        timeout_s=WAIT_S,
        shown=lambda result: result.output,
    )
    assert [found["alert_id"] for found in json.loads(stored.stdout)] == [alert.alert_id]


def test_prices_import_publishes_the_litellm_book_keyed_by_its_id(stack: Stack, tmp_path: Path):
    # Last in the module: the worker prices with this book from now on.
    imported = stack.run("prices", "import", str(SAMPLE_LITELLM), "--litellm")
    assert imported.exit_code == 0, imported.output
    expected, _ = import_litellm_prices(
        SAMPLE_LITELLM.read_bytes(), source=f"litellm {SAMPLE_LITELLM.name}", skip_imprecise=True
    )
    assert f"published price book litellm ({expected.version[:19]}" in imported.stdout
    records = stack.ledger.read(stack.ledger.topics.prices)
    assert records[-1].key == b"litellm"
    assert PriceBook.model_validate_json(records[-1].value).version == expected.version

    book_file = tmp_path / "book.json"
    book_file.write_bytes(orjson.dumps(expected.model_dump(mode="json", exclude_none=True)))
    renamed = stack.run("prices", "import", str(book_file), "--book-id", "negotiated")
    assert renamed.exit_code == 0, renamed.output
    records = stack.ledger.read(stack.ledger.topics.prices)
    assert records[-1].key == b"negotiated"
    assert PriceBook.model_validate_json(records[-1].value).book_id == "negotiated"

    not_a_book = stack.run("prices", "import", str(SAMPLE_LITELLM))  # LiteLLM's file without --litellm
    assert not_a_book.exit_code == 2
    assert "invalid price book" in said(not_a_book)
