"""The chat page: `/` serves web/index.html, `/static/...` its CSS, JavaScript and vendored
libraries (chatfactory/web/, plain files, no build step).

The page is served with a strict Content-Security-Policy: scripts only from this origin, no
inline script or event handler, no plugins, no framing. Model and user text is rendered as text
or sanitised Markdown (web/app.js), and the policy is the second wall: even markup that got
past the sanitiser could run nothing.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from ..auth import CurrentUser

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: a new release's page is picked up at once
}


class _StaticFiles(StaticFiles):
    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        response.headers.update({k: v for k, v in HEADERS.items() if k != "Content-Security-Policy"})
        return response


def install(app: FastAPI) -> None:
    """Serve the page at `/`, its files under `/static/`, and `/v1/me` (who is signed in)."""
    if not (WEB_DIR / "index.html").exists():
        raise FileNotFoundError(f"{WEB_DIR / 'index.html'}: the chat page is missing from this install")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=HEADERS)

    @app.get("/v1/me", tags=["users"])
    def me(request: Request, caller: CurrentUser) -> dict:
        """Who the key belongs to (the page shows it; local single-user mode answers "local")."""
        return {"object": "user", "name": caller.name, "keys_required": request.app.state.runtime.keys_required()}

    app.mount("/static", _StaticFiles(directory=WEB_DIR), name="static")
