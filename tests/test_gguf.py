"""GGUF import: tiny Llama files written here with gguf.GGUFWriter, one per tensor type.

The reference for each file is our own tiny model with every weight replaced by
dequantize(quantize(weight)), computed in our row order; the file gets those bytes with the
q/k rows permuted by llama.cpp's own `permute`. Row permutation commutes with row-wise block
quantization, so the import must give the reference exactly: this checks the dequantization,
the un-permutation and the metadata without trusting any of them.
"""

from __future__ import annotations

import json
from itertools import pairwise

import gguf
import numpy as np
import pytest
import torch

from engine.training.model import GPT
from engine.training.model.config import ModelConfig
from engine.training.model.gguf_import import SUPPORTED_TYPES, load_gguf
from engine.training.tokenizer import Tokenizer
from engine.training.tokenizer.gguf import tokenizer_from_gguf

Q = gguf.GGMLQuantizationType
TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "def add(a, b):\n    return a + b  # 2 + 2 = 4",
    "Ünïcödé, emoji 😀 and 日本語 text; numbers 12345 and 3.14",
    "hello world, how are you? I'm fine -- thanks!",
] * 10


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(TEXTS, vocab_size=300)


def tiny_model(tokenizer: Tokenizer, tie: bool = True, seed: int = 0) -> GPT:
    # widths are multiples of 256 so that every row splits into whole K-quant blocks
    cfg = ModelConfig(
        family="llama", vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, n_kv_head=2, d_model=256,
        d_ff=512, max_seq_len=128, rope_theta=5000.0, norm_eps=1e-6, tie_embeddings=tie,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (HF rotate-half rows -> interleaved)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# K-quant block layouts (gguf/quants.py): bytes per 256 values, and where its f16 scales sit
K_BLOCKS = {
    Q.Q2_K: (84, {80: 1e-3, 82: 5e-4}),  # 16 scale bytes | 64 of 2-bit q | d | dmin
    Q.Q3_K: (110, {108: 2e-4}),  # 32 hmask | 64 of 2-bit q | 12 scales | d
    Q.Q4_K: (144, {0: 2e-4, 2: 1e-4}),  # d | dmin | 12 scales | 128 of nibbles
    Q.Q5_K: (176, {0: 1e-4, 2: 1e-4}),  # d | dmin | 12 scales | 32 high bits | 128 of nibbles
    Q.Q6_K: (210, {208: 2e-5}),  # 128 low nibbles | 64 high bits | 16 int8 scales | d
}


def random_k_blocks(qtype, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Valid K-quant bytes (gguf cannot quantize to these): random payload, small finite scales."""
    size, scales = K_BLOCKS[qtype]
    n_blocks = cols // 256
    blocks = rng.integers(0, 256, (rows, n_blocks, size), dtype=np.uint8)
    for offset, value in scales.items():
        blocks[..., offset : offset + 2] = np.full((rows, n_blocks, 1), value, np.float16).view(np.uint8)
    return blocks.reshape(rows, n_blocks * size)


def encode_weight(w: np.ndarray, qtype, rng) -> tuple[np.ndarray, np.ndarray]:
    """(bytes or array for the file, the float32 values it stands for), both in our row order."""
    if w.ndim == 1 or qtype == Q.F32:
        return w, w
    if qtype in K_BLOCKS:
        data = random_k_blocks(qtype, *w.shape, rng)
    elif qtype == Q.IQ4_NL:  # f16 scale + 16 bytes of nibbles per 32 values; gguf cannot quantize to it
        data = rng.integers(0, 256, (w.shape[0], w.shape[1] // 32, 18), dtype=np.uint8)
        data[..., 0:2] = np.full((*data.shape[:2], 1), 1e-3, np.float16).view(np.uint8)
        data = data.reshape(w.shape[0], -1)
    else:
        data = gguf.quants.quantize(w, qtype)
    return data, gguf.quants.dequantize(data, qtype).astype(np.float32)


GGUF_NAMES = {"norm1": "attn_norm", "norm2": "ffn_norm", "attn.q": "attn_q", "attn.k": "attn_k", "attn.v": "attn_v",
              "attn.o": "attn_output", "mlp.gate": "ffn_gate", "mlp.up": "ffn_up", "mlp.down": "ffn_down"}  # fmt: skip


def write_gguf(
    path, model: GPT, tokenizer: Tokenizer, qtype=Q.F32, *, tokens=None, arch="llama", meta_vocab=None
):
    """Write `model` as a llama.cpp-style GGUF; returns the reference model (dequantized weights)."""
    c = model.config
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(c.max_seq_len)
    w.add_embedding_length(c.d_model)
    w.add_block_count(c.n_layer)
    w.add_feed_forward_length(c.d_ff)
    w.add_head_count(c.n_head)
    w.add_head_count_kv(c.n_kv_head)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.norm_eps)
    w.add_vocab_size(meta_vocab or c.vocab_size)
    w.add_rope_dimension_count(c.head_dim)
    # the tokenizer, as llama.cpp's converter writes a byte-level BPE one
    hf = json.loads(tokenizer.hf.to_str())
    tokens = tokens or [tokenizer.hf.id_to_token(i) for i in range(tokenizer.vocab_size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in hf["model"]["merges"]]
    specials = set(tokenizer.special_tokens)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")  # Digits + ByteLevel: what Tokenizer.train builds, as SmolLM2's
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types([3 if t in specials else 1 for t in tokens])
    w.add_bos_token_id(tokenizer.token_id("<|im_start|>"))
    w.add_eos_token_id(tokenizer.token_id("<|im_end|>"))
    w.add_pad_token_id(tokenizer.pad_id)
    ref_sd = {}
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    if c.tie_embeddings:
        sd.pop("lm_head.weight")
    for name, value in sd.items():
        data, ref_sd[name] = encode_weight(value, qtype, rng)
        parts = name.split(".")
        if parts[0] == "layers":
            sub = ".".join(parts[2:-1])
            gname = f"blk.{parts[1]}.{GGUF_NAMES[sub]}.weight"
            if sub == "attn.q":
                data = llama_cpp_permute(data, c.n_head)
            elif sub == "attn.k":
                data = llama_cpp_permute(data, c.n_kv_head)
        else:
            gname = {"embed.weight": "token_embd.weight", "norm_f.weight": "output_norm.weight",
                     "lm_head.weight": "output.weight"}[name]  # fmt: skip
        raw = qtype if (value.ndim == 2 and qtype not in (Q.F32, Q.F16)) else None
        if qtype == Q.F16 and value.ndim == 2:
            data = data.astype(np.float16)
        w.add_tensor(gname, np.ascontiguousarray(data), raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ref = GPT(c).eval()
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ref_sd.items()}, strict=False)
    return ref


def prompt(tokenizer: Tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer.encode("def add(a, b): the quick fox 😀 42")])


@pytest.mark.parametrize("qtype", SUPPORTED_TYPES)
def test_import_equals_dequantized_reference(qtype, tokenizer, tmp_path):
    model = tiny_model(tokenizer, tie=qtype != "Q8_0")  # one untied case
    path = tmp_path / f"tiny-{qtype}.gguf"
    ref = write_gguf(path, model, tokenizer, Q[qtype])
    ours, tok = load_gguf(path)
    assert ours.config.n_kv_head == 2 and ours.config.rope_theta == 5000.0
    assert ours.config.norm_eps == pytest.approx(1e-6)  # stored as float32
    assert ours.config.tie_embeddings == model.config.tie_embeddings
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name
    x = prompt(tok)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), ref(x))
        if qtype in ("F32", "F16", "BF16", "Q8_0"):  # near-lossless types stay close to the original
            assert (ours(x) - model(x)).abs().max().item() < 0.05


@pytest.mark.parametrize("qtype", ["F32", "Q4_K"])
def test_import_matches_transformers_gguf_loader(qtype, tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers needs it to read GGUF
    path = tmp_path / "tiny.gguf"
    write_gguf(path, tiny_model(tokenizer, tie=qtype == "F32"), tokenizer, Q[qtype])
    ours, tok = load_gguf(path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, dtype=torch.float32
    )
    x = prompt(tok)
    with torch.no_grad():
        assert (ours.eval()(x) - theirs.eval()(x).logits).abs().max().item() <= 1e-4


def varied_strings(n: int = 300) -> list[str]:
    rng = np.random.default_rng(0)
    alphabet = list("abcXYZ 0123456789\n\t.,;:'\"!?()[]{}<>_-+=*/\\|@#$%^&~`") + [
        "é", "ß", "中", "文", "😀", "👍🏽", "\u200b", "  ", "   ", "\r\n", "ﬁ", "Ⅳ", "١٢٣", "I'm", " don't", "<|im_end|>",
    ]  # fmt: skip
    fixed = ["", " ", "  leading", "trailing  ", "hello world", "x = 1_000_000.5e-3", "\n\n\n", "tabs\t\tand\tmore",
             "def f(x):\n    return x ** 2\n", "emoji 😀👍🏽🇫🇷 family 👨‍👩‍👧", "日本語のテキスト", "Ünïcödé ñ",
             "CAPS and MiXeD", "a" * 50, "1234567890" * 3, "you'll we've they're IT'S"]  # fmt: skip
    return fixed + ["".join(rng.choice(alphabet, size=rng.integers(1, 40))) for _ in range(n - len(fixed))]


def test_tokenizer_from_gguf_encodes_like_the_original_and_transformers(tokenizer, tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(path, tiny_model(tokenizer), tokenizer)
    ours = tokenizer_from_gguf(path)
    assert ours.vocab_size == tokenizer.vocab_size
    assert (ours.bos_token, ours.eos_token, ours.pad_token) == (
        "<|im_start|>",
        "<|im_end|>",
        tokenizer.pad_token,
    )
    strings = varied_strings()
    for s in strings:
        ids = ours.encode(s)
        assert ids == tokenizer.encode(s), s
        assert ours.decode(ids) == s
        assert ours.encode(s, allow_special=True) == tokenizer.encode(s, allow_special=True), s
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    # transformers does not know llama.cpp's "smollm" pre-tokenizer (digits split off first) and
    # falls back to GPT-2's: the two differ only where whitespace directly precedes a digit.
    compared = [s for s in strings if not any(a.isspace() and b.isnumeric() for a, b in pairwise(s))]
    assert len(compared) > 150
    for s in compared:
        assert ours.encode(s, allow_special=True) == theirs.encode(s, add_special_tokens=False), s


def test_unsupported_tensor_type_names_tensor_and_type(tokenizer, tmp_path):
    path = tmp_path / "iq4.gguf"
    write_gguf(path, tiny_model(tokenizer), tokenizer, Q.IQ4_NL)
    with pytest.raises(
        ValueError, match=r"iq4\.gguf: tensor 'token_embd\.weight' has type IQ4_NL, which is not supp"
    ):
        load_gguf(path)


def test_missing_and_corrupt_files_are_named(tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.gguf"):
        load_gguf(tmp_path / "nope.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(ValueError, match=r"bad\.gguf: not a readable GGUF file"):
        load_gguf(bad)
    good = tmp_path / "good.gguf"
    write_gguf(good, tiny_model(tokenizer), tokenizer)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:5000])  # truncated mid-metadata
    with pytest.raises(ValueError, match=r"cut\.gguf: not a readable GGUF file"):
        load_gguf(cut)


def test_wrong_vocab_size_is_a_clear_error(tokenizer, tmp_path):
    model = tiny_model(tokenizer)
    path = tmp_path / "v.gguf"
    extra = [tokenizer.hf.id_to_token(i) for i in range(tokenizer.vocab_size)] + ["Ġextra1", "Ġextra2"]
    write_gguf(path, model, tokenizer, tokens=extra)
    with pytest.raises(ValueError, match=r"tokenizer has 302 tokens but token_embd\.weight has 300 rows"):
        load_gguf(path)
    write_gguf(path, model, tokenizer, meta_vocab=512)
    with pytest.raises(ValueError, match=r"llama\.vocab_size=512 but token_embd\.weight has 300 rows"):
        load_gguf(path)


def test_other_architectures_are_refused(tokenizer, tmp_path):
    path = tmp_path / "qwen.gguf"
    write_gguf(path, tiny_model(tokenizer), tokenizer, arch="qwen2")
    with pytest.raises(ValueError, match=r"qwen\.gguf: architecture 'qwen2' is not supported"):
        load_gguf(path)
