"""What routes share: the services, the keys they check, the error answers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse

from ledger.api.auth import AuthError, Role, authorize
from ledger.api.services import ApiServices


async def services(request: Request) -> ApiServices:
    found: ApiServices = request.app.state.services
    return found


Services = Annotated[ApiServices, Depends(services)]


def _require(role: Role) -> Any:
    # Async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, a
    # thread hop per request that cost more than the whole check (measured).
    async def check(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
        api: ApiServices = request.app.state.services
        authorize(api.keys, authorization, role)

    return Depends(check)


ADMIN = _require("admin")
CLIENT = _require("client")


def now() -> datetime:
    return datetime.now(UTC)


def error_response(
    status: int, message: str, kind: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """``{"error": {"message", "type", ...}}`` with ``status``."""
    body = {"message": message, "type": kind, **{k: v for k, v in extra.items() if v is not None}}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


class ApiError(Exception):
    """Raised by a route to answer with ``error_response``."""

    def __init__(self, status: int, message: str, kind: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.extra = extra


__all__ = ["ADMIN", "CLIENT", "ApiError", "AuthError", "Services", "error_response", "now"]
