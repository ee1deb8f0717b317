"""How long a job will take on this machine, shown before Start. No torch: the tab calls it.

The estimate counts the work of each stage in model FLOPs (6 N per trained token, 2 N per
token only scored or sampled, N the parameter count from the GGUF header) and divides by this
machine's float32 matmul speed, measured once with numpy (~0.1 s) and scaled by the fraction
of it training reaches. A job that ran from start to end records how long it took against its
estimate (`home()/finetune/calibration.json`), and later estimates are scaled by that ratio, so
they improve with use.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

from engine.paths import atomic_writer

from .job import DEMO, PRESET_CONFIGS, JobSpec, jobs_root, scratch_preset, stage_names

# share of the matmul peak reached by each kind of work, measured on the 2-core CPU with
# SmolLM2-135M (BENCHMARKS.md, "Fine-tuning"): sampling 24,576 tokens took the preference demo's
# sample stage 181 s at a 66 GFLOP/s peak (0.55; PPO's batches of 16 do worse, hence 0.4); SFT ran at
# 75 % MFU, frozen blocks and short sequences do worse (0.5).
# Replaced by calibration.json once a job ran.
DEFAULT_EFFICIENCY = {"train": 0.5, "sample": 0.4, "fixed_s": 25.0, "scale": 1.0}


@functools.lru_cache(maxsize=1)
def matmul_flops() -> float:
    """float32 FLOP/s of a 512x512 matmul on this machine (best of a few)."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((512, 512), dtype=np.float32)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * 512**3 / max(best, 1e-9)


def _calibration_file() -> Path:
    return jobs_root() / "calibration.json"


def efficiency() -> dict:
    try:
        got = json.loads(_calibration_file().read_text())
        return {**DEFAULT_EFFICIENCY, **{k: float(v) for k, v in got.items() if k in DEFAULT_EFFICIENCY}}
    except (OSError, ValueError, TypeError):
        return dict(DEFAULT_EFFICIENCY)


def record_calibration(spec: JobSpec, n_conversations: int, n_comparisons: int, seconds: float) -> float:
    """After a job ran start to end: remember its actual time over its (unscaled) estimate."""
    est = estimate(spec, n_conversations, n_comparisons, scaled=False)["seconds"]
    scale = min(max(seconds / max(est, 1e-6), 0.2), 5.0)
    path = _calibration_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f:
        json.dump({**efficiency(), "scale": round(scale, 3)}, f)
    return scale


def parameters(spec: JobSpec) -> int:
    """The base model's parameter count, from its GGUF header or its config."""
    from engine.models import registry
    from engine.models.gguf_info import read_gguf_info

    preset = scratch_preset(spec.base)
    if preset is not None:  # from scratch: the pre-training preset's model
        from engine.training import pipeline
        from engine.training.train.config import read_yaml

        cfg = pipeline.load_pipeline_config(preset)
        section = cfg["pretrain"]
        model = read_yaml(pipeline.PRESET_DIR.parent / f"{section.get('base', 'tiny')}.yaml").get("model", {})
        model = {**model, **section.get("model", {})}
        vocab = cfg["tokenizer"].get("tokenizer", {}).get("vocab_size", 1024)
        d, layers = model.get("d_model", 128), model.get("n_layer", 4)
        ff = model.get("d_ff") or 4 * d
        return layers * (4 * d * d + 3 * d * ff) + vocab * d
    path = Path(spec.base).expanduser()
    if path.is_dir():
        cfg = path / "config.json"
        if cfg.exists():
            c = json.loads(cfg.read_text())
            d, layers, vocab = c.get("hidden_size", 768), c.get("num_hidden_layers", 12), c.get("vocab_size", 32000)
            ff = c.get("intermediate_size", 4 * d)
            return layers * (4 * d * d + 3 * d * ff) + vocab * d
        native = path / "model_config.json"  # a chatfactory folder
        c = json.loads(native.read_text()) if native.exists() else {}
        d, layers, vocab = c.get("d_model", 768), c.get("n_layer", 12), c.get("vocab_size", 32000)
        ff = c.get("d_ff") or 4 * d
        return layers * (4 * d * d + 3 * d * ff) + vocab * d
    if not path.exists():
        _, path = registry.resolve(spec.base)
    return read_gguf_info(path).parameters


