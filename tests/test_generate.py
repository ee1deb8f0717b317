"""Batched generation with the KV cache, and sampling."""

import torch

from engine.training.model import GPT, ModelConfig
from engine.training.sampler import SamplingParams, generate
from engine.training.sampler.sampling import process_logits


def model():
    torch.manual_seed(1)
    return GPT(ModelConfig(vocab_size=50, n_layer=2, n_head=2, d_model=32, max_seq_len=64, init_std=0.3)).eval()


def greedy_reference(m, prompt, n):
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(m(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt) :]


def test_batched_greedy_equals_one_by_one_full_forward():
    m = model()
    prompts = [[5, 6, 7, 8, 9, 10], [1, 2], [3, 4, 5]]
    outs = generate(m, prompts, SamplingParams(max_new_tokens=10, temperature=0))
    for p, o in zip(prompts, outs):
        assert o.tokens == greedy_reference(m, p, 10)
        assert o.finish_reason == "length"


def test_stop_tokens_and_seed():
    m = model()
    ref = generate(m, [[1, 2, 3]], SamplingParams(max_new_tokens=12, temperature=0))[0].tokens
    stop = ref[3]
    out = generate(m, [[1, 2, 3]], SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=(stop,)))[0]
    assert out.finish_reason == "stop" and out.tokens[-1] == stop and len(out.tokens) == ref.index(stop) + 1
    a = generate(m, [[1, 2, 3]] * 2, SamplingParams(max_new_tokens=8, temperature=1.0, seed=7))
    b = generate(m, [[1, 2, 3]] * 2, SamplingParams(max_new_tokens=8, temperature=1.0, seed=7))
    assert [g.tokens for g in a] == [g.tokens for g in b]
    assert all(len(g.logprobs) == len(g.tokens) and all(lp <= 0 for lp in g.logprobs) for g in a)


def test_context_window_is_enforced():
    m = model()
    out = generate(m, [[1] * 60], SamplingParams(max_new_tokens=50, temperature=0))[0]
    assert len(out.tokens) == 4
    try:
        generate(m, [[1] * 64], SamplingParams(max_new_tokens=1))
    except ValueError as e:
        assert "context window" in str(e)
    else:
        raise AssertionError("expected a context-window error")


def test_top_k_and_top_p_filtering():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    k = process_logits(logits, top_k=2)
    assert torch.isinf(k[0, 2:]).all() and torch.isfinite(k[0, :2]).all()
    p = process_logits(logits, top_p=0.5)  # the top token alone holds ~64% of the mass
    assert torch.isfinite(p[0, 0]) and torch.isinf(p[0, 1:]).all()


def test_rows_that_finish_early_leave_the_batch_and_the_others_are_unchanged():
    """Once a quarter of the batch has stopped, those rows are dropped from the KV cache; every
    row's answer (and its log-probs) stays what it is when generated alone."""
    m = model()
    prompts = [[5, 6, 7, 8, 9, 10], [1, 2], [3, 4, 5], [7, 7], [2, 9, 4, 1]]
    alone = [greedy_reference(m, p, 12) for p in prompts]
    from collections import Counter

    # the token most rows produce at some point: those rows stop there, at different steps
    stop = Counter(t for ref in alone for t in set(ref)).most_common(1)[0][0]
    outs = generate(m, prompts, SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=(stop,)))
    stopped = 0
    for ref, o in zip(alone, outs):
        want = ref[: ref.index(stop) + 1] if stop in ref else ref
        assert o.tokens == want
        assert o.finish_reason == ("stop" if stop in ref else "length")
        stopped += stop in ref
    assert stopped >= 2  # enough rows finished early for the batch to shrink
    singles = [generate(m, [p], SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=(stop,)))[0]
               for p in prompts]
    for s, o in zip(singles, outs):
        torch.testing.assert_close(torch.tensor(o.logprobs), torch.tensor(s.logprobs), atol=1e-5, rtol=1e-5)


def test_sampling_draws_tokens_in_proportion_to_their_probability():
    from engine.training.sampler.sampling import sample

    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    logits = probs.log().expand(20000, 4).contiguous()
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(sample(logits, 1.0, generator=g), minlength=4).float() / 20000
    torch.testing.assert_close(counts, probs, atol=0.015, rtol=0)  # never the zero-probability token
    assert counts[3] == 0
    top1 = sample(logits[:100], 1.0, top_k=1, generator=g)
    assert (top1 == 0).all()
