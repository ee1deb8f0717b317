"""PPO: GAE, KL shaping, the clipped losses, and (with the stage) a step and exact resume."""

import json
from pathlib import Path

import pytest
import torch

from engine.training.train.rl_math import (
    KLController,
    entropy,
    gae,
    kl_shaped_rewards,
    policy_loss,
    token_logprobs,
    value_loss,
    whiten,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_gae_on_a_hand_made_trajectory():
    # one answer of 3 tokens (then padding), gamma = 0.9, lambda = 0.5
    r = torch.tensor([[0.1, -0.2, 1.0, 7.0]])
    v = torch.tensor([[0.5, 0.4, 0.3, 9.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    g, lam = 0.9, 0.5
    d2 = 1.0 + g * 0.0 - 0.3  # the value after the last token is 0
    d1 = -0.2 + g * 0.3 - 0.4
    d0 = 0.1 + g * 0.4 - 0.5
    a2 = d2
    a1 = d1 + g * lam * a2
    a0 = d0 + g * lam * a1
    adv, ret = gae(r, v, m, gamma=g, lam=lam)
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, a2, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[a0 + 0.5, a1 + 0.4, a2 + 0.3, 0.0]]))
    # gamma = lambda = 1: advantage = (sum of future rewards) - V_t
    adv1, _ = gae(r, v, m, 1.0, 1.0)
    torch.testing.assert_close(adv1[0, :3], torch.tensor([0.9 - 0.5, 0.8 - 0.4, 1.0 - 0.3]))


def test_kl_is_zero_when_policy_equals_reference_and_score_lands_on_last_token():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    lp = token_logprobs(logits, targets, temperature=0.7)
    ref = token_logprobs(logits.clone(), targets, temperature=0.7)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    rewards, kl = kl_shaped_rewards(torch.tensor([2.0, -1.0]), lp, ref, mask, beta=0.1)
    assert float(kl.abs().max()) == 0.0
    assert rewards.tolist() == [[0, 0, 2.0, 0, 0], [0, 0, 0, 0, -1.0]]
    # temperature matters: log-probs at T=0.7 are those of softmax(logits / 0.7)
    manual = torch.log_softmax(logits / 0.7, -1).gather(-1, targets[..., None]).squeeze(-1)
    torch.testing.assert_close(lp, manual)
    assert (entropy(logits) > 0).all()


def test_clipped_policy_loss_and_value_loss():
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, -1.0, 1.0]])
    m = torch.ones(1, 3)
    same = policy_loss(old, old, adv, m)
    assert float(same.loss) == pytest.approx(-1 / 3) and float(same.approx_kl) == 0 and float(same.clip_frac) == 0
    # ratio 2 on a positive advantage is clipped at 1.2; ratio 0.5 on a negative one at 0.8
    new = torch.log(torch.tensor([[2.0, 0.5, 1.0]]))
    s = policy_loss(new, old, adv, m, clip=0.2)
    assert float(s.loss) == pytest.approx((-1.2 + 0.8 - 1.0) / 3)
    assert float(s.clip_frac) == pytest.approx(2 / 3)
    vl, frac = value_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), torch.ones(1, 1), clip=0.2)
    assert float(vl) == pytest.approx(0.5 * 0.8**2) and float(frac) == 1.0


def test_whiten_and_adaptive_kl_controller():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    w = whiten(x, torch.tensor([[1, 1, 1, 0]]))
    torch.testing.assert_close(w, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-4, rtol=0)
    c = KLController(0.1, target=6.0, horizon=100)
    c.update(12.0, 10)  # KL too high: beta grows by at most 20% * 10/100
    assert c.beta == pytest.approx(0.1 * 1.02)
    fixed = KLController(0.1)
    fixed.update(100.0, 10)
    assert fixed.beta == 0.1


# ---- the stage on tiny models ------------------------------------------------------------------------
def _tiny_models(tmp_path):
    """A tiny 'SFT' model and a reward model built from it, saved as folders."""
    from engine.training.model import GPT, ModelConfig
    from engine.training.model.checkpoint import save_model
    from engine.training.tokenizer import Tokenizer
    from engine.training.train.reward_model import RewardModel, save_reward_model

    tok = Tokenizer.train(["What is 12 + 34? 46. What is 50 + 17? 67. " * 20], vocab_size=300)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=32, max_seq_len=48)
    save_model(tmp_path / "sft", GPT(cfg), tok)
    rm = RewardModel(GPT(cfg))
    rm.set_normalisation(0.1, 2.0)
    save_reward_model(tmp_path / "rm", rm, tok, {"stage": "reward"})
    conv = {"messages": [{"role": "user", "content": "What is 12 + 34?"}, {"role": "assistant", "content": "46"}]}
    (tmp_path / "ptx.jsonl").write_text((json.dumps(conv) + "\n") * 8)
    return tmp_path / "sft", tmp_path / "rm"


