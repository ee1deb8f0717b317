"""A tokenizer rebuilt from a GGUF file's metadata (llama.cpp's `tokenizer.ggml.*` keys).

A GGUF carries no tokenizer.json: only the vocabulary (`tokens`, in id order), the BPE `merges`,
each token's `token_type` (1 normal, 3 control, 4 user-defined, ...), the special-token ids and the
name of the pre-tokenizer (`pre`) whose split regex llama.cpp hard-codes per model family. We
rebuild the same byte-level BPE with Hugging Face `tokenizers`, as `transformers` does when it
loads a GGUF (integrations/gguf/gguf_tokenizer_mapping.py), so both encode identically.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from .bpe import Tokenizer

# llama.cpp token types (llama_token_type in llama.h)
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

# Split regexes of the pre-tokenizers llama.cpp names in `tokenizer.ggml.pre` (llama-vocab.cpp).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _pre_tokenizer(name: str | None):
    """The pre-tokenizer for llama.cpp's `tokenizer.ggml.pre` name, or None if we don't know it."""
    if name in (None, "default", "gpt2", "gpt-2"):
        # GPT-2's own split regex, built into ByteLevel
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if name == "smollm":
        # llama.cpp: "\p{N}" first (every digit alone), then GPT-2's regex; this is exactly the
        # pre-tokenizer of SmolLM2's own tokenizer.json (Digits + ByteLevel).
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    split = {"llama3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT,
             "smaug-bpe": _LLAMA3_SPLIT, "dbrx": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT,
             "deepseek-r1-qwen": _QWEN2_SPLIT}.get(name)  # fmt: skip
    if split is None:
        return None
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _byte_level_spelling() -> dict[int, str]:
    """GPT-2's byte -> printable character table (bytes_to_unicode)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def open_gguf(path: str | Path):
    """A gguf.GGUFReader on `path`, with errors that name the file."""
    import gguf

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, OSError, EOFError) as e:  # what bad bytes raise in the reader
        raise ValueError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


def read_field(reader, key: str, source: str, default=None, required: bool = False):
    """A metadata value from a gguf.GGUFReader: scalars as Python values, arrays as lists."""
    field = reader.get_field(key)
    if field is None:
        if required:
            raise ValueError(f"{source}: GGUF metadata key {key!r} is missing")
        return default
    return field.contents()


def tokenizer_from_gguf(reader_or_path, source: str | None = None) -> Tokenizer:
    """Build our Tokenizer from a GGUF file (path) or an open gguf.GGUFReader.

    Supports byte-level BPE vocabularies (`tokenizer.ggml.model` = "gpt2", which SmolLM2, Llama 3
    and Qwen2 use). Control tokens become special tokens, user-defined ones plain added tokens.
    """
    if isinstance(reader_or_path, (str, Path)):
        reader = open_gguf(reader_or_path)
        source = source or str(reader_or_path)
    else:
        reader = reader_or_path
        source = source or str(getattr(getattr(reader, "data", None), "filename", None) or "GGUF file")
    kind = read_field(reader, "tokenizer.ggml.model", source, required=True)
    if kind != "gpt2":
        raise ValueError(
            f"{source}: tokenizer.ggml.model is {kind!r}; only byte-level BPE vocabularies ('gpt2') are supported"
        )
    tokens: list[str] = read_field(reader, "tokenizer.ggml.tokens", source, required=True)
    merges: list[str] = read_field(reader, "tokenizer.ggml.merges", source, required=True)
    types: list[int] = read_field(reader, "tokenizer.ggml.token_type", source, default=[1] * len(tokens))
    if len(types) != len(tokens):
        raise ValueError(f"{source}: {len(tokens)} tokens but {len(types)} token types")
    pre_name = read_field(reader, "tokenizer.ggml.pre", source)
    pre = _pre_tokenizer(pre_name)
    if pre is None:
        raise ValueError(f"{source}: unknown pre-tokenizer tokenizer.ggml.pre={pre_name!r}")

    # Every byte-level token is spelled in GPT-2's byte alphabet; a few converters store control
    # tokens in plain UTF-8, so respell those (as transformers does) to keep the lookup consistent.
    spelling = _byte_level_spelling()
    alphabet = set(spelling.values())
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if not set(tok) <= alphabet:
            tok = "".join(spelling[b] for b in tok.encode("utf-8"))
        vocab.setdefault(tok, i)
    pairs = []
    for n, m in enumerate(merges):
        parts = m.split(" ")
        if len(parts) != 2:
            raise ValueError(
                f"{source}: tokenizer.ggml.merges[{n}] = {m!r} is not two tokens separated by a space"
            )
        pairs.append((parts[0], parts[1]))
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    hf.pre_tokenizer = pre
    hf.decoder = decoders.ByteLevel()
    control = [
        AddedToken(t, normalized=False, special=True)
        for t, ty in zip(tokens, types)
        if ty == TOKEN_TYPE_CONTROL and set(t) <= alphabet  # see transformers: others are mislabels
    ]
    user = [
        AddedToken(t, normalized=False, special=False)
        for t, ty in zip(tokens, types)
        if ty == TOKEN_TYPE_USER_DEFINED
    ]
    if control:
        hf.add_special_tokens(control)
    if user:
        hf.add_tokens(user)

    def name_of(key: str) -> str | None:
        i = read_field(reader, f"tokenizer.ggml.{key}", source)
        if i is None:
            return None
        if not 0 <= int(i) < len(tokens):
            raise ValueError(f"{source}: tokenizer.ggml.{key}={i} is outside the vocabulary of {len(tokens)}")
        return tokens[int(i)]

    eos = name_of("eos_token_id")
    if eos is None:
        raise ValueError(f"{source}: GGUF metadata key 'tokenizer.ggml.eos_token_id' is missing")
    return Tokenizer(hf, bos=name_of("bos_token_id"), eos=eos, pad=name_of("padding_token_id"))
