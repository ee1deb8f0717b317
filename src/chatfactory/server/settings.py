"""The server's settings: one `Settings` object, read from environment variables
(`CHATFACTORY_*`, plus the conventional `DATABASE_URL`), a YAML file, and command-line flags —
flags win over the environment, which wins over the file, which wins over the defaults."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = "smollm2-135m-instruct"


def default_database_url() -> str:
    root = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "chatfactory"
    return f"sqlite:///{root / 'chatfactory.db'}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHATFACTORY_", extra="forbid")

    host: str = "127.0.0.1"  # loopback by default: exposing the server is a decision
    port: int = Field(8000, ge=0, le=65535)
    database_url: str = Field(
        default_factory=default_database_url,
        validation_alias=AliasChoices("CHATFACTORY_DATABASE_URL", "DATABASE_URL", "database_url"),
    )
    # comma-separated in the environment; each entry: a registry name, a model folder / GGUF path, or NAME=PATH to choose the served name
    models: Annotated[list[str], NoDecode] = Field(default_factory=lambda: [DEFAULT_MODEL])
    flow_config: str | None = None  # chat-flow YAML (hidden instructions, templates); None = shipped default
    moderation_config: str | None = None  # moderator YAML; None = shipped default
    max_batch: int = Field(16, ge=1)  # sequences decoded together per model
    max_inflight: int = Field(64, ge=1)  # generation requests in flight before 429
    default_max_tokens: int = Field(256, ge=1)
    max_n: int = Field(8, ge=1)
    require_keys: bool = False  # True: refuse requests without a valid key even on loopback

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, v: Any) -> Any:
        return [m.strip() for m in v.split(",") if m.strip()] if isinstance(v, str) else v

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Settings:
        """Defaults < YAML `config_file` < environment < `overrides` (None values ignored)."""
        file_values: dict[str, Any] = {}
        if config_file is not None:
            path = Path(config_file)
            if not path.exists():
                raise FileNotFoundError(f"{path}: no such config file")
            try:
                file_values = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as e:
                raise ValueError(f"{path}: not valid YAML ({e})") from None
            if not isinstance(file_values, dict):
                raise ValueError(f"{path}: expected a mapping of setting: value at the top level")
            known = set(cls.model_fields)
            unknown = sorted(set(file_values) - known)
            if unknown:
                raise ValueError(f"{path}: unknown setting(s) {unknown}; known: {sorted(known)}")
        # environment beats the file: drop file values the environment sets
        env_set = {name for name in cls.model_fields if _env_names(name) & set(os.environ)}
        values = {k: v for k, v in file_values.items() if k not in env_set}
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ValidationError as e:
            where = f"{config_file}: " if config_file else ""
            problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise ValueError(f"{where}invalid settings ({problems})") from None


def _env_names(field: str) -> set[str]:
    names = {f"CHATFACTORY_{field.upper()}"}
    if field == "database_url":
        names.add("DATABASE_URL")
    return names
