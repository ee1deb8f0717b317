"""Export sessions (JSON, Markdown) and import them back, or from a ChatGPT data export.

Our JSON (`"format": "chatfactory", "version": 1`) keeps whole trees: every message with a
local `id` and `parent` (local ids, 1..n per session, parents before children), the columns
the store keeps, and `active_leaf`. Messages carry OpenAI's `role` / `content` keys, so the
active branch reads as an OpenAI `messages` list.

Import is all or nothing: the whole file is parsed and checked first, then written in ONE
transaction, so a bad entry anywhere imports nothing, and the ValueError names the file and
the entry (`conversations.json: conversation 3 ("Title"), node abc: content.parts must be a
list`). Trees are walked with explicit stacks, never recursion, so a 100,000-message chain
imports fine; cycles and chains deeper than MAX_DEPTH are refused. Files over
MAX_IMPORT_BYTES are refused before being read.
"""

from __future__ import annotations

import json
import math
import time
import zipfile
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.paths import atomic_writer

from . import db as dbm
from .store import Store, check_field

FORMAT = "chatfactory"
FORMAT_VERSION = 1
MAX_IMPORT_BYTES = 200 * 2**20
MAX_DEPTH = 1_000_000  # messages on one root-to-leaf path; far beyond any real chat
_MESSAGE_EXPORT_FIELDS = (
    "hidden", "template_set", "template_version", "model", "moderation", "flagged",
    "finish_reason", "prompt_tokens", "completion_tokens", "timings", "created",
)  # fmt: skip
_SESSION_EXPORT_FIELDS = ("title", "model", "template_set", "template_version", "created", "updated", "pinned", "archived")
# ChatGPT's finish_details.type -> our finish_reason
_CHATGPT_FINISH = {"stop": "stop", "max_tokens": "length", "interrupted": "interrupted"}


class TransferError(ValueError):
    """An import file that cannot be imported; the message names the file and the entry."""


@dataclass
class ImportResult:
    format: str  # "chatfactory" | "chatgpt"
    sessions: list[int] = field(default_factory=list)  # new session ids, in file order
    messages: int = 0


# --- export ---------------------------------------------------------------------------------


def _session_ids(store: Store, session_ids: Iterable[int] | None) -> list[int]:
    if session_ids is None:
        return [r[0] for r in store._read("SELECT id FROM sessions ORDER BY id")]
    ids = list(session_ids)
    for sid in ids:
        store.get_session(sid)  # NotFoundError names the missing one
    return ids


def export_json(store: Store, session_ids: Iterable[int] | None = None) -> dict:
    """All sessions (or the given ones) with their whole message trees, as a JSON-ready dict."""
    out = []
    for sid in _session_ids(store, session_ids):
        s = store.get_session(sid)
        local: dict[int, int] = {}
        messages = []
        for m in store.messages(sid):
            local[m["id"]] = len(local) + 1
            entry = {"id": local[m["id"]], "parent": local.get(m["parent_id"]) if m["parent_id"] else None,
                     "role": m["role"], "content": m["content"]}  # fmt: skip
            entry.update((k, m[k]) for k in _MESSAGE_EXPORT_FIELDS)
            messages.append(entry)
        item = {k: s[k] for k in _SESSION_EXPORT_FIELDS}
        item["messages"] = messages
        item["active_leaf"] = local.get(s["active_leaf_id"]) if s["active_leaf_id"] else None
        out.append(item)
    return {"format": FORMAT, "version": FORMAT_VERSION, "exported": time.time(), "sessions": out}


def export_markdown(store: Store, session_ids: Iterable[int] | None = None) -> str:
    """The visible branch of each session: a heading per session, a bold label per message."""
    parts = []
    for sid in _session_ids(store, session_ids):
        s = store.get_session(sid)
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s["created"]))
        title = " ".join(s["title"].split()) or "Untitled"  # a heading is one line
        parts.append(f"## {title}\n\n_{when}" + (f" · {s['model']}" if s["model"] else "") + "_\n")
        for m in store.branch(sid):
            parts.append(f"**{m['role'].capitalize()}**\n\n{m['content']}\n")
    return "\n".join(parts)