def _train_flops(c: dict) -> float:
    """FLOPs per parameter and token of a training step: 6 (forward 2, backward 4), less the
    backward of the blocks a preset keeps frozen (freeze_fraction)."""
    return 2 + 4 * (1 - c.get("freeze_fraction", 0.0))


def estimate(spec: JobSpec, n_conversations: int, n_comparisons: int, avg_tokens: int = 200,
             scaled: bool = True) -> dict:
    """{"seconds": total, "stages": {name: seconds}, "tokens": trained tokens} for a job over this
    much data (the tab counts it from the sources it shows)."""
    n = parameters(spec)
    peak, eff = matmul_flops(), efficiency()
    train_rate = peak * eff["train"]  # FLOP/s while training
    sample_rate = peak * eff["sample"]  # FLOP/s while sampling token by token
    p = PRESET_CONFIGS[spec.preset]
    stages: dict[str, float] = {}
    trained = 0
    for name in stage_names(spec):
        c = p.get(name, {})
        cap = spec.max_steps or c.get("max_steps") or c.get("train", {}).get("max_steps")
        if name == "sft":
            tokens = n_conversations * avg_tokens * c.get("epochs", 1)
            if cap:
                tokens = min(tokens, cap * c["train"]["micro_batch_size"] * c["train"]["seq_len"])
            trained += tokens
            stages[name] = 6 * n * tokens / train_rate
            budget = None if spec.max_steps else c["train"].get("time_budget")
            if budget:  # the preset stops training at its time budget (evaluation and saving come on top)
                from engine.training.train.config import parse_duration

                stages[name] = min(stages[name], parse_duration(budget) * 1.1)
        elif name in ("tokenizer", "pretrain"):  # from scratch: the pre-training preset's time budget
            from engine.training import pipeline
            from engine.training.train.config import parse_duration

            budget = pipeline.load_pipeline_config(scratch_preset(spec.base)).get(name, {}).get("train", {}).get("time_budget")
            stages[name] = parse_duration(budget) * 1.1 if budget and not spec.max_steps else 30.0
        elif name == "sample":
            toks = (c["n_prompts"] + c.get("heldout_prompts", 0)) * c["k"] * c["max_new_tokens"]
            stages[name] = 2 * n * toks / sample_rate
        elif name in ("reward", "dpo"):
            comps = n_comparisons + (p["sample"]["n_prompts"] if DEMO in spec.data else 0)
            seqs = comps * 2 * c.get("epochs", 1)
            if cap:
                seqs = min(seqs, cap * c["train"]["micro_batch_size"] * 2)
            tokens = seqs * min(avg_tokens, c.get("max_len", 256))
            trained += tokens
            stages[name] = (_train_flops(c) + (2 if name == "dpo" else 0)) * n * tokens / train_rate
        elif name == "ppo":
            steps = cap or 10
            gen = steps * c["rollout_batch"] * c["max_new_tokens"]
            tokens = steps * c["rollout_batch"] * (c["max_new_tokens"] + 40)
            trained += tokens * c["ppo_epochs"]
            # rollouts sampled token by token; the actor (and a critic) trained ppo_epochs times; reference and
            # reward model scored
            trained_models = 1 if c.get("baseline") == "group" else 2
            stages[name] = 2 * n * gen / sample_rate \
                + trained_models * _train_flops(c) * n * tokens * c["ppo_epochs"] / train_rate \
                + 2 * 2 * n * tokens / train_rate
        elif name == "eval":
            e = p["eval"]
            runs = (2 if DEMO in spec.data else 0) + (1 if spec.method != "sft" else 0)
            stages[name] = runs * 2 * n * e["n"] * e["max_new_tokens"] / sample_rate
        elif name == "export":
            stages[name] = eff["fixed_s"]
        else:
            stages[name] = 2.0
    k = eff["scale"] if scaled else 1.0
    return {"seconds": round((sum(stages.values()) + eff["fixed_s"]) * k, 1),
            "stages": {name: round(v * k, 1) for name, v in stages.items()},
            "trained_tokens": int(trained), "parameters": n, "matmul_gflops": round(peak / 1e9, 1)}
