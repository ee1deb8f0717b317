"""Where fine-tuning data comes from: the user's own chats and data files, validated.

Every source becomes a `Dataset`: demonstrations (`Conversation`s, for SFT), comparisons
(`Comparison`s, answers ranked best first, for a reward model or DPO) and a report of what was
read and what was skipped, and why. `read_source(spec)` takes one of these specs:

- ``chats``: the chats in the store (see `from_store`); options after a colon, comma-separated:
  ``chats:since=2026-01-01,until=2026-02-01,session=3+5,template=concise``. ``since``/``until``
  are ISO dates or times (local time unless they carry an offset; ``until`` is exclusive, so
  the example is January), ``session`` is session ids joined by ``+``, ``template`` a template
  set name.
- ``builtin``: the built-in tasks' training conversations (``builtin:add2,identity``: some).
- a path to a ``.jsonl`` (or ``.jsonl.gz``, or a ``.json`` list) file, its format detected
  from its first records:

  - OpenAI fine-tuning JSONL, ``{"messages": [...]}`` (or TRL's ``prompt``/``completion``)
    -> demonstrations;
  - TRL preference pairs (``prompt``/``chosen``/``rejected``, strings or message lists) or
    K-wise rankings (``messages``/``responses``/``ranking``) -> comparisons;
  - HH-RLHF (``chosen``/``rejected`` transcripts, "\\n\\nHuman: ...\\n\\nAssistant: ...") ->
    comparisons;
  - an OpenAssistant export (flat messages with ``message_id``/``parent_id``, or trees with
    ``message_tree_id``/``prompt``) -> demonstrations (each tree's best-ranked path).
- ``openai:PATH``, ``prefs:PATH``, ``hh:PATH``, ``oasst:PATH``: that format, no detection.

Validation reads every line. A bad line (invalid UTF-8, invalid JSON, an unknown role, empty
content, no assistant turn, a ranking that does not name each response once, ...) is skipped
and named in the report as ``FILE:LINE: what is wrong``, in the words of the parser that
rejected it (engine.training.data.conversations / preferences / converters). A missing file,
an empty one, or one where no line is usable raises `DataError`, which lists the problems.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain, islice
from pathlib import Path
from typing import Any

from engine.training.data import converters
from engine.training.data.conversations import Conversation, ConversationError, parse_conversation
from engine.training.data.preferences import Comparison, parse_record

KINDS = ("openai", "prefs", "hh", "oasst")  # file formats, as spec prefixes and `kind=`
CHATS_OPTIONS = ("since", "until", "session", "template")
MAX_LISTED = 10  # problems a DataError message names before "and N more"
MAX_KEPT = 1000  # problems a report keeps one by one (all are counted)
DETECT_RECORDS = 20  # records looked at to tell a file's format
_PAGE = 500  # sessions read from the store at a time
_UNFINISHED = (None, "interrupted")  # finish_reason of an answer whose text is not complete


class DataError(ValueError):
    """Data that cannot be used. The message is a summary line (when given), then the problems,
    one a line as ``FILE:LINE: what is wrong``: the first MAX_LISTED, then "and N more"."""

    def __init__(self, problems: Iterable[str], summary: str = "", total: int | None = None):
        self.problems = list(problems)
        self.summary = summary
        total = max(total or 0, len(self.problems))
        lines = [summary] if summary else []
        lines += [f"  {p}" if summary else p for p in self.problems[:MAX_LISTED]]
        if total > MAX_LISTED:
            lines.append(f"  and {total - MAX_LISTED} more" if summary else f"and {total - MAX_LISTED} more")
        super().__init__("\n".join(lines))


@dataclass
class Dataset:
    """Training data from one or more sources.

    conversations: demonstrations for SFT.
    comparisons: ranked answers for a reward model or DPO.
    report: per source (its spec or path): "kind", counts ("records", "conversations",
        "comparisons", "skipped"), "reasons" (reason -> count) and "problems" (the skipped
        lines or messages, "WHERE: what is wrong", the first MAX_KEPT).
    """

    conversations: list[Conversation] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    report: dict[str, dict[str, Any]] = field(default_factory=dict)

    def merge(self, *others: Dataset) -> Dataset:
        """A new Dataset holding this one's data and the others' (the same source twice is
        reported twice: "name", "name #2")."""
        out = Dataset(list(self.conversations), list(self.comparisons), dict(self.report))
        for o in others:
            out.conversations += o.conversations
            out.comparisons += o.comparisons
            for name, entry in o.report.items():
                key, n = name, 2
                while key in out.report:
                    key, n = f"{name} #{n}", n + 1
                out.report[key] = entry
        return out

    def __add__(self, other: Dataset) -> Dataset:
        if not isinstance(other, Dataset):
            return NotImplemented
        return self.merge(other)

    @property
    def problems(self) -> list[str]:
        """Every skipped line or message named in the report, source by source."""
        return [p for entry in self.report.values() for p in entry.get("problems", [])]

    @property
    def skipped(self) -> int:
        return sum(entry.get("skipped", 0) for entry in self.report.values())

    def summary(self) -> str:
        """One line per source: what it gave and what was skipped."""
        lines = []
        for name, e in self.report.items():
            s = f"{name}: {e.get('conversations', 0)} demonstrations, {e.get('comparisons', 0)} comparisons"
            if e.get("skipped"):
                reasons = Counter(e.get("reasons", {})).most_common()
                s += f"; skipped {e['skipped']} (" + ", ".join(f"{n} {r}" for r, n in reasons) + ")"
            lines.append(s)
        return "\n".join(lines)


def _entry(kind: str, **fields: Any) -> dict[str, Any]:
    return {"kind": kind, **fields, "records": 0, "conversations": 0, "comparisons": 0,
            "skipped": 0, "reasons": {}, "problems": []}  # fmt: skip


def _skip(entry: dict, problem: str, reason: str) -> None:
    entry["skipped"] += 1
    entry["reasons"][reason] = entry["reasons"].get(reason, 0) + 1
    if len(entry["problems"]) < MAX_KEPT:
        entry["problems"].append(problem)


def _where_msg(where: str, e: Exception) -> str:
    text = str(e)
    return text if text.startswith(where) else f"{where}: {text}"


# ---- specs -------------------------------------------------------------------------------------
def read_source(spec: str, *, store: Any = None) -> Dataset:
    """One source by its spec (see the module docstring). `store` (an engine.store.Store) is
    needed for ``chats``. Raises ValueError for a bad spec, DataError for unusable data."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a data source must be 'chats', 'builtin' or a file path, got {spec!r}")
    if spec == "chats" or spec.startswith("chats:"):
        options = chats_options(spec[len("chats:") :] if spec != "chats" else "")
        if store is None:
            raise ValueError(f"{spec}: reading your chats needs the conversation store")
        data = from_store(store, **options)
        return Dataset(data.conversations, data.comparisons, {spec: data.report["chats"]})
    if spec == "builtin" or spec.startswith("builtin:"):
        return builtin(spec[len("builtin:") :] if spec != "builtin" else "builtin")
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in KINDS:
        if not rest:
            raise ValueError(f"{spec}: no file after '{prefix}:'")
        return validate_file(rest, kind=prefix)
    return validate_file(spec)