def _config(sft, rm, steps, out):
    from engine.training.train.ppo import PPOConfig

    cfg = PPOConfig()
    p, t = cfg, cfg.train
    p.model, p.reward_model, p.tasks, p.n_prompts = str(sft), str(rm), "add2", 16
    p.rollout_batch, p.minibatch_size, p.ppo_epochs, p.max_new_tokens, p.eval_n = 4, 2, 2, 6, 4
    p.kl_target, p.ema, p.ptx_coef = 1.0, 0.9, 0.1  # every optional part switched on
    p.ptx_data = str(Path(sft).parent / "ptx.jsonl")
    t.max_steps, t.threads, t.progress, t.lr, t.micro_batch_size = steps, 1, False, 1e-3, 2
    p.out_dir = str(out)
    return cfg


def test_a_ppo_update_reduces_the_loss_on_a_fixed_batch(tmp_path):
    from engine.training.train.ppo import ActorCritic, build_models, load_prompts, ppo_loss

    sft, rm_path = _tiny_models(tmp_path)
    cfg = _config(sft, rm_path, 1, tmp_path / "x")
    actor, tok, ref, rm, critic = build_models(cfg)
    from engine.training.train.ppo import make_rollouts

    ac = ActorCritic(actor, critic)
    prompts = load_prompts(cfg, 0)[:4]
    batch, stats, answers = make_rollouts(ac, ref, rm, tok, prompts, cfg, beta=0.05, seed=1)
    assert len(answers) == 4 and stats["kl"] == pytest.approx(0.0, abs=1e-5)  # the policy *is* the reference
    loss_fn = ppo_loss(cfg)
    before, s0 = loss_fn(ac, batch)
    assert s0["clip_frac"] == 0 and abs(s0["approx_kl"]) < 1e-6  # re-scoring reproduces the rollout's log-probs
    opt = torch.optim.Adam(ac.parameters(), lr=1e-3)
    for _ in range(5):
        loss, _ = loss_fn(ac, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, _ = loss_fn(ac, batch)
    assert float(after.detach()) < float(before.detach()) - 1e-3


def test_a_shared_frozen_trunk_gives_the_same_rollout_and_loss_as_four_full_passes(tmp_path):
    """Policy, reference, reward model and critic built on one base with the same lower blocks
    frozen: those blocks run once (shared_trunk), and every number PPO uses is unchanged."""
    from engine.training.model import GPT, ModelConfig
    from engine.training.model.checkpoint import save_model
    from engine.training.train.ppo import ActorCritic, build_models, load_prompts, make_rollouts, ppo_loss, shared_trunk
    from engine.training.train.reward import freeze_bottom
    from engine.training.train.reward_model import RewardModel, save_reward_model

    sft, rm_path = _tiny_models(tmp_path)
    from engine.training.loader import load

    base = load(sft)
    torch.manual_seed(3)
    deep = GPT(ModelConfig(**{**base.model.config.__dict__, "n_layer": 3}))
    save_model(tmp_path / "deep", deep, base.tokenizer)
    rm = RewardModel(GPT(deep.config))
    rm.backbone.load_state_dict(deep.state_dict())
    with torch.no_grad():  # the reward model trained its top block only
        for p in rm.backbone.layers[2].parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_reward_model(tmp_path / "deep_rm", rm, base.tokenizer, {"stage": "reward"})
    cfg = _config(tmp_path / "deep", tmp_path / "deep_rm", 1, tmp_path / "x")
    actor, tok, ref, rm, critic = build_models(cfg)
    assert shared_trunk(2, actor, ref, rm, critic) == 0  # not frozen yet: the trained models' blocks will move
    freeze_bottom(actor, 2)
    freeze_bottom(critic.backbone, 2)
    assert shared_trunk(2, actor, ref, rm, critic) == 2
    assert shared_trunk(3, actor, ref, rm, critic) == 0  # the third blocks differ
    ac = ActorCritic(actor, critic)
    prompts = load_prompts(cfg, 0)[:4]
    full, s_full, _ = make_rollouts(ac, ref, rm, tok, prompts, cfg, beta=0.05, seed=1)
    fast, s_fast, _ = make_rollouts(ac, ref, rm, tok, prompts, cfg, beta=0.05, seed=1, shared=2)
    assert "trunk" in fast and "trunk" not in full
    for k in ("old_logprobs", "old_values", "advantages", "returns"):
        torch.testing.assert_close(fast[k], full[k], atol=1e-5, rtol=1e-5)
    assert s_fast["reward"] == pytest.approx(s_full["reward"], abs=1e-5)
    loss_full, _ = ppo_loss(cfg)(ac, full)
    loss_fast, _ = ppo_loss(cfg, 2)(ac, fast)
    torch.testing.assert_close(loss_fast, loss_full, atol=1e-5, rtol=1e-5)
    loss_fast.backward()  # the update reaches the blocks above the trunk
    assert actor.layers[2].mlp.down.weight.grad is not None and actor.layers[0].mlp.down.weight.grad is None


def test_group_baseline_needs_no_critic_and_its_advantages_sum_to_zero_per_prompt(tmp_path):
    """baseline "group": no value model is loaded or trained; each prompt is answered group_size
    times, and an answer's advantage (on every one of its tokens) is its reward minus the mean of
    the other answers' (leave-one-out), so a group's advantages sum to zero. A stage runs on it."""
    from engine.training.train.ppo import ActorCritic, build_models, load_prompts, make_rollouts, ppo_loss, train_ppo

    sft, rm_path = _tiny_models(tmp_path)
    cfg = _config(sft, rm_path, 2, tmp_path / "g")
    cfg.baseline, cfg.group_size, cfg.whiten_advantages, cfg.ema = "group", 2, False, None
    actor, tok, ref, rm, critic = build_models(cfg)
    assert critic is None
    ac = ActorCritic(actor, critic)
    prompts = load_prompts(cfg, 0)[:2]
    batch, stats, answers = make_rollouts(ac, ref, rm, tok, prompts, cfg, beta=0.05, seed=1)
    assert len(answers) == 4 and batch["input_ids"].shape[0] == 4 and "explained_variance" not in stats
    first = batch["advantages"].gather(1, batch["resp"].argmax(1, keepdim=True)).view(2, 2)
    torch.testing.assert_close(first.sum(1), torch.zeros(2), atol=1e-5, rtol=0)
    per_answer = batch["advantages"].sum(1) / batch["resp"].sum(1)
    torch.testing.assert_close(per_answer, first.flatten(), atol=1e-5, rtol=0)  # the same on every token
    loss, s = ppo_loss(cfg)(ac, batch)
    assert "value_loss" not in s and torch.isfinite(loss)
    cfg.whiten_advantages = True
    result = train_ppo(cfg)
    assert result["steps"] == 2 and (tmp_path / "g" / "model").is_dir()
    cfg.group_size = 3  # must divide rollout_batch (4)
    with pytest.raises(ValueError, match="group_size"):
        train_ppo(cfg)


def test_resume_reproduces_the_next_step_exactly(tmp_path):
    from safetensors.torch import load_file

    from engine.training.train.ppo import train_ppo

    sft, rm = _tiny_models(tmp_path)
    straight = train_ppo(_config(sft, rm, 2, tmp_path / "a"))
    train_ppo(_config(sft, rm, 1, tmp_path / "b"))
    resumed = train_ppo(_config(sft, rm, 2, tmp_path / "b"), resume=True)
    assert straight["steps"] == resumed["steps"] == 2
    wa = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    logs = [[json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in "ab"]
    last_a = next(r for r in reversed(logs[0]) if r.get("step") == 2 and "reward" in r)
    last_b = next(r for r in reversed(logs[1]) if r.get("step") == 2 and "reward" in r)
    for key in ("reward", "kl", "entropy", "clip_frac", "approx_kl", "value_loss", "explained_variance",
                "response_length", "checker", "kl_coef", "ptx_loss"):
        assert last_a[key] == last_b[key], key


def test_max_update_kl_stops_a_steps_updates_once_the_policy_has_moved_that_far(tmp_path):
    from engine.training.train.ppo import train_ppo

    sft, rm = _tiny_models(tmp_path)
    full = 2 * (4 // 2)  # ppo_epochs x minibatches per epoch

    def updates(out, limit):
        cfg = _config(sft, rm, 2, tmp_path / out)
        cfg.train.lr, cfg.max_update_kl = 3e-2, limit  # a large step: the policy moves at the first update
        train_ppo(cfg)
        recs = [json.loads(x) for x in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]
        return [r for r in recs if "updates" in r]

    free = updates("free", None)
    assert [r["updates"] for r in free] == [full, full] and max(r["approx_kl"] for r in free) > 1e-4
    # the first minibatch is scored under the rollout policy itself (approx-KL ~0), so at least
    # one update always happens; the next minibatch sees the moved policy and stops the step
    capped = updates("capped", 1e-6)
    assert all(1 <= r["updates"] < full for r in capped)


def test_rlhf_evaluation_of_a_model_against_itself_is_a_draw(tmp_path):
    from engine.training.eval.rlhf import compare, format_report
    from engine.training.loader import load
    from engine.training.train.reward_model import load_reward_model
    from engine.training.train.sample import task_prompts

    sft, rm_path = _tiny_models(tmp_path)
    model, tok = load(sft).model, load(sft).tokenizer
    rm, _, _ = load_reward_model(rm_path)
    r = compare(model, model, rm, tok, task_prompts("add2", "test", 6), max_new_tokens=6)
    assert r["prompts"] == 6 and r["win_rate_by_reward"] == 0.5 and r["win_rate_by_checker"] == 0.5
    assert r["kl_ppo_to_sft"] == pytest.approx(0.0, abs=1e-5)
    assert r["ppo"]["mean_reward"] == r["sft"]["mean_reward"] and "checker_accuracy" in r["sft"]
    assert "win rate of PPO over SFT by the checker: 50.0%" in format_report(r)
