"""The FastAPI application: routers by resource over one `Runtime`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import errors
from .routes import chat, completions, conversations, feedback, health, models, moderations, turns, web
from .runtime import Runtime


class MetricsMiddleware:
    """Counts requests by route template and status, times them to the response head. Plain
    ASGI on purpose: Starlette's BaseHTTPMiddleware wraps streaming bodies and would hide a
    client's disconnect from the SSE stream."""

    def __init__(self, app: ASGIApp, runtime: Runtime):
        self.app, self.rt = app, runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                self.rt.metrics.latency.labels(_route(scope)).observe(time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.rt.metrics.requests.labels(scope["method"], _route(scope), str(status[0])).inc()


def _route(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"  # the template, not the raw path: bounded labels


def create_app(runtime: Runtime, *, manage_engines: bool = True) -> FastAPI:
    """`manage_engines`: start the engines' threads on startup and shut them (and the database
    pool) down on exit; tests that share engines across apps pass False."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_engines:
            runtime.start()
        try:
            yield
        finally:
            if manage_engines:
                runtime.shutdown()

    app = FastAPI(title="chatfactory", version="1", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.runtime = runtime
    app.state.started = int(time.time())
    errors.install(app)
    for module in (health, models, moderations, chat, completions, conversations, turns, feedback):
        app.include_router(module.router)
    web.install(app)  # the chat page at / and its files under /static
    app.add_middleware(MetricsMiddleware, runtime=runtime)
    return app