def chats_options(text: str) -> dict[str, Any]:
    """``since=2026-01-01,until=2026-02-01,session=3+5,template=concise`` -> from_store's
    keyword arguments (times as unix seconds). ValueError names the option that is wrong."""
    out: dict[str, Any] = {}
    seen: set[str] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, eq, value = (s.strip() for s in part.partition("="))
        if key not in CHATS_OPTIONS:
            raise ValueError(f"chats: unknown option {key!r} (known: {', '.join(CHATS_OPTIONS)})")
        if not eq or not value:
            raise ValueError(f"chats: option {key!r} needs a value ({key}=...)")
        if key in seen:
            raise ValueError(f"chats: option {key!r} is given twice")
        seen.add(key)
        if key in ("since", "until"):
            out[key] = _timestamp(key, value)
        elif key == "session":
            try:
                ids = [int(v) for v in value.split("+")]
            except ValueError:
                raise ValueError(f"chats: session={value!r} must be session ids joined by '+', e.g. session=3+5") from None
            out["session_ids"] = ids
        else:
            out["template_set"] = value
    if "since" in out and "until" in out and out["since"] >= out["until"]:
        raise ValueError("chats: 'since' must be before 'until'")
    return out


def _timestamp(key: str, value: str) -> float:
    try:
        return datetime.fromisoformat(value).timestamp()  # naive: local time
    except ValueError:
        raise ValueError(
            f"chats: {key}={value!r} is not an ISO date or time (e.g. 2026-01-31 or 2026-01-31T18:00)"
        ) from None


