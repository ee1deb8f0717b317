"""The transformer: shapes, causality, masks, KV cache, accounting, checkpoint folder."""

import pytest
import torch

from engine.training.model import GPT, ModelConfig
from engine.training.model.checkpoint import load_model_folder, save_model

FAMILIES = {
    "gpt2": {"family": "gpt2"},
    "llama": {"family": "llama"},
    "llama-gqa-untied": {"family": "llama", "n_kv_head": 2, "tie_embeddings": False},
}


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, n_layer=2, n_head=4, d_model=32, max_seq_len=48, **kw)
    return GPT(cfg).eval()


@pytest.mark.parametrize("name", FAMILIES)
def test_shapes_and_loss(name):
    m = tiny(**FAMILIES[name])
    x = torch.randint(0, 97, (3, 17))
    assert m(x).shape == (3, 17, 97)
    y = torch.randint(0, 97, (3, 17))
    loss = m(x, targets=y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    # an untrained model is close to uniform: loss near ln(V)
    assert abs(loss.item() - torch.log(torch.tensor(97.0)).item()) < 0.5
    per_tok = m(x, targets=y, reduction="none")
    assert per_tok.shape == (3, 17)
    assert torch.allclose(per_tok.mean(), loss, atol=1e-6)


@pytest.mark.parametrize("name", FAMILIES)
def test_causality(name):
    """Changing a later token never changes earlier logits."""
    m = tiny(**FAMILIES[name])
    x = torch.randint(0, 97, (1, 20))
    y = x.clone()
    y[0, 12:] = (y[0, 12:] + 1) % 97
    a, b = m(x), m(y)
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:], atol=1e-4)


@pytest.mark.parametrize("name", FAMILIES)
def test_kv_cache_equals_full_forward(name):
    m = tiny(**FAMILIES[name])
    x = torch.randint(0, 97, (2, 30))
    full = m(x)
    cache = m.new_kv_cache(2)
    parts = [m(x[:, :11], kv_cache=cache)]
    parts += [m(x[:, t : t + 1], kv_cache=cache) for t in range(11, 25)]
    parts.append(m(x[:, 25:], kv_cache=cache))  # a multi-token chunk after the cache too
    assert torch.allclose(full, torch.cat(parts, 1), atol=1e-5)
    assert cache.pos == 30


def test_left_padding_with_cache_matches_unpadded():
    m = tiny(family="llama")
    seq = torch.randint(0, 97, (1, 9))
    alone = m(seq)[0, -1]
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), seq], 1)
    mask = torch.tensor([[0] * 4 + [1] * 9])
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    cache = m.new_kv_cache(1)
    out = m(padded, attention_mask=mask, position_ids=pos, kv_cache=cache)[0, -1]
    assert torch.allclose(alone, out, atol=1e-5)


def test_packed_documents_do_not_attend_across():
    m = tiny(family="gpt2")
    a, b = torch.randint(0, 97, (1, 7)), torch.randint(0, 97, (1, 5))
    packed = torch.cat([a, b], 1)
    doc_ids = torch.tensor([[0] * 7 + [1] * 5])
    out = m(packed, doc_ids=doc_ids)
    assert torch.allclose(out[:, :7], m(a), atol=1e-5)
    assert torch.allclose(out[:, 7:], m(b), atol=1e-5)  # positions restart per document


def test_param_and_flops_counts():
    m = tiny(family="gpt2")
    c = m.config
    per_layer = 4 * (c.d_model * c.d_model + c.d_model) + 2 * c.d_model * c.d_ff + c.d_ff + c.d_model + 4 * c.d_model
    expected = c.vocab_size * c.d_model + c.max_seq_len * c.d_model + c.n_layer * per_layer + 2 * c.d_model
    assert m.num_params() == expected
    assert m.num_params(non_embedding=True) == expected - c.vocab_size * c.d_model - c.max_seq_len * c.d_model
    assert m.flops_per_token(48) > 6 * m.num_params(non_embedding=True)


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="family"):
        ModelConfig(family="mamba")
    with pytest.raises(ValueError, match="n_kv_head"):
        ModelConfig(n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="unknown model config field"):
        ModelConfig.from_dict({"n_layers": 3})


def test_position_beyond_context_is_an_error():
    m = tiny(family="gpt2")
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.zeros(1, 49, dtype=torch.long))


def test_native_folder_round_trip_and_errors(tmp_path):
    m = tiny(family="llama", n_kv_head=2)
    save_model(tmp_path / "ck", m, meta={"stage": "test"})
    m2 = load_model_folder(tmp_path / "ck")
    x = torch.randint(0, 97, (1, 10))
    assert torch.equal(m(x), m2(x))
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        load_model_folder(tmp_path / "missing")
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="model.safetensors: corrupt"):
        load_model_folder(tmp_path / "ck")


def test_wrong_vocab_size_is_named(tmp_path):
    save_model(tmp_path / "ck", tiny(family="gpt2"))
    cfg = (tmp_path / "ck" / "model_config.json").read_text().replace('"vocab_size": 97', '"vocab_size": 90')
    (tmp_path / "ck" / "model_config.json").write_text(cfg)
    with pytest.raises(ValueError, match="embed.weight.*wrong vocab size"):
        load_model_folder(tmp_path / "ck")
