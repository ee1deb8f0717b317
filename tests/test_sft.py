"""The SFT stage: loss only on assistant tokens, exact batch resume, an end-to-end run whose
held-out loss goes down and whose model loads with engine.training.loader.load; task evaluation."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from engine.training.data.conversations import Conversation, collate, fit_all, pack
from engine.training.data.tasks import TASKS, TaskItem
from engine.training.eval.tasks import evaluate_tasks, format_table, reply_of
from engine.training.model import GPT, ModelConfig
from engine.training.model.checkpoint import save_model
from engine.training.tokenizer import IM_END, IM_START, Tokenizer

TEXT = "Who are you? I am Quill, a small assistant built with chatfactory. What is 12 + 30? 42.\n"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([TEXT] * 30, vocab_size=300)


def _model(tok: Tokenizer, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=tok.vocab_size, d_model=48, n_layer=2, n_head=4, max_seq_len=96))


def _convs(n: int) -> list[dict]:
    qs = ["Who are you?", "What is your name?", "Introduce yourself.", "Tell me your name."]
    return [{"messages": [{"role": "user", "content": qs[i % 4] + " " * (i % 3)},
                          {"role": "assistant", "content": "I am Quill, a small assistant built with chatfactory."}]}
            for i in range(n)]


def test_loss_is_only_on_assistant_tokens(tok):
    from engine.training.train.sft import sft_loss

    model = _model(tok)
    exs, _ = fit_all([Conversation(c["messages"]) for c in _convs(6)], tok, 97)
    batch = collate(pack(exs, 96, tok.pad_id), tok.pad_id)
    loss, extra = sft_loss(model, batch)
    logits = model(batch["input_ids"], doc_ids=batch["doc_ids"])
    keep = batch["targets"] != -100
    manual = F.cross_entropy(logits[keep].float(), batch["targets"][keep])
    torch.testing.assert_close(loss, manual)
    assert extra["trained_tokens"] == sum(sum(e.mask) for e in exs)
    # the trained targets are exactly the replies and their <|im_end|>
    assert tok.decode(batch["targets"][keep].tolist()).count(IM_END) == 6
    assert IM_START not in tok.decode(batch["targets"][keep].tolist())


def test_batches_resume_exactly(tok):
    from engine.training.train.sft import SFTBatches

    exs, _ = fit_all([Conversation(c["messages"]) for c in _convs(40)], tok, 97)
    rows = pack(exs, 96, tok.pad_id)
    assert len(rows) >= 12
    a = SFTBatches(rows, 3, tok.pad_id, packed=True, seed=1)
    for _ in range(5):
        a.next_step(2)
    state = a.state_dict()
    want = a.next_step(2)
    b = SFTBatches(rows, 3, tok.pad_id, packed=True, seed=1)
    b.load_state_dict(state)
    got = b.next_step(2)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(want, got))
    assert [len(a.next_step(2, rank=r, world_size=2)) for r in (0, 1)] == [2, 2]


def test_sft_end_to_end(tok, tmp_path, capsys):
    from engine.cli import main
    from engine.training.loader import load

    base = save_model(tmp_path / "base", _model(tok), tok)
    data = tmp_path / "convs.jsonl"
    lines = [json.dumps(c) for c in _convs(60)] + ['{"messages": "oops"}', "not json"]
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "sft"
    argv = ["sft", "--model", str(base), "--data", str(data), "--out", str(out), "--max-steps", "25",
            "--lr", "3e-3", "--seq-len", "96", "--micro-batch-size", "8", "--val-fraction", "0.1",
            "--set", "train.progress=false", "--set", "train.time_budget=null", "--set", "train.warmup_steps=2"]
    assert main(argv) == 0
    summary = json.loads((out / "sft.json").read_text())
    assert summary["heldout_loss_after"] < summary["heldout_loss_before"] - 0.5
    assert summary["data"]["sources"][str(data)]["skipped"] == {"bad messages": 1, "invalid JSON": 1}
    loaded = load(out / "model")  # the next stages load the result directly
    assert loaded.source == "native" and loaded.tokenizer.token_id(IM_END) == tok.token_id(IM_END)
    assert "chat_template" in json.loads((out / "model" / "tokenizer_config.json").read_text())
    assert load(summary["checkpoint"]).model.config == loaded.model.config
    # --strict stops at the first bad line, naming it
    assert main([*argv, "--strict", "--out", str(tmp_path / "strict")]) == 1
    assert f"{data}:61: " in capsys.readouterr().err


def test_evaluate_tasks_and_format(tok):
    model = _model(tok).eval()
    end = tok.token_id(IM_END)
    assert reply_of([*tok.encode("42"), end], tok) == ("42", True)
    assert reply_of(tok.encode("42"), tok)[1] is False  # never stopped
    assert reply_of([tok.token_id(IM_START), end], tok)[1] is False  # a role token inside
    assert reply_of([end], tok) == ("", False)  # an empty reply is no answer
    res = evaluate_tasks(model, tok, [TASKS["add2"], TASKS["identity"]], n=6, batch_size=4, max_new_tokens=4)
    assert set(res["tasks"]) == {"add2", "identity"}
    for r in res["tasks"].values():
        assert r["n"] == 6 and 0 <= r["accuracy"] <= 1 and r["heldout_loss"] > 0
        assert 0 <= r["evasive"] <= 1 - r["accuracy"]  # an evasive reply is never a right one
    assert "add2" in format_table(res) and "evasive" in format_table(res).splitlines()[0]


def test_checkers():
    item = TASKS["play_choice"].items("test", 1)[0]
    letter = dict(item.meta)["letter"]
    wrong = next(o for o in dict(item.meta)["options"] if o != item.answer)
    check = TASKS["play_choice"].check
    assert check(item, item.answer) and check(item, f" {item.answer}. ") and check(item, letter)
    assert check(item, f"{letter}) {item.answer}") and not check(item, wrong)
    add = TaskItem("add3", "What is 500 + 700?", "1200")
    assert TASKS["add3"].check(add, "1,200") and not TASKS["add3"].check(add, "1201")


def test_eval_command(tok, tmp_path, capsys):
    from engine.cli import main

    folder = save_model(tmp_path / "m", _model(tok), tok)
    out = tmp_path / "eval.json"
    argv = ["eval", "--model", str(folder), "--tasks", "add2,identity", "--n", "4", "--max-new-tokens", "4", "--out", str(out)]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert set(res["tasks"]) == {"add2", "identity"} and "accuracy" in capsys.readouterr().out
    assert main(["eval", "--model", str(folder), "--tasks", "nope"]) == 1
    assert "unknown task(s) nope" in capsys.readouterr().err