def builtin(tasks: str = "builtin") -> Dataset:
    """The built-in tasks' SFT conversations ('builtin': all; or task names, comma-separated)."""
    from engine.training.data.tasks import get_tasks, training_conversations

    name = "builtin" if tasks == "builtin" else f"builtin:{tasks}"
    entry = _entry("builtin")
    out = []
    for i, c in enumerate(training_conversations(get_tasks(tasks)), 1):
        entry["records"] += 1
        try:
            out.append(parse_conversation(c, f"{name}:{i}"))
        except ConversationError as e:
            _skip(entry, str(e), e.kind)
    entry["conversations"] = len(out)
    return Dataset(out, [], {name: entry})


# ---- the user's chats --------------------------------------------------------------------------
def from_store(
    store: Any,
    *,
    since: float | None = None,
    until: float | None = None,
    session_ids: list[int] | None = None,
    template_set: str | None = None,
) -> Dataset:
    """Training data from the user's chats (an engine.store.Store).

    Demonstrations: every assistant answer the user thumbed up (feedback +1 by rater "user")
    or wrote themselves (finish_reason "edited", `Store.edit_answer`), as the conversation from
    the root down to it; only that answer is trained (`train_from`), the turns before it are
    context. Visible text only (`content`, never `hidden`).

    Comparisons, each with the conversation up to the user's message as its prompt:
    (a) every ranking recorded in the store (`Store.add_ranking`), best first;
    (b) an edited answer above the earlier answers it replaced (its sibling answers that are
        not edits themselves and were not thumbed up: they tie with each other);
    (c) the thumbed-up answers to one user message above its thumbed-down ones.
    Identical comparisons are kept once.

    Skipped, and counted in the report: flagged messages (an answer, or any message on the way
    to it), unfinished answers (finish_reason "interrupted" or still streaming), empty ones.
    Filters: sessions active between `since` and `until` (unix seconds; created before
    `until`, last updated at or after `since`), the sessions `session_ids`, sessions with
    template set `template_set`. Archived sessions count. Where: "chats:session 3 message 17";
    Comparison.extra holds "session", "message" (the user message) and "answers" (their ids).
    """
    filters = {k: v for k, v in (("since", since), ("until", until), ("session_ids", session_ids),
                                 ("template_set", template_set)) if v is not None}  # fmt: skip
    entry = _entry("chats", filters=filters, sessions=0, comparison_sources={"ranking": 0, "edit": 0, "thumbs": 0})
    ratings = {f["message_id"]: f["rating"] for f in store.feedback() if f["rater"] == "user"}
    rankings: dict[int, list[dict]] = defaultdict(list)
    for r in store.rankings():
        rankings[r["prompt_message_id"]].append(r)
    data = Dataset(report={"chats": entry})
    seen: set[str] = set()
    for session in _sessions(store, since, until, session_ids, template_set):
        entry["sessions"] += 1
        _SessionReader(store, session, ratings, rankings, data, entry, seen).read()
    entry["conversations"] = len(data.conversations)
    entry["comparisons"] = len(data.comparisons)
    entry["records"] = entry["conversations"] + entry["comparisons"] + entry["skipped"]
    return data


