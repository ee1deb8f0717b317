"""`chatfactory pretrain` end to end on a small text: tokenizer, shards, training, resume, final model."""

from __future__ import annotations

import json

import pytest
import torch

from engine.cli import main
from engine.paths import shared_data_dir
from engine.training.data.shards import ShardSet
from engine.training.loader import load

SMALL = [
    "--set", "model.n_layer=1", "--set", "model.d_model=32", "--set", "model.n_head=2",
    "--set", "tokenizer.vocab_size=300", "--set", "train.seq_len=32", "--set", "train.micro_batch_size=4",
    "--set", "train.warmup_steps=1", "--set", "train.log_every=1", "--set", "train.eval_tokens=2000",
    "--set", "train.threads=1", "--set", "train.progress=false", "--set", "sample_tokens=20",
]


@pytest.fixture
def corpus(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    lines = [f"Citizen {i}:\nWe are accounted poor citizens, the patricians good.\n" for i in range(200)]
    (data / "a.txt").write_text("".join(lines[:100]))
    (data / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines[100:]))
    return data


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_pretrain_command_end_to_end_and_resume(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    rc = main(["pretrain", "--data", str(corpus), "--out", str(out), "--max-steps", "3", *SMALL])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "101 documents" in printed and "val_bpb=" in printed
    manifest = ShardSet(out / "shards").manifest
    assert manifest["splits"]["val"]["documents"] == 10 and manifest["splits"]["train"]["documents"] == 91
    loaded = load(out / "model")  # the final model folder, with its tokenizer
    assert loaded.tokenizer.fingerprint() == manifest["tokenizer_fingerprint"]
    assert loaded.model.config.n_layer == 1 and loaded.model.config.vocab_size % 64 == 0
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3]
    assert recs[-1]["val_bpb"] > 0 and "mfu" in recs[0] and "tok_per_s" in recs[0]
    # --resume picks up the newest checkpoint and reuses tokenizer and shards
    rc = main(["pretrain", "--data", str(corpus), "--out", str(out), "--max-steps", "5", "--resume", *SMALL])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "resumed from" in printed and "reusing" in printed
    assert json.loads((out / "model" / "meta.json").read_text())["step"] == 5


def test_pretrain_reports_bad_input(tmp_path, capsys):
    assert main(["pretrain", "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "r"), *SMALL]) == 1
    assert "nope.txt: no such file" in capsys.readouterr().err
    assert main(["pretrain", "--set", "model.n_layr=2", "--out", str(tmp_path / "r")]) == 1
    assert "unknown config field 'model.n_layr'" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"content": "oops"}\n')
    assert main(["pretrain", "--data", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "r"), *SMALL]) == 1
    assert "bad.jsonl:2: no 'text' field" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_preset_learns_shakespeare(tmp_path):
    """A short run of the real preset on real text: the val loss falls well below uniform."""
    data = shared_data_dir()
    if data is None or not (data / "shakespeare" / "tinyshakespeare.txt").exists():
        pytest.skip("shared data (tiny Shakespeare) not present")
    out = tmp_path / "run"
    rc = main(["pretrain", "--preset", "tiny", "--data", str(data / "shakespeare" / "tinyshakespeare.txt"),
               "--out", str(out), "--max-steps", "150", "--set", "train.time_budget=null",
               "--set", "train.progress=false"])
    assert rc == 0
    meta = json.loads((out / "model" / "meta.json").read_text())
    assert meta["val_bpb"] < 3.6, meta
