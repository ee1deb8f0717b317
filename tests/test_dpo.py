"""DPO: the loss starts at log 2, a short run learns the preference and saves a loadable model,
resume continues exactly, bad data is a clear error."""

from __future__ import annotations

import json
import math

import pytest
import torch

from engine.training.data.preferences import Comparison
from engine.training.train.dpo import DPOConfig, dpo_terms, encode_sequence, train_dpo
from tests.tiny_chat_model import tiny_model_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GOOD = "I am fine, thank you for asking."
BAD = ["To be, or not to be.", "The slings and arrows.", "Whether 'tis nobler."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("tiny") / "model")


def write_prefs(path, n: int = 40):
    """TRL pairs and K-wise rankings (3 answers: 2 pairs each where the good one wins, plus one
    between the bad ones) with the same consistent preference: the polite answer wins."""
    with open(path, "w") as f:
        for i in range(n):
            if i % 4:
                rec = {"prompt": f"How are you, friend {i}?", "chosen": GOOD, "rejected": BAD[i % 3]}
            else:
                rec = {"prompt": f"How are you, friend {i}?", "responses": [BAD[0], GOOD, BAD[1]], "ranking": [1, 0, 2]}
            f.write(json.dumps(rec) + "\n")
    return path


def config(tiny, tmp_path, out="dpo", **train) -> DPOConfig:
    cfg = DPOConfig(model=str(tiny), data=[str(write_prefs(tmp_path / "prefs.jsonl"))], out_dir=str(tmp_path / out))
    cfg.max_len = 64
    # on the CPU in fp32 even where there is a GPU: bf16 autocast would blur the exact log 2
    cfg.train.progress, cfg.train.micro_batch_size, cfg.train.warmup_steps, cfg.train.device = False, 4, 0, "cpu"
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def records(out) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_dpo_terms_by_hand():
    logp = torch.tensor([-3.0, -5.0, -4.0, -4.5])  # chosen 0, 1 then rejected 0, 1
    ref_c, ref_r = torch.tensor([-3.5, -5.0]), torch.tensor([-4.0, -4.0])
    loss, margin, cr, rr = dpo_terms(logp, ref_c, ref_r, beta=0.5, label_smoothing=0.1)
    m = [0.5 * ((-3.0 + 3.5) - 0.0), 0.5 * (0.0 - (-4.5 + 4.0))]
    assert margin.tolist() == pytest.approx(m)
    assert cr.tolist() == pytest.approx([0.25, 0.0]) and rr.tolist() == pytest.approx([0.0, -0.25])

    def logsig(x):
        return -math.log1p(math.exp(-x))

    assert loss.tolist() == pytest.approx([-0.9 * logsig(x) - 0.1 * logsig(-x) for x in m])


def test_encode_sequence_counts_the_kept_answer_tokens():
    prompt, answer = list(range(100, 130)), list(range(200, 210))
    assert encode_sequence(prompt, answer, 64) == (prompt + answer, 10)
    seq, n = encode_sequence(prompt, answer[:6], 16)  # the prompt keeps its end, the answer fits
    assert len(seq) == 16 and n == 6 and seq[-6:] == answer[:6] and seq[:10] == prompt[-10:]
    seq, n = encode_sequence(prompt, list(range(200, 240)), 16)  # the answer keeps its start and last token
    assert len(seq) == 16 and n == 8 and seq[-8:] == [*range(200, 207), 239]


def test_loss_at_step_zero_is_log_2(tiny, tmp_path):
    cfg = config(tiny, tmp_path, max_steps=1, lr=1e-3)
    cfg.label_smoothing = 0.2  # every margin is 0 at the start: still log 2
    summary = train_dpo(cfg)
    first = records(tmp_path / "dpo")[0]
    assert first["step"] == 1
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert abs(first["reward_margin"]) < 1e-5 and abs(first["chosen_reward"]) < 1e-5
    assert first["reward_accuracy"] == 0.0  # no margin is strictly positive yet
    assert summary["heldout_loss_before"] == pytest.approx(math.log(2), abs=1e-5)
    assert summary["heldout_accuracy_before"] == 0.5  # every held-out pair exactly tied
    # 30 TRL pairs + 10 K-wise comparisons x 3 pairs, split by prompt
    assert summary["train_pairs"] + summary["heldout_pairs"] == 30 + 10 * 3
    assert summary["heldout_pairs"] > 0


