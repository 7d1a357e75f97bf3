"""The api process's HTTP app (FastAPI): routes, error answers, and the services it hosts.

Every error is ``{"error": {"message", "type", ...}}``; a body or query that does not
validate is a 422 listing each field error (``fields``: location, message, type).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import duckdb
from aiokafka.errors import KafkaError
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from ledger.api import admission, budgets, history, litellm_routes, sql_route
from ledger.api.admission import AdmitBody
from ledger.api.auth import AuthError
from ledger.api.deps import CLIENT, ApiError, Services, error_response, now, single_valued_query
from ledger.api.ingest import BODY_BYTES_MAX, BodyError, parse_usage_body, wire_events
from ledger.api.metrics import CONTENT_TYPE, admission_metrics, budget_metrics, counter_metrics, render
from ledger.api.schemas import ErrorView, UsageAccepted
from ledger.api.services import ApiServices
from ledger.domain.events import BATCH_EVENTS_MAX, EVENT_ID_CHARS_MAX, SCHEMA_VERSION, UsageBatch, UsageEvent
from ledger.settings import Settings
from ledger.store.queries import alert_counts, ledger_counts

FIELD_ERRORS_MAX = 100

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """The app, its services started and stopped with it."""
    api = ApiServices(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await api.start()
        try:
            yield
        finally:
            await api.stop()

    app = FastAPI(
        title="spend-ledger",
        version="0.1.0",
        summary="Event-sourced spend ledger for LLM usage: ingest, budgets, check, spend, replay.",
        lifespan=lifespan,
        dependencies=[Depends(single_valued_query)],
    )
    app.state.services = api
    _add_error_handlers(app)
    app.include_router(_ingest_router())
    app.include_router(budgets.router)
    app.include_router(history.router)
    app.include_router(sql_route.router)
    app.include_router(litellm_routes.router)
    app.include_router(admission.router)
    _add_operations(app)
    _openapi_with_event_shapes(app)
    return app


def error_answer(exc: Exception) -> JSONResponse | None:
    """The error answer of an exception a route may raise; None for an unexpected one."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.message, exc.kind, **exc.extra)
    if isinstance(exc, AuthError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        kind = "unauthorized" if exc.status == 401 else "forbidden"
        return error_response(exc.status, exc.message, kind, headers=headers)
    if isinstance(exc, BodyError):
        return error_response(exc.status, exc.message, exc.kind, fields=exc.fields)
    if isinstance(exc, RequestValidationError):
        fields = [
            {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type", "")}
            for error in exc.errors()[:FIELD_ERRORS_MAX]
        ]
        malformed = any(field["type"] == "json_invalid" for field in fields)
        if malformed:
            return error_response(400, "request body is not valid JSON", "malformed_json", fields=fields)
        summary = "; ".join(f"{'.'.join(map(str, f['loc']))}: {f['msg']}" for f in fields[:5])
        return error_response(422, f"invalid request: {summary}", "invalid_request", fields=fields)
    if isinstance(exc, duckdb.Error):  # the store failed a read: say so, and keep its trace in the log
        log.error("the store could not answer: %r", exc, exc_info=exc)
        message = f"the store could not answer ({type(exc).__name__}: {exc}); retry"
        return error_response(503, message, "store_unavailable", headers={"retry-after": "1"})
    if isinstance(exc, KafkaError):
        message = f"the broker did not acknowledge the write ({exc!r}); nothing is confirmed, retry with the same ids"
        return error_response(503, message, "broker_unavailable", headers={"retry-after": "1"})
    if isinstance(exc, StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, str(exc.detail), kind, headers=getattr(exc, "headers", None))
    return None


def _add_error_handlers(app: FastAPI) -> None:
    async def answer(request: Request, exc: Exception) -> JSONResponse:
        found = error_answer(exc)
        assert found is not None
        return found

    for kind in (
        ApiError,
        AuthError,
        BodyError,
        RequestValidationError,
        KafkaError,
        StarletteHTTPException,
        duckdb.Error,
    ):
        app.add_exception_handler(kind, answer)


USAGE_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "anyOf": [
                    {"$ref": "#/components/schemas/UsageEventIn"},
                    {"$ref": "#/components/schemas/UsageBatchIn"},
                    {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/UsageEventIn"},
                        "minItems": 1,
                        "maxItems": BATCH_EVENTS_MAX,
                    },
                ]
            }
        }
    },
}


