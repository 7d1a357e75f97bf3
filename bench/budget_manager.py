"""BudgetManager benchmark: ``update_cost`` calls per second, ours (``client_type="local"``)
against LiteLLM's local ``BudgetManager``, the one ours replaces, in the same run.

    python -m bench.budget_manager [--updates 1000] [--rounds 5] [--work-dir DIR]

Both managers charge the same completion (a LiteLLM ``ModelResponse`` for ``gpt-4o``, 100
prompt and 100 completion tokens: $0.00125 in both price books) ``--updates`` times to a
fresh user with a budget, in this process. Each call carries a completion id of its own,
as real calls do (ours charges a repeated id once). In each of ``--rounds`` rounds both
run, one after the other (who goes first alternates), each a new manager in a directory of
its own (LiteLLM's writes ``user_cost.json`` in the working directory) that charges one
call to another user before the clock starts, so imports and price-book loading are not
timed. A manager's rate is its median round: other work on a shared machine that lands on
one round moves neither much.

LiteLLM's ``update_cost`` returns before its change is saved (it saves the whole dict from
a new thread each time, so the last updates before a crash are lost); its rate counts the
calls, and the saving threads are waited for after its clock stops. Ours returns once the
update is committed to its file.

``ratio`` is ours over LiteLLM's. ``ours_exact``: in every round our stored cost equals
``--updates`` times the call's price in nano-USD, priced apart from the manager.
``litellm_cost`` is the float LiteLLM's ``current_cost`` holds (it adds floats, so it
drifts), ``ours_cost`` our ``get_current_cost``. Progress goes to stderr; the last line of
stdout is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.stack import log
from ledger.domain.events import TokenUsage, UsageEvent
from ledger.domain.pricing import price_event
from ledger.pricebooks.genai import genai_prices_book
from ledger.sdk.budget_manager import BudgetManager

MODEL = "gpt-4o"
PROMPT_TOKENS = 100
COMPLETION_TOKENS = 100
USER = "bench-user"
WARM_UP_USER = "bench-warm-up"
TOTAL_BUDGET_USD = 1_000_000  # never reached: the benchmark measures charging, not refusing
UPDATES_MAX = 1_000_000
ROUNDS_MAX = 100
SAVE_THREADS_TIMEOUT_S = 60.0


def completions(count: int, run_id: str) -> list[Any]:
    """``count`` LiteLLM responses, alike but for their ids."""
    import litellm

    usage = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    }
    return [litellm.ModelResponse(id=f"chatcmpl-{run_id}-{n}", model=MODEL, usage=usage) for n in range(count)]


def call_price_nanos() -> int:
    """The price of one call by the ledger's book, computed apart from the manager."""
    event = UsageEvent(
        event_id="bench-price",
        occurred_at=datetime.now(UTC),
        model=MODEL,
        usage=TokenUsage(prompt_tokens=PROMPT_TOKENS, completion_tokens=COMPLETION_TOKENS),
    )
    return price_event(event, genai_prices_book()).cost_nanos


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def timed_updates(update: Callable[[Any], object], calls: list[Any]) -> float:
    """Seconds ``update`` takes over ``calls``, one after the other."""
    started = time.perf_counter()
    for call in calls:
        update(call)
    return time.perf_counter() - started


def run_litellm(work_dir: Path, calls: list[Any], warm_up: Any) -> tuple[float, float]:
    """LiteLLM's local BudgetManager: the seconds the updates took and the cost it holds."""
    from litellm import BudgetManager as LiteLLMBudgetManager

    with working_directory(work_dir):
        threads_before = set(threading.enumerate())
        manager = LiteLLMBudgetManager(project_name="bench")
        manager.create_budget(total_budget=TOTAL_BUDGET_USD, user=WARM_UP_USER, duration="daily")
        manager.update_cost(user=WARM_UP_USER, completion_obj=warm_up)
        manager.create_budget(total_budget=TOTAL_BUDGET_USD, user=USER, duration="daily")
        elapsed_s = timed_updates(lambda call: manager.update_cost(user=USER, completion_obj=call), calls)
        # Its saves run on threads of their own: wait for them before leaving the directory.
        for thread in set(threading.enumerate()) - threads_before:
            thread.join(SAVE_THREADS_TIMEOUT_S)
        cost: float = manager.get_current_cost(USER)
    return elapsed_s, cost


