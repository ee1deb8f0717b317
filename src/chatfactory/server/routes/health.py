"""/health (liveness + database check) and /metrics (Prometheus text). No key needed: probes
and scrapers run beside the server."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/health")
def health(request: Request) -> JSONResponse:
    rt = request.app.state.runtime
    try:
        with rt.sessions() as s:
            s.execute(sa.text("SELECT 1"))
        database = "ok"
    except Exception as e:  # noqa: BLE001 - reported, not raised: this is the health check
        database = f"error: {type(e).__name__}"
    ok = database == "ok"
    body = {
        "status": "ok" if ok else "degraded",
        "database": database,
        "models": list(rt.engines),
        "in_flight": rt.inflight,
        "max_in_flight": rt.settings.max_inflight,
    }
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    m = request.app.state.runtime.metrics
    return Response(m.render(), media_type=m.content_type)
