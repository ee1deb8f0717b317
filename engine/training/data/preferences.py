"""Preference data: answers to one prompt, ranked best to worst, read from every format we accept.

All formats become one `Comparison` (a prompt as chat messages, K response strings, a ranking):

- **K-wise** (what `chatfactory sample`, `chatfactory rank` and the web page write)::

      {"prompt": "What is 2+3?" | "messages": [{"role": "user", "content": "..."}, ...],
       "responses": ["5", "6", "It is 5."],
       "ranking": [0, [2, 1]]}

  `ranking` lists response indices from best to worst; a nested list is a *tie group*
  (here: 0 is best, 2 and 1 are equally good and both worse than 0). Every index appears
  exactly once. A record without "ranking" is *unranked* (sampled answers awaiting a labeller).
  Responses are strings, or {"role": "assistant", "content": ...} messages.
- **Pairs**, TRL's preference format: {"prompt", "chosen", "rejected"} with strings or message
  lists; without "prompt" the prompt is implicit: chosen and rejected are whole conversations
  that share everything but their last assistant turn.
- **HH-RLHF transcripts**: {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}, the
  same implicit-prompt split on the "Human:"/"Assistant:" markers.

Files are .jsonl, .jsonl.gz or .json (a list); a malformed record raises ValueError naming the
file, the line and the field. Extra fields in a record are kept (in `extra`) and written back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from .records import iter_json_records, open_text

ROLES = ("system", "user", "assistant")
# Fields this module interprets; anything else in a record travels along in `extra`.
_KNOWN = {"prompt", "messages", "responses", "ranking", "chosen", "rejected"}
# HH-RLHF turn markers: "\n\nHuman: " and "\n\nAssistant: " (the space is sometimes missing).
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


@dataclass
class Comparison:
    """K answers to one prompt and (optionally) their ranking.

    prompt: the conversation the answers reply to; it ends with a user turn.
    responses: the K candidate assistant replies.
    ranking: tie groups of response indices, best group first; None = not ranked yet.
    extra: fields of the source record this module does not interpret (task name, answer, ...).
    where: "file:line" of the source record, for error messages downstream.
    """

    prompt: list[dict[str, str]]
    responses: list[str]
    ranking: list[list[int]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    where: str = ""

    def pairs(self) -> list[tuple[int, int]]:
        """Every (better, worse) pair the ranking implies; pairs within a tie group are skipped."""
        if self.ranking is None:
            return []
        out = []
        for gi, gj in combinations(range(len(self.ranking)), 2):
            out += [(a, b) for a in self.ranking[gi] for b in self.ranking[gj]]
        return out

    def to_record(self) -> dict[str, Any]:
        """The K-wise JSON record (ties as nested lists, singletons as plain indices)."""
        rec: dict[str, Any] = dict(self.extra)
        rec["messages"] = self.prompt
        rec["responses"] = list(self.responses)
        if self.ranking is not None:
            rec["ranking"] = [g[0] if len(g) == 1 else list(g) for g in self.ranking]
        return rec


# ---- parsing one record ------------------------------------------------------------------
def parse_ranking(value: Any, k: int, where: str = "ranking") -> list[list[int]]:
    """[best, [tied, tied], worst] -> [[best], [tied, tied], [worst]], checked to be a
    permutation of range(k)."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: 'ranking' must be a non-empty list of response indices, got {value!r}")
    groups: list[list[int]] = []
    for item in value:
        group = item if isinstance(item, list) else [item]
        if not group or not all(isinstance(i, int) and not isinstance(i, bool) for i in group):
            raise ValueError(f"{where}: 'ranking' entries must be indices or non-empty lists of indices, got {item!r}")
        groups.append(list(group))
    seen = [i for g in groups for i in g]
    if sorted(seen) != list(range(k)):
        raise ValueError(
            f"{where}: 'ranking' {value!r} must name each of the {k} responses (indices 0..{k - 1}) exactly once"
        )
    return groups


def check_messages(messages: Any, where: str, name: str = "messages") -> list[dict[str, str]]:
    """A list of {"role", "content"} dicts with known roles and string content."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: '{name}' must be a non-empty list of messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise ValueError(
                f"{where}: '{name}'[{i}] must be {{'role': one of {list(ROLES)}, 'content': string}}, got {m!r}"
            )
        out.append({"role": m["role"], "content": m["content"]})
    return out


def parse_prompt(value: Any, where: str, name: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{where}: '{name}' is empty")
        return [{"role": "user", "content": value}]
    msgs = check_messages(value, where, name)
    if msgs[-1]["role"] != "user":
        raise ValueError(f"{where}: '{name}' must end with a user message (the answers reply to it)")
    return msgs


def _response(value: Any, where: str, name: str) -> str:
    """A reply: a string, an assistant message, or a list holding one assistant message."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        value = check_messages([value], where, name)[0]
        if value["role"] != "assistant":
            raise ValueError(f"{where}: '{name}' must be an assistant message, got role {value['role']!r}")
        return value["content"]
    if isinstance(value, str):
        return value
    raise ValueError(f"{where}: '{name}' must be a string or one assistant message, got {type(value).__name__}")


def split_hh_transcript(text: str, where: str = "", name: str = "transcript") -> list[dict[str, str]]:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> chat messages."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise ValueError(f"{where}: '{name}' is not an HH-RLHF transcript (must start with '\\n\\nHuman:')")
    role = {"Human": "user", "Assistant": "assistant"}
    return [{"role": role[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2])]


