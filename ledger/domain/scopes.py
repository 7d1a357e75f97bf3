"""Scope keys: ``kind:id``, the unit a budget belongs to (``global:*`` always exists)."""

from __future__ import annotations

import re
from typing import Literal, get_args

ScopeKind = Literal["global", "user", "team", "key", "end_user", "tag"]
SCOPE_KINDS: tuple[str, ...] = get_args(ScopeKind)
GLOBAL_SCOPE = "global:*"
SCOPE_ID_MAX_CHARS = 256
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


class InvalidScope(ValueError):
    """A scope key that is not ``kind:id`` with a known kind."""


def scope_key(kind: str, scope_id: str) -> str:
    """Build a scope key, checking the kind and the id."""
    if kind not in SCOPE_KINDS:
        raise InvalidScope(f"unknown scope kind {kind!r}; expected one of {', '.join(SCOPE_KINDS)}")
    if kind == "global":
        if scope_id not in ("*", ""):
            raise InvalidScope("the global scope has no id: use 'global:*'")
        return GLOBAL_SCOPE
    check_scope_id(scope_id)
    return f"{kind}:{scope_id}"


def parse_scope_key(key: str) -> tuple[str, str]:
    """Split ``kind:id`` into its parts, checking both."""
    kind, sep, scope_id = key.partition(":")
    if not sep:
        raise InvalidScope(f"scope key {key!r} is not 'kind:id'")
    return kind, scope_key(kind, scope_id).partition(":")[2]


def check_scope_id(scope_id: str) -> None:
    """An id is 1..256 printable characters with no surrounding white space."""
    if not scope_id:
        raise InvalidScope("scope id is empty")
    if len(scope_id) > SCOPE_ID_MAX_CHARS:
        raise InvalidScope(f"scope id longer than {SCOPE_ID_MAX_CHARS} characters")
    if scope_id != scope_id.strip():
        raise InvalidScope("scope id has leading or trailing white space")
    if _CONTROL_CHARACTER.search(scope_id):
        raise InvalidScope("scope id contains a control character")