def export_to_file(
    store: Store, path: str | Path, fmt: str = "json", session_ids: Iterable[int] | None = None
) -> Path:
    """Write an export atomically: a temp file beside the target, fsync, then os.replace.

    An export cut short (crash, full disk) leaves the old file or none, never half a file.
    """
    if fmt not in ("json", "markdown"):
        raise ValueError(f"export format must be 'json' or 'markdown', got {fmt!r}")
    path = Path(path)
    if fmt == "json":
        text = json.dumps(export_json(store, session_ids), ensure_ascii=False, indent=1)
    else:
        text = export_markdown(store, session_ids)
    with atomic_writer(path) as f:
        f.write(text)
    return path


# --- parsed form shared by both importers ------------------------------------------------------


@dataclass
class _Node:
    key: Hashable  # the file's id for it
    parent: Hashable | None
    keep: bool  # False: skipped (its children move up to the nearest kept ancestor)
    row: dict  # role, content and the other message columns


@dataclass
class _Conv:
    label: str  # 'conversation 3 ("Title")' for errors
    session: dict  # title, model, ... (the session columns)
    nodes: list[_Node]
    active: Hashable | None  # the key of the leaf to show (may be a skipped node)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _resolve(conv: _Conv, where: str) -> tuple[list[_Node], dict, Hashable | None]:
    """Order the kept nodes parents-first and re-parent them past skipped ones.

    Returns (ordered kept nodes, key -> kept parent key, active kept key). Iterative: walks
    up each unresolved chain with an explicit path list, so depth costs memory, not stack.
    """
    by_key: dict[Hashable, _Node] = {}
    for n in conv.nodes:
        if n.key in by_key:
            raise TransferError(f"{where}: {conv.label}: two messages have the id {n.key!r}")
        by_key[n.key] = n
    for n in conv.nodes:
        if n.parent is not None and n.parent not in by_key:
            raise TransferError(f"{where}: {conv.label}, message {n.key!r}: parent {n.parent!r} does not exist")

    kept_at: dict[Hashable, Hashable | None] = {}  # nearest kept node at or above
    depth: dict[Hashable, int] = {}  # kept nodes on the path from the root, this one included
    kept_parent: dict[Hashable, Hashable | None] = {}
    for n in conv.nodes:
        path, on_path, k = [], set(), n.key
        while k is not None and k not in kept_at:
            if k in on_path:
                raise TransferError(f"{where}: {conv.label}, message {k!r}: its parent links form a cycle")
            on_path.add(k)
            path.append(k)
            k = by_key[k].parent
        above = kept_at[k] if k is not None else None
        d = depth[k] if k is not None else 0
        for key in reversed(path):
            node = by_key[key]
            if node.keep:
                kept_parent[key] = above
                above, d = key, d + 1
                if d > MAX_DEPTH:
                    raise TransferError(
                        f"{where}: {conv.label}, message {key!r}: nested {d} messages deep, "
                        f"more than the {MAX_DEPTH} this importer accepts"
                    )
            kept_at[key], depth[key] = above, d

    # parents before children, otherwise in file order
    order: list[_Node] = []
    placed: set[Hashable] = set()
    waiting: dict[Hashable, list[_Node]] = {}
    for n in conv.nodes:
        if not n.keep:
            continue
        p = kept_parent[n.key]
        if p is not None and p not in placed:
            waiting.setdefault(p, []).append(n)
            continue
        stack = [n]
        while stack:
            x = stack.pop()
            order.append(x)
            placed.add(x.key)
            stack.extend(reversed(waiting.pop(x.key, [])))
    active = kept_at[conv.active] if conv.active is not None else None
    return order, kept_parent, active


