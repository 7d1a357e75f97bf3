"""``python -m bench.check`` at a tiny size: the stack starts, the state loads, the load runs
and the last line is the JSON the lead compares. No duration is asserted: machines differ."""

from __future__ import annotations

from typing import Any

import pytest

from bench.check import main
from tests.integration.builders import bench_work_dir, last_json_line, run_bench

TINY = ["--rate", "50", "--seconds", "2", "--warmup-seconds", "0.5", "--teams", "20", "--users", "40"]
TINY += ["--keys", "100", "--usage-events", "200", "--over-share", "0.3", "--partitions", "2"]

LATENCY_FIELDS = ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "healthz_p50_ms", "healthz_p99_ms")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """One tiny run of the benchmark: what it printed and what it returned."""
    return run_bench(main, [*TINY, "--work-dir", str(bench_work_dir(tmp_path_factory, "bench-check"))])


@pytest.mark.timeout(600)
def test_last_line_is_the_result_as_json(tiny_run: tuple[str, dict[str, Any]]) -> None:
    printed, returned = tiny_run

    result = last_json_line(printed)
    assert result == returned
    assert result["bench"] == "check"
    assert (result["rate_rps"], result["seconds"]) == (50.0, 2.0)
    assert result["requests"] == 100
    for name in LATENCY_FIELDS:
        assert isinstance(result[name], float), name
        assert result[name] > 0, name
    assert result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"] <= result["p999_ms"] <= result["max_ms"]
    assert isinstance(result["p99_ratio_vs_healthz"], float)
    assert isinstance(result["target_met"], bool)
    assert result["target_met"] == (result["p99_ms"] <= result["target_p99_ms"])


@pytest.mark.timeout(600)
def test_checks_are_allowed_and_refused_without_errors(tiny_run: tuple[str, dict[str, Any]]) -> None:
    _, result = tiny_run

    assert result["errors"] == 0
    assert result["healthz_errors"] == 0
    assert 0 < result["share_402"] < 1  # some checks refused (402), the others allowed (200)
    assert result["scopes"] >= 20 + 1  # every team and the global scope are in the api's state
