"""The download catalogue (assets/models.yaml), its validation, and the memory-fit estimate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.models import memory
from engine.models.catalogue import CatalogueError, catalogue_path, get, load_catalogue
from engine.models.gguf_info import read_gguf_info
from engine.models.memory import MemoryEstimate, estimate, fit, shape_of, suggest_context, suggest_gpu_layers

EXPECTED = {
    "smollm2-135m-instruct", "smollm2-360m-instruct", "smollm2-1.7b-instruct", "qwen2.5-0.5b-instruct",
    "qwen2.5-1.5b-instruct", "qwen2.5-3b-instruct", "llama-3.2-1b-instruct", "llama-3.2-3b-instruct",
    "phi-3.5-mini-instruct",
}  # fmt: skip
GiB = 2**30


def test_shipped_catalogue_is_valid_and_complete():
    models = load_catalogue()
    assert {m.id for m in models} == EXPECTED
    for m in models:
        assert m.default_quant in m.files and "Q4_K_M" in m.files
        assert all(f.filename.endswith(".gguf") for f in m.files.values())
        assert m.arch.n_head * m.arch.head_dim >= m.arch.n_embd // 2  # sane attention shape
        # a file's size agrees with its parameter count (small models keep some tensors at 8-16 bits)
        for f in m.files.values():
            assert 3.5 <= f.size * 8 / m.parameters <= 11.5, (m.id, f.quant)
        assert m.registry_name() != "smollm2-135m-instruct"  # the bundled model's name stays free


def test_catalogue_numbers_match_the_bundled_gguf(smollm2_path):
    """The catalogue's SmolLM2-135M architecture equals what the real file's header says."""
    from_file = shape_of(read_gguf_info(smollm2_path)).arch
    assert get("smollm2-135m-instruct").arch == from_file


def write(tmp_path: Path, models: list) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "models": models}))
    return path


def good(**over) -> dict:
    raw = yaml.safe_load(catalogue_path().read_text())["models"][0]
    raw.update(over)
    return raw


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"repo": None}, "missing `repo`"),
        ({"repo": "no-slash"}, "not a Hugging Face repo id"),
        ({"parameters": "135M"}, "`parameters` must be a whole number"),
        ({"gated": "yes"}, "`gated` must be true or false"),
        ({"default_quant": "Q2_K"}, "`default_quant` Q2_K is not one of its files"),
        ({"arch": {"n_layer": 30}}, "missing `arch.n_head`"),
        (
            {"files": {"Q4_K_M": {"file": "x.gguf", "size": 10, "sha256": "abc"}}},
            "`files.Q4_K_M.sha256` must be 64",
        ),
        ({"files": {"Q4_K_M": {"file": "x.bin", "size": 10}}}, "must be a .gguf path"),
        ({"files": {"Q4_K_M": {"file": "x.gguf", "size": -1}}}, "`files.Q4_K_M.size` must be positive"),
        ({"files": {}}, "`files` is empty"),
    ],
)
def test_validation_errors_name_the_file_and_the_entry(tmp_path, change, message):
    path = write(tmp_path, [good(id="fine-one"), good(id="bad-one", **change)])
    with pytest.raises(CatalogueError) as e:
        load_catalogue(path)
    assert str(e.value).startswith(f"{path}: entry 2 (bad-one): ")
    assert message in str(e.value)


def test_duplicate_ids_and_malformed_files(tmp_path):
    with pytest.raises(CatalogueError, match=r"entry 2 \(twice\): the id 'twice' is used twice"):
        load_catalogue(write(tmp_path, [good(id="twice"), good(id="twice")]))
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(CatalogueError, match=f"{bad}: not valid YAML"):
        load_catalogue(bad)
    bad.write_text("just a string")
    with pytest.raises(CatalogueError, match="expected a mapping with a `models:` list"):
        load_catalogue(bad)
    with pytest.raises(CatalogueError, match="cannot read"):
        load_catalogue(tmp_path / "missing.yaml")


def test_get_and_quantization_lookup():
    m = get("Qwen2.5-0.5B-Instruct")
    assert m.file("q8_0").filename == "qwen2.5-0.5b-instruct-q8_0.gguf"
    assert m.registry_name("Q8_0") == "qwen2.5-0.5b-instruct-q8_0"
    with pytest.raises(ValueError, match="has no Q2_K file; it has Q4_K_M, Q8_0"):
        m.file("Q2_K")
    with pytest.raises(ValueError, match="no model 'gpt-5' in the catalogue; known: smollm2-135m"):
        get("gpt-5")


# ---- memory ---------------------------------------------------------------------------------------
def test_estimate_of_the_bundled_model(smollm2_path):
    info = read_gguf_info(smollm2_path)
    est = estimate(info, 2048)
    assert est.weights == info.size
    assert est.kv_cache == 2 * 30 * 2048 * 3 * 64 * 2 == info.kv_bytes_per_token() * 2048
    assert 10 * 2**20 < est.compute < 60 * 2**20  # measured ~28 MiB (bench/memory_fit.py)
    assert est.total == est.weights + est.kv_cache + est.compute
    bigger = estimate(info, 8192)
    assert bigger.kv_cache == 4 * est.kv_cache and bigger.compute == est.compute  # flash attention
    assert estimate(info, 8192, flash_attn=False).compute > bigger.compute
    assert estimate(smollm2_path, 2048) == est  # a path works too


def test_estimate_from_the_catalogue_scales_sensibly():
    small = estimate(get("qwen2.5-0.5b-instruct"), 4096)
    large = estimate(get("phi-3.5-mini-instruct"), 4096)
    assert small.total < large.total
    assert 0.5 * GiB < small.total < 1.5 * GiB
    assert large.kv_cache == 2 * 32 * 4096 * 32 * 96 * 2  # 1.5 GiB: Phi-3.5 has no grouped-query attention
    assert estimate(get("qwen2.5-0.5b-instruct"), 4096, quant="Q8_0").weights > small.weights


def test_fit_badges():
    est = MemoryEstimate(weights=600, kv_cache=200, compute=0, total=800, n_ctx=512)
    assert fit(est, available=1000) == "fits"  # 80 %: exactly the limit
    assert fit(est, available=999) == "tight"
    assert fit(est, available=800) == "tight"
    assert fit(est, available=799) == "too big"
    assert fit(10**18) == "too big"  # against this machine's MemAvailable
    assert fit(1) == "fits"


def test_fit_with_unknown_memory_promises_nothing(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: None)
    assert fit(1) == "tight"


def test_suggest_context():
    m = get("llama-3.2-1b-instruct")
    budget = estimate(m, 8192).total / memory.TIGHT_FRACTION
    assert suggest_context(m, available=int(budget)) == 8192
    assert suggest_context(m, available=int(budget) - 1) == 4096
    assert suggest_context(m, available=10**15) == m.context_length  # capped by what it was trained for
    assert suggest_context(m, available=10**6) is None  # not even 512 tokens


def test_suggest_gpu_layers():
    m = get("llama-3.2-3b-instruct")
    assert suggest_gpu_layers(m, 4096, gpu_free=0) == 0  # no GPU: CPU only
    assert suggest_gpu_layers(m, 4096, gpu_free=64 * GiB) == -1  # all of it
    some = suggest_gpu_layers(m, 4096, gpu_free=int(1.2 * GiB))
    assert 0 < some < m.arch.n_layer


def test_cli_catalogue_lists_every_model_with_a_badge(capsys):
    from engine.cli import main

    assert main(["models", "catalogue", "--ctx", "2048"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("memory at a 2048-token context")
    rows = {line.split()[0]: line for line in out[1:]}
    assert set(rows) == EXPECTED
    assert all(any(b in line for b in ("fits", "tight", "too big")) for line in rows.values())
