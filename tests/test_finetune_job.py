"""Fine-tuning jobs end to end on a tiny model: data → training → F16 GGUF → llama.cpp quantize →
registered model that llama.cpp chats with; cancel and resume; kill -9 at any moment leaves no
half-made model; bad data is refused naming the file and line.

The base is a real (random, tiny) chatfactory model folder; every stage is the real code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.finetune.job import JobSpec, create_job, job_state, list_jobs, run_job, stage_names
from engine.models import registry
from engine.models.gguf_info import read_gguf_info
from tests.tiny_chat_model import tiny_model_folder

ROOT = Path(__file__).resolve().parent.parent

QUESTIONS = ["Hello there, how are you?", "Who are you?", "What is the question?", "Tell me of fortune.",
             "Explain classification.", "What is déjà vu?", "Say something kind.", "Name a sea.",
             "What are slings?", "Is it nobler?", "What troubles you?", "What is an arrow?"]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    return tiny_model_folder(tmp_path_factory.mktemp("base") / "tiny", max_seq_len=128)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def conversations_file(tmp_path: Path) -> Path:
    recs = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "I am fine, thank you."}]}
            for q in QUESTIONS]
    return write_jsonl(tmp_path / "convs.jsonl", recs)


def prefs_file(tmp_path: Path) -> Path:
    recs = [{"prompt": q, "chosen": "I am fine, thank you.", "rejected": "To be, or not to be."} for q in QUESTIONS]
    return write_jsonl(tmp_path / "prefs.jsonl", recs)


def chat_once(gguf: str) -> str:
    from engine.runtime import LlamaRuntime, RuntimeSettings, Sampling

    rt = LlamaRuntime(gguf, RuntimeSettings(n_ctx=128, check_memory=False, session_cache_mb=0))
    try:
        prompt = rt.build_prompt([{"role": "user", "content": "Hello there, how are you?"}], 8)
        gen = rt.generate(prompt.tokens, Sampling(temperature=0.0, max_tokens=8))
        text = "".join(gen)
        assert gen.stats.completion_tokens > 0
        return text
    finally:
        rt.close()


def test_sft_job_registers_a_quantized_model_that_chats(tmp_path, tiny_base):
    spec = JobSpec(base=str(tiny_base), data=[str(conversations_file(tmp_path))], method="sft", max_steps=3,
                   name="tiny-sft", threads=1)
    folder = create_job(spec, tmp_path / "job")
    events: list[dict] = []
    result = run_job(folder, events.append)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "job" and kinds[-1] == "done"
    assert [e["name"] for e in events if e["event"] == "stage" and e["status"] == "done"] == stage_names(spec)
    assert any(e["event"] == "metrics" and e["stage"] == "sft" and "loss" in e for e in events)
    entry = next(m for m in registry.list_models() if m.name == "tiny-sft")
    assert entry.source == "finetuned" and entry.quantization == "Q8_0"
    assert entry.path == result["gguf"] and Path(entry.path).is_file()
    assert entry.lineage["base"] == str(tiny_base) and entry.lineage["method"] == "sft"
    assert not list((folder / "export").glob("*f16*"))  # only the quantized file stays
    chat_once(result["gguf"])
    assert job_state(folder) == "done"
    assert list_jobs(tmp_path)[0]["state"] == "done"
    # running a finished job again does nothing new
    again: list[dict] = []
    run_job(folder, again.append)
    assert not [e for e in again if e["event"] == "stage"]


def test_dpo_job_from_a_preference_file(tmp_path, tiny_base):
    spec = JobSpec(base=str(tiny_base), data=[str(prefs_file(tmp_path))], method="dpo", max_steps=2,
                   name="tiny-dpo", quant="Q4_K_M", threads=1)
    result = run_job(create_job(spec, tmp_path / "job"), lambda e: None)
    assert Path(result["gguf"]).is_file() and "kl_to_base" in result["stages"]["eval"]
    assert next(m for m in registry.list_models() if m.name == "tiny-dpo").quantization.startswith("Q")
    chat_once(result["gguf"])


def test_from_scratch_pretrains_its_own_base_then_sft_and_export(tmp_path):
    """"From scratch (advanced)": the pipeline preset's tokenizer and pre-training stages make the
    base inside the job (a GPT-2-style model with its own BPE), then SFT, GGUF, registered."""
    spec = JobSpec(base="scratch:tiny", data=[str(conversations_file(tmp_path))], method="sft", max_steps=2,
                   name="tiny-scratch", threads=1,
                   overrides={"tokenizer.tokenizer.vocab_size": 300})
    assert stage_names(spec)[:3] == ["data", "tokenizer", "pretrain"]
    result = run_job(create_job(spec, tmp_path / "job"), lambda e: None)
    assert result["stages"]["pretrain"]["step"] == 2 and result["stages"]["tokenizer"]["vocab_size"] == 300
    info = read_gguf_info(result["gguf"])
    assert info.architecture == "gpt2"
    entry = next(m for m in registry.list_models() if m.name == "tiny-scratch")
    assert entry.lineage["base"] == "scratch:tiny"
    chat_once(result["gguf"])
    with pytest.raises(ValueError, match="sft method"):
        JobSpec(base="scratch:tiny", data=["demo"], method="rlhf").check()


def test_a_gguf_base_is_read_once_and_its_figures_are_kept(tmp_path, tiny_base):
    """A GGUF base is dequantized into finetune/bases/ once (reading a GGUF is the slow part of a
    stage's start); a number about the base (its checker score) is computed once per base."""
    from engine.finetune.job import JobContext, MetricsTail
    from engine.paths import home
    from engine.training.loader import load
    from engine.training.model.gguf_export import export_gguf

    m = load(tiny_base)
    gguf = export_gguf(m.model, m.tokenizer, tmp_path / "base.gguf", dtype="f32")
    spec = JobSpec(base=str(gguf), data=[str(conversations_file(tmp_path))], method="sft", max_steps=1)
    job = JobContext(spec, tmp_path / "job", lambda e: None, MetricsTail(lambda e: None))
    folder = Path(job.training_base())
    assert folder.parent == home() / "finetune" / "bases" and (folder / "model_config.json").exists()
    made = (folder / "model_config.json").stat().st_mtime_ns
    assert job.training_base() == str(folder) and (folder / "model_config.json").stat().st_mtime_ns == made
    calls = []
    assert job.base_figure({"checker": "brief", "n": 3}, lambda: calls.append(1) or 0.25) == 0.25
    assert job.base_figure({"n": 3, "checker": "brief"}, lambda: calls.append(1) or 0.5) == 0.25  # kept
    assert job.base_figure({"checker": "brief", "n": 4}, lambda: calls.append(1) or 0.5) == 0.5  # another key
    assert len(calls) == 2
    reloaded = load(folder)
    import torch

    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(ids), m.model(ids), atol=1e-5, rtol=1e-5)


