"""``python -m bench.admit`` at a tiny size: the stack starts, budgets and capacities load,
the mixed admit/settle load runs, and the last line is the JSON the lead compares, with
counts that add up and no overspend. No duration is asserted: machines differ."""

from __future__ import annotations

from typing import Any

import pytest

from bench.admit import main
from tests.integration.builders import bench_work_dir, last_json_line, run_bench

TINY = ["--rate", "50", "--seconds", "2", "--warmup-seconds", "0.5", "--keys", "50", "--teams", "5"]
TINY += ["--models", "3", "--partitions", "2"]

LATENCY_FIELDS = ("admit_p50_ms", "admit_p99_ms", "check_p99_ms", "healthz_p50_ms", "healthz_p99_ms")
COUNT_FIELDS = ("admits", "admitted", "refused_budget", "refused_rate", "released", "settled", "overspend_nanos")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """One tiny run of the benchmark: what it printed and what it returned."""
    return run_bench(main, [*TINY, "--work-dir", str(bench_work_dir(tmp_path_factory, "bench-admit"))])


@pytest.mark.timeout(600)
def test_last_line_is_the_result_as_json(tiny_run: tuple[str, dict[str, Any]]) -> None:
    printed, returned = tiny_run

    result = last_json_line(printed)
    assert result == returned
    assert result["bench"] == "admit"
    assert (result["rate_rps"], result["seconds"]) == (50.0, 2.0)
    for name in LATENCY_FIELDS:
        assert isinstance(result[name], float), name
        assert result[name] > 0, name
    for name in COUNT_FIELDS:
        assert isinstance(result[name], int), name
    assert result["admit_p50_ms"] <= result["admit_p90_ms"] <= result["admit_p99_ms"] <= result["admit_max_ms"]
    assert result["healthz_p50_ms"] <= result["healthz_p99_ms"]
    assert isinstance(result["admit_p99_ratio_vs_healthz"], float)
    assert isinstance(result["check_p99_ratio_vs_healthz"], float)
    assert isinstance(result["target_met"], bool)
    assert result["target_p99_ms"] == 5.0
    assert result["target_met"] == (result["admit_p99_ms"] <= result["target_p99_ms"])


@pytest.mark.timeout(600)
def test_every_admit_is_answered_and_every_admitted_call_ends(tiny_run: tuple[str, dict[str, Any]]) -> None:
    _, result = tiny_run

    assert result["admits"] == 50 * (2 + 0.5)  # warm-up included
    assert result["admit_measured"] == 50 * 2
    assert result["admit_errors"] == result["release_errors"] == result["settle_failed"] == 0
    assert result["admits"] == result["admitted"] + result["refused_budget"] + result["refused_rate"]
    assert result["admitted"] == result["released"] + result["settled"]
    assert result["open_holds_after"] == 0
    assert result["healthz_errors"] == 0
    assert set(result["check_statuses"]) <= {"200", "402"}


@pytest.mark.timeout(600)
def test_budgets_run_out_without_overspend(tiny_run: tuple[str, dict[str, Any]]) -> None:
    """Some teams' budgets are too small for their calls: admits are refused (402), and
    no capped limit's settled spend goes beyond its budget."""
    _, result = tiny_run

    assert result["refused_budget"] > 0
    assert result["refused_rate"] > 0  # one model's TPM runs out within any minute of the run
    assert result["admitted"] > result["refused_budget"] + result["refused_rate"]
    assert result["capped_limits"] >= 5 + 1  # every team, and the global budget
    assert result["overspend_nanos"] == 0
    assert 0 < result["run_out_spend_share"] <= 1
