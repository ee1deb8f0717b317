"""Who is calling: the `Authorization: Bearer <key>` header, checked against the stored hashes.

A server with no keys on loopback serves a single local user (any or no key is accepted); as
soon as keys exist, or the server listens beyond loopback, every /v1 request needs a valid key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from .errors import APIError
from .store import keys as keystore


@dataclass(frozen=True)
class Caller:
    user_id: int
    name: str


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def current_user(request: Request) -> Caller:
    """FastAPI dependency (sync: runs in the thread pool, the lookup hits the database)."""
    rt = request.app.state.runtime
    token = _bearer(request)
    if token is not None:
        with rt.sessions() as s:
            user = keystore.user_for_key(s, token)
            if user is not None:
                return Caller(user.id, user.name)
    if not rt.keys_required():
        return Caller(rt.local_user_id, keystore.LOCAL_USER)
    if token is None:
        raise APIError(
            401,
            "You didn't provide an API key. Send it as `Authorization: Bearer KEY` "
            "(create one with `chatfactory keys create --user NAME`).",
            code="missing_api_key",
        )
    shown = token[:6] + "…" if len(token) > 6 else "…"
    raise APIError(401, f"Incorrect API key provided: {shown}", code="invalid_api_key")


CurrentUser = Annotated[Caller, Depends(current_user)]  # `caller: CurrentUser` in a route's signature
