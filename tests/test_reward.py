"""The reward model: K-wise loss, reading at the last real token, head init, save/load."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from engine.training.model import GPT, ModelConfig
from engine.training.train.reward_model import (
    EncodedComparison,
    RewardModel,
    collate_comparisons,
    encode_answer,
    last_token_index,
    load_reward_model,
    ranking_loss,
    save_reward_model,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_rm(seed: int = 0) -> RewardModel:
    torch.manual_seed(seed)
    return RewardModel(GPT(ModelConfig(vocab_size=64, n_layer=2, n_head=2, d_model=32, max_seq_len=64))).eval()


def test_kwise_loss_equals_mean_over_pairs_by_hand():
    # prompt 0: 3 answers ranked [2, 0, 1]; prompt 1: 4 answers ranked [0, [1, 2], 3] (a tie)
    r = torch.tensor([0.3, -1.2, 2.0, 0.5, 0.1, -0.4, 1.5])
    items = [
        EncodedComparison([[1]] * 3, [(2, 0), (2, 1), (0, 1)]),
        EncodedComparison([[1]] * 4, [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]),
    ]
    b = collate_comparisons(items, pad_id=0)
    loss = ranking_loss(r, b["pairs"], b["group"], b["n_groups"])

    def nll(a, c):
        return -math.log(1 / (1 + math.exp(-(a - c))))

    g0 = [nll(r[2], r[0]), nll(r[2], r[1]), nll(r[0], r[1])]
    g1 = [nll(r[3 + a], r[3 + c]) for a, c in [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]]
    expected = (sum(g0) / 3 + sum(g1) / 5) / 2  # each prompt's C(K,2) pairs averaged, then prompts
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # K = 2 is the plain pairwise loss
    two = ranking_loss(torch.tensor([1.0, 0.0]), torch.tensor([[0, 1]]), torch.tensor([0]), 1)
    assert float(two) == pytest.approx(float(-F.logsigmoid(torch.tensor(1.0))))


def test_reward_is_read_at_last_real_token_with_left_or_right_padding():
    rm = tiny_rm()
    seqs = [[5, 6, 7, 8, 9], [10, 11, 12], [13]]
    alone = torch.stack([rm(torch.tensor([s]))[0] for s in seqs])
    T = 6
    right = torch.zeros(3, T, dtype=torch.long)
    right_mask = torch.zeros(3, T, dtype=torch.long)
    left = torch.zeros(3, T, dtype=torch.long)
    left_mask = torch.zeros(3, T, dtype=torch.long)
    for i, s in enumerate(seqs):
        right[i, : len(s)], right_mask[i, : len(s)] = torch.tensor(s), 1
        left[i, T - len(s) :], left_mask[i, T - len(s) :] = torch.tensor(s), 1
    assert last_token_index(right, right_mask).tolist() == [4, 2, 0]
    assert last_token_index(left, left_mask).tolist() == [5, 5, 5]
    torch.testing.assert_close(rm(right, right_mask), alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rm(left, left_mask), alone, atol=1e-5, rtol=1e-5)
    # and reading at the last *position* of a right-padded batch would be wrong
    wrong = rm.values(right, right_mask)[:, -1]
    assert not torch.allclose(wrong, alone, atol=1e-3)


def test_head_init_std_and_normalisation():
    torch.manual_seed(0)
    d = 1023
    rm = RewardModel(GPT(ModelConfig(vocab_size=32, n_layer=1, n_head=1, d_model=d, max_seq_len=8, family="gpt2")))
    assert float(rm.head.weight.detach().std()) == pytest.approx(1 / math.sqrt(d + 1), rel=0.1)
    assert float(rm.head.bias.detach()) == 0
    rm.set_normalisation(2.0, 4.0)
    x = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert float(rm.score(x)) == pytest.approx((float(rm(x)) - 2.0) / 4.0)


def test_encode_answer_keeps_response_end_and_prompt_tail():
    p, r = list(range(100, 120)), list(range(1, 11))
    assert encode_answer(p, r, 64) == p + r
    out = encode_answer(p, r, 24)  # the prompt loses its oldest tokens
    assert len(out) == 24 and out[-10:] == r and out[:14] == p[-14:]
    long_r = list(range(1, 40)) + [99]
    out = encode_answer(p, long_r, 16)
    assert len(out) == 16 and out[-1] == 99 and out[:8] == p[-8:]


def test_save_and_load_roundtrip(tmp_path):
    from engine.training.loader import load
    from engine.training.tokenizer import Tokenizer

    tok = Tokenizer.train(["hello world " * 20, "answer the question"], vocab_size=300)
    torch.manual_seed(0)
    rm = RewardModel(GPT(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=16, max_seq_len=32)))
    rm.set_normalisation(0.25, 2.0)
    save_reward_model(tmp_path / "rm", rm, tok, {"stage": "reward"})
    back, tok2, meta = load_reward_model(tmp_path / "rm")
    x = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        assert float(back.score(x)) == pytest.approx(float(rm.eval().score(x)), abs=1e-6)
    assert tok2.fingerprint() == tok.fingerprint()
    assert meta["reward"]["mean"] == 0.25 and meta["reward"]["std"] == 2.0
    assert load(tmp_path / "rm").model.config.d_model == 16  # the backbone is an ordinary model folder
    with pytest.raises(FileNotFoundError, match="not a reward model"):
        load_reward_model(tmp_path / "nope")


def test_pairs_collation_covers_all_k_choose_2():
    items = [EncodedComparison([[1, 2], [3], [4, 5, 6], [7]], list(itertools.combinations(range(4), 2)))]
    b = collate_comparisons(items, pad_id=0)
    assert b["input_ids"].shape == (4, 3) and len(b["pairs"]) == 6 and b["attention_mask"].sum() == 7


def _tiny_backbone(tmp_path, words):
    from engine.training.model.checkpoint import save_model
    from engine.training.tokenizer import Tokenizer

    tok = Tokenizer.train([" ".join(words) * 20], vocab_size=300)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, d_model=32, max_seq_len=64))
    save_model(tmp_path / "sft", model, tok)
    return tmp_path / "sft"


def test_reward_stage_learns_a_ranking_then_normalises_and_saves(tmp_path):
    import json
    import random

    from engine.training.train.reward import RewardConfig, train_reward_model

    answers = ["great answer", "fine answer", "awful answer"]  # best to worst
    sft = _tiny_backbone(tmp_path, [*answers, "question"])
    rng = random.Random(0)
    with open(tmp_path / "ranked.jsonl", "w") as f:
        for i in range(120):
            order = rng.sample(range(3), 3)  # answers in random positions
            resp = [answers[j] for j in order]
            ranking = sorted(range(3), key=lambda k: order[k])
            f.write(json.dumps({"prompt": f"question {i}", "responses": resp, "ranking": ranking}) + "\n")
    cfg = RewardConfig()
    cfg.model, cfg.data, cfg.epochs, cfg.out_dir = str(sft), [str(tmp_path / "ranked.jsonl")], 2, str(tmp_path / "rm")
    cfg.train.lr, cfg.train.progress, cfg.train.micro_batch_size, cfg.train.threads = 3e-3, False, 8, 1
    stats = train_reward_model(cfg)
    assert stats["heldout_accuracy"] >= 0.9 and stats["heldout_pairs"] == 36  # 12 held-out prompts x 3 pairs
    rm, tok, meta = load_reward_model(tmp_path / "rm" / "model")
    assert meta["reward"]["std"] > 0 and meta["metrics"]["heldout_accuracy"] == stats["heldout_accuracy"]
    from engine.training.tokenizer.chat_template import render_prompt
    from engine.training.train.reward_model import response_ids

    prompt = render_prompt([{"role": "user", "content": "question 7"}], tok)
    scores = [float(rm.score(torch.tensor([prompt + response_ids(a, tok)])).detach()) for a in answers]
    assert scores[0] > scores[1] > scores[2]
    assert abs(sum(scores) / 3) < 1.0  # normalised on the training answers: centred near 0


def test_freeze_bottom_layers_stops_their_gradients():
    from engine.training.train.reward import freeze_bottom

    rm = tiny_rm()
    freeze_bottom(rm.backbone, 1)
    rm(torch.tensor([[1, 2, 3]])).sum().backward()
    assert rm.backbone.embed.weight.grad is None and rm.backbone.layers[0].attn.q.weight.grad is None
    assert rm.backbone.layers[1].attn.q.weight.grad is not None and rm.head.weight.grad is not None
    with pytest.raises(ValueError, match="has 2 blocks"):
        freeze_bottom(rm.backbone, 3)
