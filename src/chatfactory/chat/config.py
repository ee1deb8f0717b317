"""The operator's settings for the chat flow, from a versioned YAML file (chat/default.yaml)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import yaml

DEFAULT_CONFIG = Path(__file__).parent / "default.yaml"


@dataclass
class FlowConfig:
    """Hidden instructions and template answers; every field is documented in default.yaml."""

    version: str
    hidden_before: str  # a system message placed first
    hidden_after: str  # appended to the latest user turn
    template_input_flagged: str  # the answer when the prompt is flagged (model not called)
    template_output_flagged: str  # the answer when the model's answer is flagged
    fail_closed: bool = True  # a moderation error counts as flagged
    hidden_after_separator: str = "\n\n"  # between the user's text and hidden_after

    @classmethod
    def load(cls, path: str | Path | None = None) -> FlowConfig:
        """From a YAML file; None = the shipped chat/default.yaml."""
        path = Path(path) if path else DEFAULT_CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no chat flow config here")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")  # noqa: TRY004 (bad input)
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(f"{path}: unknown setting(s) {unknown}; known: {sorted(known)}")
        missing = [n for n, f in known.items() if f.default is MISSING and n not in raw]
        if missing:
            raise ValueError(f"{path}: missing setting(s) {missing}")
        if isinstance(raw["version"], (int, float)) and not isinstance(raw["version"], bool):
            raw["version"] = str(raw["version"])  # `version: 3` is a fine version
        for name, value in raw.items():
            want = bool if name == "fail_closed" else str
            if not isinstance(value, want):
                raise ValueError(f"{path}: {name} must be a {want.__name__}, got {value!r}")  # noqa: TRY004
        if not raw["version"].strip():
            raise ValueError(f"{path}: version must not be empty (it is stored with every answer)")
        return cls(**raw)