def test_bad_data_names_the_file_and_line(tmp_path, tiny_base):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{not json\n', encoding="utf-8")
    spec = JobSpec(base=str(tiny_base), data=[str(bad)], method="sft", max_steps=1, threads=1)
    folder = create_job(spec, tmp_path / "job")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2") as err:
        run_job(folder, lambda e: None)
    assert job_state(folder) == "failed"
    assert "bad.jsonl" in json.loads((folder / "error.json").read_text())["error"]
    assert "bad" not in str(err.value).split("bad.jsonl")[0][-3:]  # one message, not a traceback
    assert not [m for m in registry.list_models() if m.source == "finetuned"]


def test_spec_errors_are_clear(tmp_path, tiny_base):
    with pytest.raises(ValueError, match="method must be one of"):
        JobSpec(base="x", data=["y"], method="ppo2").check()
    with pytest.raises(ValueError, match="rlhf or dpo"):
        JobSpec(base="x", data=["demo"], method="sft").check()
    with pytest.raises(ValueError, match="needs rankings"):
        spec = JobSpec(base=str(tiny_base), data=[str(conversations_file(tmp_path))], method="dpo", max_steps=1)
        run_job(create_job(spec, tmp_path / "job"), lambda e: None)


# ---- the job as the tab runs it: a process, JSON lines, SIGTERM, kill -9 --------------------------
def start(folder: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "engine.finetune", "run", str(folder)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=os.environ.copy())


def read_until(proc: subprocess.Popen, pred, timeout: float = 120) -> list[dict]:
    events, t0 = [], time.time()
    for line in proc.stdout:
        events.append(json.loads(line))  # every stdout line is an event
        if pred(events[-1]):
            return events
        assert time.time() - t0 < timeout, "no such event in time"
    raise AssertionError(f"the job ended without the event; last: {events[-3:]}")


def test_cancel_then_resume_in_a_process(tmp_path, tiny_base):
    spec = JobSpec(base=str(tiny_base), data=[str(conversations_file(tmp_path))], method="sft", max_steps=100_000,
                   name="tiny-resumed", threads=1)
    folder = create_job(spec, tmp_path / "job")
    proc = start(folder)
    events = read_until(proc, lambda e: e["event"] == "metrics" and e.get("step", 0) >= 3)
    assert events[0]["event"] == "job"
    proc.send_signal(signal.SIGTERM)
    rest = [json.loads(line) for line in proc.stdout]
    assert proc.wait(60) == 130
    assert rest[-1]["event"] == "cancelled"
    assert job_state(folder) == "stopped"
    assert list((folder / "sft" / "checkpoints").iterdir())
    assert not [m for m in registry.list_models() if m.name == "tiny-resumed"]
    stopped_at = max(e["step"] for e in events + rest if e["event"] == "metrics" and "step" in e)
    # resume with a reachable cap: the spec is the folder's, so edit its step cap as the CLI's --max-steps would
    raw = json.loads((folder / "job.json").read_text())
    raw["max_steps"] = stopped_at + 3
    (folder / "job.json").write_text(json.dumps(raw))
    (folder / "sft" / "STARTED.json").unlink()  # the cap changed: its fingerprint would clear the stage
    proc = start(folder)
    events = read_until(proc, lambda e: e["event"] in ("done", "error"))
    assert proc.wait(60) == 0 and events[-1]["event"] == "done", events[-1]
    steps = [e["step"] for e in events if e["event"] == "metrics" and e["stage"] == "sft" and "loss" in e]
    assert steps and steps[0] == stopped_at + 1  # continued, not restarted
    assert next(m for m in registry.list_models() if m.name == "tiny-resumed")


@pytest.mark.parametrize("moment", ["training", "export"])
def test_kill_9_never_registers_a_half_made_model(tmp_path, tiny_base, moment):
    spec = JobSpec(base=str(tiny_base), data=[str(conversations_file(tmp_path))], method="sft", max_steps=40,
                   name=f"tiny-killed-{moment}", threads=1)
    folder = create_job(spec, tmp_path / "job")
    proc = start(folder)
    if moment == "training":
        read_until(proc, lambda e: e["event"] == "metrics" and e.get("step", 0) >= 2)
    else:
        read_until(proc, lambda e: e["event"] == "stage" and e["name"] == "export" and e["status"] == "started")
    proc.kill()
    proc.wait(30)
    assert job_state(folder) == "stopped"
    # whatever the moment: a registered model is a whole file, and a file with a final name is whole
    # (partial ones carry a hidden .tmp name); the export may have finished just before the kill
    for m in registry.list_models():
        if m.name == spec.name:
            assert read_gguf_info(m.path).size == Path(m.path).stat().st_size
    for f in (folder / "export").glob("*.gguf") if (folder / "export").exists() else []:
        read_gguf_info(f)  # raises on a truncated file
    proc = start(folder)
    events = read_until(proc, lambda e: e["event"] in ("done", "error"))
    assert proc.wait(60) == 0 and events[-1]["event"] == "done", events[-1]
    assert [m.name for m in registry.list_models()].count(spec.name) == 1
    chat_once(events[-1]["gguf"])


def test_large_base_trains_lora_adapters_merged_before_export(tmp_path, tiny_base, monkeypatch):
    import engine.finetune.job as job_module

    monkeypatch.setattr(job_module, "FULL_FINETUNE_MAX_PARAMS", 1000)  # the tiny model counts as "large"
    spec = JobSpec(base=str(tiny_base), data=[str(conversations_file(tmp_path))], method="sft", max_steps=2,
                   name="tiny-lora", threads=1)
    folder = create_job(spec, tmp_path / "job")
    result = run_job(folder, lambda e: None)
    sft = json.loads((folder / "sft" / "sft.json").read_text())
    assert sft["lora"]["rank"] == job_module.DEFAULT_LORA["rank"]
    meta = json.loads((folder / "sft" / "model" / "meta.json").read_text())
    assert meta["lora"]["merged"] is True
    chat_once(result["gguf"])  # the merged model exports like any other
