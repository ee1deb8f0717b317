"""Byte-level BPE: training on the user's text, loading, and the chat format's special tokens.

A thin wrapper over Hugging Face `tokenizers`; the saved `tokenizer.json` is the ecosystem's
own format, so exported models load in `transformers` unchanged.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

# The chat format's special tokens (ChatML, as SmolLM2 uses it) plus end-of-text and padding.
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, PAD]


class Tokenizer:
    """Text <-> token ids.

    Plain `encode` treats special-token strings in the text as ordinary text, so a user who
    types "<|im_end|>" cannot forge a turn boundary; `encode(..., allow_special=True)` parses them.
    """

    def __init__(self, hf: HFTokenizer, *, bos: str | None = None, eos: str = ENDOFTEXT, pad: str | None = None):
        self.hf = hf
        self.hf.encode_special_tokens = True  # specials in text are text; see allow_special
        self.hf.no_padding()
        self.hf.no_truncation()
        vocab = hf.get_vocab(with_added_tokens=True)
        for name in filter(None, (bos, eos, pad)):
            if name not in vocab:
                raise ValueError(f"tokenizer: special token {name!r} is not in the vocabulary")
        self.bos_token, self.eos_token = bos, eos
        self.pad_token = pad if pad else (PAD if PAD in vocab else eos)
        specials = [t.content for t in hf.get_added_tokens_decoder().values() if t.special]
        self.special_tokens = sorted(specials, key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, self.special_tokens))) if specials else None

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2, show_progress: bool = False
    ) -> Tokenizer:
        """Train a byte-level BPE on an iterator of texts. Digits are split one by one (helps
        arithmetic); the special tokens take the first ids."""
        if vocab_size < 256 + len(SPECIAL_TOKENS):
            raise ValueError(f"tokenizer: vocab_size must be at least {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        seen = [0]

        def counted() -> Iterator[str]:
            for t in texts:
                seen[0] += len(t)
                yield t

        hf.train_from_iterator(counted(), trainer=trainer)
        if seen[0] == 0:
            raise ValueError("tokenizer: cannot train on an empty corpus")
        return cls(hf, eos=ENDOFTEXT, pad=PAD)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """From a tokenizer.json file, or a folder holding one (with tokenizer_config.json, if any,
        naming bos/eos/pad as Hugging Face folders do)."""
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.exists():
            raise FileNotFoundError(f"{file}: no tokenizer file here")
        try:
            hf = HFTokenizer.from_file(str(file))
        except Exception as e:  # noqa: BLE001 (tokenizers raises a bare Exception on malformed JSON)
            raise ValueError(f"{file}: not a valid tokenizer.json ({e})") from None
        names = _names_from_tokenizer_config(folder / "tokenizer_config.json")
        vocab = hf.get_vocab(with_added_tokens=True)
        eos = names.get("eos_token") or (ENDOFTEXT if ENDOFTEXT in vocab else None)
        if eos is None:
            raise ValueError(f"{file}: no end-of-text token (set eos_token in tokenizer_config.json)")
        return cls(hf, bos=names.get("bos_token"), eos=eos, pad=names.get("pad_token"))

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / "tokenizer.json"
        self.hf.save(str(out))
        return out

    # ---- use --------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        i = self.hf.token_to_id(token)
        if i is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return i

    @property
    def eos_id(self) -> int:
        return self.token_id(self.eos_token)

    @property
    def bos_id(self) -> int | None:
        return self.token_id(self.bos_token) if self.bos_token else None

    @property
    def pad_id(self) -> int:
        return self.token_id(self.pad_token)

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        if not allow_special or self._special_re is None:
            return self.hf.encode(text, add_special_tokens=False).ids
        ids: list[int] = []
        pos = 0
        for m in self._special_re.finditer(text):
            if m.start() > pos:
                ids += self.hf.encode(text[pos : m.start()], add_special_tokens=False).ids
            ids.append(self.token_id(m.group()))
            pos = m.end()
        if pos < len(text):
            ids += self.hf.encode(text[pos:], add_special_tokens=False).ids
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    def fingerprint(self) -> str:
        """sha256 of the serialised tokenizer: shards record it so data and model can't mismatch."""
        return hashlib.sha256(self.hf.to_str().encode()).hexdigest()


def _names_from_tokenizer_config(path: Path) -> dict[str, str]:
    import json

    if not path.exists():
        return {}
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    out = {}
    for key in ("bos_token", "eos_token", "pad_token"):
        v = cfg.get(key)
        if isinstance(v, dict):
            v = v.get("content")
        if isinstance(v, str) and v:
            out[key] = v
    return out
