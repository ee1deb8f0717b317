"""Putting the engine together: the store, the moderator, the templates and a loaded model.

The desktop app and the CLI both start here, so they read the same settings (kept in the
store: `runtime` and `sampling`) and resolve models the same way.
"""

from __future__ import annotations

from pathlib import Path

from engine.models.registry import resolve
from engine.moderation import Moderator
from engine.runtime import LlamaRuntime, RuntimeSettings, Sampling
from engine.store import Store
from engine.templates import TemplateLibrary
from engine.turn import Chat


def runtime_settings(store: Store) -> RuntimeSettings:
    return RuntimeSettings.from_dict(store.get_setting("runtime", {}))


def sampling_settings(store: Store) -> Sampling:
    return Sampling.from_dict(store.get_setting("sampling", {}))


def load_runtime(spec: str | Path | None, settings: RuntimeSettings | None = None) -> LlamaRuntime:
    """A registry name or a .gguf path (None: the bundled model), loaded; ModelLoadError if not."""
    name, path = resolve(spec)
    return LlamaRuntime(path, settings, name=name)


def open_chat(
    model: str | Path | None = None,
    db: str | Path | None = None,
    *,
    load_model: bool = True,
    mark_interrupted: bool = True,
    moderation_config: str | Path | None = None,
) -> Chat:
    """The chat engine over the user's store; the model is the one given, else the last used."""
    store = Store.open(db, mark_interrupted=mark_interrupted)
    templates = TemplateLibrary.load()
    moderator = Moderator.from_config(moderation_config, store.get_setting("moderation"))
    runtime = None
    if load_model:
        runtime = load_runtime(model or store.get_setting("model"), runtime_settings(store))
    return Chat(store, runtime, moderator, templates, sampling_settings(store))