def _write(store: Store, convs: list[_Conv], fmt: str, where: str) -> ImportResult:
    """Insert every parsed conversation in one transaction (ids allocated up front)."""
    resolved = [_resolve(c, where) for c in convs]  # all checks before the first write
    result = ImportResult(format=fmt)
    cols = ("id", "session_id", "parent_id", "role", "content", *_MESSAGE_EXPORT_FIELDS)
    insert = f"INSERT INTO messages ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    with store.transaction() as conn, dbm.bulk_insert_messages(conn):
        next_id = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM messages").fetchone()[0]
        for conv, (order, kept_parent, active) in zip(convs, resolved):
            s = conv.session
            cur = conn.execute(
                "INSERT INTO sessions (title, model, template_set, template_version, created, updated,"
                " pinned, archived) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                tuple(s[k] for k in _SESSION_EXPORT_FIELDS),
            )
            sid = int(cur.lastrowid)
            new_id: dict[Hashable, int] = {}
            rows = []
            for n in order:
                new_id[n.key] = next_id
                next_id += 1
                p = kept_parent[n.key]
                r = n.row
                rows.append((new_id[n.key], sid, None if p is None else new_id[p], r["role"], r["content"],
                             *(r.get(k) for k in _MESSAGE_EXPORT_FIELDS)))  # fmt: skip
            conn.executemany(insert, rows)
            if active is not None:
                conn.execute("UPDATE sessions SET active_leaf_id = ? WHERE id = ?", (new_id[active], sid))
            elif order and fmt == "chatgpt":
                roots = [n for n in order if kept_parent[n.key] is None]
                store.select_branch(sid, new_id[roots[-1].key])
            result.sessions.append(sid)
            result.messages += len(rows)
    return result


# --- reading files --------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    """The file as text: size-capped, UTF-8 checked (a ChatGPT .zip: its conversations.json)."""
    size = path.stat().st_size
    if size > MAX_IMPORT_BYTES:
        raise TransferError(
            f"{path.name}: {size / 2**20:.0f} MB is more than the {MAX_IMPORT_BYTES / 2**20:.0f} MB "
            "an import accepts; export fewer conversations at a time"
        )
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            try:
                info = z.getinfo("conversations.json")
            except KeyError:
                raise TransferError(f"{path.name}: a zip without conversations.json at its top") from None
            if info.file_size > MAX_IMPORT_BYTES:
                raise TransferError(f"{path.name}: conversations.json is {info.file_size / 2**20:.0f} MB unpacked, "
                                 f"more than the {MAX_IMPORT_BYTES / 2**20:.0f} MB an import accepts")  # fmt: skip
            with z.open(info) as f:
                data = f.read(MAX_IMPORT_BYTES + 1)
            where = f"{path.name}:conversations.json"
    else:
        data = path.read_bytes()
        where = path.name
    if len(data) > MAX_IMPORT_BYTES:
        raise TransferError(f"{where}: more than the {MAX_IMPORT_BYTES / 2**20:.0f} MB an import accepts")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        raise TransferError(f"{where}: not valid UTF-8 at byte {start} ({e.reason})") from None


