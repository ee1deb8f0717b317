"""Labelled moderation data in three formats, read into one record shape.

A record is `{"text", "prompt", "labels"}`: `labels` maps an output name (a
category, "jailbreak", or "toxic" for any-flag) to 0/1, and leaves out what the
source does not label. `prompt` is the conversation before `text` (DICES), or None.

- `openai`: JSONL, one `{"text" (or "input"), "categories": {name: bool}}` a line,
  optionally `"jailbreak": bool` and `"flagged": bool`.
- `toxicchat`: ToxicChat's JSON (`instances[].instance`, `annotations.toxicity`
  and `.jailbreaking` with `majority_human` "0"/"1"), or its original JSONL/CSV
  columns `user_input`, `toxicity`, `jailbreaking`.
- `dices`: DICES' JSON (`instances[].instance.{user_prompt,response}`,
  `annotations.safety.majority_human` "Yes" = unsafe): the response is moderated
  with the conversation as its prompt.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .taxonomy import CATEGORIES

FORMATS = ("openai", "toxicchat", "dices")


def guess_format(path: str | Path) -> str:
    p = Path(path)
    head = p.read_text(errors="replace")[:4000]
    if "toxicity" in head or "toxic-chat" in head.lower() or "ToxicChat" in head:
        return "toxicchat"
    if "Dices" in head or "user_prompt" in head:
        return "dices"
    return "openai"


def load_records(path: str | Path, fmt: str | None = None) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    fmt = fmt or guess_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")
    return {"openai": _openai, "toxicchat": _toxicchat, "dices": _dices}[fmt](path)


def _jsonl(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not JSON: {e}") from None
    return rows


def _openai(path: Path) -> list[dict]:
    out = []
    for i, row in enumerate(_jsonl(path), 1):
        text = row.get("text", row.get("input"))
        if not isinstance(text, str):
            raise ValueError(f"{path}:{i}: needs a string 'text'")  # noqa: TRY004 - bad user data
        cats = row.get("categories") or {}
        unknown = set(cats) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"{path}:{i}: unknown categories {sorted(unknown)}")
        labels = {c: int(bool(v)) for c, v in cats.items()}
        if "jailbreak" in row:
            labels["jailbreak"] = int(bool(row["jailbreak"]))
        if "flagged" in row:
            labels["toxic"] = int(bool(row["flagged"]))
        elif len(cats) == len(CATEGORIES):
            labels["toxic"] = int(any(labels[c] for c in CATEGORIES) or labels.get("jailbreak", 0))
        out.append({"text": text, "prompt": row.get("prompt"), "labels": labels})
    return out


def _toxicchat(path: Path) -> list[dict]:
    text = path.read_text()
    if text.lstrip().startswith("{") and '"instances"' in text[:20000]:
        out = []
        for inst in json.loads(text)["instances"]:
            ann = inst["annotations"]
            labels = {"toxic": int(ann["toxicity"]["majority_human"])}
            if "jailbreaking" in ann:
                labels["jailbreak"] = int(ann["jailbreaking"]["majority_human"])
            out.append({"text": inst["instance"], "prompt": None, "labels": labels})
        return out
    rows = list(csv.DictReader(path.open())) if path.suffix == ".csv" else _jsonl(path)
    return [
        {
            "text": r["user_input"],
            "prompt": None,
            "labels": {"toxic": int(r["toxicity"]), "jailbreak": int(r.get("jailbreaking", 0))},
        }
        for r in rows
    ]


def _dices(path: Path) -> list[dict]:
    out = []
    for inst in json.loads(path.read_text())["instances"]:
        conv = inst["instance"]["user_prompt"].replace("\\n", "\n")
        label = inst["annotations"]["safety"]["majority_human"]
        if label not in ("Yes", "No"):
            continue  # "Unsure" majority: no label to agree with
        out.append(
            {"text": inst["instance"]["response"], "prompt": conv, "labels": {"toxic": int(label == "Yes")}}
        )
    return out
