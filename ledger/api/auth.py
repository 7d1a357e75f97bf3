"""Bearer keys: the master key for admin routes, an optional ingest key for clients.

Clients (a gateway publishing usage, asking ``check``, admitting calls) may use the ingest key or the
master key; everything that reads or changes budgets, spend and history needs the master
key. Keys are compared in constant time. With no master key configured (a loopback-only
dev api), every route is open.

Open with a master key too: ``/healthz``, ``/readyz``, the OpenAPI docs (``/docs``,
``/redoc``, ``/openapi.json``) and ``/metrics``, which Prometheus scrapes without
credentials. ``/metrics`` shows each scope's id, alias, spend and remaining budget (no keys,
no event contents): keep the port off networks that should not see spend.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Literal

Role = Literal["admin", "client"]


class AuthError(Exception):
    """A request without the right key: 401 (no or malformed credentials) or 403."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Keys:
    """The configured keys; never shown in a repr (a traceback or a log line)."""

    master: str | None = field(repr=False)
    ingest: str | None = field(repr=False)

    @property
    def open(self) -> bool:
        return self.master is None


def _same(given: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


def authorize(keys: Keys, authorization: str | None, role: Role) -> None:
    """Raise ``AuthError`` unless the ``Authorization`` header grants ``role``."""
    if keys.open:
        return
    if not authorization:
        raise AuthError(401, "missing Authorization header: send 'Authorization: Bearer <key>'")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError(401, "malformed Authorization header: expected 'Bearer <key>'")
    if _same(token, keys.master):
        return
    if _same(token, keys.ingest):
        if role == "client":
            return
        raise AuthError(
            403, "the ingest key may publish usage, check budgets and admit calls only; this route needs the master key"
        )
    raise AuthError(403, "invalid key")
