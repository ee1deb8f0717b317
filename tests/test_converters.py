"""OpenAssistant trees and HH-RLHF transcripts -> conversations."""

from __future__ import annotations

import gzip
import json

import pytest

from engine.cli import main
from engine.paths import shared_data_dir
from engine.training.data.conversations import read_conversations
from engine.training.data.converters import hh_conversations, oasst_conversations


def _msg(mid, parent, role, text, rank=None, **kw):
    return {"message_id": mid, "parent_id": parent, "role": role, "text": text, "rank": rank, **kw}


# root -> a1 (rank 1), a0 (rank 0) -> p2 -> b0; a deleted reply; a reply that failed review
FLAT = [
    _msg("r", None, "prompter", "Hi?"),
    _msg("a1", "r", "assistant", "Second best", rank=1),
    _msg("a0", "r", "assistant", "Best", rank=0),
    _msg("p2", "a0", "prompter", "More?"),
    _msg("b0", "p2", "assistant", "Yes, more."),
    _msg("x", "r", "assistant", "deleted", rank=2, deleted=True),
    _msg("y", "r", "assistant", "rejected", rank=3, review_result=False),
    _msg("p3", "a1", "prompter", "Unanswered"),
]


def _nested(msg, by_parent):
    node = {k: v for k, v in msg.items() if k != "parent_id"}
    node["replies"] = [_nested(c, by_parent) for c in by_parent.get(msg["message_id"], [])]
    return node


def _write_jsonl(path, rows, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


@pytest.fixture(params=["flat", "nested"])
def oasst_file(request, tmp_path):
    if request.param == "flat":
        return _write_jsonl(tmp_path / "flat.jsonl", list(reversed(FLAT)))  # order must not matter
    by_parent = {}
    for m in FLAT[1:]:
        by_parent.setdefault(m["parent_id"], []).append(m)
    return _write_jsonl(tmp_path / "tree.jsonl", [{"message_tree_id": "r", "prompt": _nested(FLAT[0], by_parent)}])


def test_oasst_best_path_and_all_paths(oasst_file):
    best, report = oasst_conversations(oasst_file)
    assert [m["content"] for m in best[0]["messages"]] == ["Hi?", "Best", "More?", "Yes, more."]
    assert [m["role"] for m in best[0]["messages"]] == ["user", "assistant", "user", "assistant"]
    assert report.conversations == 1
    every, _ = oasst_conversations(oasst_file, all_paths=True)
    texts = sorted(tuple(m["content"] for m in c["messages"]) for c in every)
    # the unanswered "Unanswered" prompt is cut; deleted and rejected replies never appear
    assert texts == [("Hi?", "Best", "More?", "Yes, more."), ("Hi?", "Second best")]


def test_oasst_bad_record_is_named(tmp_path):
    f = _write_jsonl(tmp_path / "bad.jsonl", [FLAT[0], {"hello": 1}])
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not an OpenAssistant record"):
        oasst_conversations(f)
    f = _write_jsonl(tmp_path / "bad2.jsonl", [_msg("r", None, "robot", "x")])
    with pytest.raises(ValueError, match=r"bad2.jsonl:1: .*role must be 'prompter' or 'assistant'"):
        oasst_conversations(f)


def test_hh_transcripts(tmp_path):
    rows = [
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant: Bye!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go."},
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant: Bye!", "rejected": "x"},  # duplicate
        {"chosen": "\n\nHuman: Empty\n\nAssistant:", "rejected": "x"},  # empty reply
        {"chosen": "no markers here", "rejected": "x"},
    ]
    f = _write_jsonl(tmp_path / "hh.jsonl.gz", rows, gz=True)
    convs, report = hh_conversations(f)
    assert convs == [{"messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"},
    ]}]
    assert report.records == 4 and sum(report.skipped.values()) == 3
    rejected, _ = hh_conversations(f, field_name="rejected")
    assert rejected[0]["messages"][-1]["content"] == "Go."


def test_cli_convert_and_tasks(oasst_file, tmp_path, capsys):
    out = tmp_path / "out" / "convs.jsonl"
    assert main(["data", "convert-oasst", str(oasst_file), str(out), "--all-paths"]) == 0
    convs, report = read_conversations(out, strict=True)
    assert len(convs) == 2 and not report.skipped
    assert main(["data", "tasks", "--out", str(tmp_path / "tasks"), "--tasks", "add2,identity", "--scale", "0.1"]) == 0
    train, _ = read_conversations(tmp_path / "tasks" / "train.jsonl", strict=True)
    assert len(train) == 300 + 30
    test = [json.loads(line) for line in (tmp_path / "tasks" / "test.jsonl").read_text().splitlines()]
    assert {r["task"] for r in test} == {"add2", "identity"}
    assert main(["data", "convert-hh", str(tmp_path / "missing.jsonl"), str(out)]) == 1
    assert "no such file" in capsys.readouterr().err


@pytest.mark.skipif(shared_data_dir() is None, reason="shared data not present")
def test_real_files():
    data = shared_data_dir()
    flat, r1 = oasst_conversations(data / "oasst" / "oasst1-en-validation.jsonl")
    assert len(flat) > 150 and r1.skipped  # a few deleted / failed-review messages
    trees, _ = oasst_conversations(data / "oasst" / "en_100_tree.jsonl", all_paths=True)
    assert len(trees) > 100
    hh, _ = hh_conversations(data / "hh-rlhf" / "helpful-online-test.jsonl.gz")
    assert len(hh) > 1000 and all(c["messages"][-1]["role"] == "assistant" for c in hh)
