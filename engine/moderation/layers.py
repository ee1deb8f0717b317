"""Moderators the policy can stack: each maps texts to {category or signal: score}.

The rule layer is in `rules.py`; here are the learned head, the optional
alt-profanity-check model, and an external OpenAI-compatible endpoint.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from engine.paths import assets_dir

from .head import Head
from .taxonomy import CATEGORIES

HEADS = {
    "static": assets_dir() / "moderation" / "head_static.npz",
    "minilm": assets_dir() / "moderation" / "head_minilm.npz",
}


class ClassifierLayer:
    name = "classifier"

    def __init__(self, head: str | None = "static"):
        path = HEADS.get(head or "static", head)
        self.head = Head.load(path)
        _ = self.head.encoder  # load the encoder now, so a missing package fails at start-up

    def score_batch(self, texts: list[str]) -> list[dict[str, float]]:
        probs = self.head.predict(texts)
        return [dict(zip(self.head.outputs, map(float, row))) for row in probs]

    def score(self, text: str) -> dict[str, float]:
        return self.score_batch([text])[0]


class ProfanityLayer:
    """alt-profanity-check's linear model of offensive language, read as harassment."""

    name = "profanity"

    def __init__(self):
        try:
            from profanity_check import predict_prob
        except ImportError as e:
            raise ImportError(
                "the 'profanity' layer needs alt-profanity-check: pip install alt-profanity-check"
            ) from e
        self._predict = predict_prob

    def score_batch(self, texts: list[str]) -> list[dict[str, float]]:
        return [{"harassment": float(p)} for p in self._predict(texts)]

    def score(self, text: str) -> dict[str, float]:
        return self.score_batch([text])[0]


class ExternalLayer:
    """POST to an OpenAI-compatible `/v1/moderations` and read `category_scores` back."""

    name = "external"

    def __init__(
        self, url: str, model: str | None = None, timeout_s: float = 2.0, api_key_env: str | None = None
    ):
        self.url, self.model, self.timeout_s = url, model, float(timeout_s)
        self.api_key = os.environ.get(api_key_env) if api_key_env else None

    def score_batch(self, texts: list[str]) -> list[dict[str, float]]:
        body = {"input": texts}
        if self.model:
            body["model"] = self.model
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST")
        req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        # urllib's timeout covers connecting and each read; a TimeoutError propagates
        # to the policy, which fails closed by default
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            data = json.loads(resp.read())
        results = data.get("results")
        if not isinstance(results, list) or len(results) != len(texts):
            raise ValueError(f"{self.url}: expected {len(texts)} results, got {data!r:.200}")
        out = []
        for r in results:
            scores = {c: float(v) for c, v in (r.get("category_scores") or {}).items() if c in CATEGORIES}
            # an endpoint that only says flagged/not (Llama Guard) still counts
            for c, v in (r.get("categories") or {}).items():
                if c in CATEGORIES and v:
                    scores[c] = max(scores.get(c, 0.0), 1.0)
            if r.get("flagged") and not any(v >= 0.5 for v in scores.values()):
                scores["toxic"] = 1.0
            out.append(scores)
        return out

    def score(self, text: str) -> dict[str, float]:
        return self.score_batch([text])[0]


def build_layer(spec: dict):
    kind = spec.get("type")
    if kind == "rules":
        from .rules import shared_rules

        return shared_rules(spec.get("path"))
    if kind == "classifier":
        return ClassifierLayer(spec.get("head", "static"))
    if kind == "profanity":
        return ProfanityLayer()
    if kind == "external":
        if not spec.get("url"):
            raise ValueError("an external layer needs a url")
        return ExternalLayer(
            spec["url"], spec.get("model"), spec.get("timeout_s", 2.0), spec.get("api_key_env")
        )
    raise ValueError(f"unknown layer type {kind!r}: use rules, classifier, profanity or external")
