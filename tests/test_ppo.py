"""PPO: GAE, KL shaping, the clipped losses, and (with the stage) a step and exact resume."""

import pytest
import torch

from chatfactory.train.rl_math import (
    KLController,
    entropy,
    gae,
    kl_shaped_rewards,
    policy_loss,
    token_logprobs,
    value_loss,
    whiten,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models run fastest on one thread, and the CI machine's cores are shared
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