def _http_usage_shapes(components: dict[str, Any]) -> None:
    """``UsageEventIn`` and ``UsageBatchIn``: what ``POST /v1/usage`` takes, which is the
    wire form but for ``occurred_at`` (stamped when left out) and the batch envelope (the
    api writes its own ``batch_id``)."""
    event = copy.deepcopy(components["UsageEvent"])
    event["title"] = "UsageEventIn"
    event["required"] = [name for name in event.get("required", []) if name != "occurred_at"]
    event["description"] = (
        event.get("description", "") + "\n\nOver HTTP ``occurred_at`` may be left out: the api stamps the time it "
        "received the event."
    )
    components["UsageEventIn"] = event
    components["UsageBatchIn"] = {
        "title": "UsageBatchIn",
        "description": "Several events, published all or none.",
        "type": "object",
        "properties": {
            "schema_version": {"const": SCHEMA_VERSION, "type": "integer", "default": SCHEMA_VERSION},
            "batch_id": {"type": "string", "minLength": 1, "maxLength": EVENT_ID_CHARS_MAX},
            "events": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/UsageEventIn"},
                "minItems": 1,
                "maxItems": BATCH_EVENTS_MAX,
            },
        },
        "required": ["events"],
        "additionalProperties": False,
    }


def _ingest_router() -> Any:
    from fastapi import APIRouter

    router = APIRouter(tags=["usage"])

    @router.post(
        "/v1/usage",
        status_code=202,
        dependencies=[CLIENT],
        response_model=UsageAccepted,
        responses={400: {"model": ErrorView}, 413: {"model": ErrorView}, 415: {"model": ErrorView}},
        openapi_extra={"requestBody": USAGE_BODY},
        summary="Publish usage events",
    )
    async def publish_usage(request: Request, api: Services) -> UsageAccepted:
        """One event, ``{"events": [...]}`` or a list: all valid, or none published.
        Answers once the broker has acknowledged every event."""
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() not in ("application/json", ""):
            raise ApiError(
                415, f"send JSON (Content-Type: application/json), not {content_type!r}", "unsupported_media"
            )
        body = await _read_body(request)
        events = await run_in_threadpool(parse_usage_body, body, now()) if len(body) > 65_536 else None
        if events is None:
            events = parse_usage_body(body, now())
        await api.publish_usage(wire_events(events))
        return UsageAccepted(accepted=len(events), event_ids=[event.event_id for event in events])

    return router


