"""``python -m bench.budget_manager`` at a tiny size: both managers charge the same calls and
the last line is the JSON the lead compares, with our cost exact. No duration or rate is
asserted: machines differ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.budget_manager import main
from tests.integration.builders import last_json_line, run_bench

UPDATES = 20
ROUNDS = 2
CALL_PRICE_NANOS = 1_250_000  # gpt-4o, 100 prompt and 100 completion tokens: $0.00125
FIELDS = {
    "bench", "litellm_updates_per_s", "ours_updates_per_s", "ratio", "ours_exact", "litellm_cost", "ours_cost",
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any], Path]:
    """One tiny run of the benchmark: what it printed, what it returned, where its files are."""
    work_dir = tmp_path_factory.mktemp("bench-budget-manager")
    printed, returned = run_bench(
        main, ["--updates", str(UPDATES), "--rounds", str(ROUNDS), "--work-dir", str(work_dir)]
    )
    return printed, returned, work_dir


@pytest.mark.timeout(300)
def test_last_line_is_the_result_as_json(tiny_run: tuple[str, dict[str, Any], Path]) -> None:
    printed, returned, _ = tiny_run

    result = last_json_line(printed)
    assert result == returned
    assert set(result) >= FIELDS
    assert result["bench"] == "budget_manager"
    assert (result["updates"], result["rounds"]) == (UPDATES, ROUNDS)
    for name in ("litellm_updates_per_s", "ours_updates_per_s", "ratio"):
        assert isinstance(result[name], float), name
        assert result[name] > 0, name
    for name in ("litellm_updates_per_s_by_round", "ours_updates_per_s_by_round"):
        assert len(result[name]) == ROUNDS, name
        assert all(rate > 0 for rate in result[name]), name


@pytest.mark.timeout(300)
def test_our_cost_is_exact_and_litellm_charged_the_same_calls(tiny_run: tuple[str, dict[str, Any], Path]) -> None:
    _, result, _ = tiny_run

    assert result["ours_exact"] is True
    assert result["expected_cost_nanos"] == UPDATES * CALL_PRICE_NANOS
    assert result["ours_cost_nanos"] == UPDATES * CALL_PRICE_NANOS
    assert result["ours_cost"] == UPDATES * CALL_PRICE_NANOS / 1e9
    assert isinstance(result["litellm_cost"], float)
    assert result["litellm_cost"] == pytest.approx(UPDATES * CALL_PRICE_NANOS / 1e9, rel=1e-9)


@pytest.mark.timeout(300)
def test_each_manager_kept_its_file_in_a_directory_of_its_own(tiny_run: tuple[str, dict[str, Any], Path]) -> None:
    _, _, work_dir = tiny_run

    for round_number in range(ROUNDS):
        assert (work_dir / f"litellm-{round_number}" / "user_cost.json").is_file()
        assert not (work_dir / f"ours-{round_number}" / "user_cost.json").exists()
        assert (work_dir / f"ours-{round_number}" / "budgets.sqlite").is_file()
