"""The README's SDK snippets (```python sdk blocks) run as written against a real dev
stack, in order, each in a fresh Python process, and print what their ``# `` lines say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.waiting import until

ROOT = Path(__file__).resolve().parents[2]
SNIPPET_TIMEOUT_S = 120


def sdk_snippets() -> list[str]:
    return re.findall(r"```python sdk\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_readme_has_a_snippet_per_sdk_entry_point() -> None:
    text = "\n".join(sdk_snippets())
    for entry_point in (
        'client_type="hosted"',
        "BudgetManager(project_name",
        "SpendLedgerProducer",
        "HttpUsagePublisher",
        "publish_usage",
        "subscribe_alerts",
        "ledger.max_budget",
        "ledger.guard",
        "SpendLedgerCallback",
        "ledger.admission(",
        "from confluent_kafka import",  # a librdkafka client, without the SDK
    ):
        assert entry_point in text, entry_point


def test_the_readme_sdk_snippets_run_as_written(
    stack_url: str, stack_key: str, stack_broker: str, admin: httpx.Client, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "SPEND_LEDGER_API_URL": stack_url,
        "SPEND_LEDGER_MASTER_KEY": stack_key,
        "SPEND_LEDGER_KAFKA_BOOTSTRAP_SERVERS": stack_broker,
        "KAFKA_BOOTSTRAP_SERVERS": stack_broker,  # what a service without the SDK reads
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    snippets = sdk_snippets()
    assert snippets
    for number, code in enumerate(snippets, start=1):
        expected = [line.removeprefix("# ") for line in code.splitlines() if line.startswith("# ")]
        try:
            result = subprocess.run(
                [sys.executable, "-c", code],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=SNIPPET_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"snippet {number} did not finish in {SNIPPET_TIMEOUT_S} s:\n{code}\n{exc.stderr}")
        assert result.returncode == 0, f"snippet {number} failed:\n{code}\n{result.stderr}"
        assert result.stdout.splitlines() == expected, f"snippet {number}:\n{code}\n{result.stderr}"

    # The LiteLLM snippet's call was published before its process exited, and charged.
    def litellm_team_spend() -> list[dict[str, object]]:
        rows: list[dict[str, object]] = admin.get("/v1/spend", params={"scope": "team:readme-litellm"}).json()["rows"]
        return rows

    (row,) = until(litellm_team_spend, "the LiteLLM snippet's call in the store")
    assert row["spend_nanos"] == 13_500  # 10 prompt and 20 completion tokens of gpt-4o-mini