def test_short_run_learns_the_preference_and_saves_a_loadable_model(tiny, tmp_path):
    from engine.training.loader import load

    cfg = config(tiny, tmp_path, max_steps=20, lr=1e-3)
    summary = train_dpo(cfg)
    recs = [r for r in records(tmp_path / "dpo") if "reward_accuracy" in r]
    assert [r["step"] for r in recs] == list(range(1, 21))
    late = recs[-5:]
    assert recs[0]["reward_accuracy"] == 0.0 and sum(r["reward_accuracy"] for r in late) / 5 >= 0.9
    assert sum(r["loss"] for r in late) / 5 < math.log(2) - 0.2
    assert all(r["chosen_reward"] > r["rejected_reward"] for r in late)
    assert summary["steps"] == 20 and summary["heldout_accuracy_after"] > summary["heldout_accuracy_before"]
    assert summary["heldout_loss_after"] < summary["heldout_loss_before"]
    saved = json.loads((tmp_path / "dpo" / "dpo.json").read_text())
    assert saved["heldout_accuracy_after"] == summary["heldout_accuracy_after"]
    loaded = load(tmp_path / "dpo" / "model")
    assert loaded.model.config == load(tiny).model.config
    meta = json.loads((tmp_path / "dpo" / "model" / "meta.json").read_text())
    assert meta["stage"] == "dpo" and meta["steps"] == 20


def test_resume_continues_exactly(tiny, tmp_path):
    # a constant rate: under cosine the schedule of a 3-step run differs from a 6-step one's
    cfg = config(tiny, tmp_path, out="a", max_steps=3, lr=1e-3, schedule="constant")
    assert train_dpo(cfg)["steps"] == 3
    cfg.train.max_steps = 6
    resumed = train_dpo(cfg, resume=True)
    assert resumed["steps"] == 6 and resumed["stop_reason"] == "max_steps"
    steps = [r["step"] for r in records(tmp_path / "a") if "reward_accuracy" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    # the same 6 steps in one go: same losses (the reference is the base model, not the checkpoint)
    straight = config(tiny, tmp_path, out="b", max_steps=6, lr=1e-3, schedule="constant")
    train_dpo(straight)
    a = [r["loss"] for r in records(tmp_path / "a") if "reward_accuracy" in r]
    b = [r["loss"] for r in records(tmp_path / "b") if "reward_accuracy" in r]
    assert a == pytest.approx(b, abs=1e-5)


def test_bad_data_names_the_file(tiny, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "hi", "chosen": GOOD, "rejected": BAD[0]}) + "\n"
                   + json.dumps({"prompt": "hi", "chosen": GOOD}) + "\n")
    cfg = DPOConfig(model=str(tiny), data=[str(bad)], out_dir=str(tmp_path / "x"))
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: .*'rejected'"):
        train_dpo(cfg)
    ties = tmp_path / "ties.jsonl"
    ties.write_text(json.dumps({"prompt": "hi", "responses": ["a", "b"], "ranking": [[0, 1]]}) + "\n")
    cfg.data = [str(ties)]
    with pytest.raises(ValueError, match=r"ties\.jsonl: no \(better, worse\) pairs"):
        train_dpo(cfg)
    with pytest.raises(ValueError, match="set model"):
        train_dpo(DPOConfig(data=[str(bad)]))
    with pytest.raises(ValueError, match="set data"):
        train_dpo(DPOConfig(model=str(tiny)))
    with pytest.raises(ValueError, match="no training pairs left"):  # one prompt, held out
        train_dpo(DPOConfig(model=str(tiny), val_fraction=0.9, out_dir=str(tmp_path / "y")),
                  comparisons=[Comparison([{"role": "user", "content": "hi"}], [GOOD, BAD[0]], [[0], [1]])] * 2)
    with pytest.raises(ValueError, match="beta must be positive"):
        DPOConfig(beta=0)


def test_given_comparisons_expand_to_pairs(tiny, tmp_path):
    comps = [Comparison([{"role": "user", "content": f"question {i}"}], [BAD[0], GOOD, BAD[1], BAD[2]],
                        [[1], [0, 2], [3]]) for i in range(10)]  # 1 > {0, 2} > 3: 5 pairs (the tie skipped)
    cfg = DPOConfig(model=str(tiny), out_dir=str(tmp_path / "g"), max_len=64)
    cfg.train.progress, cfg.train.max_steps, cfg.train.device = False, 1, "cpu"
    summary = train_dpo(cfg, comparisons=comps)
    assert summary["train_pairs"] + summary["heldout_pairs"] == 50
    assert summary["data"]["train_comparisons"] == 9 and summary["heldout_pairs"] == 5


def test_frozen_lower_layers_stay_as_they_were(tiny, tmp_path):
    from engine.training.loader import load

    cfg = config(tiny, tmp_path, max_steps=3, lr=1e-3)
    cfg.freeze_layers = 1
    train_dpo(cfg)
    before, after = load(tiny).model.state_dict(), load(tmp_path / "dpo" / "model").model.state_dict()
    frozen = [k for k in before if k.startswith(("embed", "layers.0."))]
    trained = [k for k in before if k.startswith("layers.1.") and k.endswith("weight")]
    assert frozen and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in trained)