def run_ours(work_dir: Path, calls: list[Any], warm_up: Any) -> tuple[float, int, float]:
    """Our local BudgetManager: the seconds the updates took, and the stored cost (exact
    nanos, and USD as ``get_current_cost`` returns it), read by a manager opened afresh."""
    path = work_dir / "budgets.sqlite"
    with BudgetManager("bench", client_type="local", path=path) as manager:
        manager.create_budget(total_budget=TOTAL_BUDGET_USD, user=WARM_UP_USER, duration="daily")
        manager.update_cost(user=WARM_UP_USER, completion_obj=warm_up)
        manager.create_budget(total_budget=TOTAL_BUDGET_USD, user=USER, duration="daily")
        elapsed_s = timed_updates(lambda call: manager.update_cost(user=USER, completion_obj=call), calls)
    with BudgetManager("bench", client_type="local", path=path) as reopened:
        return elapsed_s, reopened.get_current_cost_nanos(USER), reopened.get_current_cost(USER)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=1_000, help="update_cost calls per manager and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; a manager's rate is its median round")
    parser.add_argument("--work-dir", type=Path, default=None, help="the managers' files (default: a new temp dir)")
    args = parser.parse_args(argv)
    if not 1 <= args.updates <= UPDATES_MAX:
        parser.error(f"--updates is within 1..{UPDATES_MAX}")
    if not 1 <= args.rounds <= ROUNDS_MAX:
        parser.error(f"--rounds is within 1..{ROUNDS_MAX}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; prints its JSON as the last line of stdout and returns it."""
    args = parse_args(argv)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network: LiteLLM's bundled prices
    work_dir: Path = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-budget-manager-"))
    run_id = f"{time.time_ns():x}"
    calls = completions(args.updates + 1, run_id)
    warm_up, calls = calls[0], calls[1:]
    expected_nanos = args.updates * call_price_nanos()

    litellm_s: list[float] = []
    ours_s: list[float] = []
    litellm_cost, ours_cost, ours_costs_nanos = 0.0, 0.0, []
    for round_number in range(args.rounds):
        litellm_dir, ours_dir = work_dir / f"litellm-{round_number}", work_dir / f"ours-{round_number}"
        litellm_dir.mkdir(parents=True, exist_ok=True)
        ours_dir.mkdir(parents=True, exist_ok=True)
        for manager in ("litellm", "ours") if round_number % 2 == 0 else ("ours", "litellm"):
            if manager == "litellm":
                elapsed_s, litellm_cost = run_litellm(litellm_dir, calls, warm_up)
                litellm_s.append(elapsed_s)
            else:
                elapsed_s, cost_nanos, ours_cost = run_ours(ours_dir, calls, warm_up)
                ours_s.append(elapsed_s)
                ours_costs_nanos.append(cost_nanos)
        log(
            f"round {round_number + 1}: litellm {args.updates / litellm_s[-1]:.0f}/s ({litellm_cost!r}), "
            f"ours {args.updates / ours_s[-1]:.0f}/s ({ours_costs_nanos[-1]} nanos)"
        )

    litellm_rate, ours_rate = args.updates / statistics.median(litellm_s), args.updates / statistics.median(ours_s)
    result = {
        "bench": "budget_manager",
        "updates": args.updates,
        "rounds": args.rounds,
        "litellm_updates_per_s": round(litellm_rate, 1),
        "ours_updates_per_s": round(ours_rate, 1),
        "ratio": round(ours_rate / litellm_rate, 2),
        "ours_exact": all(nanos == expected_nanos for nanos in ours_costs_nanos),
        "litellm_cost": litellm_cost,
        "ours_cost": ours_cost,
        "ours_cost_nanos": ours_costs_nanos[-1],
        "expected_cost_nanos": expected_nanos,
        "litellm_updates_per_s_by_round": [round(args.updates / seconds, 1) for seconds in litellm_s],
        "ours_updates_per_s_by_round": [round(args.updates / seconds, 1) for seconds in ours_s],
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    log(f"files in {work_dir}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
