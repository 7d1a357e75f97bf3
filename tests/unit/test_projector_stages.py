"""The projector's stages (``ledger.store.projector._Stages``): builds one at a time,
appends in order, and a failure in either is raised to the loop, not lost."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from ledger.store.projector import _Stages


def test_batches_are_built_one_at_a_time_and_appended_in_order() -> None:
    appended: list[int] = []
    building = threading.Lock()

    def build(records: list[Any]) -> Any:
        assert building.acquire(blocking=False), "two builds at once"
        try:
            return records[0], ({}, {})
        finally:
            building.release()

    def append(built: Any, messages: int) -> None:
        appended.append(built[0])

    async def run() -> None:
        stages = _Stages()
        for batch in range(6):
            await stages.start(build, append, [batch])
            stages.check()
        await stages.drain()

    asyncio.run(run())
    assert appended == list(range(6))


@pytest.mark.parametrize("stage", ["build", "append"])
def test_a_failed_stage_is_raised_by_check_and_drain(stage: str) -> None:
    def build(records: list[Any]) -> Any:
        if stage == "build":
            raise ValueError("the build failed")
        return records, ({}, {})

    def append(built: Any, messages: int) -> None:
        raise ValueError("the append failed")

    async def run() -> None:
        stages = _Stages()
        await stages.start(build, append, ["record"])
        with pytest.raises(ValueError, match=f"the {stage} failed"):
            await stages.drain()
        with pytest.raises(ValueError, match=f"the {stage} failed"):
            stages.check()

    asyncio.run(run())
