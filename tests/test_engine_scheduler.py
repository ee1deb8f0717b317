"""The serving engine: continuous batching gives the same tokens as generating alone, seeds,
stops, cancellation, context limits, UTF-8-safe streaming. A real tiny model throughout."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from tiny_chat_model import TEXT, tiny_loaded

from chatfactory.engine import SamplingParams, generate
from chatfactory.engine.row_sampling import sample_rows
from chatfactory.engine.sampling import process_logits
from chatfactory.engine.scheduler import ContextWindowError, Engine
from chatfactory.engine.stops import REPLACEMENT, IncrementalDetokenizer, StopStrings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GREEDY = SamplingParams(max_new_tokens=24, temperature=0)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return tiny_loaded(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture()
def engine(loaded):
    e = Engine(loaded, max_batch=8)
    yield e
    e.shutdown()


def alone(loaded, prompt, params=GREEDY):
    """Reference: the plain generator, one prompt at a time."""
    p = SamplingParams(
        **{**params.__dict__, "stop_token_ids": (loaded.tokenizer.eos_id, *params.stop_token_ids)}
    )
    return generate(loaded.model, [prompt], p)[0].tokens


def prompts(loaded):
    enc = loaded.tokenizer.encode
    return [
        enc("To be, or not"),
        enc("Explain how a classification"),
        enc("Café"),
        enc(TEXT[1][:60]),
        enc("user\nHi"),
    ]


def test_concurrent_requests_match_greedy_alone(loaded, engine):
    engine.start()
    ps = prompts(loaded)
    reqs = [engine.submit(p, GREEDY) for p in ps]

    async def collect(r):
        return "".join([d.text async for d in r.stream()])

    async def main():
        return await asyncio.gather(*(collect(r) for r in reqs))

    texts = asyncio.run(main())
    assert engine.peak_batch > 1, "requests were never batched together"
    for p, r, text in zip(ps, reqs, texts):
        assert r.output_ids == alone(loaded, p)
        assert r.finish_reason in ("stop", "length") and r.prompt_tokens == len(p)
        assert r.completion_tokens == len(r.output_ids)
        shown = [t for t in r.output_ids if t != loaded.tokenizer.eos_id]
        assert text == loaded.tokenizer.decode(shown, skip_special=True)


def test_requests_joining_mid_batch_get_the_same_tokens(loaded, engine):
    enc = loaded.tokenizer.encode
    a_prompt, b_prompt, c_prompt = enc("To be"), enc("Hello"), enc(" ".join(TEXT[:2]))[:50]
    long = SamplingParams(max_new_tokens=30, temperature=0)
    # No background thread: step() runs the loop here, so "mid-batch" is exact, not a race.
    a = engine.submit(a_prompt, long)
    for _ in range(3):
        engine.step()
    assert a.finish_reason is None and a.completion_tokens == 4  # prefill token + 3 decode steps
    b = engine.submit(b_prompt, long)  # shorter than A's cache: right-aligned into it
    engine.step()
    c = engine.submit(c_prompt, long)  # longer than the batch's cache: the batch is shifted
    engine.step()
    assert engine.peak_batch == 3
    for r in (a, b, c):
        r.result()  # drives the remaining steps
    assert a.output_ids == alone(loaded, a_prompt, long)
    assert b.output_ids == alone(loaded, b_prompt, long)
    assert c.output_ids == alone(loaded, c_prompt, long)


def test_prefix_cache_reuses_shared_beginnings_and_changes_no_token(loaded, engine):
    """Prompts that share hidden instructions (and a conversation's next turn, which begins with
    its previous prompt) skip that part of the prefill and still get exactly the tokens they
    get alone; newcomers with different reused lengths are prefilled in one batch."""
    enc = loaded.tokenizer.encode
    system = enc(" ".join(TEXT[:3]))[:40]  # the shared "hidden instructions"
    turn1 = system + enc("user\nHi")
    turn2 = turn1 + enc(" there, and then?")  # the next turn of the same conversation
    others = [system + enc("user\nTo be"), system + enc("user\nExplain how")]
    cache = engine.prefix_cache
    a = engine.submit(turn1, GREEDY)
    a.result()
    assert cache.hits == 0 and len(cache) == 1  # nothing to reuse yet; turn1 is kept
    batch = [engine.submit(p, GREEDY) for p in (turn2, *others, enc("Café"))]
    for r in batch:
        r.result()
    assert cache.hits == 3  # turn2 reuses all of turn1, the others the shared instructions
    shared = [next(i for i, (x, y) in enumerate(zip(turn1, o)) if x != y) for o in others]
    assert min(shared) >= len(system) and cache.reused_tokens == len(turn1) + sum(shared)
    for p, r in zip((turn1, turn2, *others, enc("Café")), (a, *batch)):
        assert r.output_ids == alone(loaded, p), p
    # newcomers sharing a beginning nobody cached: it is prefilled once, then reused by each
    fresh = enc(" ".join(TEXT[3:6]))[:30]
    reqs = [engine.submit(fresh + enc(q), GREEDY) for q in ("one", "two words", "three more words")]
    for r, q in zip(reqs, ("one", "two words", "three more words")):
        assert r.result() is not None and r.output_ids == alone(loaded, fresh + enc(q))
    assert cache.hits == 6 and 0 < cache.bytes <= cache.max_bytes
    off = Engine(loaded, max_batch=8, use_prefix_cache=False)
    assert off.prefix_cache is None
    again = off.submit(turn2, GREEDY)
    again.result()
    assert again.output_ids == batch[0].output_ids


def test_seeded_sampling_is_reproducible_alone_or_batched(loaded, engine):
    p = loaded.tokenizer.encode("To be, or not")
    seeded = SamplingParams(max_new_tokens=20, temperature=0.9, top_k=40, top_p=0.95, seed=123)
    solo = engine.submit(p, seeded)
    solo.result()
    others = [
        SamplingParams(max_new_tokens=20, temperature=1.0, seed=5),
        SamplingParams(max_new_tokens=20, temperature=0),
        SamplingParams(max_new_tokens=20, temperature=0.7, top_p=0.5),
    ]
    batch = [engine.submit(q, o) for q, o in zip(prompts(loaded), others)]
    again = engine.submit(p, seeded)
    for r in [*batch, again]:
        r.result()
    assert again.output_ids == solo.output_ids
    other_seed = engine.submit(p, SamplingParams(**{**seeded.__dict__, "seed": 124}))
    other_seed.result()
    assert other_seed.output_ids != solo.output_ids


def test_stop_strings_and_stop_tokens(loaded, engine):
    p = loaded.tokenizer.encode("Explain how a classification")
    ref_ids = alone(loaded, p)
    ref_text = loaded.tokenizer.decode(ref_ids, skip_special=True)
    # a 2-character stop string from the middle of the greedy answer, first occurring there
    at = next(
        i
        for i in range(6, len(ref_text) - 2)
        if ref_text.find(ref_text[i : i + 2]) == i and REPLACEMENT not in ref_text[i : i + 2]
    )
    stop = ref_text[at : at + 2]
    r = engine.submit(p, GREEDY, stop=["never appears ~~", stop])
    assert r.result() == ref_text[:at] and r.finish_reason == "stop"
    # a stop token: included in output_ids, its text never shown
    tok = ref_ids[4]
    r = engine.submit(p, SamplingParams(max_new_tokens=24, temperature=0, stop_token_ids=(tok,)))
    text = r.result()
    assert r.finish_reason == "stop" and r.output_ids == ref_ids[: ref_ids.index(tok) + 1]
    assert text == loaded.tokenizer.decode(r.output_ids[:-1], skip_special=True)
    r = engine.submit(p, SamplingParams(max_new_tokens=3, temperature=0))
    r.result()
    assert r.finish_reason == "length" and r.completion_tokens == 3


def test_cancel_frees_the_slot(loaded):
    engine = Engine(loaded, max_batch=1)
    p, q = loaded.tokenizer.encode("To be"), loaded.tokenizer.encode("Hello")
    long = SamplingParams(max_new_tokens=60, temperature=0)
    a = engine.submit(p, long)
    b = engine.submit(q, GREEDY)
    engine.step()
    assert a.completion_tokens == 2 and b.completion_tokens == 0  # b waits: the only slot is a's
    a.cancel()
    assert b.result() is not None and b.output_ids == alone(loaded, q)
    assert a.finish_reason == "cancelled" and a.completion_tokens == 2
    assert all(d.text for d in a) and list(a) == []  # a's stream ended (and stays ended)

    # a client that stops reading (async generator closed) cancels its request
    engine.start()
    try:
        c = engine.submit(p, long)

        async def read_one():
            async for _ in c.stream():
                break

        asyncio.run(read_one())
        deadline = time.monotonic() + 10
        while c.finish_reason is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.finish_reason == "cancelled" and c.completion_tokens < 60
    finally:
        engine.shutdown()


def test_a_failed_prefill_fails_only_the_newcomer_and_shutdown_ends_everything(loaded):
    engine = Engine(loaded, max_batch=4)
    p = loaded.tokenizer.encode("To be")
    long = SamplingParams(max_new_tokens=30, temperature=0)
    a = engine.submit(p, long)
    engine.step()

    def fail_prefill(module, inputs):
        if inputs[0].shape[1] > 1:  # a prefill, not a decode step
            raise RuntimeError("out of memory (simulated)")

    hook = loaded.model.embed.register_forward_pre_hook(fail_prefill)
    try:
        b = engine.submit(p, long)
        engine.step()
    finally:
        hook.remove()
    assert b.finish_reason == "error"
    with pytest.raises(RuntimeError, match="generation failed: out of memory"):
        b.result()
    assert a.result() is not None and a.output_ids == alone(loaded, p, long)

    c, d = engine.submit(p, long), engine.submit(p, long)
    engine.step()
    engine.shutdown()
    assert c.finish_reason == "cancelled" and d.finish_reason == "cancelled"
    with pytest.raises(RuntimeError, match="shut down"):
        engine.submit(p, long)


def test_context_window_and_bad_parameters(loaded, engine):
    ctx = engine.context_window
    before = engine.requests_submitted
    with pytest.raises(
        ContextWindowError, match=f"context window is {ctx} tokens.*{ctx - 10} tokens.*asks for 20"
    ):
        engine.submit([5] * (ctx - 10), SamplingParams(max_new_tokens=20))
    assert engine.requests_submitted == before + 1
    with pytest.raises(ValueError, match="empty"):
        engine.submit([], GREEDY)
    with pytest.raises(ValueError, match="top_p"):
        engine.submit([5], SamplingParams(top_p=0))
    with pytest.raises(ValueError, match="vocabulary"):
        engine.submit([10**6], GREEDY)
    r = engine.submit([5] * (ctx - 4), SamplingParams(max_new_tokens=4, temperature=0))  # exactly fits
    r.result()
    assert r.completion_tokens <= 4 and r.finish_reason in ("stop", "length")


def test_incremental_detokenizer_never_splits_a_character(loaded):
    tok = loaded.tokenizer
    text = "Café 漢字 😀🎉 déjà vu"
    ids = tok.encode(text)
    assert len(ids) > len(text) // 2  # multi-byte characters really are split across tokens here
    d = IncrementalDetokenizer(tok, tok.encode("say:"))
    deltas = [d.push(t) for t in ids] + [d.flush()]
    assert "".join(deltas) == text
    assert not any(REPLACEMENT in x for x in deltas)


def test_stop_strings_hold_back_only_possible_prefixes():
    s = StopStrings(["END", "xy"])
    assert s.feed("abc E") == ("abc ", False)  # "E" might start "END"
    assert s.feed("N") == ("", False)
    assert s.feed("Dtail") == ("", True)  # "END" reached: it and what follows are dropped
    s = StopStrings(["END"])
    assert s.feed("EN") == ("", False)
    assert s.feed("o") == ("ENo", False)
    assert s.feed("x") == ("x", False) and s.flush() == ""


def test_row_sampling_respects_each_rows_settings():
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    temp = torch.tensor([0.0, 1.0, 1.0, 0.8])
    top_k = torch.tensor([0, 1, 0, 5])
    top_p = torch.tensor([1.0, 1.0, 1e-6, 0.9])
    for u in torch.linspace(0, 0.999, 25):
        out = sample_rows(logits, temp, top_k, top_p, torch.full((4,), float(u)))
        assert out[0] == logits[0].argmax() and out[1] == logits[1].argmax() and out[2] == logits[2].argmax()
        allowed = torch.isfinite(process_logits(logits[3:], 0.8, 5, 0.9))[0]
        assert allowed[out[3]]


def test_truncated_sampling_from_candidates_equals_the_full_sort(monkeypatch):
    """Top-k/top-p rows sample from the largest CANDIDATES logits; every token must be the one the
    full-vocabulary sort picks, including rows the fast path must hand back (k above the candidates,
    flat distributions whose candidates hold less than top_p)."""
    from chatfactory.engine import row_sampling

    monkeypatch.setattr(row_sampling, "CANDIDATES", 64)
    g = torch.Generator().manual_seed(0)
    V, B = 3000, 10
    top_k = torch.tensor([0, 0, 50, 100, 0, 10, 0, 64, 65, 0])
    top_p = torch.tensor([0.9, 0.99, 1.0, 0.9, 0.5, 0.8, 0.999, 1.0, 0.95, 1e-6])
    temp = torch.full((B,), 0.7)
    fell_back = 0
    for trial in range(60):
        logits = torch.randn(B, V, generator=g) * (0.3, 1.0, 3.0, 8.0)[trial % 4]
        u = torch.rand(B, generator=g)
        got = sample_rows(logits, temp, top_k, top_p, u)
        scaled = logits / 0.7
        k = torch.where(top_k > 0, top_k, V)
        want = row_sampling._truncated_full_sort(scaled, k, top_p, u)
        assert torch.equal(got, want), trial
        fell_back += row_sampling._truncated_from_candidates(scaled, k, top_p, u)[1].numel()
    assert fell_back > 0  # the hand-back path was exercised too


def test_merged_cache_has_no_uninitialised_values_before_its_position(monkeypatch):
    """merge allocates without zeroing: every column before `pos` must be copied or zeroed (a NaN
    under the attention mask still poisons the output: 0 * NaN = NaN)."""
    from chatfactory.engine import batch_cache
    from chatfactory.model import GPT, ModelConfig

    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *shape, **kw: real_empty(*shape, **kw).fill_(float("nan")))
    model = GPT(ModelConfig(family="llama", vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, d_model=32, max_seq_len=64))
    a = model.new_kv_cache(2, 10)
    a.k.normal_(), a.v.normal_()
    a.pos, a.valid[:, :6] = 6, True
    b = model.new_kv_cache(1, 12)
    b.k.normal_(), b.v.normal_()
    b.pos, b.valid[:, :9] = 9, True
    for first, second in ((a, b), (None, b), (b, a)):
        out = batch_cache.merge(model, first, second, room=5)
        assert out.pos == 9 and out.max_len == 14 + min(5, batch_cache.SLACK)
        assert torch.isfinite(out.k[:, :, :, : out.pos]).all() and torch.isfinite(out.v[:, :, :, : out.pos]).all()
        assert int(out.valid.sum()) == sum(int(c.valid.sum()) for c in (first, second) if c is not None)


def test_merge_into_spare_rows_copies_only_the_newcomers_and_equals_a_fresh_merge():
    """A join after a leave reuses the freed row in place: the running rows are not copied, and
    the cache is the one a merge into a new cache gives."""
    from chatfactory.engine import batch_cache
    from chatfactory.model import GPT, ModelConfig

    model = GPT(ModelConfig(family="llama", vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, d_model=32, max_seq_len=64))

    def filled(rows, n, valid_from):
        c = model.new_kv_cache(rows, n + 4)
        c.k.normal_(), c.v.normal_()
        c.pos = n
        c.valid[:, valid_from:n] = True
        return c

    running = batch_cache.merge(model, None, filled(3, 8, 0), room=6, rows=4)
    assert running.batch_size == 3 and running.spare_rows == 1
    # spare rows double a cache at most: one long request does not reserve a whole batch
    assert batch_cache.merge(model, None, filled(1, 8, 0), room=6, rows=16).spare_rows == 1
    batch_cache.compact_rows(running, [0, 2])  # a row leaves: two spare rows now
    kept_k = running.k[:, :, :, :8].clone()
    newcomer = filled(2, 5, 1)
    ptr = running.k.data_ptr()
    fresh = batch_cache.merge(model, _copy(model, running), newcomer, room=6)
    joined = batch_cache.merge(model, running, newcomer, room=6, rows=4)
    assert joined is running and joined.k.data_ptr() == ptr  # in place
    assert joined.batch_size == 4 and joined.spare_rows == 0 and joined.pos == fresh.pos == 8
    assert torch.equal(joined.k[:, :2, :, :8], kept_k)
    for name in ("k", "v"):
        assert torch.equal(getattr(joined, name)[:, :, :, :8], getattr(fresh, name)[:, :, :, :8])
    assert torch.equal(joined.valid[:, :8], fresh.valid[:, :8])
    # no spare row left, or a newcomer longer than the batch's span: a new cache
    assert batch_cache.merge(model, joined, filled(1, 5, 0), room=6, rows=4) is not joined
    assert batch_cache.merge(model, fresh, filled(1, 9, 0), room=6, rows=8) is not fresh


def _copy(model, cache):
    out = model.new_kv_cache(cache.batch_size, cache.max_len)
    out.k.copy_(cache.k), out.v.copy_(cache.v), out.valid.copy_(cache.valid)
    out.pos = cache.pos
    return out


def test_compact_rows_moves_only_the_rows_it_must_and_keeps_every_kept_row_intact():
    from chatfactory.engine import batch_cache
    from chatfactory.model import GPT, ModelConfig

    model = GPT(ModelConfig(family="llama", vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, d_model=32, max_seq_len=64))
    for keep in ([0, 2, 5], [3, 4, 5], [1], [0, 1, 2, 3, 4, 5], [0, 5]):
        cache = model.new_kv_cache(6, 20)
        cache.k.normal_(), cache.v.normal_()
        cache.pos = 12
        for r in range(6):  # row r starts at column 2 * r: leading columns only later rows leave unused
            cache.valid[r, 2 * r : 12] = True
        before = (cache.k.clone(), cache.v.clone(), cache.valid.clone())
        order = batch_cache.compact_rows(cache, keep)
        assert sorted(order) == keep and [i for i in order if i < len(keep)] == [i for i in range(len(keep)) if i in keep]
        first = 2 * min(keep)
        assert cache.pos == 12 - first and cache.max_len == 20 - first and cache.batch_size == len(keep)
        for j, i in enumerate(order):
            assert torch.equal(cache.k[:, j], before[0][:, i, :, first:])
            assert torch.equal(cache.v[:, j], before[1][:, i, :, first:])
            assert torch.equal(cache.valid[j], before[2][i, first:])


def test_hugging_face_folders_serve_the_same_tokens(loaded, tmp_path):
    from chatfactory.loader import load
    from chatfactory.model.hf import export_hf_folder

    hf = load(export_hf_folder(loaded.model, loaded.tokenizer, tmp_path / "hf"))
    assert hf.source == "hf"
    ps = prompts(loaded)[:3]
    ours, theirs = Engine(loaded), Engine(hf)
    a = [ours.submit(p, GREEDY) for p in ps]
    b = [theirs.submit(p, GREEDY) for p in ps]
    assert [r.result() for r in a] == [r.result() for r in b]
    assert [r.output_ids for r in a] == [r.output_ids for r in b]


def test_generate_command_streams_the_engines_text(loaded, capsys):
    from chatfactory.cli import main

    p = loaded.tokenizer.encode("To be, or not")
    ref = loaded.tokenizer.decode(
        [t for t in alone(loaded, p) if t != loaded.tokenizer.eos_id], skip_special=True
    )
    argv = [
        "generate",
        "--model",
        loaded.name,
        "--prompt",
        "To be, or not",
        "--max-tokens",
        "24",
        "--temperature",
        "0",
    ]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out == ref + "\n" and "finish_reason=" in err
    assert main([*argv[:-2], "--temperature", "0", "--chat", "--system", "be brief"]) == 0
    assert main(["generate", "--model", loaded.name, "--prompt", "x" * 500, "--max-tokens", "50"]) == 1
    assert "context window" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_batched_greedy_equals_alone():
    from chatfactory.model import pretrained
    from chatfactory.tokenizer.chat_template import render

    if not pretrained.is_verified("smollm2-135m-instruct"):
        pytest.skip("smollm2-135m-instruct is not downloaded (chatfactory models pull smollm2-135m-instruct)")
    from chatfactory.loader import load

    lm = load("smollm2-135m-instruct")
    questions = ["What is the capital of France?", "Name three colors.", "Explain gravity briefly."]
    ps = [render([{"role": "user", "content": q}], lm.tokenizer, True)[0] for q in questions]
    params = SamplingParams(max_new_tokens=24, temperature=0)
    engine = Engine(lm)
    reqs = [engine.submit(p, params) for p in ps]
    texts = [r.result() for r in reqs]
    for p, r in zip(ps, reqs):
        assert r.output_ids == alone(lm, p, params)
    assert "Paris" in texts[0]


def test_prefix_cache_keeps_to_its_memory_budget(monkeypatch):
    from chatfactory.engine.prefix_cache import PrefixCache

    def kv(n):  # (n_layer, n_kv_head, T, head_dim) float32: 2 * 4 * n * 4 bytes
        return torch.zeros(1, 1, n, 4), torch.zeros(1, 1, n, 4)

    per_token = 2 * 4 * 4
    cache = PrefixCache(max_bytes=100 * per_token)
    a, b, c = list(range(40)), list(range(100, 140)), list(range(200, 240))
    cache.add(a, *kv(40))
    cache.add(b, *kv(40))
    assert cache.lookup(a + [7])[0] == 40  # a is now the most recently used
    cache.add(c, *kv(40))  # over budget: b, the least recently used, goes
    assert cache.lookup(b + [7])[0] == 0 and cache.lookup(c + [7])[0] == 40
    assert cache.bytes == 80 * per_token and cache.tokens == 80
    cache.add(a + [1, 2], *kv(42))  # a longer prompt replaces its own prefix
    assert len(cache) == 2 and cache.tokens == 82
    cache.add(list(range(500, 700)), *kv(200))  # larger than the whole budget: not kept
    assert len(cache) == 2
    monkeypatch.setenv("CHATFACTORY_PREFIX_CACHE_MB", "0")
    assert PrefixCache.from_env() is None
    monkeypatch.setenv("CHATFACTORY_PREFIX_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="CHATFACTORY_PREFIX_CACHE_MB"):
        PrefixCache.from_env()
