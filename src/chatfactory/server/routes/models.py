"""/v1/models: the served models, each under the name --model gave it."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..auth import CurrentUser
from ..schemas import ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["models"])


def _card(request: Request, name: str) -> ModelCard:
    rt = request.app.state.runtime
    return ModelCard(id=name, created=request.app.state.started, context_window=rt.engine_for(name).context_window)


@router.get("/models")
def list_models(request: Request, _caller: CurrentUser) -> ModelList:
    return ModelList(data=[_card(request, name) for name in request.app.state.runtime.engines])


@router.get("/models/{model:path}")
def get_model(model: str, request: Request, _caller: CurrentUser) -> ModelCard:
    return _card(request, model)
