"""What routes share: the services, the keys they check, the error answers."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from fastapi import Depends, Header, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
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


def repeated_names(items: Iterable[tuple[str, str]], single: Collection[str]) -> list[str]:
    """The parameters in ``single`` (those that take one value) given more than once."""
    seen: set[str] = set()
    repeated: list[str] = []
    for name, _ in items:
        if name in seen and name in single and name not in repeated:
            repeated.append(name)
        seen.add(name)
    return repeated


def repeated_query_error(names: list[str]) -> RequestValidationError:
    """A 422 field error per parameter that takes one value and was given several
    (frameworks silently keep the last one: ``?limit=5&limit=x`` must not pass as 5)."""
    message = "takes one value; it was given more than once"
    return RequestValidationError([{"loc": ("query", name), "msg": message, "type": "repeated"} for name in names])


def _takes_many(annotation: object) -> bool:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _takes_many(get_args(annotation)[0])
    if origin is Union or origin is UnionType:
        return any(_takes_many(arg) for arg in get_args(annotation))
    return isinstance(origin, type) and issubclass(origin, (Sequence, set, frozenset))  # str has no origin


def _single_parameters(dependant: Dependant) -> set[str]:
    names = {field.alias for field in dependant.query_params if not _takes_many(field.field_info.annotation)}
    for sub in dependant.dependencies:
        names |= _single_parameters(sub)
    return names


async def single_valued_query(request: Request) -> None:
    """Every route's guard: a query parameter that takes one value, given twice, is a 422."""
    query = request.query_params
    if len(query) == len(query.multi_items()):  # the usual case: no name given twice
        return
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    single = _single_parameters(dependant) if isinstance(dependant, Dependant) else set()
    repeated = repeated_names(query.multi_items(), single)
    if repeated:
        raise repeated_query_error(repeated)


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
