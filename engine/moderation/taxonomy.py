"""OpenAI's moderation taxonomy and the result shape of `/v1/moderations`.

A `ModerationResult` is one element of the `results` list of OpenAI's
moderation response: `flagged`, `categories`, `category_scores` and
`category_applied_input_types`. Anything of ours that OpenAI's schema does not
have (per-layer scores, the jailbreak signal, errors) lives in `details`, which
`to_openai()` leaves out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CATEGORIES: list[str] = [
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
]

# Extra signals a layer may score that are not OpenAI categories. The policy
# decides which category (if any) each one feeds: see default.yaml.
SIGNALS: list[str] = ["jailbreak", "toxic"]

# A sub-category implies its parent: "hate/threatening" content is also "hate".
PARENT: dict[str, str] = {c: c.split("/")[0] for c in CATEGORIES if "/" in c}


@dataclass
class ModerationResult:
    """One moderated input, in the shape of an OpenAI moderation result."""

    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # not part of OpenAI's shape

    def __post_init__(self) -> None:
        assert set(self.categories) == set(CATEGORIES), f"categories must be exactly {CATEGORIES}"
        assert set(self.category_scores) == set(CATEGORIES), "category_scores must cover every category"
        if not self.category_applied_input_types:
            self.category_applied_input_types = {c: ["text"] for c in CATEGORIES}

    @property
    def flagged_categories(self) -> list[str]:
        return [c for c in CATEGORIES if self.categories[c]]

    def to_openai(self) -> dict[str, Any]:
        """The dict OpenAI's `/v1/moderations` puts in `results[i]`."""
        return {
            "flagged": bool(self.flagged),
            "categories": {c: bool(self.categories[c]) for c in CATEGORIES},
            "category_scores": {c: float(self.category_scores[c]) for c in CATEGORIES},
            "category_applied_input_types": {
                c: list(self.category_applied_input_types.get(c, ["text"])) for c in CATEGORIES
            },
        }

    @classmethod
    def empty(cls) -> ModerationResult:
        return cls(False, dict.fromkeys(CATEGORIES, False), dict.fromkeys(CATEGORIES, 0.0))


def openai_response(results: list[ModerationResult], model: str, request_id: str) -> dict[str, Any]:
    """A whole `/v1/moderations` response body (`id`, `model`, `results`)."""
    return {"id": request_id, "model": model, "results": [r.to_openai() for r in results]}


def validate_openai_result(obj: dict[str, Any]) -> None:
    """Raise ValueError unless `obj` has exactly the shape of an OpenAI moderation result."""
    want = {"flagged", "categories", "category_scores", "category_applied_input_types"}
    if set(obj) != want:
        raise ValueError(f"result keys {sorted(obj)} != {sorted(want)}")
    if not isinstance(obj["flagged"], bool):
        raise ValueError("flagged must be a bool")  # noqa: TRY004 - schema check
    for key, check in (
        ("categories", lambda v: isinstance(v, bool)),
        ("category_scores", lambda v: isinstance(v, float) and 0.0 <= v <= 1.0),
        (
            "category_applied_input_types",
            lambda v: isinstance(v, list) and all(t in ("text", "image") for t in v),
        ),
    ):
        got = obj[key]
        if not isinstance(got, dict) or set(got) != set(CATEGORIES):
            raise ValueError(f"{key} must have exactly the 13 categories")
        bad = [c for c, v in got.items() if not check(v)]
        if bad:
            raise ValueError(f"{key}: bad values for {bad}")
