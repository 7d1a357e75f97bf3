"""The gateway's per-call routes, served without the framework's per-request layers.

``POST /v1/admit`` and ``GET /v1/check`` are asked before every LLM call. FastAPI's
middleware and router cost about as much CPU per request as either decision: in
``bench.admit``, run back to back, the api took 1.21-1.22 ms of CPU a request with this
layer and 1.33-1.45 ms without, near saturation on 2 cores. So this ASGI layer, outermost,
hands those two straight to their handlers: the same functions the app's routes use, so
``/docs`` and every other route are as before, and errors get the same answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from fastapi import FastAPI, Request, Response
from starlette.types import Receive, Scope, Send

from ledger.api.admission import admit
from ledger.api.app import error_answer
from ledger.api.budgets import check_call

Handler = Callable[[Request], Awaitable[Response]]

HOT_ROUTES: Mapping[tuple[str, str], Handler] = {("POST", "/v1/admit"): admit, ("GET", "/v1/check"): check_call}


class FastPaths:
    """An ASGI app: the hot routes to their handlers, everything else (lifespan
    included) to ``app``."""

    def __init__(self, app: FastAPI, routes: Mapping[tuple[str, str], Handler] = HOT_ROUTES) -> None:
        self.app = app
        self.routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self.routes.get((scope["method"], scope["path"]))
            if handler is not None:
                scope["app"] = self.app
                try:
                    response = await handler(Request(scope, receive))
                except Exception as exc:
                    answer = error_answer(exc)
                    if answer is None:
                        raise
                    response = answer
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
