"""Public conversation data sets -> our conversations ({"messages": [...]}).

- OpenAssistant (oasst1/oasst2) message trees, either as the flat message export (one message a
  line with message_id, parent_id, role "prompter"|"assistant", text, rank) or as nested trees
  ({"message_tree_id", "prompt": {..., "replies": [...]}}). Each tree gives its best-ranked path
  (at every branch the reply with the lowest rank; unranked replies come after ranked ones) or,
  with `all_paths`, every root-to-leaf path. Deleted messages and messages that failed review
  are dropped with their subtrees; a path is cut after its last assistant turn.
- HH-RLHF transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ..."): the "chosen" conversation of each
  record (the transcript parser is `engine.training.data.preferences.split_hh_transcript`, shared
  with the reward model's preference reader).

Output conversations pass `parse_conversation`'s checks; records that cannot (an empty
assistant turn, say) are counted and skipped.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .conversations import ConversationError, parse_conversation
from .preferences import iter_json_records, split_hh_transcript

OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


@dataclass
class ConvertReport:
    records: int = 0
    conversations: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    def summary(self) -> str:
        s = f"{self.conversations} conversations from {self.records} records"
        if self.skipped:
            s += "; skipped " + ", ".join(f"{n} ({k})" for k, n in self.skipped.most_common())
        return s


# ---- OpenAssistant ----------------------------------------------------------------------------
@dataclass
class _Node:
    role: str
    text: str
    rank: int | None
    order: int  # position in the source, to break ties among unranked siblings
    children: list[_Node] = field(default_factory=list)


def _keep(msg: dict) -> bool:
    return not msg.get("deleted") and msg.get("review_result") is not False


def _node(msg: Any, where: str, order: int) -> _Node:
    if not isinstance(msg, dict):
        raise ValueError(f"{where}: expected a message object, got {type(msg).__name__}")  # noqa: TRY004
    role = msg.get("role")
    if role not in OASST_ROLES:
        raise ValueError(f"{where}: message {msg.get('message_id', '?')}: role must be 'prompter' or 'assistant', got {role!r}")
    text = msg.get("text")
    if not isinstance(text, str):
        raise ValueError(f"{where}: message {msg.get('message_id', '?')}: 'text' must be a string")  # noqa: TRY004
    rank = msg.get("rank")
    return _Node(OASST_ROLES[role], text, rank if isinstance(rank, int) else None, order)


def read_oasst_trees(path: str | Path, report: ConvertReport | None = None) -> list[_Node]:
    """Root nodes of every tree in a flat-message or nested-tree OpenAssistant file (.jsonl[.gz])."""
    report = report if report is not None else ConvertReport()
    roots: list[_Node] = []
    flat: dict[str, tuple[dict, _Node]] = {}
    order = 0
    for rec, where in iter_json_records(path):
        report.records += 1
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")  # noqa: TRY004
        if "prompt" in rec and isinstance(rec["prompt"], dict):  # a nested tree
            if _keep(rec["prompt"]):
                roots.append(_nested(rec["prompt"], where, [order]))
            else:
                report.skipped["deleted or failed review"] += 1
            order += 1
        elif "message_id" in rec and "parent_id" in rec:  # one message of the flat export
            order += 1
            if not _keep(rec):
                report.skipped["deleted or failed review"] += 1
                continue
            flat[rec["message_id"]] = (rec, _node(rec, where, order))
        else:
            raise ValueError(
                f"{where}: not an OpenAssistant record (expected message_id/parent_id, or a tree with 'prompt')"
            )
    for msg, node in flat.values():
        parent = msg["parent_id"]
        if parent is None:
            roots.append(node)
        elif parent in flat:
            flat[parent][1].children.append(node)
        else:
            report.skipped["parent missing (deleted or not in file)"] += 1
    return roots


def _nested(msg: dict, where: str, counter: list[int]) -> _Node:
    counter[0] += 1
    node = _node(msg, where, counter[0])
    for child in msg.get("replies") or []:
        if isinstance(child, dict) and not _keep(child):
            continue
        node.children.append(_nested(child, where, counter))
    return node


def _ranked(children: list[_Node]) -> list[_Node]:
    return sorted(children, key=lambda n: (n.rank is None, n.rank if n.rank is not None else 0, n.order))


def _paths(node: _Node, all_paths: bool) -> Iterator[list[_Node]]:
    if not node.children:
        yield [node]
        return
    children = _ranked(node.children)
    for child in children if all_paths else children[:1]:
        for rest in _paths(child, all_paths):
            yield [node, *rest]


def oasst_conversations(path: str | Path, all_paths: bool = False) -> tuple[list[dict], ConvertReport]:
    """Conversations from an OpenAssistant file: the best-ranked path per tree, or every path."""
    report = ConvertReport()
    seen: set[str] = set()
    out = []
    for root in read_oasst_trees(path, report):
        for path_nodes in _paths(root, all_paths):
            while path_nodes and path_nodes[-1].role != "assistant":
                path_nodes = path_nodes[:-1]  # a trailing unanswered prompt trains nothing
            if not path_nodes:
                report.skipped["no assistant reply"] += 1
                continue
            conv = {"messages": [{"role": n.role, "content": n.text.strip()} for n in path_nodes]}
            key = json.dumps(conv, sort_keys=True)
            if key in seen:
                continue  # cut paths can repeat a sibling's prefix
            seen.add(key)
            if _valid(conv, str(path), report):
                out.append(conv)
    report.conversations = len(out)
    return out, report


# ---- HH-RLHF -----------------------------------------------------------------------------------
def hh_conversations(path: str | Path, field_name: str = "chosen") -> tuple[list[dict], ConvertReport]:
    """The `chosen` (or `rejected`) conversation of every HH-RLHF record (.jsonl or .jsonl.gz)."""
    report = ConvertReport()
    out, seen = [], set()
    for rec, where in iter_json_records(path):
        report.records += 1
        if not isinstance(rec, dict) or not isinstance(rec.get(field_name), str):
            raise ValueError(f"{where}: expected an object with a string {field_name!r} transcript")  # noqa: TRY004
        try:
            messages = split_hh_transcript(rec[field_name], where, field_name)
        except ValueError:
            report.skipped["not a Human/Assistant transcript"] += 1
            continue
        while messages and messages[-1]["role"] != "assistant":
            messages.pop()  # an unanswered last turn trains nothing
        conv = {"messages": messages}
        key = json.dumps(conv, sort_keys=True)
        if key in seen:
            report.skipped["duplicate"] += 1
            continue
        seen.add(key)
        if _valid(conv, where, report):
            out.append(conv)
    report.conversations = len(out)
    return out, report


def _valid(conv: dict, where: str, report: ConvertReport) -> bool:
    try:
        parse_conversation(conv, where)
    except ConversationError as e:
        report.skipped[e.kind] += 1
        return False
    return True
