"""Event-id dedup for one input partition, over a horizon.

Each accepted event id remembers the offset of the message that first carried it. When
that same message is delivered again (at least once, after a crash or a rebalance), its
events count as new again, so its outputs are rebuilt identically and the idempotent
steps downstream absorb them; any other message carrying the id is a duplicate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence


class DedupIndex:
    """Accepted event ids of one partition, with when and where each was first seen."""

    def __init__(self) -> None:
        self._first_offset: dict[str, int] = {}
        self._log: deque[tuple[float, int, tuple[str, ...]]] = deque()  # (seen_at_s, offset, ids)
        self._logged_offsets: set[int] = set()

    def __len__(self) -> int:
        return len(self._first_offset)

    def admit(self, offset: int, event_ids: Sequence[str]) -> list[bool]:
        """For each id of the message at ``offset``: is it new? Repeats within the
        message are duplicates; ids first seen in this very message are new again."""
        seen_here: set[str] = set()
        verdicts = []
        for event_id in event_ids:
            first = self._first_offset.get(event_id)
            verdicts.append(event_id not in seen_here and (first is None or first == offset))
            seen_here.add(event_id)
        return verdicts

    def is_logged(self, offset: int) -> bool:
        """Whether the message at ``offset`` was recorded already."""
        return offset in self._logged_offsets

    def record(self, offset: int, event_ids: Sequence[str], seen_at_s: float) -> bool:
        """Remember the ids accepted from the message at ``offset``; False when that
        message was recorded before (nothing changes)."""
        if offset in self._logged_offsets:
            return False
        self._logged_offsets.add(offset)
        for event_id in event_ids:
            self._first_offset.setdefault(event_id, offset)
        self._log.append((seen_at_s, offset, tuple(event_ids)))
        return True

    def expire(self, now_s: float, horizon_s: float) -> list[int]:
        """Forget messages seen more than ``horizon_s`` ago; returns their offsets."""
        expired = []
        while self._log and self._log[0][0] < now_s - horizon_s:
            _, offset, event_ids = self._log.popleft()
            self._logged_offsets.discard(offset)
            for event_id in event_ids:
                if self._first_offset.get(event_id) == offset:
                    del self._first_offset[event_id]
            expired.append(offset)
        return expired
