"""Pre-training data: sources, errors, the split, token shards and the window loader."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from engine.training.data.corpus import Document, load_documents, shakespeare_plays, split_documents
from engine.training.data.shards import (
    RandomWindows,
    ShardSet,
    check_tokenizer,
    token_byte_lengths,
    token_dtype,
    write_shards,
)
from engine.training.tokenizer import Tokenizer

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([TEXT, "The slings and arrows of outrageous fortune"], vocab_size=300)


def test_txt_jsonl_parquet_sources(tmp_path):
    (tmp_path / "a.txt").write_text("first document\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "second"}) + "\n\n" + json.dumps({"text": "third", "id": 3}) + "\n")
    pq.write_table(pa.table({"text": ["fourth", None, "fifth"], "x": [1, 2, 3]}), tmp_path / "c.parquet")
    (tmp_path / "ignored.csv").write_text("not read")
    docs = load_documents([tmp_path])
    assert [d.text for d in docs] == ["first document\n", "second", "third", "fourth", "fifth"]
    assert docs[2].source.endswith("b.jsonl:3")  # line numbers count blank lines
    assert [d.text for d in load_documents([tmp_path / "b.jsonl", tmp_path / "a.txt"])] == [
        "second", "third", "first document\n"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{"txt": "typo"}\n', "bad.jsonl:2: no 'text' field"),
        ('{"text": "ok"}\n\nnot json at all\n', "bad.jsonl:3: not valid JSON"),
        ('{"text": 5}\n', "bad.jsonl:1: 'text' must be a string"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, content, message):
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(ValueError, match=message):
        load_documents([tmp_path / "bad.jsonl"])


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt: no such file"):
        load_documents([tmp_path / "missing.txt"])
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n')
    with pytest.raises(ValueError, match="empty corpus"):
        load_documents([tmp_path / "empty.txt", tmp_path / "blank.jsonl"])
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "nocol.parquet")
    with pytest.raises(ValueError, match="nocol.parquet: no 'text' column"):
        load_documents([tmp_path / "nocol.parquet"])
    (tmp_path / "notparquet.parquet").write_text("hello")
    with pytest.raises(ValueError, match="notparquet.parquet: not a readable parquet"):
        load_documents([tmp_path / "notparquet.parquet"])
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_documents([tmp_path / "data.csv"])


def test_split_is_seeded_by_document_or_by_tail():
    docs = [Document(f"doc {i}\n", str(i)) for i in range(50)]
    train, val = split_documents(docs, 0.1, seed=1)
    assert len(val) == 5 and len(train) == 45
    assert {d.source for d in val} == {d.source for d in split_documents(docs, 0.1, seed=1)[1]}
    assert {d.source for d in val} != {d.source for d in split_documents(docs, 0.1, seed=2)[1]}
    # one long document: its last 10% of characters (cut at a line start) is val
    one = [Document("".join(f"line {i}\n" for i in range(100)), "one.txt")]
    train, val = split_documents(one, 0.1)
    assert train[0].text + val[0].text == one[0].text
    assert val[0].text.startswith("line ") and 0.08 < len(val[0].text) / len(one[0].text) < 0.12


def test_shards_round_trip_and_manifest(tmp_path, tok):
    docs = {"train": [Document(TEXT, "a"), Document("The slings and arrows", "b")], "val": [Document("outrageous", "c")]}
    manifest = write_shards(docs, tok, tmp_path / "shards", shard_tokens=50)  # several files per split
    assert manifest["dtype"] == "uint16" and manifest["tokenizer_fingerprint"] == tok.fingerprint()
    assert manifest["splits"]["train"]["documents"] == 2 and len(manifest["splits"]["train"]["files"]) > 2
    assert manifest["splits"]["val"]["bytes"] == len(b"outrageous")
    shards = ShardSet(tmp_path / "shards")
    assert json.loads((tmp_path / "shards" / "manifest.json").read_text()) == manifest
    train = shards.split("train")
    ids = np.concatenate(train.arrays).tolist()
    assert ids == tok.encode(TEXT) + [tok.eos_id] + tok.encode("The slings and arrows") + [tok.eos_id]
    assert train.tokens == manifest["splits"]["train"]["tokens"]
    # byte lengths per token add up to the text's UTF-8 bytes (specials count 0)
    assert int(token_byte_lengths(tok)[torch.tensor(ids)].sum()) == len(TEXT.encode()) + len(b"The slings and arrows")
    check_tokenizer(manifest, tok)
    other = Tokenizer.train(["something else entirely"] * 5, vocab_size=270)
    with pytest.raises(ValueError, match="different tokenizer"):
        check_tokenizer(manifest, other)
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_truncated_shard_is_refused(tmp_path, tok):
    write_shards({"train": [Document(TEXT, "a")]}, tok, tmp_path / "s")
    f = tmp_path / "s" / "train_000000.bin"
    f.write_bytes(f.read_bytes()[:-4])
    with pytest.raises(ValueError, match="truncated"):
        ShardSet(tmp_path / "s").split("train")


def test_random_windows_resume_and_rank_slices(tmp_path, tok):
    write_shards({"train": [Document(TEXT, "a")]}, tok, tmp_path / "s", shard_tokens=100)
    split = ShardSet(tmp_path / "s").split("train")
    a = RandomWindows(split, block_size=8, micro_batch=3, seed=5)
    a.next_step(2)
    state = a.state_dict()
    want = a.next_step(2)
    b = RandomWindows(split, block_size=8, micro_batch=3, seed=0)
    b.load_state_dict(json.loads(json.dumps(state)))  # the state survives JSON (it goes into checkpoints)
    got = b.next_step(2)
    assert all(torch.equal(w["x"], g["x"]) for w, g in zip(want, got))
    x, y = want[0]["x"], want[0]["y"]
    assert x.shape == (3, 8) and torch.equal(x[:, 1:], y[:, :-1])
    # two ranks with one micro-batch each see exactly the windows of one rank with two
    one = RandomWindows(split, 8, 3, seed=7).next_step(2)
    r0 = RandomWindows(split, 8, 3, seed=7).next_step(1, rank=0, world_size=2)
    r1 = RandomWindows(split, 8, 3, seed=7).next_step(1, rank=1, world_size=2)
    assert torch.equal(torch.cat([one[0]["x"], one[1]["x"]]), torch.cat([r0[0]["x"], r1[0]["x"]]))


def test_val_windows_score_every_token_once(tmp_path, tok):
    write_shards({"val": [Document(TEXT, "a")]}, tok, tmp_path / "s")
    split = ShardSet(tmp_path / "s").split("val")
    ys = [b["y"] for b in split.iter_windows(block_size=16, batch_size=4)]
    flat = torch.cat([y.flatten() for y in ys])
    assert flat[flat != -100].tolist() == np.concatenate(split.arrays)[1:].tolist()


def test_shakespeare_plays_keep_speakers():
    plays = shakespeare_plays()
    assert len(plays) == 38
    macbeth = next(p for p in plays if p.title == "Macbeth")
    assert macbeth.lines[0] == ("First Witch", "When shall we three meet again")
    assert any(s == "MACBETH" for s, _ in macbeth.lines)
    text = macbeth.text()
    assert text.startswith("Macbeth\n\nFirst Witch:\nWhen shall we three meet again\n")
    assert "MACBETH:\n" in text and "_" not in text and "**" not in text
    assert next(p for p in plays if p.title == "Measure for Measure").lines  # the play without a "# " title