async def _read_body(request: Request) -> bytes:
    """The request body, refused with 413 as soon as it is known to be over
    ``BODY_BYTES_MAX``: from its declared length before reading any of it, else while
    reading, so an endless or huge body never sits whole in memory."""
    declared = request.headers.get("content-length", "")
    if declared.isdecimal() and int(declared) > BODY_BYTES_MAX:
        raise BodyError(413, f"request body of {int(declared)} bytes is over {BODY_BYTES_MAX}", "too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > BODY_BYTES_MAX:
            raise BodyError(413, f"request body is over {BODY_BYTES_MAX} bytes", "too_large")
        chunks.append(chunk)
    return b"".join(chunks)


# Error answers the routes share, documented once here so the spec lists every status a
# route may give (a client, or a fuzzer, may rely on it): (status, when).
_BODY_ERROR = ("400", "the body is not valid JSON")
_AUTH_ERRORS = (
    ("401", "no Authorization header, or a malformed one"),
    ("403", "the key does not open this route"),
)
_OPEN_PATHS = ("/healthz", "/readyz", "/metrics")  # open without a key (ledger.api.auth)
_BROKER_ERROR = ("503", "the broker did not acknowledge the write; retry with the same ids")
_ROUTE_ERRORS = {
    ("get", "/v1/budgets/{kind}/{scope_id}"): (("404", "nothing is known of the scope"),),
    ("delete", "/v1/budgets/{kind}/{scope_id}"): (("404", "the scope has no budget"),),
    ("post", "/v1/budgets/{kind}/{scope_id}/reset"): (("404", "the scope has no budget to reset"),),
    ("post", "/v1/replay"): (("409", "the store has not caught up with the topics yet"),),
    ("get", "/readyz"): (("503", "not ready yet, or a service failed"),),
}


def _openapi_with_event_shapes(app: FastAPI) -> None:
    """/docs shows the shapes ``POST /v1/usage`` takes (the route reads its body itself,
    to report every event's errors at once) and every error answer a route may give."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            _, definitions = models_json_schema(
                [(UsageEvent, "validation"), (UsageBatch, "validation"), (AdmitBody, "validation")],
                ref_template="#/components/schemas/{model}",
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(definitions["$defs"])
            _http_usage_shapes(components)
            _document_errors(schema)
            for unused in ("HTTPValidationError", "ValidationError"):  # never answered: errors are ErrorView
                components.pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document_errors(schema: dict[str, Any]) -> None:
    """Every operation's error answers, in the one shape they all have (``ErrorView``)."""
    error_view = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorView"}}}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            errors: list[tuple[str, str]] = list(_ROUTE_ERRORS.get((method, path), ()))
            if "{" in path and not any(status == "404" for status, _ in errors):
                errors.append(("404", "the path names nothing known (an id with a line break routes nowhere)"))
            if "requestBody" in operation:
                errors.append(_BODY_ERROR)
            if path not in _OPEN_PATHS:
                errors.extend(_AUTH_ERRORS)
            if method in ("post", "put", "delete") and path != "/get_budget":  # each of them publishes
                errors.append(_BROKER_ERROR)
            if "422" in responses:
                errors.append(("422", "a field is invalid: each one is listed with its location"))
            for status, when in errors:
                answer = responses.setdefault(status, {"description": when})
                answer["content"] = error_view


def _add_operations(app: FastAPI) -> None:
    @app.get("/healthz", tags=["operations"], summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Ready to serve")
    async def readyz(api: Services) -> JSONResponse:
        """200 once budget state is loaded, the producer is up and the projector runs."""
        detail = {
            "budget_state_loaded": api.budget_state.ready.is_set(),
            "admission_loaded": api.admission.ready.is_set(),
            "scopes": len(api.budget_state.scope_keys()),
            "projector_lag_records": 0 if api.projector is None else api.projector.lag_records,
            "failure": None if api.failure is None else repr(api.failure),
        }
        if api.ready:
            return JSONResponse({"status": "ready", **detail})
        return JSONResponse({"status": "starting" if api.failure is None else "failed", **detail}, status_code=503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics(api: Services) -> PlainTextResponse:
        def counts() -> tuple[dict[str, int], dict[str, int]]:
            connection = api.reader()
            try:
                return ledger_counts(connection), alert_counts(connection)
            finally:
                connection.close()

        stored, alerts = await run_in_threadpool(counts)
        lags = {
            "projector": 0 if api.projector is None else api.projector.lag_records,
            "budget_state": api.budget_state.lag_records,
            "admission": api.admission.lag_records,
        }
        book = api.admission.book
        text = render(
            [
                budget_metrics(api.budget_state.all_states(), now()),
                counter_metrics(stored, api.events_accepted, lags, alerts),
                admission_metrics(book.open_by_scope(), book.held_by_scope(), book.refusals),
            ]
        )
        return PlainTextResponse(text, media_type=CONTENT_TYPE)


def services_of(app: FastAPI) -> ApiServices:
    found: ApiServices = app.state.services
    return found
