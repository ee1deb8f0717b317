"""The policy object the chat service calls: layers combined into OpenAI-shaped results.

mod = Moderator.from_config(None)            # shipped default.yaml
mod.moderate("prompt").flagged               # step 2 of the serving flow
mod.moderate_output(answer, prompt=prompt)   # step 6, judged with its prompt
s = mod.stream(prompt)                        # step 6 for a streamed answer
released, result = s.feed(delta)             # ... then s.finish()
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from engine.paths import assets_dir

from .layers import build_layer
from .taxonomy import CATEGORIES, SIGNALS, ModerationResult

DEFAULT_CONFIG = assets_dir() / "moderation" / "default.yaml"

# An answer that refuses does not carry out its prompt, whatever the prompt asked.
_REFUSAL = re.compile(
    r"\b(?:i (?:can(?:no|')t|cannot|won'?t|will not|am not able to|'m not able to|am unable to|'m unable to)"
    r" (?:help|assist|provide|do|write|create|share|give|comply|fulfil|fulfill|support|engage|generate)"
    r"|i(?:'m| am) sorry,? but|sorry,? (?:but )?i can(?:no|')t|as an ai\b|i must (?:decline|refuse)"
    r"|(?:this|that) (?:request )?(?:is|would be) (?:illegal|harmful|unethical|against)"
    r"|i (?:strongly )?(?:advise|urge|encourage) you (?:not|to seek|to contact|to talk)"
    r"|please (?:seek|reach out|contact|call)|(?:crisis|suicide) (?:line|hotline|lifeline))",
    re.IGNORECASE,
)
# Signs that an answer carries out a request: steps, lists, quantities, imperatives.
_INSTRUCTIVE = re.compile(
    r"(?m)^\s*(?:\d+[.)]|[-*•]|step \d+)\s|\b(?:first|then|next|finally|you(?:'ll| will) need|mix|add|heat"
    r"|combine|take|use)\b|\b\d+\s?(?:g|mg|ml|grams|ounces|oz|pills|tablets|minutes|degrees)\b",
    re.IGNORECASE,
)


@dataclass
class Policy:
    """What `default.yaml` holds; every field documented there."""

    layers: list[dict] = field(default_factory=lambda: [{"type": "rules"}, {"type": "classifier"}])
    combine: str = "noisy_or"
    thresholds: dict[str, float] = field(default_factory=lambda: {"default": 0.5})
    signals: dict[str, dict] = field(default_factory=dict)
    on_error: str = "flag"
    context: dict[str, Any] = field(default_factory=dict)
    stream: dict[str, int] = field(default_factory=dict)
    disabled: list[str] = field(default_factory=list)  # categories that never flag (the user's choice)

    def with_user_settings(self, settings: dict[str, Any] | None) -> Policy:
        """The policy with the app's Settings applied: `{"disabled": [category, ...],
        "thresholds": {category: 0..1}, "fail_closed": bool}` (each optional)."""
        if not settings:
            return self
        if not isinstance(settings, dict):
            raise ValueError(f"moderation settings: expected an object, got {type(settings).__name__}")  # noqa: TRY004
        unknown = set(settings) - {"disabled", "thresholds", "fail_closed"}
        if unknown:
            raise ValueError(f"moderation settings: unknown keys {sorted(unknown)}")
        disabled = list(settings.get("disabled", self.disabled))
        bad = [c for c in disabled if c not in CATEGORIES]
        if bad:
            raise ValueError(f"moderation settings: disabled: unknown categories {bad}")
        thresholds = dict(self.thresholds)
        for cat, value in (settings.get("thresholds") or {}).items():
            if cat not in CATEGORIES and cat != "default":
                raise ValueError(f"moderation settings: thresholds: unknown category {cat!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"moderation settings: thresholds.{cat}: expected a number in (0, 1], got {value!r}")
            thresholds[cat] = float(value)
        on_error = self.on_error
        if "fail_closed" in settings:
            on_error = "flag" if settings["fail_closed"] else "ignore"
        return replace(self, thresholds=thresholds, disabled=disabled, on_error=on_error)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Policy:
        path = Path(path) if path else DEFAULT_CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"no moderation config at {path}")
        raw = yaml.safe_load(path.read_text()) or {}
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        pol = cls(**raw)
        if pol.combine not in ("noisy_or", "max"):
            raise ValueError(f"{path}: combine must be noisy_or or max")
        if pol.on_error not in ("flag", "ignore"):
            raise ValueError(f"{path}: on_error must be flag or ignore")
        for name, s in pol.signals.items():
            cat = s.get("category")
            if name not in SIGNALS or (cat not in (None, "top") and cat not in CATEGORIES):
                raise ValueError(f"{path}: bad signal {name!r}: {s}")
        bad = set(pol.thresholds) - set(CATEGORIES) - {"default"}
        if bad:
            raise ValueError(f"{path}: thresholds for unknown categories {sorted(bad)}")
        return pol

    def threshold(self, name: str) -> float:
        if name in self.signals:
            return float(self.signals[name].get("threshold", 0.5))
        return float(self.thresholds.get(name, self.thresholds.get("default", 0.5)))


class Moderator:
    def __init__(self, policy: Policy):
        self.policy = policy
        self.layers = [(build_layer(spec), float(spec.get("weight", 1.0))) for spec in policy.layers]

    @classmethod
    def from_config(cls, path: str | Path | None = None, user_settings: dict | None = None) -> Moderator:
        """None = the shipped default policy; `user_settings`: see Policy.with_user_settings."""
        return cls(Policy.load(path).with_user_settings(user_settings))

    @property
    def fail_closed(self) -> bool:
        return self.policy.on_error == "flag"

    # --- scoring -------------------------------------------------------------------

    def _layer_scores(self, texts: list[str]) -> tuple[list[dict[str, float]], list[dict], list[str]]:
        """Combined raw scores (categories + signals) per text, per-layer scores, and errors."""
        combined = [dict.fromkeys(CATEGORIES + SIGNALS, 0.0) for _ in texts]
        per_layer: list[dict] = [{} for _ in texts]
        errors: list[str] = []
        for layer, weight in self.layers:
            try:
                batch = (
                    layer.score_batch(texts)
                    if hasattr(layer, "score_batch")
                    else [layer.score(t) for t in texts]
                )
            except Exception as e:  # noqa: BLE001 - any failing moderator is handled by the policy
                errors.append(f"{layer.name}: {type(e).__name__}: {e}")
                continue
            for i, scores in enumerate(batch):
                per_layer[i][layer.name] = scores
                for k, v in scores.items():
                    if k not in combined[i]:
                        continue
                    v = min(1.0, max(0.0, weight * v))
                    old = combined[i][k]
                    combined[i][k] = max(old, v) if self.policy.combine == "max" else 1 - (1 - old) * (1 - v)
        return combined, per_layer, errors

    def _result(self, raw: dict[str, float], layers: dict, errors: list[str], **extra) -> ModerationResult:
        pol = self.policy
        scores = {c: raw[c] for c in CATEGORIES}
        unrouted = 0.0
        signals = {s: raw.get(s, 0.0) for s in SIGNALS}
        for name, value in signals.items():
            spec = pol.signals.get(name)
            if spec is None:
                continue
            target = spec.get("category")
            if target == "top":
                target = max(CATEGORIES, key=lambda c: scores[c])
            if target is None:
                unrouted = max(unrouted, _margin(value, pol.threshold(name)))
            else:
                # rescale so the signal's own threshold lands on the category's threshold
                scores[target] = max(
                    scores[target], _rescale(value, pol.threshold(name), pol.threshold(target))
                )
        for c in CATEGORIES:  # a sub-category implies its parent
            if "/" in c:
                parent = c.split("/")[0]
                scores[parent] = max(scores[parent], scores[c])
        cats = {c: c not in pol.disabled and scores[c] >= pol.threshold(c) for c in CATEGORIES}
        flag_score = max([_margin(scores[c], pol.threshold(c)) for c in CATEGORIES] + [unrouted])
        failed = bool(errors) and pol.on_error == "flag"
        details = {"layers": layers, "signals": signals, "flag_score": flag_score, "errors": errors, **extra}
        if failed:
            details["failed_closed"] = True
        return ModerationResult(
            flagged=any(cats.values()) or unrouted >= 0.5 or failed,
            categories=cats,
            category_scores={c: round(float(scores[c]), 6) for c in CATEGORIES},
            details=details,
        )

    def moderate(self, text: str) -> ModerationResult:
        return self.moderate_batch([text])[0]

    def moderate_batch(self, texts: list[str]) -> list[ModerationResult]:
        if isinstance(texts, str):
            raise TypeError("moderate_batch takes a list of strings; use moderate() for one")
        combined, layers, errors = self._layer_scores(list(texts))
        return [self._result(c, layer, errors) for c, layer in zip(combined, layers)]

    # --- output side ---------------------------------------------------------------

    def moderate_output(
        self, answer: str, prompt: str | None = None, *, _prompt_raw=None
    ) -> ModerationResult:
        """Judge an answer with the prompt that produced it.

        The answer alone is scored; then, unless it refuses, it also inherits the
        prompt's scores (times `context.transfer` and how much the answer looks like
        it carries the request out): "Sure: mix 50 g of ..." is harmless alone but
        not as the answer to "how do I make a bomb".
        """
        texts = [answer] if prompt is None or _prompt_raw is not None else [answer, prompt]
        combined, layers, errors = self._layer_scores(texts)
        raw = combined[0]
        if prompt is None:
            return self._result(raw, layers[0], errors)
        p_raw = _prompt_raw if _prompt_raw is not None else combined[1]
        compliance = self.compliance(answer)
        transfer = self.policy.context.get("transfer", {})
        default = float(transfer.get("default", 0.9))
        ctx = dict(raw)
        for k, pv in p_raw.items():
            inherited = pv * compliance * float(transfer.get(k, default))
            ctx[k] = max(ctx[k], inherited)
        return self._result(ctx, layers[0], errors, compliance=compliance, prompt_scores=p_raw)

    @staticmethod
    def compliance(answer: str) -> float:
        """0.1 for a refusal, else 0.6 to 1.0 as the answer looks more like instructions."""
        if _REFUSAL.search(answer[:400]):
            return 0.1
        n = len(_INSTRUCTIVE.findall(answer))
        return min(1.0, 0.6 + 0.1 * n)

    def prompt_scores(self, prompt: str) -> dict[str, float]:
        combined, _, _ = self._layer_scores([prompt])
        return combined[0]

    def stream(self, prompt: str | None = None) -> StreamModerator:
        return StreamModerator(self, prompt)


class StreamModerator:
    """Moderates a streamed answer in sentence-sized chunks.

    `feed(delta)` returns the text that may be shown now (complete sentences that
    passed moderation; the unfinished sentence is held back) and the result of the
    check it ran, if any. Once a check flags, nothing more is released.
    """

    _SENTENCE_END = re.compile(r"[.!?…:;](?:[\"')\]]*)\s+|\n+")

    def __init__(self, moderator: Moderator, prompt: str | None):
        self.mod = moderator
        self.prompt = prompt
        cfg = moderator.policy.stream
        self.min_chars = int(cfg.get("min_chars", 60))
        # the first chunk may be shorter: it is what the user waits for ("first token" latency)
        self.first_min_chars = int(cfg.get("first_min_chars", self.min_chars))
        self.max_chars = int(cfg.get("max_chars", 400))
        self.window_chars = int(cfg.get("window_chars", 600))
        self.released = ""
        self.pending = ""
        self.result: ModerationResult | None = None
        self.checks = 0
        self.check_seconds = 0.0
        # the prompt is scored once, not at every chunk
        self._prompt_raw = moderator.prompt_scores(prompt) if prompt else None

    @property
    def flagged(self) -> bool:
        return bool(self.result and self.result.flagged)

    def feed(self, delta: str) -> tuple[str, ModerationResult | None]:
        if self.flagged:
            return "", self.result
        self.pending += delta
        cut = self._cut_point()
        if cut is None:
            return "", None
        return self._check(cut)

    def finish(self) -> tuple[str, ModerationResult]:
        """Check and release whatever is left; the result covers the whole answer."""
        if self.flagged:
            return "", self.result
        out, res = self._check(len(self.pending)) if self.pending else ("", None)
        if res is None or not res.flagged:
            # the last word: the whole answer in context (chunks alone can miss a pattern spread across them)
            whole = self._moderate(self.released)
            if whole.flagged:
                self.result = whole
                return "", whole
            res = whole
        return out, res

    def _cut_point(self) -> int | None:
        last = None
        least = self.min_chars if self.released else self.first_min_chars
        for m in self._SENTENCE_END.finditer(self.pending):
            if m.end() >= least:
                last = m.end()
        if last is None and len(self.pending) >= self.max_chars:
            space = self.pending.rfind(" ", 0, self.max_chars)
            last = space + 1 if space > 0 else self.max_chars
        return last

    def _moderate(self, text: str) -> ModerationResult:
        t0 = time.perf_counter()
        if self.prompt is None:
            res = self.mod.moderate(text)
        else:
            res = self.mod.moderate_output(text, self.prompt, _prompt_raw=self._prompt_raw)
        self.checks += 1
        self.check_seconds += time.perf_counter() - t0
        return res

    def _check(self, cut: int) -> tuple[str, ModerationResult]:
        chunk, rest = self.pending[:cut], self.pending[cut:]
        context = self.released[-self.window_chars :]
        res = self._moderate(context + chunk)
        self.result = res
        if res.flagged:
            self.pending = ""
            return "", res
        self.released += chunk
        self.pending = rest
        return chunk, res


def _margin(score: float, threshold: float) -> float:
    """Map a score to [0, 1] so that its threshold lands on 0.5: one scale across categories."""
    return _rescale(score, threshold, 0.5)


def _rescale(x: float, t_from: float, t_to: float) -> float:
    """Piecewise-linear map of [0, 1] to [0, 1] sending t_from to t_to."""
    t_from = min(max(t_from, 1e-6), 1 - 1e-6)
    if x < t_from:
        return x / t_from * t_to
    return t_to + (x - t_from) / (1 - t_from) * (1 - t_to)
