"""GGUF export: our tiny models written with export_gguf and run by llama.cpp (llama-cpp-python).

Parity is checked against our float32 PyTorch model: llama.cpp's greedy tokens equal ours and
its logits at every evaluated position (prompt + 32 generated) agree within 1e-2. The parity
model's weights are rounded to f16-representable values first, so the F16 file holds them
exactly and what remains is llama.cpp's own arithmetic (f16 activations in its matmuls, an f16
KV cache: ~0.1 % relative). init_std=0.1 keeps logits at a few units, so that error stays well
under 1e-2 (measured ~0.004); a greedy step whose top-2 logits are closer than the tolerance is a
genuine tie and is the only divergence accepted.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from engine.models.gguf_info import read_gguf_info
from engine.training.model import GPT, ModelConfig
from engine.training.model.gguf_export import export_gguf, quantize_gguf
from engine.training.model.gguf_import import load_gguf
from engine.training.tokenizer import Tokenizer
from engine.training.tokenizer.chat_template import JINJA_CHAT_TEMPLATE
from tests.tiny_chat_model import TEXT

llama_cpp = pytest.importorskip("llama_cpp")

N_NEW = 32
TOL = 1e-2
PROMPTS = [
    "To be, or not to be",
    "<|im_start|>user\nHello there, how are you?<|im_end|>\n<|im_start|>assistant\n",
    "Explain how a classification algorithm works",
    "Café, naïve 😀",
    "The slings and arrows",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(TEXT, vocab_size=320)


def tiny(
    tok: Tokenizer, family: str = "llama", tie: bool = False, seed: int = 0, f16_exact: bool = True
) -> GPT:
    torch.manual_seed(seed)
    kw = {"n_kv_head": 2, "rope_theta": 5000.0, "norm_eps": 1e-6} if family == "llama" else {}
    cfg = ModelConfig(
        family=family, vocab_size=tok.vocab_size, n_layer=2, n_head=4, d_model=64, max_seq_len=128,
        init_std=0.1, tie_embeddings=tie, **kw,
    )  # fmt: skip
    model = GPT(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
            if f16_exact and p.dim() == 2:
                p.copy_(p.half().float())
    return model


def load_llama(path) -> llama_cpp.Llama:
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=2, seed=0
    )


def llama_cpp_greedy(llm, ids: list[int], n: int = N_NEW) -> tuple[list[int], np.ndarray]:
    """Greedy continuation by llama.cpp, and its logits at every evaluated position."""
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return out, np.array(llm.scores[: llm.n_tokens], dtype=np.float32)


@torch.no_grad()
def torch_greedy(model: GPT, ids: list[int], n: int = N_NEW) -> list[int]:
    seq = list(ids)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(ids) :]


@torch.no_grad()
def torch_logits(model: GPT, ids: list[int]) -> np.ndarray:
    return model(torch.tensor([ids]))[0].float().numpy()


def prompt_ids(tok: Tokenizer) -> list[list[int]]:
    return [tok.encode(p, allow_special=True) for p in PROMPTS]


@pytest.fixture(scope="module")
def exported(tok, tmp_path_factory):
    model = tiny(tok)
    path = export_gguf(model, tok, tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf")
    return model, path


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_llama_cpp_parity_f16(family, tok, exported, tmp_path):
    if family == "llama":
        model, path = exported
    else:
        model = tiny(tok, family="gpt2", tie=True)
        path = export_gguf(model, tok, tmp_path / "gpt2.gguf")
    llm = load_llama(path)
    worst, same, ties = 0.0, 0, 0
    for ids in prompt_ids(tok):
        theirs, scores = llama_cpp_greedy(llm, ids)
        ours = torch_greedy(model, ids)
        # logits at every position llama.cpp evaluated (prompt + its own greedy tokens)
        logits = torch_logits(model, ids + theirs)
        worst = max(worst, float(np.abs(scores - logits).max()))
        i = next((k for k, (a, b) in enumerate(zip(theirs, ours)) if a != b), N_NEW)
        same += i
        if i < N_NEW:  # allowed only at a true tie: our top two logits within the tolerance
            top2 = np.sort(logits[len(ids) + i - 1])[-2:]
            assert top2[1] - top2[0] < TOL, f"greedy paths differ at step {i}: {theirs} vs {ours}"
            ties += 1
    print(
        f"{family} F16: max |logit diff| {worst:.4g}, identical greedy tokens {same}/{N_NEW * len(PROMPTS)}"
        f" ({ties} prompt(s) ending at a tie)"
    )
    assert worst < TOL
    assert ties <= 1


def test_llama_cpp_tokenizer_matches(tok, exported):
    llm = load_llama(exported[1])
    for text in PROMPTS + ["numbers 12345, tabs\t and  spaces\n\n", "<|im_end|> typed by a user"]:
        ids = tok.encode(text, allow_special=True)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text
        assert llm.detokenize(ids, special=True).decode() == text
    assert llm.token_eos() == tok.eos_id


def test_import_round_trip(tok, exported):
    model, path = exported
    back, tok2 = load_gguf(path)
    assert back.config.n_kv_head == 2 and back.config.rope_theta == 5000.0 and not back.config.tie_embeddings
    assert back.config.d_ff == model.config.d_ff and back.config.max_seq_len == 128
    assert back.config.norm_eps == pytest.approx(1e-6)
    # weights are the f16-rounded originals, in our row order (q/k un-permuted)
    for (name, a), b in zip(back.state_dict().items(), model.state_dict().values()):
        ref = b if b.dim() == 1 else b.half().float()
        assert torch.equal(a, ref), name
    for ids in prompt_ids(tok):
        assert np.abs(torch_logits(back.eval(), ids) - torch_logits(model, ids)).max() < 1e-2
    # a model whose weights are not f16-exact: the rounding costs little
    raw = tiny(tok, seed=2, f16_exact=False)
    back_raw, _ = load_gguf(export_gguf(raw, tok, path.with_name("raw.gguf")))
    for ids in prompt_ids(tok):
        assert np.abs(torch_logits(back_raw.eval(), ids) - torch_logits(raw, ids)).max() < 1e-2
    text = "<|im_start|>user\nCafé 😀 42<|im_end|>\n"
    assert tok2.encode(text, allow_special=True) == tok.encode(text, allow_special=True)
    assert (tok2.eos_token, tok2.pad_token, tok2.bos_token) == (tok.eos_token, tok.pad_token, None)


def test_tied_embeddings_round_trip(tok, tmp_path):
    model = tiny(tok, tie=True, seed=1)
    path = export_gguf(model, tok, tmp_path / "tied.gguf", dtype="f32")
    back, _ = load_gguf(path)
    assert back.config.tie_embeddings
    ids = prompt_ids(tok)[0]
    assert np.abs(torch_logits(back.eval(), ids) - torch_logits(model, ids)).max() < 1e-5


@pytest.mark.parametrize("qtype,min_agree", [("Q8_0", 0.85), ("Q4_K_M", 0.6)])
def test_quantize_and_load(qtype, min_agree, tok, exported, tmp_path):
    model, path = exported
    dst = quantize_gguf(path, tmp_path / f"tiny-{qtype}.gguf", qtype)
    assert dst.stat().st_size < path.stat().st_size
    assert read_gguf_info(dst).quantization == qtype
    assert [p.name for p in tmp_path.iterdir()] == [dst.name]  # no temp file left behind
    llm = load_llama(dst)
    prefix = agree = total = 0
    worst = 0.0
    for ids in prompt_ids(tok):
        theirs, scores = llama_cpp_greedy(llm, ids)
        ours = torch_greedy(model, ids)
        prefix += next((k for k, (a, b) in enumerate(zip(theirs, ours)) if a != b), N_NEW)
        # teacher-forced: next-token argmax of both on the same (llama.cpp's) sequence
        logits = torch_logits(model, ids + theirs)
        n = len(ids) - 1
        agree += int((scores[n:-1].argmax(-1) == logits[n:-1].argmax(-1)).sum())
        total += N_NEW
        worst = max(worst, float(np.abs(scores - logits).max()))
    print(
        f"{qtype}: greedy steps agreeing {agree}/{total} (teacher-forced), identical greedy prefix "
        f"{prefix}/{total}, max |logit diff| {worst:.3g}"
    )
    assert agree / total >= min_agree


def test_quantize_failure_names_files(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF not really")
    with pytest.raises(RuntimeError, match="bad.gguf.*out.gguf"):
        quantize_gguf(bad, tmp_path / "out.gguf", "Q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]
    with pytest.raises(ValueError, match="qtype"):
        quantize_gguf(bad, tmp_path / "out.gguf", "Q3_K")


def test_gguf_info_reads_export(tok, exported, tmp_path):
    model, path = exported
    info = read_gguf_info(path)
    assert info.architecture == "llama" and info.quantization == "F16"
    assert info.chat_template == JINJA_CHAT_TEMPLATE
    assert info.context_length == 128
    assert info.parameters == model.num_params()
    assert info.arch_value("attention.head_count_kv") == 2
    assert info.array_lengths["tokenizer.ggml.tokens"] == tok.vocab_size
    custom = "{{ messages[0]['content'] }}"
    p2 = export_gguf(model, tok, tmp_path / "custom.gguf", chat_template=custom)
    assert read_gguf_info(p2).chat_template == custom
    assert load_llama(p2).metadata["tokenizer.chat_template"] == custom


def test_a_vocabulary_padded_by_pre_training_is_cut_to_the_tokenizer(tok, tmp_path):
    """Pre-training rounds vocab_size up to a multiple of 64; llama.cpp wants one row per token:
    the export leaves the padding rows out, and the logits of real tokens are unchanged."""
    import numpy as np

    from engine.training.model.gguf_import import load_gguf

    model = tiny(tok)
    padded = GPT(ModelConfig(**{**model.config.__dict__, "vocab_size": tok.vocab_size + 20}))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for k in ("embed.weight", "lm_head.weight"):
        sd[k] = torch.cat([sd[k], torch.randn(20, sd[k].shape[1])])
    padded.load_state_dict(sd)
    path = export_gguf(padded, tok, tmp_path / "padded.gguf", dtype="f32")
    assert read_gguf_info(path).array_lengths["tokenizer.ggml.tokens"] == tok.vocab_size
    back, _ = load_gguf(path)
    assert back.config.vocab_size == tok.vocab_size
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        np.testing.assert_allclose(back(ids).numpy(), padded(ids)[..., : tok.vocab_size].numpy(), atol=1e-5)


def test_export_is_atomic(tok, tmp_path, monkeypatch):
    model = tiny(tok)
    target = tmp_path / "model.gguf"
    target.write_bytes(b"previous model")
    small = Tokenizer.train(TEXT, vocab_size=300)  # more tokens than the model has rows: refused before writing
    with pytest.raises(ValueError, match="vocab"):
        export_gguf(tiny(small), tok, target)
    assert target.read_bytes() == b"previous model"

    import gguf

    def half_written(self, *args, **kw):  # the header is on disk, then the process "dies"
        self.write_header_to_file() if self.state is gguf.gguf_writer.WriterState.EMPTY else None
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", half_written)
    with pytest.raises(KeyboardInterrupt):
        export_gguf(model, tok, target)
    monkeypatch.undo()
    assert target.read_bytes() == b"previous model"
    assert os.listdir(tmp_path) == ["model.gguf"]
    export_gguf(model, tok, target)
    assert read_gguf_info(target).tensor_count > 0


def test_refuses_mixed_layout(tok, tmp_path):
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=32, family="llama", bias=True)
    with pytest.raises(ValueError, match="neither the Llama nor the GPT-2"):
        export_gguf(GPT(cfg), tok, tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())