def _sessions(store: Any, since, until, session_ids, template_set) -> list[dict]:
    if session_ids is not None:
        sessions = []
        for sid in dict.fromkeys(session_ids):
            try:
                sessions.append(store.get_session(sid))
            except KeyError:
                raise ValueError(f"chats: no session with id {sid}") from None
    else:
        sessions, offset = [], 0
        while True:
            page = store.list_sessions(limit=_PAGE, offset=offset, archived=None)
            sessions += page
            offset += len(page)
            if len(page) < _PAGE:
                break
    return sorted(
        (
            s
            for s in {s["id"]: s for s in sessions}.values()  # pages shift if the app writes meanwhile
            if (since is None or s["updated"] >= since)
            and (until is None or s["created"] < until)
            and (template_set is None or s["template_set"] == template_set)
        ),
        key=lambda s: s["id"],
    )


class _SessionReader:
    """The demonstrations and comparisons of one session's message tree."""

    def __init__(self, store, session, ratings, rankings, data: Dataset, entry: dict, seen: set[str]):
        self.sid = session["id"]
        self.msgs = {m["id"]: m for m in store.messages(self.sid)}
        self.children: dict[int | None, list[dict]] = defaultdict(list)
        for m in sorted(self.msgs.values(), key=lambda m: (m["created"], m["id"])):
            self.children[m["parent_id"]].append(m)
        self.ratings, self.rankings = ratings, rankings
        self.data, self.entry, self.seen = data, entry, seen

    def where(self, mid: int) -> str:
        return f"chats:session {self.sid} message {mid}"

    def path(self, mid: int) -> list[dict]:
        out, m = [], self.msgs.get(mid)
        while m is not None and len(out) <= len(self.msgs):  # the bound stops a (corrupt) cycle
            out.append(m)
            m = self.msgs.get(m["parent_id"])
        return out[::-1]

    def unusable(self, m: dict) -> tuple[str, str] | None:
        """(problem, reason) when an answer cannot be trained on, else None."""
        if m["flagged"]:
            return "flagged by moderation", "flagged"
        if m["finish_reason"] == "interrupted":
            return "interrupted (the answer is incomplete)", "interrupted"
        if m["finish_reason"] is None:
            return "still being written (no finish_reason)", "unfinished"
        if not m["content"].strip():
            return "empty answer", "empty content"
        return None

    def flagged_on_path(self, path: list[dict]) -> dict | None:
        return next((m for m in path if m["flagged"]), None)

    def skip(self, mid: int, problem: str, reason: str) -> None:
        _skip(self.entry, f"{self.where(mid)}: {problem}", reason)

    def read(self) -> None:
        answers = [m for m in self.msgs.values() if m["role"] == "assistant"]
        for m in answers:
            if self.ratings.get(m["id"]) == 1 or m["finish_reason"] == "edited":
                self.demonstration(m)
        for m in self.msgs.values():
            if m["role"] == "user":
                for r in self.rankings.get(m["id"], []):
                    self.ranked(m, r)
                self.thumbs(m)
        for m in answers:
            if m["finish_reason"] == "edited":
                self.edit(m)

    # -- demonstrations
    def demonstration(self, m: dict) -> None:
        bad = self.unusable(m)
        if bad:
            self.skip(m["id"], *bad)
            return
        path = self.path(m["id"])
        flagged = self.flagged_on_path(path)
        if flagged is not None:
            self.skip(m["id"], f"message {flagged['id']} before it is flagged by moderation", "flagged")
            return
        turns = [{"role": x["role"], "content": x["content"]} for x in path]
        try:
            conv = parse_conversation({"prompt": turns[:-1], "completion": turns[-1:]}, self.where(m["id"]))
        except ConversationError as e:
            _skip(self.entry, str(e), e.kind)
            return
        self.data.conversations.append(conv)

    # -- comparisons
    def comparison(self, prompt_msg: dict, answers: list[dict], ranking: list[list[int]], source: str, **extra) -> None:
        where = self.where(prompt_msg["id"])
        path = self.path(prompt_msg["id"])
        flagged = self.flagged_on_path(path)
        if flagged is not None:
            self.skip(prompt_msg["id"], f"{source}: message {flagged['id']} of the prompt is flagged by moderation", "flagged")
            return
        c = Comparison(
            [{"role": x["role"], "content": x["content"]} for x in path],
            [a["content"] for a in answers],
            ranking,
            {"session": self.sid, "message": prompt_msg["id"], "answers": [a["id"] for a in answers],
             "from": source, **extra},
            where,
        )  # fmt: skip
        try:
            parse_record(c.to_record(), where)
            check_comparison(c)
        except ValueError as e:
            _skip(self.entry, f"{_where_msg(where, e)} ({source})", "invalid comparison")
            return
        key = json.dumps([c.prompt, c.responses, c.ranking], ensure_ascii=False)
        if key in self.seen:
            return
        self.seen.add(key)
        self.data.comparisons.append(c)
        self.entry["comparison_sources"][source] += 1

    def usable_answers(self, answers: Iterable[dict], source: str) -> list[dict]:
        out = []
        for a in answers:
            bad = self.unusable(a)
            if bad:
                self.skip(a["id"], f"{bad[0]}; left out of a {source} comparison", bad[1])
            else:
                out.append(a)
        return out

    def ranked(self, prompt_msg: dict, r: dict) -> None:
        ranked = [self.msgs[i] for i in r["ranked_ids"] if i in self.msgs]
        answers = self.usable_answers(ranked, "ranking")
        if len(answers) < 2:
            if len(ranked) >= 2:
                self.skip(prompt_msg["id"], f"ranking {r['id']}: fewer than two usable answers", "nothing to compare")
            return
        self.comparison(prompt_msg, answers, [[i] for i in range(len(answers))], "ranking", ranking_id=r["id"])

    def edit(self, e: dict) -> None:
        if self.unusable(e):
            return  # already reported as a demonstration
        parent = self.msgs.get(e["parent_id"])
        if parent is None or parent["role"] != "user":
            self.skip(e["id"], "the edited answer does not reply to a user message", "no prompt")
            return
        replaced = [
            s
            for s in self.children[parent["id"]]
            if s["role"] == "assistant"
            and (s["created"], s["id"]) < (e["created"], e["id"])
            and s["finish_reason"] != "edited"
            and self.ratings.get(s["id"]) != 1
            and s["content"].strip() != e["content"].strip()
        ]
        replaced = self.usable_answers(replaced, "edit")
        if replaced:
            self.comparison(parent, [e, *replaced], [[0], list(range(1, len(replaced) + 1))], "edit")

    def thumbs(self, prompt_msg: dict) -> None:
        kids = [k for k in self.children[prompt_msg["id"]] if k["role"] == "assistant"]
        ups = [k for k in kids if self.ratings.get(k["id"]) == 1]
        downs = [k for k in kids if self.ratings.get(k["id"]) == -1]
        if not ups or not downs:
            return
        ups = [k for k in ups if not self.unusable(k)]  # reported as demonstrations
        downs = self.usable_answers(downs, "thumbs")
        if ups and downs:
            n = len(ups)
            self.comparison(prompt_msg, ups + downs, [list(range(n)), list(range(n, n + len(downs)))], "thumbs")


