"""Human feedback → reward-model training data: `chatfactory feedback export|stats`.

The chat page stores two kinds of judgement (server/store/models.py):

- **rankings**: the person ordered 2–4 sampled answers to one prompt best to worst (ties allowed).
  Each becomes one K-wise record as stored.
- **thumbs**: +1/-1 on single answers. A thumb alone says nothing *relative*, and the reward
  model learns only from comparisons, so thumbs become data only where two different answers to
  the same prompt (the same visible history, in any conversation: a regenerated answer, or
  the same question asked twice) were rated differently: every up-rated answer beats every
  down-rated one. Answers replaced by a template (moderation) are skipped: they judge the
  template, not the model.

`--format rankings` writes K-wise records, `--format pairs` TRL's conversational preference
pairs (`{"prompt": [messages], "chosen": [assistant msg], "rejected": [assistant msg]}`); both
are what `chatfactory reward --data FILE` reads (chatfactory.data.preferences), and every record
is checked with that reader before it is written. Fields the reader does not interpret (model,
sampling, rater, origin, ids) travel along for audit.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from chatfactory.data.preferences import Comparison, parse_record
from chatfactory.server.store.conversations import visible_history
from chatfactory.server.store.models import Conversation, Feedback, Message, Ranking, User

FORMATS = ("rankings", "pairs")


# ---- reading the store -------------------------------------------------------------------
def _prompt_messages(value: dict[str, Any]) -> list[dict[str, str]]:
    # a Ranking stores {"messages": [...]} or {"prompt": "..."}
    if "messages" in value:
        return [{"role": m["role"], "content": m["content"]} for m in value["messages"]]
    return [{"role": "user", "content": value.get("prompt", "")}]


def ranking_comparisons(session: Session, since: datetime | None = None) -> list[Comparison]:
    """One Comparison per stored ranking (oldest first)."""
    q = sa.select(Ranking, User.name).join(User, Ranking.user_id == User.id).order_by(Ranking.id)
    if since is not None:
        q = q.where(Ranking.created_at >= since)
    out = []
    for r, rater in session.execute(q):
        extra = {
            "origin": "ranking",
            "ranking_id": r.id,
            "model": r.model,
            "sampling": r.sampling,
            "rater": rater,
            "created_at": _iso(r.created_at),
        }
        out.append(
            Comparison(
                _prompt_messages(r.prompt),
                list(r.responses),
                [list(g) for g in r.ranking],
                extra,
                where=f"rankings.id={r.id}",
            )
        )
    return out


def prompt_before(conv: Conversation, position: int) -> list[dict[str, str]]:
    """What the model was shown before the answer at `position` (less the hidden instructions):
    the visible history, as the chat flow takes it, with flagged turns dropped (the flow never
    feeds them to the model)."""
    earlier = SimpleNamespace(messages=[m for m in conv.messages if m.position < position])
    return [
        {"role": m["role"], "content": m["content"]} for m in visible_history(earlier) if not m.get("flagged")
    ]


@dataclass
class _Rated:
    text: str
    net: int = 0  # sum of ratings over raters: > 0 preferred, < 0 rejected, 0 undecided
    message_ids: list[str] = field(default_factory=list)
    models: set[str] = field(default_factory=set)
    raters: set[str] = field(default_factory=set)


def thumbs_comparisons(session: Session, since: datetime | None = None) -> list[Comparison]:
    """Thumbs → comparisons: per prompt, the up-rated answers (tied) beat the down-rated ones."""
    q = (
        sa.select(Feedback, Message, User.name)
        .join(Message, Feedback.message_id == Message.id)
        .join(User, Feedback.user_id == User.id)
        .where(Message.role == "assistant", Message.template_used.is_(None), Message.flagged.is_(False))
        .order_by(Feedback.id)
    )
    if since is not None:
        q = q.where(Feedback.created_at >= since)
    rows = list(session.execute(q))
    conv_ids = {m.conversation_id for _, m, _ in rows}
    convs = {
        c.id: c
        for c in session.scalars(
            sa.select(Conversation)
            .where(Conversation.id.in_(conv_ids))
            .options(selectinload(Conversation.messages))
        )
    }
    # prompt key -> answer text -> aggregate; texts are merged so one answer sampled twice
    # (greedy decoding) is one candidate, never a pair with itself
    groups: dict[str, dict[str, _Rated]] = defaultdict(dict)
    prompts: dict[str, list[dict[str, str]]] = {}
    for fb, msg, rater in rows:
        prompt = prompt_before(convs[msg.conversation_id], msg.position)
        if not prompt or prompt[-1]["role"] != "user":
            continue  # an answer with no user turn before it (cannot be a training prompt)
        key = json.dumps(prompt, sort_keys=True, ensure_ascii=False)
        prompts[key] = prompt
        rated = groups[key].setdefault(msg.content, _Rated(msg.content))
        rated.net += 1 if fb.rating > 0 else -1
        rated.message_ids.append(msg.id)
        rated.models.update([msg.model] if msg.model else [])
        rated.raters.add(rater)
    out = []
    for key, by_text in groups.items():
        ups = [r for r in by_text.values() if r.net > 0]
        downs = [r for r in by_text.values() if r.net < 0]
        if not ups or not downs:
            continue
        answers = ups + downs
        extra = {
            "origin": "thumbs",
            "models": sorted({m for r in answers for m in r.models}),
            "raters": sorted({u for r in answers for u in r.raters}),
            "message_ids": [r.message_ids for r in answers],
        }
        ranking = [list(range(len(ups))), list(range(len(ups), len(answers)))]
        out.append(
            Comparison(prompts[key], [r.text for r in answers], ranking, extra, where=f"thumbs on {key[:60]}")
        )
    return out


def pair_records(comparisons: list[Comparison]) -> list[dict[str, Any]]:
    """Every (better, worse) pair a ranking implies, as TRL conversational preference records."""
    out = []
    for c in comparisons:
        for good, bad in c.pairs():
            rec = dict(c.extra)
            rec.update(
                prompt=c.prompt,
                chosen=[{"role": "assistant", "content": c.responses[good]}],
                rejected=[{"role": "assistant", "content": c.responses[bad]}],
            )
            out.append(rec)
    return out


def export_records(
    session: Session, fmt: str, since: datetime | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """(records ready to write, problems): every record passes the preference reader; stored
    rows it rejects are reported in `problems` (with the row) and left out."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    comparisons = ranking_comparisons(session, since) + thumbs_comparisons(session, since)
    records = [c.to_record() for c in comparisons] if fmt == "rankings" else pair_records(comparisons)
    wheres = [c.where for c in comparisons] if fmt == "rankings" else [None] * len(records)
    good, problems = [], []
    for rec, where in zip(records, wheres):
        try:
            parse_record(rec, where or "pair")
        except ValueError as e:
            problems.append(str(e))
            continue
        good.append(rec)
    return good, problems


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> int:
    """Write records as JSONL (gzip for .gz), atomically: a reader never sees half a file."""
    path = Path(path)
    if not path.name.endswith((".jsonl", ".jsonl.gz")):
        raise ValueError(
            f"{path}: name the output .jsonl or .jsonl.gz (the format `chatfactory reward` streams)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(tmp, "wt", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return len(records)


# ---- stats --------------------------------------------------------------------------------
def feedback_stats(session: Session, since: datetime | None = None) -> dict[str, Any]:
    """Counts of thumbs up/down, comments and rankings, by model and by rater."""
    by_model: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    by_rater: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    q = (
        sa.select(Feedback.rating, Feedback.comment, Message.model, Message.template_used, User.name)
        .join(Message, Feedback.message_id == Message.id)
        .join(User, Feedback.user_id == User.id)
    )
    if since is not None:
        q = q.where(Feedback.created_at >= since)
    for rating, comment, model, template_used, rater in session.execute(q):
        kind = "up" if rating > 0 else "down"
        for table, name in ((by_model, model or "(unknown)"), (by_rater, rater)):
            table[name][kind] += 1
            if comment:
                table[name]["comments"] += 1
            if template_used:
                table[name]["on_templates"] += 1
    q = sa.select(Ranking.model, Ranking.responses, User.name).join(User, Ranking.user_id == User.id)
    if since is not None:
        q = q.where(Ranking.created_at >= since)
    for model, responses, rater in session.execute(q):
        for table, name in ((by_model, model or "(unknown)"), (by_rater, rater)):
            table[name]["rankings"] += 1
            table[name]["ranked_answers"] += len(responses)
    thumbs = thumbs_comparisons(session, since)
    return {
        "by_model": {k: dict(v) for k, v in sorted(by_model.items())},
        "by_rater": {k: dict(v) for k, v in sorted(by_rater.items())},
        "exportable": {
            "rankings": len(ranking_comparisons(session, since)) + len(thumbs),
            "thumb_comparisons": len(thumbs),
        },
    }


STAT_COLUMNS = ("up", "down", "comments", "on_templates", "rankings", "ranked_answers")


def format_stats(stats: dict[str, Any]) -> str:
    lines = []
    widths = {c: max(len(c), 5) for c in STAT_COLUMNS}
    for title, key in (("model", "by_model"), ("rater", "by_rater")):
        rows = stats[key]
        width = max([len(title)] + [len(n) for n in rows])
        lines.append(f"{title:<{width}}  " + "  ".join(f"{c:>{widths[c]}}" for c in STAT_COLUMNS))
        for name, counts in rows.items():
            lines.append(
                f"{name:<{width}}  " + "  ".join(f"{counts.get(c, 0):>{widths[c]}}" for c in STAT_COLUMNS)
            )
        if not rows:
            lines.append("(no feedback yet)")
        lines.append("")
    ex = stats["exportable"]
    lines.append(
        f"exportable: {ex['rankings']} ranking record(s), {ex['thumb_comparisons']} of them from thumbs "
        "(answers to one prompt rated differently)"
    )
    return "\n".join(lines)


# ---- command line -------------------------------------------------------------------------
def parse_since(value: str | None) -> datetime | None:
    """'2024-05-01' or an ISO datetime; naive values are UTC (the store keeps UTC)."""
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--since {value!r}: expected a date like 2024-05-01 or 2024-05-01T12:00") from None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def open_store(url: str | None) -> Session:
    """A session on the server's database (`--db`, else the server's own settings: env/default)."""
    from chatfactory.server.settings import Settings
    from chatfactory.server.store.db import create_db_engine, migrate, normalize_url

    url = normalize_url(url or Settings.load().database_url)
    parsed = sa.engine.make_url(url)
    is_file = parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
    if is_file and not Path(parsed.database).exists():
        raise FileNotFoundError(
            f"{parsed.database}: no feedback database here (pass --db URL, or set DATABASE_URL as for `chatfactory serve`)"
        )
    engine = create_db_engine(url)
    migrate(engine)  # an older database is brought up to date, as `serve` would
    return Session(engine)


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt is not None else None


def _cmd_export(args: argparse.Namespace) -> int:
    with open_store(args.db) as session:
        records, problems = export_records(session, args.format, parse_since(args.since))
    for p in problems:
        print(f"skipped: {p}", file=sys.stderr)
    n = write_jsonl(args.out, records)
    print(
        f"wrote {n} {args.format} record(s) to {args.out}"
        + (f" ({len(problems)} skipped)" if problems else "")
    )
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    with open_store(args.db) as session:
        stats = feedback_stats(session, parse_since(args.since))
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("feedback", help="export human feedback as reward-model data; show feedback counts")
    cmds = p.add_subparsers(dest="feedback_command", metavar="{export,stats}", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", help="database URL or SQLite path (default: the server's, from DATABASE_URL)")
    common.add_argument("--since", help="only feedback given on or after this date (ISO, UTC)")

    e = cmds.add_parser(
        "export", parents=[common], help="write rankings or pairs for `chatfactory reward --data`"
    )
    e.add_argument("--format", choices=FORMATS, default="rankings", help="K-wise rankings or TRL pairs")
    e.add_argument("--out", required=True, help="output .jsonl (or .jsonl.gz)")
    e.set_defaults(func=_cmd_export)

    s = cmds.add_parser("stats", parents=[common], help="counts of thumbs and rankings by model and by rater")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=_cmd_stats)
