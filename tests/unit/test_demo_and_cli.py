"""The demo that `make run` shows, the CLI, and the README's examples, run as written."""

import json
import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from ledger.cli.main import app
from ledger.demo import run_demo
from ledger.domain.schemas import WIRE_MODELS
from ledger.pricebooks.genai import genai_prices_book

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_the_demo_charges_each_event_once_and_dead_letters_the_unpriced_one():
    result = run_demo(genai_prices_book())
    assert len(result.entries) == 9  # 11 deliveries: one duplicate, one unpriced
    assert [event.event_id for event, _ in result.dead_letters] == ["demo-009"]
    assert result.dead_letters[0][1].startswith("unpriced:")
    total = sum(entry.cost_nanos for entry in result.entries)
    assert result.states["global:*"].total_spend_nanos == total > 0
    assert any(entry.tokens_estimated for entry in result.entries)
    kinds = {(alert.scope_key, alert.kind) for alert in result.alerts}
    assert ("team:research", "exceeded") in kinds
    assert ("team:research", "soft-threshold") in kinds
    assert ("key:sk-ci", "reset") in kinds


def test_spend_ledger_demo_prints_the_ledger_and_the_budgets():
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert "Budget has been exceeded! Current cost:" in result.output
    assert "EXCEEDED" in result.output
    assert "dead-letter demo-009: unpriced" in result.output


def test_spend_ledger_schema_prints_and_writes_json_schemas(tmp_path):
    result = runner.invoke(app, ["schema", "UsageEvent"])
    assert result.exit_code == 0
    assert json.loads(result.output)["title"] == "UsageEvent"
    result = runner.invoke(app, ["schema", "--out", str(tmp_path)])
    assert result.exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{name}.schema.json" for name in WIRE_MODELS)
    unknown = runner.invoke(app, ["schema", "Nope"])
    assert unknown.exit_code == 2
    assert "unknown record 'Nope'" in unknown.output


def test_prices_show_names_the_rates_or_fails_clearly():
    result = runner.invoke(app, ["prices", "show", "gpt-4o", "--at", "2025-11-03"])
    assert result.exit_code == 0, result.output
    assert "input_mtok" in result.output
    assert "2.5" in result.output
    missing = runner.invoke(app, ["prices", "show", "no-such-model"])
    assert missing.exit_code == 2
    assert "no price for model 'no-such-model'" in missing.output


def _readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_readme_python_example_prints_what_it_says(capsys):
    (code,) = _readme_blocks("python")
    exec(compile(code, "README.md", "exec"), {})
    expected = [line.removeprefix("# ") for line in code.splitlines() if line.startswith("# ")]
    assert capsys.readouterr().out.splitlines() == expected


def test_the_readme_commands_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    lines = [
        line.split("#")[0].strip()
        for block in _readme_blocks("sh")
        for line in block.splitlines()
        if line.startswith(".venv/bin/spend-ledger")
    ]
    assert len(lines) >= 4
    for line in lines:  # in order: a later line may read what an earlier one wrote
        args = [arg.replace("/tmp/", f"{tmp_path}/") for arg in shlex.split(line)[1:]]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, f"{line}\n{result.output}"