# ---- files -------------------------------------------------------------------------------------
def validate_file(path: str | Path, kind: str | None = None) -> Dataset:
    """Read and check every line of a data file (kind: one of KINDS, None = detect).

    Returns the good records; the bad ones are in the report ("problems": "FILE:LINE: what is
    wrong"). Raises DataError for a missing or empty file, one whose format cannot be told,
    or one where no record is usable.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)} or None, got {kind!r}")
    path = Path(path)
    if not path.exists():
        raise DataError([f"{path}: no such file"])
    if path.is_dir():
        raise DataError([f"{path}: a folder, not a data file"])
    entry = _entry("file", path=str(path), format=kind, detected=kind is None)
    records = _records(path, entry)
    head = list(islice(records, DETECT_RECORDS))
    if kind is None:
        kind = entry["format"] = _detect(path, head, entry)
    records = chain(head, records)
    data = Dataset(report={str(path): entry})
    if kind == "openai":
        for obj, where in records:
            try:
                data.conversations.append(parse_conversation(obj, where))
            except ConversationError as e:
                _skip(entry, str(e), e.kind)
    elif kind in ("prefs", "hh"):
        for obj, where in records:
            try:
                data.comparisons.append(_file_comparison(obj, where, kind))
            except ValueError as e:
                _skip(entry, _where_msg(where, e), "invalid preference record")
    else:
        data.conversations += _oasst(path, records, entry)
    entry["conversations"], entry["comparisons"] = len(data.conversations), len(data.comparisons)
    if not data.conversations and not data.comparisons:
        if not entry["skipped"]:
            raise DataError([f"{path}: no records (the file is empty)"])
        raise DataError(
            entry["problems"], f"{path}: no usable records (all {entry['skipped']} are invalid):", entry["skipped"]
        )
    return data


def _records(path: Path, entry: dict) -> Iterator[tuple[Any, str]]:
    """(decoded JSON value, "FILE:LINE") for every line that decodes; the others are skipped
    into `entry`. A .json file is one list: "FILE: record N"."""
    try:
        if path.name.endswith((".json", ".json.gz")):
            yield from _json_list(path, entry)
            return
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                where = f"{path}:{n}"
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    entry["records"] += 1
                    _skip(entry, f"{where}: not valid UTF-8 (0x{raw[e.start]:02x} at byte {e.start + 1}; save the file as UTF-8)",
                          "invalid UTF-8")  # fmt: skip
                    continue
                if n == 1:
                    text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
                if not text.strip():
                    continue
                entry["records"] += 1
                try:
                    obj = json.loads(text.rstrip())  # an error at the end names this line's end
                except json.JSONDecodeError as e:
                    _skip(entry, f"{where}: not valid JSON ({e.msg} at column {e.colno})", "invalid JSON")
                    continue
                yield obj, where
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DataError([f"{path}: cannot be read ({e})"]) from None


def _json_list(path: Path, entry: dict) -> Iterator[tuple[Any, str]]:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError([f"{path}:{line}: not valid UTF-8 (0x{raw[e.start]:02x}; save the file as UTF-8)"]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError([f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})"]) from None
    if not isinstance(data, list):
        raise DataError([f"{path}: a .json file must hold a list of records, not a {type(data).__name__}"])
    for i, rec in enumerate(data):
        entry["records"] += 1
        yield rec, f"{path}: record {i}"


def shape(obj: Any) -> str | None:
    """The format one record looks like (one of KINDS), or None."""
    if not isinstance(obj, dict):
        return None
    if "message_tree_id" in obj or isinstance(obj.get("prompt"), dict) or ("message_id" in obj and "parent_id" in obj):
        return "oasst"
    if "chosen" in obj or "rejected" in obj:
        hh = "prompt" not in obj and "messages" not in obj and isinstance(obj.get("chosen", obj.get("rejected")), str)
        return "hh" if hh else "prefs"
    if "responses" in obj:
        return "prefs"
    if "messages" in obj or ("prompt" in obj and "completion" in obj):
        return "openai"
    return None


def _detect(path: Path, head: list[tuple[Any, str]], entry: dict) -> str:
    """The most common shape among the first records (the earliest wins a tie)."""
    counts = Counter(s for s in (shape(obj) for obj, _ in head) if s)
    if counts:
        return counts.most_common(1)[0][0]
    if not head:
        if entry["skipped"]:
            raise DataError(
                entry["problems"], f"{path}: no usable records (all {entry['skipped']} are invalid):", entry["skipped"]
            )
        raise DataError([f"{path}: no records (the file is empty)"])
    obj, where = head[0]
    fields = f"fields {sorted(obj)}" if isinstance(obj, dict) else f"a JSON {type(obj).__name__}"
    problem = (
        f"{where}: not a format I know ({fields}): expected OpenAI 'messages', preference "
        "'prompt'/'chosen'/'rejected' or 'responses'/'ranking', HH-RLHF 'chosen'/'rejected' "
        "transcripts, or an OpenAssistant export; name it with openai:, prefs:, hh: or oasst:"
    )
    raise DataError([problem])


def check_comparison(c: Comparison, names: list[str] | None = None) -> None:
    """What parse_record leaves to the trainer: no empty text, and a ranking that orders
    something, never two copies of one text apart. ValueError names `c.where` and the
    response (`names`: how the record calls them; default "response i")."""
    for i, m in enumerate(c.prompt):
        if not m["content"].strip():
            raise ValueError(f"{c.where}: prompt message {i} ({m['role']}) is empty")
    names = names or [f"response {i}" for i in range(len(c.responses))]
    for name, r in zip(names, c.responses):
        if not r.strip():
            raise ValueError(f"{c.where}: {name} is empty")
    pairs = c.pairs()
    if not pairs:
        raise ValueError(f"{c.where}: the ranking orders nothing (a single response, or all tied)")
    for a, b in pairs:
        if c.responses[a].strip() == c.responses[b].strip():
            raise ValueError(f"{c.where}: {names[a]} and {names[b]} are the same text but ranked apart")


def _file_comparison(obj: Any, where: str, kind: str) -> Comparison:
    if kind == "hh" and shape(obj) != "hh":
        raise ValueError(f"{where}: not an HH-RLHF record (expected 'chosen' and 'rejected' transcripts)")
    c = parse_record(obj, where)
    if c.ranking is None:
        raise ValueError(f"{where}: no 'ranking' (rank the responses first, e.g. `chatfactory rank`)")
    check_comparison(c, ["chosen", "rejected"] if "chosen" in obj else None)
    return c


def _oasst(path: Path, records: Iterable[tuple[Any, str]], entry: dict) -> list[Conversation]:
    """Check each OpenAssistant record as the converter would, then let the converter build
    the trees from the good ones (written to a temporary file) and pick their paths."""
    with tempfile.TemporaryDirectory(prefix="chatfactory-oasst-") as tmp:
        good = Path(tmp) / "records.jsonl"
        n_good = 0
        with open(good, "w", encoding="utf-8") as f:
            for obj, where in records:
                try:
                    _check_oasst(obj, where)
                except ValueError as e:
                    _skip(entry, _where_msg(where, e), "invalid OpenAssistant record")
                    continue
                f.write(json.dumps(obj, ensure_ascii=False) + "\n")
                n_good += 1
        if not n_good:
            return []
        convs, report = converters.oasst_conversations(good)
    for reason, n in report.skipped.items():  # per tree, not per line: counted, not listed
        entry["reasons"][f"OpenAssistant: {reason}"] = entry["reasons"].get(f"OpenAssistant: {reason}", 0) + n
    out = []
    for i, conv in enumerate(convs, 1):
        where = f"{path}: conversation {i}"
        try:
            out.append(parse_conversation(conv, where))
        except ConversationError as e:  # the converter already dropped these; kept as a guard
            _skip(entry, str(e), e.kind)
    return out


def _check_oasst(obj: Any, where: str) -> None:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")  # noqa: TRY004
    if isinstance(obj.get("prompt"), dict):  # a nested tree
        if converters._keep(obj["prompt"]):
            converters._nested(obj["prompt"], where, [0])
    elif "message_id" in obj and "parent_id" in obj:  # one message of the flat export
        if converters._keep(obj):
            converters._node(obj, where, 0)
    else:
        raise ValueError(f"{where}: not an OpenAssistant record (expected message_id/parent_id, or a tree with 'prompt')")
