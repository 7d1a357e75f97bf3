"""``python -m bench.restore`` at a tiny size: the store is generated, the broker and a
worker start, the restore is planned, published and applied, and the last line is the JSON
the lead compares, with every stored event id restored, every restored scope equal to the
plan and no retried event charged again. No duration is asserted: machines differ."""

from __future__ import annotations

from typing import Any

import pytest

from bench.restore import main
from tests.integration.builders import bench_work_dir, last_json_line, run_bench

EVENTS = 3_000
TINY = ["--events", str(EVENTS), "--live-events", "500", "--partitions", "2"]

DURATION_FIELDS = ("plan_s", "publish_s", "apply_s", "restore_s", "refold_estimate_s")
FIELDS = {
    "bench", "events", "scopes", "scopes_with_budgets", "budget_commands", "event_ids", *DURATION_FIELDS,
    "worker_events_per_s", "ratio", "retries_charged", "differences", "peak_rss_mb",
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """One tiny run of the benchmark: what it printed and what it returned."""
    return run_bench(main, [*TINY, "--work-dir", str(bench_work_dir(tmp_path_factory, "bench-restore"))])


@pytest.mark.timeout(600)
def test_last_line_is_the_result_as_json(tiny_run: tuple[str, dict[str, Any]]) -> None:
    printed, returned = tiny_run

    result = last_json_line(printed)
    assert result == returned
    assert set(result) == FIELDS
    assert result["bench"] == "restore"
    for name in DURATION_FIELDS:
        assert isinstance(result[name], float), name
    assert result["restore_s"] == pytest.approx(result["plan_s"] + result["publish_s"] + result["apply_s"], abs=0.02)
    assert result["worker_events_per_s"] > 0
    assert result["peak_rss_mb"] > 0


@pytest.mark.timeout(600)
def test_every_stored_event_id_and_scope_is_restored(tiny_run: tuple[str, dict[str, Any]]) -> None:
    _, result = tiny_run

    assert result["events"] == EVENTS
    assert result["event_ids"] == result["events"]  # the horizon covers every stored event
    assert result["scopes"] > 0
    assert 0 < result["scopes_with_budgets"] <= result["scopes"]
    assert result["budget_commands"] > 0


@pytest.mark.timeout(600)
def test_restored_state_equals_the_plan_and_retries_are_not_charged(tiny_run: tuple[str, dict[str, Any]]) -> None:
    _, result = tiny_run

    assert result["differences"] == 0
    assert result["retries_charged"] == 0
