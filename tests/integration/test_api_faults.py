"""The api when its broker goes away: a clear 503, never a false acknowledgement."""

from __future__ import annotations

from pathlib import Path

import httpx

from ledger.broker import EmbeddedBroker
from tests.integration.conftest import Ledger
from tests.stores import lake_at

KEY = "master-key-0123456789"


def test_usage_and_budget_writes_answer_503_when_the_broker_is_gone(tmp_path: Path):
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    ledger = Ledger(broker, tmp_path)
    try:
        api = ledger.start_api(lake_at(tmp_path), master_key=KEY)
        headers = {"Authorization": f"Bearer {KEY}"}
        event = {"event_id": "e1", "model": "gpt-4o", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
        assert httpx.post(f"{api.url}/v1/usage", json=event, headers=headers, timeout=30).status_code == 202
        broker.stop()
        refused = httpx.post(f"{api.url}/v1/usage", json={**event, "event_id": "e2"}, headers=headers, timeout=60)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["type"] == "broker_unavailable"
        assert refused.headers["retry-after"] == "1"
        budget = httpx.put(f"{api.url}/v1/budgets/team/ml", json={"max_budget": 1}, headers=headers, timeout=60)
        assert budget.status_code == 503, budget.text
    finally:
        ledger.stop_all()
        broker.stop()