def _split_implicit(chosen: list[dict], rejected: list[dict], where: str) -> tuple[list[dict], str, str]:
    """Two whole conversations -> (shared prompt, chosen reply, rejected reply)."""
    if chosen[:-1] != rejected[:-1]:
        n = next(i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b) if len(chosen) == len(rejected) else -1
        at = f"at message {n}" if n >= 0 else f"({len(chosen)} vs {len(rejected)} messages)"
        raise ValueError(f"{where}: 'chosen' and 'rejected' must differ only in their last turn; they differ {at}")
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        if conv[-1]["role"] != "assistant":
            raise ValueError(f"{where}: '{name}' must end with an assistant turn")
    prompt = chosen[:-1]
    if not prompt or prompt[-1]["role"] != "user":
        raise ValueError(f"{where}: the shared prompt of 'chosen' and 'rejected' must end with a user turn")
    return prompt, chosen[-1]["content"], rejected[-1]["content"]


def parse_record(rec: Any, where: str = "record") -> Comparison:
    """One JSON object in any accepted format -> Comparison (ValueError names `where` and the field)."""
    if not isinstance(rec, dict):
        # ValueError, not TypeError: a bad line in a user's file is bad input, reported without traceback
        raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")  # noqa: TRY004
    extra = {k: v for k, v in rec.items() if k not in _KNOWN}
    if "responses" in rec:
        if ("prompt" in rec) == ("messages" in rec):
            raise ValueError(f"{where}: a K-wise record needs exactly one of 'prompt' or 'messages'")
        key = "prompt" if "prompt" in rec else "messages"
        prompt = parse_prompt(rec[key], where, key)
        resp = rec["responses"]
        if not isinstance(resp, list) or len(resp) < 1:
            raise ValueError(f"{where}: 'responses' must be a non-empty list")
        responses = [_response(r, where, f"responses[{i}]") for i, r in enumerate(resp)]
        ranking = parse_ranking(rec["ranking"], len(responses), where) if rec.get("ranking") is not None else None
        return Comparison(prompt, responses, ranking, extra, where)
    if "chosen" in rec or "rejected" in rec:
        for key in ("chosen", "rejected"):
            if key not in rec:
                raise ValueError(f"{where}: a pair record needs both 'chosen' and 'rejected' (missing {key!r})")
        chosen, rejected = rec["chosen"], rec["rejected"]
        if "prompt" in rec or "messages" in rec:
            key = "prompt" if "prompt" in rec else "messages"
            prompt = parse_prompt(rec[key], where, key)
            good, bad = _response(chosen, where, "chosen"), _response(rejected, where, "rejected")
        elif isinstance(chosen, str) and isinstance(rejected, str):
            prompt, good, bad = _split_implicit(
                split_hh_transcript(chosen, where, "chosen"), split_hh_transcript(rejected, where, "rejected"), where
            )
        else:
            prompt, good, bad = _split_implicit(
                check_messages(chosen, where, "chosen"), check_messages(rejected, where, "rejected"), where
            )
        return Comparison(prompt, [good, bad], [[0], [1]], extra, where)
    raise ValueError(
        f"{where}: not a preference record: expected 'responses' (K-wise) or 'chosen'/'rejected' (pairs), "
        f"got fields {sorted(rec)}"
    )


# ---- files -------------------------------------------------------------------------------
# the JSON record reader is shared with the corpus and conversation readers: data/records.py
def read_preferences(
    path: str | Path, *, require_ranking: bool = True, skip_invalid: bool = False, limit: int | None = None
) -> list[Comparison]:
    """All comparisons in a file (any accepted format).

    require_ranking: reject unranked K-wise records (training needs rankings; `rank` does not).
    skip_invalid: drop malformed records instead of raising (real dumps hold a few: 5 of the
        3,886 HH-RLHF helpful test pairs differ before their last turn). Their count is kept
        on the returned list's `skipped` attribute.
    """
    out = _ComparisonList()
    for rec, where in iter_json_records(path):
        try:
            c = parse_record(rec, where)
            if require_ranking and c.ranking is None:
                raise ValueError(f"{where}: no 'ranking' (rank the responses first, e.g. `chatfactory rank`)")
        except ValueError:
            if not skip_invalid:
                raise
            out.skipped += 1
            continue
        out.append(c)
        if limit is not None and len(out) >= limit:
            break
    if not out and not out.skipped:
        raise ValueError(f"{path}: no preference records")
    return out


class _ComparisonList(list):
    skipped: int = 0


def write_preferences(path: str | Path, comparisons: Iterable[Comparison]) -> int:
    """Write K-wise JSONL (gzip if the name ends in .gz); returns the record count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open_text(path, "w") as f:
        for c in comparisons:
            f.write(json.dumps(c.to_record(), ensure_ascii=False) + "\n")
            n += 1
    return n


def split_held_out(comparisons: list[Comparison], fraction: float, seed: int = 0) -> tuple[list, list]:
    """(train, held-out) by prompt: a deterministic shuffle, so reruns hold out the same prompts
    and no prompt lands on both sides (answers to one prompt are correlated)."""
    import random

    if not 0 <= fraction < 1:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    keys = sorted({json.dumps(c.prompt, sort_keys=True) for c in comparisons})
    random.Random(seed).shuffle(keys)
    held = set(keys[: round(len(keys) * fraction)])
    train = [c for c in comparisons if json.dumps(c.prompt, sort_keys=True) not in held]
    test = [c for c in comparisons if json.dumps(c.prompt, sort_keys=True) in held]
    return train, test
