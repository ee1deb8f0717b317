"""The rule layer: our own word lists and patterns, per category, on normalised text.

Rules live in `data/rules.yaml` (format described there). All rules of one
category and one weight are joined into one regex, so a message costs about
fifty regex searches whatever the number of rules.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from .normalize import BOUNDARY_L, compile_rule, factor, normalize
from .taxonomy import CATEGORIES, SIGNALS

DEFAULT_RULES = Path(__file__).parent / "data" / "rules.yaml"


class RuleLayer:
    """Scores every category and signal from pattern matches (noisy-or of rule weights)."""

    name = "rules"

    def __init__(self, path: str | Path | None = None, max_chars: int = 20_000):
        self.path = Path(path) if path else DEFAULT_RULES
        spec = yaml.safe_load(self.path.read_text())
        macros = spec.get("macros", {})
        self.max_chars = max_chars  # rules see the head and tail of very long inputs
        self.tiers: dict[str, list[tuple[float, re.Pattern[str]]]] = {}
        for section in ("categories", "signals"):
            for name, tiers in (spec.get(section) or {}).items():
                assert name in CATEGORIES or name in SIGNALS, f"{self.path}: unknown category {name!r}"
                self.tiers[name] = [
                    (float(w), _join([compile_rule(r, macros) for r in rules])) for w, rules in tiers.items()
                ]
        self.unless: dict[str, tuple[float, re.Pattern[str]]] = {}
        for name, spec_u in (spec.get("unless") or {}).items():
            assert name in CATEGORIES, f"{self.path}: unknown category {name!r} in unless"
            pats = [compile_rule(r, macros) for r in spec_u["rules"]]
            self.unless[name] = (float(spec_u["damp"]), _join(pats))

    def score(self, text: str) -> dict[str, float]:
        if len(text) > self.max_chars:
            half = self.max_chars // 2
            text = text[:half] + " " + text[-half:]
        norm = normalize(text)
        out: dict[str, float] = {}
        for name, tiers in self.tiers.items():
            miss = 1.0
            for weight, pat in tiers:
                # each distinct matched phrase is more evidence, up to three
                hits = {m.group(0) for _, m in zip(range(3), pat.finditer(norm))}
                miss *= (1.0 - weight) ** len(hits)
            score = 1.0 - miss
            if score > 0 and name in self.unless:
                damp, pat = self.unless[name]
                if pat.search(norm):
                    score *= damp
            out[name] = score
        return out

    def matches(self, text: str) -> dict[str, list[str]]:
        """Which phrases matched, per category (for explanations and debugging)."""
        norm = normalize(text)
        out: dict[str, list[str]] = {}
        for name, tiers in self.tiers.items():
            found = [m.group(0) for _, pat in tiers for m in pat.finditer(norm)]
            if found:
                out[name] = found
        return out


def _join(patterns: list[re.Pattern[str]]) -> re.Pattern[str]:
    # Most rules start with the same word-boundary check: test it once per position,
    # not once per rule, which makes a tier several times faster.
    lead = [p.pattern[len(BOUNDARY_L) :] for p in patterns if p.pattern.startswith(BOUNDARY_L)]
    raw = [p.pattern for p in patterns if not p.pattern.startswith(BOUNDARY_L)]
    alts = ([BOUNDARY_L + "(?:" + factor(lead) + ")"] if lead else []) + [f"(?:{r})" for r in raw]
    return re.compile("|".join(alts))


_SHARED: dict[str, RuleLayer] = {}


def shared_rules(path: str | Path | None = None) -> RuleLayer:
    """One compiled RuleLayer per rules file (compiling takes about a second)."""
    key = str(Path(path) if path else DEFAULT_RULES)
    if key not in _SHARED:
        _SHARED[key] = RuleLayer(path)
    return _SHARED[key]