def import_file(store: Store, path: str | Path) -> ImportResult:
    """Import a chatfactory export or a ChatGPT `conversations.json` (or its .zip); all or nothing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TransferError(f"{path.name}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise TransferError(f"{path.name}: JSON nested too deeply to read") from None
    return import_data(store, data, where=path.name)


def import_data(store: Store, data: Any, where: str = "<data>") -> ImportResult:
    """Import already-parsed JSON (see import_file); `where` names the source in errors."""
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return _write(store, _parse_chatfactory(data, where), "chatfactory", where)
    if isinstance(data, dict) and "mapping" in data:
        data = [data]  # one conversation on its own
    if isinstance(data, list) and (not data or any(isinstance(c, dict) and "mapping" in c for c in data)):
        return _write(store, _parse_chatgpt(data, where), "chatgpt", where)
    raise TransferError(
        f"{where}: neither a chatfactory export (an object with \"format\": \"chatfactory\") "
        "nor a ChatGPT conversations.json (a list of conversations with a \"mapping\")"
    )


# --- our format ------------------------------------------------------------------------------


def _parse_chatfactory(data: dict, where: str) -> list[_Conv]:
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise TransferError(f"{where}: \"version\" must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise TransferError(f"{where}: export format version {version} is newer than this chatfactory reads "
                         f"({FORMAT_VERSION}); use a newer chatfactory")  # fmt: skip
    sessions = data.get("sessions")
    if not isinstance(sessions, list):
        raise TransferError(f"{where}: \"sessions\" must be a list")
    convs = []
    for i, s in enumerate(sessions, 1):
        label = f"session {i}"
        if not isinstance(s, dict):
            raise TransferError(f"{where}: {label}: must be an object, got {type(s).__name__}")
        if isinstance(s.get("title"), str):
            label = f'session {i} ("{s["title"]}")'
        session = _check_session(s, where, label)
        msgs = s.get("messages", [])
        if not isinstance(msgs, list):
            raise TransferError(f"{where}: {label}: \"messages\" must be a list")
        nodes = [_check_message(m, j, session["created"], where, label) for j, m in enumerate(msgs, 1)]
        active = s.get("active_leaf")
        if active is not None and active not in {n.key for n in nodes}:
            raise TransferError(f"{where}: {label}: active_leaf {active!r} is not one of its messages")
        convs.append(_Conv(label, session, nodes, active))
    return convs


def _check_session(s: dict, where: str, label: str) -> dict:
    out = {}
    for k in ("title", "model", "template_set", "template_version", "pinned", "archived"):
        default = {"title": "Imported chat", "pinned": False, "archived": False}.get(k)
        try:
            out[k] = check_field(k, s.get(k, default))
        except ValueError as e:
            raise TransferError(f"{where}: {label}: {e}") from None
    for k in ("created", "updated"):
        v = s.get(k, time.time() if k == "created" else out.get("created"))
        if not _is_number(v):
            raise TransferError(f"{where}: {label}: {k} must be a number (unix time), got {v!r}")
        out[k] = float(v)
    return out


def _check_message(m: Any, j: int, default_time: float, where: str, label: str) -> _Node:
    if not isinstance(m, dict):
        raise TransferError(f"{where}: {label}, message {j}: must be an object, got {type(m).__name__}")
    key = m.get("id")
    if not isinstance(key, (int, str)) or isinstance(key, bool):
        raise TransferError(f"{where}: {label}, message {j}: \"id\" must be an integer or string, got {key!r}")
    at = f"{where}: {label}, message {key!r}"
    parent = m.get("parent")
    if parent is not None and (not isinstance(parent, (int, str)) or isinstance(parent, bool)):
        raise TransferError(f"{at}: \"parent\" must be a message id or null, got {parent!r}")
    role = m.get("role")
    if role not in dbm.ROLES:
        raise TransferError(f"{at}: role must be one of {', '.join(dbm.ROLES)}, got {role!r}")
    row: dict[str, Any] = {"role": role}
    try:
        row["content"] = check_field("content", m.get("content"))
        for k in _MESSAGE_EXPORT_FIELDS:
            if k == "created":
                continue
            v = m.get(k, False if k == "flagged" else None)
            row[k] = check_field(k, v)
    except ValueError as e:
        raise TransferError(f"{at}: {e}") from None
    created = m.get("created", default_time)
    if not _is_number(created):
        raise TransferError(f"{at}: created must be a number (unix time), got {created!r}")
    row["created"] = float(created)
    return _Node(key, parent, True, row)


# --- ChatGPT's conversations.json -------------------------------------------------------------


def _parse_chatgpt(data: list, where: str) -> list[_Conv]:
    convs = []
    for i, c in enumerate(data, 1):
        if not isinstance(c, dict) or "mapping" not in c:
            raise TransferError(f"{where}: conversation {i}: must be an object with a \"mapping\"")
        title = c.get("title")
        label = f'conversation {i} ("{title}")' if isinstance(title, str) else f"conversation {i}"
        if title is not None and not isinstance(title, str):
            raise TransferError(f"{where}: {label}: title must be a string, got {title!r}")
        created, updated = c.get("create_time"), c.get("update_time")
        for name, v in (("create_time", created), ("update_time", updated)):
            if v is not None and not _is_number(v):
                raise TransferError(f"{where}: {label}: {name} must be a number or null, got {v!r}")
        created = float(created) if created is not None else time.time()
        updated = float(updated) if updated is not None else created
        mapping = c["mapping"]
        if not isinstance(mapping, dict):
            raise TransferError(f"{where}: {label}: mapping must be an object, got {type(mapping).__name__}")
        nodes = [_chatgpt_node(key, node, created, where, label) for key, node in mapping.items()]
        current = c.get("current_node")
        if current is not None and current not in mapping:
            raise TransferError(f"{where}: {label}: current_node {current!r} is not in mapping")
        session = {"title": title or "Untitled", "model": c.get("default_model_slug") if
                   isinstance(c.get("default_model_slug"), str) else None,
                   "template_set": None, "template_version": None, "created": created, "updated": updated,
                   "pinned": 0, "archived": 1 if c.get("is_archived") is True else 0}  # fmt: skip
        convs.append(_Conv(label, session, nodes, current))
    return convs


def _chatgpt_node(key: str, node: Any, default_time: float, where: str, label: str) -> _Node:
    at = f"{where}: {label}, node {key}"
    if not isinstance(node, dict):
        raise TransferError(f"{at}: must be an object, got {type(node).__name__}")
    parent = node.get("parent")
    if parent is not None and not isinstance(parent, str):
        raise TransferError(f"{at}: parent must be a node id (string) or null, got {parent!r}")
    children = node.get("children", [])
    if not isinstance(children, list):
        raise TransferError(f"{at}: children must be a list")
    msg = node.get("message")
    if msg is None:
        return _Node(key, parent, False, {})
    if not isinstance(msg, dict):
        raise TransferError(f"{at}: message must be an object or null, got {type(msg).__name__}")
    author = msg.get("author")
    if not isinstance(author, dict) or not isinstance(author.get("role"), str):
        raise TransferError(f"{at}: message.author.role must be a string")
    content = msg.get("content")
    if not isinstance(content, dict):
        raise TransferError(f"{at}: message.content must be an object")
    ctype = content.get("content_type")
    if not isinstance(ctype, str):
        raise TransferError(f"{at}: content.content_type must be a string")
    parts = content.get("parts")
    if (ctype in ("text", "multimodal_text") or "parts" in content) and not isinstance(parts, list):
        raise TransferError(f"{at}: content.parts must be a list")
    meta = msg.get("metadata") if isinstance(msg.get("metadata"), dict) else {}
    role = author["role"]
    text = "\n".join(p for p in (parts or []) if isinstance(p, str) and p)  # images etc. skipped
    hidden = bool(meta.get("is_visually_hidden_from_conversation"))
    keep = role in dbm.ROLES and bool(text.strip()) and not hidden and ctype in ("text", "multimodal_text")
    ctime = msg.get("create_time")
    if ctime is not None and not _is_number(ctime):
        raise TransferError(f"{at}: message.create_time must be a number or null, got {ctime!r}")
    finish = None
    if role == "assistant":
        fd = meta.get("finish_details")
        finish = _CHATGPT_FINISH.get(fd.get("type"), "stop") if isinstance(fd, dict) else "stop"
    row = {"role": role, "content": text, "created": float(ctime) if ctime is not None else default_time,
           "flagged": 0, "finish_reason": finish,
           "model": meta.get("model_slug") if isinstance(meta.get("model_slug"), str) else None}  # fmt: skip
    return _Node(key, parent, keep, row)

