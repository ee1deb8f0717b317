"""The rule layer: our own word lists and patterns, per category, on normalised text.

Rules live in `data/rules.yaml` (format described there). All rules of one
category are joined into one regex (a trie on leading letters, a named group per
weight), so a message costs one regex pass per category whatever the number of rules.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from engine.paths import assets_dir

from .normalize import BOUNDARY_L, factor, normalize, rule_regex
from .taxonomy import CATEGORIES, SIGNALS

DEFAULT_RULES = assets_dir() / "moderation" / "rules.yaml"


class RuleLayer:
    """Scores every category and signal from pattern matches (noisy-or of rule weights)."""

    name = "rules"

    def __init__(self, path: str | Path | None = None, max_chars: int = 20_000):
        self.path = Path(path) if path else DEFAULT_RULES
        spec = yaml.safe_load(self.path.read_text())
        macros = spec.get("macros", {})
        self.max_chars = max_chars  # rules see the head and tail of very long inputs
        unless = spec.get("unless") or {}
        assert set(unless) <= set(CATEGORIES), f"{self.path}: unknown categories in unless"
        # One regex per category: a named group for its benign contexts ("u", tried
        # first, so "kill the process" is read as one phrase) and one per weight,
        # strongest first. One pass over the text per category.
        self.patterns: dict[str, tuple[re.Pattern[str] | None, re.Pattern[str] | None]] = {}
        self.weights: dict[str, dict[str, float]] = {}
        self.damp: dict[str, float] = {}
        for section in ("categories", "signals"):
            for name, tiers in (spec.get(section) or {}).items():
                assert name in CATEGORIES or name in SIGNALS, f"{self.path}: unknown category {name!r}"
                groups = []
                if name in unless:
                    self.damp[name] = float(unless[name]["damp"])
                    groups.append(("u", [rule_regex(r, macros) for r in unless[name]["rules"]]))
                tiers = sorted(tiers.items(), key=lambda kv: -float(kv[0]))
                self.weights[name] = {f"t{i}": float(w) for i, (w, _) in enumerate(tiers)}
                groups += [
                    (f"t{i}", [rule_regex(r, macros) for r in rules]) for i, (_, rules) in enumerate(tiers)
                ]
                self.patterns[name] = _category_regex(groups)

    def _hits(self, views: tuple[str, str], name: str) -> tuple[dict[str, set[str]], bool]:
        hits: dict[str, set[str]] = {}
        benign = False
        for pat, text in zip(self.patterns[name], views):
            if pat is None:
                continue
            for m in pat.finditer(text):
                group = m.lastgroup.split("_")[0]
                if group == "u":
                    benign = True
                else:
                    hits.setdefault(group, set()).add(m.group(0).strip())
        return hits, benign

    @staticmethod
    def _views(text: str) -> tuple[str, str]:
        """Word rules read the text as space-separated words (punctuation to spaces, a
        leading space); raw `re:` rules read the normalised text itself."""
        norm = normalize(text)
        return " " + _NON_WORD.sub(" ", norm), norm

    def score(self, text: str) -> dict[str, float]:
        if len(text) > self.max_chars:
            half = self.max_chars // 2
            text = text[:half] + " " + text[-half:]
        views = self._views(text)
        out: dict[str, float] = {}
        for name, weights in self.weights.items():
            hits, benign = self._hits(views, name)
            miss = 1.0
            for tier, found in hits.items():
                # each distinct matched phrase is more evidence, up to three
                miss *= (1.0 - weights[tier]) ** min(3, len(found))
            score = 1.0 - miss
            out[name] = score * self.damp[name] if benign and score > 0 else score
        return out

    def matches(self, text: str) -> dict[str, list[str]]:
        """Which phrases matched, per category (for explanations and debugging)."""
        views = self._views(text)
        out: dict[str, list[str]] = {}
        for name in self.weights:
            found = sorted(set().union(*self._hits(views, name)[0].values()))
            if found:
                out[name] = found
        return out


_NON_WORD = re.compile(r"[^a-z0-9@$+ ]+")


def _category_regex(groups: list[tuple[str, list[str]]]):
    """Two regexes for a category, (word rules, raw rules), with a named group per tier.

    Word rules all start at a word, so they are joined behind one literal space
    (the word view puts a space before every word): `re` jumps from space to space
    in C instead of trying every rule at every character. Within a tier, rules
    that start with a plain letter form a trie (`factor`), and the others begin
    with a one-character peek at their possible first letters: several times
    faster than one regex per rule. Benign contexts come first, then the strongest
    tier, so that is what a phrase is read as.
    """
    lead, raw = [], []
    for g, pats in groups:
        words = [p[len(BOUNDARY_L) :] for p in pats if p.startswith(BOUNDARY_L)]
        others = [p for p in pats if not p.startswith(BOUNDARY_L)]
        if words:
            lead.append(f"(?P<{g}>{factor(words)})")
        if others:
            raw.append(f"(?P<{g}_raw>" + "|".join(f"(?:{r})" for r in others) + ")")
    word_re = re.compile(" (?:" + "|".join(lead) + ")") if lead else None
    raw_re = re.compile("|".join(raw)) if raw else None
    return word_re, raw_re


_SHARED: dict[str, RuleLayer] = {}


def shared_rules(path: str | Path | None = None) -> RuleLayer:
    """One compiled RuleLayer per rules file (compiling takes about a second)."""
    key = str(Path(path) if path else DEFAULT_RULES)
    if key not in _SHARED:
        _SHARED[key] = RuleLayer(path)
    return _SHARED[key]
