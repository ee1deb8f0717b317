"""Property tests of the importers: whatever bytes or JSON they are handed, they either import
it whole or refuse it with a ValueError naming the file — never another exception, never a
half-done import.

- chat import (engine.store.transfer.import_file): chatfactory JSON and ChatGPT exports;
- fine-tuning data files (engine.finetune.sources.validate_file): OpenAI JSONL, preferences, HH, OASST.
"""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.finetune.sources import DataError, validate_file
from engine.store import Store
from engine.store.transfer import import_file

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

text = st.text(max_size=30)
scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True), text)
json_value = st.recursive(scalar, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                          st.dictionaries(text, kids, max_size=4)), max_leaves=20)
role = st.sampled_from(["user", "assistant", "system", "tool", "", None, 3])
message = st.fixed_dictionaries({"role": role, "content": st.one_of(text, st.none(), st.integers())})
# records close to the real formats, so the parsers get past their first checks
near_record = st.one_of(
    st.fixed_dictionaries({"messages": st.lists(message, max_size=4)}),
    st.fixed_dictionaries({"prompt": st.one_of(text, st.lists(message, max_size=2)), "chosen": text, "rejected": text}),
    st.fixed_dictionaries({"messages": st.lists(message, max_size=2), "responses": st.lists(text, max_size=3),
                           "ranking": json_value}),
    st.fixed_dictionaries({"chosen": text.map(lambda t: f"\n\nHuman: {t}\n\nAssistant: x"), "rejected": text}),
    st.fixed_dictionaries({"message_id": text, "parent_id": st.one_of(st.none(), text), "role": role, "text": text,
                           "message_tree_id": text}),
    json_value,
)
chatgpt_node = st.fixed_dictionaries({
    "id": st.sampled_from(["a", "b", "c"]),
    "parent": st.one_of(st.none(), st.sampled_from(["a", "b", "c", "zz"])),
    "children": st.lists(st.sampled_from(["a", "b", "c", "zz"]), max_size=3),
    "message": st.one_of(st.none(), st.fixed_dictionaries({
        "author": st.fixed_dictionaries({"role": role}),
        "content": st.one_of(json_value, st.fixed_dictionaries({"content_type": st.just("text"),
                                                                "parts": st.lists(text, max_size=2)})),
        "create_time": st.one_of(st.none(), st.floats(allow_nan=True), text),
    })),
})
chatgpt_export = st.lists(st.fixed_dictionaries({
    "title": st.one_of(text, st.none()),
    "create_time": st.one_of(st.floats(0, 2e9), st.none(), text),
    "current_node": st.sampled_from(["a", "b", "c", "zz"]),
    "mapping": st.dictionaries(st.sampled_from(["a", "b", "c"]), chatgpt_node, max_size=3),
}), max_size=3)


def _counts(db: Path) -> tuple[int, int]:
    with Store.open(db) as s:
        return s.count_sessions(archived=None), s._read("SELECT count(*) FROM messages")[0][0]


def _import_all_or_nothing(tmp_path: Path, payload: bytes) -> None:
    db, src = tmp_path / "chat.db", tmp_path / "in.json"
    src.write_bytes(payload)
    with Store.open(db) as store:
        store.add_message(store.create_session(title="kept"), "user", "already here")
    before = _counts(db)
    try:
        with Store.open(db) as store:
            result = import_file(store, src)
    except ValueError as e:
        assert "in.json" in str(e), f"the error does not name the file: {e}"
        assert _counts(db) == before, "a refused import left something behind"
    else:
        after = _counts(db)
        assert after[0] == before[0] + len(result.sessions)


@SETTINGS
@given(data=chatgpt_export)
def test_chatgpt_imports_are_all_or_nothing(tmp_path_factory, data):
    _import_all_or_nothing(tmp_path_factory.mktemp("c"), json.dumps(data).encode())


@SETTINGS
@given(data=json_value)
def test_any_json_import_is_all_or_nothing(tmp_path_factory, data):
    _import_all_or_nothing(tmp_path_factory.mktemp("j"), json.dumps(data).encode())


@SETTINGS
@given(payload=st.binary(max_size=200))
def test_any_bytes_import_is_refused_or_whole(tmp_path_factory, payload):
    _import_all_or_nothing(tmp_path_factory.mktemp("b"), payload)


@SETTINGS
@given(records=st.lists(near_record, max_size=6), garbage=st.lists(st.binary(max_size=20), max_size=2))
def test_training_files_validate_or_name_the_file(tmp_path_factory, records, garbage):
    path = tmp_path_factory.mktemp("t") / "data.jsonl"
    lines = [json.dumps(r).encode() for r in records] + garbage
    path.write_bytes(b"\n".join(lines) + b"\n")
    try:
        ds = validate_file(path)
    except DataError as e:
        assert "data.jsonl" in str(e)
        return
    except ValueError as e:  # a plain ValueError must name the file too
        assert "data.jsonl" in str(e), e
        return
    assert ds.conversations or ds.comparisons  # what it accepts is usable
    for c in ds.conversations:
        assert c.messages[-1]["role"] == "assistant" or any(m["role"] == "assistant" for m in c.messages)
    for c in ds.comparisons:
        assert len(c.responses) >= 2 and all(isinstance(r, str) for r in c.responses)
