"""A fine-tuning job: base model + data + method → a quantized GGUF registered in the model list.

A job is a folder (`home()/finetune/<id>/`, or any folder the CLI names) holding `job.json`
(the JobSpec) and one sub-folder per stage, run by engine.training.runner: a stage that finished
is skipped on a re-run, and a stage that was cancelled or killed resumes from its own checkpoint.
So "resume" is simply running the same folder again, after a Cancel, a crash or an app restart.

    data ─┬─ sft ──────────────┐
          ├─ dpo ──────────────┼─ eval ─ export (F16 GGUF → quantize → register)
          └─ [sample] ─ reward ─ ppo ┘

Progress is reported through `emit(event: dict)`: the tab runs `python -m engine.finetune run
DIR`, which writes each event as one JSON line on stdout (see `events.py` for the kinds).

The registered model appears only once its quantized file is complete (written to a temporary
name and renamed), so a job killed at any moment never leaves a half-made model in the list.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.paths import home
from engine.training.runner import Stage, StageContext, read_done, run_stages, write_json_atomic

METHODS = ("sft", "dpo", "rlhf")
PRESETS = ("quick", "thorough")
QUANTS = ("Q8_0", "Q4_K_M")
JOB_FILE = "job.json"
RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
PID_FILE = "pid"
DEMO = "demo"  # as a data source: the built-in preference demo (sampled from the base, ranked by a script)
SCRATCH = "scratch:"  # a base trained in the job: "scratch:<pipeline preset>" (tokenizer + pre-training)

Emit = Callable[[dict], None]

# Each preset, per stage: the fields handed to the stage's own config (train.* = TrainConfig).
# Sized for a 2-core CPU on a 135M model ("quick") and for a longer run ("thorough").
PRESET_CONFIGS: dict[str, dict[str, dict]] = {
    "quick": {
        "sft": {"epochs": 1, "max_steps": 40, "train": {"lr": 5e-5, "seq_len": 256, "micro_batch_size": 4,
                                                       "time_budget": "6m", "warmup_steps": 2}},
        # the preference demo (measured in BENCHMARKS.md): temperature 0.7, as 1.0 samples drift into gibberish
        "sample": {"n_prompts": 96, "heldout_prompts": 32, "k": 4, "temperature": 0.7, "max_new_tokens": 48},
        "reward": {"max_len": 128, "epochs": 2, "freeze_fraction": 0.67,
                   "train": {"lr": 3e-5, "micro_batch_size": 8, "warmup_steps": 2, "max_steps": 8}},
        # PPO: 4 prompts x 4 answers a step with the group baseline (no critic), two passes of two
        # minibatches over them (BENCHMARKS.md, "The preference demo": the runs behind this choice)
        "ppo": {"max_new_tokens": 48, "temperature": 0.7, "rollout_batch": 16, "baseline": "group", "group_size": 4,
                "minibatch_size": 8, "ppo_epochs": 2, "kl_coef": 0.02, "freeze_fraction": 0.67,
                "train": {"lr": 4e-5, "max_steps": 13, "micro_batch_size": 8}},
        "dpo": {"beta": 0.1, "max_len": 128, "epochs": 1, "freeze_fraction": 0.67,
                "train": {"lr": 2e-5, "micro_batch_size": 4, "max_steps": 12, "warmup_steps": 2}},
        "eval": {"n": 82, "kl_prompts": 16, "max_new_tokens": 48, "side_by_side": 4},
    },
    "thorough": {
        "sft": {"epochs": 3, "max_steps": 400, "train": {"lr": 3e-5, "seq_len": 512, "micro_batch_size": 4,
                                                        "warmup_steps": 10}},
        "sample": {"n_prompts": 227, "heldout_prompts": 82, "k": 4, "temperature": 0.7, "max_new_tokens": 48},
        "reward": {"max_len": 256, "epochs": 2, "train": {"lr": 2e-5, "micro_batch_size": 8, "warmup_steps": 5}},
        "ppo": {"max_new_tokens": 48, "temperature": 0.7, "rollout_batch": 32, "baseline": "group", "group_size": 4,
                "minibatch_size": 8, "ppo_epochs": 2, "kl_coef": 0.02, "train": {"lr": 2e-5, "max_steps": 40,
                                                                               "micro_batch_size": 8}},
        "dpo": {"beta": 0.1, "max_len": 256, "epochs": 3, "train": {"lr": 5e-7, "micro_batch_size": 4}},
        "eval": {"n": 82, "kl_prompts": 64, "max_new_tokens": 48, "side_by_side": 6},
    },
}


FULL_FINETUNE_MAX_PARAMS = 500_000_000  # above this, SFT trains LoRA adapters (merged before export)
DEFAULT_LORA = {"rank": 16, "alpha": 32.0, "targets": ["q", "k", "v", "o"]}


def base_parameters(spec: JobSpec) -> int:
    from .estimate import parameters

    return parameters(spec)


class JobCancelled(Exception):
    """The job was stopped (Cancel, SIGTERM); its folder resumes where it stopped."""


@dataclass
class JobSpec:
    base: str  # registry name, GGUF file, Hugging Face folder or chatfactory folder
    data: list[str]  # source specs (engine.finetune.sources.read_source, or "demo")
    method: str = "sft"  # sft | dpo | rlhf
    preset: str = "quick"
    max_steps: int | None = None  # caps every training stage (smoke runs, tests)
    name: str = ""  # the tuned model's name in the model list (default: base-method-date)
    quant: str = "Q8_0"  # Q8_0 | Q4_K_M
    db: str | None = None  # the chat database for "chats" sources (default: the app's)
    threads: int | None = None  # torch threads (default: all cores)
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)  # "stage.field" -> value, over the preset
    created: float = 0.0

    def check(self) -> JobSpec:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.quant not in QUANTS:
            raise ValueError(f"quantization must be one of {', '.join(QUANTS)}, got {self.quant!r}")
        if not self.base:
            raise ValueError("no base model given")
        if not self.data:
            raise ValueError("no data given: pick your chats, a file, or the built-in demo")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        if DEMO in self.data and self.method == "sft":
            raise ValueError("the preference demo teaches from rankings: use the rlhf or dpo method")
        preset = scratch_preset(self.base)
        if preset is not None:
            if preset not in scratch_presets():
                raise ValueError(f"base {self.base!r}: no such pre-training preset "
                                 f"(from scratch: {', '.join(SCRATCH + p for p in scratch_presets())})")
            if self.method != "sft":
                raise ValueError("a model from scratch learns to chat by SFT on demonstrations: use the sft method "
                                 "(`chatfactory pipeline` runs the whole RLHF recipe from scratch)")
        return self

    @classmethod
    def load(cls, job_dir: str | Path) -> JobSpec:
        path = Path(job_dir) / JOB_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{job_dir}: not a fine-tuning job (no {JOB_FILE})") from None
        except ValueError as e:
            raise ValueError(f"{path}: not readable JSON ({e})") from None
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}")
        return cls(**raw).check()


def scratch_preset(base: str) -> str | None:
    """The pre-training preset of a "scratch:<preset>" base, else None."""
    return base[len(SCRATCH):] if base.startswith(SCRATCH) else None


def scratch_presets() -> list[str]:
    """The pipeline presets that pre-train a model from nothing (a tokenizer and a pretrain section)."""
    from engine.training import pipeline

    out = []
    for name in pipeline.available():
        cfg = pipeline.load_pipeline_config(name)
        if {"tokenizer", "pretrain"} <= set(cfg) and not cfg.get("base_model"):
            out.append(name)
    return out


def jobs_root() -> Path:
    return home() / "finetune"


def create_job(spec: JobSpec, job_dir: str | Path | None = None) -> Path:
    """Write the job's folder and job.json; returns the folder. An existing job folder is kept
    only if it holds the same spec (so a CLI re-run resumes), else it is an error."""
    spec.check()
    if not spec.created:
        spec.created = time.time()
    if not spec.name:
        spec.name = default_name(spec)
    folder = Path(job_dir) if job_dir else jobs_root() / f"{time.strftime('%Y%m%d-%H%M%S')}-{spec.method}"
    existing = folder / JOB_FILE
    if existing.exists():
        old = JobSpec.load(folder)
        same = {**asdict(old), "created": 0, "name": ""} == {**asdict(spec), "created": 0, "name": ""}
        if not same:
            raise ValueError(f"{folder}: holds another job ({old.method} of {old.base}); choose another folder")
        return folder
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder}: the folder exists and is not empty")
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / JOB_FILE, asdict(spec))
    return folder


def default_name(spec: JobSpec) -> str:
    base = Path(spec.base).name.removesuffix(".gguf") if ("/" in spec.base or "\\" in spec.base) else spec.base
    base = base.replace(":", "-")  # scratch:tiny -> scratch-tiny
    return f"{base}-{spec.method}-{time.strftime('%Y%m%d-%H%M')}"


def stage_names(spec: JobSpec) -> list[str]:
    train = {"sft": ["sft"], "dpo": ["dpo"], "rlhf": ["reward", "ppo"]}[spec.method]
    sample = ["sample"] if DEMO in spec.data else []
    scratch = ["tokenizer", "pretrain"] if scratch_preset(spec.base) is not None else []
    return ["data", *scratch, *sample, *train, "eval", "export"]


def stage_config(spec: JobSpec, stage: str) -> dict:
    """The preset's section for a stage, with --max-steps and the spec's overrides applied."""
    import copy

    from engine.training.train.config import apply_override

    cfg = copy.deepcopy(PRESET_CONFIGS[spec.preset].get(stage, {}))
    if stage in ("tokenizer", "pretrain"):  # from scratch: the pipeline preset's sections
        from engine.training import pipeline

        cfg = pipeline.load_pipeline_config(scratch_preset(spec.base))[stage]
        cfg.pop("expected_s", None)
        if stage == "pretrain":
            cfg.setdefault("train", {}).update(progress=False, seed=spec.seed, **({"threads": spec.threads} if spec.threads else {}))
    if spec.max_steps is not None and stage in ("sft", "reward", "ppo", "dpo", "pretrain"):
        cfg.setdefault("train", {})["max_steps"] = spec.max_steps
        if stage != "pretrain":  # the pipeline's pre-training config has no stage-level cap
            cfg["max_steps"] = spec.max_steps
        cfg["train"].pop("time_budget", None)
    for key, value in spec.overrides.items():
        head, _, rest = key.partition(".")
        if head == stage and rest:
            apply_override(cfg, (rest, value))
    return cfg


# ---- job state -----------------------------------------------------------------------------------
def job_state(job_dir: str | Path) -> str:
    """'done', 'running' (a live process holds it), 'failed', 'stopped' (resumable) or 'new'."""
    folder = Path(job_dir)
    if (folder / RESULT_FILE).exists():
        return "done"
    pid = _read_pid(folder)
    if pid and _alive(pid):
        return "running"
    if (folder / ERROR_FILE).exists():
        return "failed"
    if any(p.is_dir() for p in folder.iterdir()):
        return "stopped"
    return "new"


def _read_pid(folder: Path) -> int | None:
    try:
        return int((folder / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (killed, not yet reaped by its parent) is not running
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def list_jobs(root: Path | None = None) -> list[dict]:
    """Every job under the root, newest first: {dir, spec, state, result}."""
    root = root or jobs_root()
    out = []
    if not root.exists():
        return out
    for folder in sorted(root.iterdir(), reverse=True):
        if not (folder / JOB_FILE).exists():
            continue
        try:
            spec = JobSpec.load(folder)
        except (ValueError, OSError, TypeError):
            continue
        result = read_done(folder, RESULT_FILE)
        error = read_done(folder, ERROR_FILE)
        out.append({"dir": str(folder), "spec": spec, "state": job_state(folder), "result": result, "error": error})
    return out


# ---- progress ------------------------------------------------------------------------------------
class MetricsTail:
    """Follows the running stage's metrics.jsonl and emits each new record as a `metrics` event
    with the stage's fraction done (from its step cap or time budget)."""

    def __init__(self, emit: Emit, interval: float = 0.5):
        self.emit, self.interval = emit, interval
        self._lock = threading.Lock()
        self._path: Path | None = None
        self._stage = ""
        self._pos = 0
        self._max_steps: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-tail", daemon=True)

    def start(self) -> MetricsTail:
        self._thread.start()
        return self

    def follow(self, stage: str, path: Path, max_steps: int | None) -> None:
        with self._lock:
            self.poll()
            self._stage, self._path, self._max_steps = stage, path, max_steps
            self._pos = path.stat().st_size if path.exists() else 0  # resumed: the old lines were sent before

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            self.poll()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                self.poll()

    def poll(self) -> None:
        path = self._path
        if path is None or not path.exists():
            return
        with open(path, "rb") as f:
            f.seek(self._pos)
            chunk = f.read()
        end = chunk.rfind(b"\n")
        if end < 0:
            return
        self._pos += end + 1
        for line in chunk[: end + 1].splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict):
                continue
            event = {"event": "metrics", "stage": self._stage, **rec}
            if self._max_steps and isinstance(rec.get("step"), int):
                event["fraction"] = min(rec["step"] / self._max_steps, 1.0)
            self.emit(event)


# ---- the stages ----------------------------------------------------------------------------------
@dataclass
class JobContext:
    spec: JobSpec
    job_dir: Path
    emit: Emit
    tail: MetricsTail

    def base_path(self) -> str:
        """The base model as a path or a bundled name the training loader reads."""
        from engine.models import registry

        spec = self.spec.base
        if scratch_preset(spec) is not None:
            return str(self.job_dir / "pretrain" / "model")
        if Path(spec).expanduser().exists():
            return str(Path(spec).expanduser().resolve())
        name, path = registry.resolve(spec)
        if name == registry.DEFAULT_MODEL:
            return name
        if not path.exists():
            raise FileNotFoundError(f"base model {spec!r}: its file {path} is missing")
        return str(path)

    def training_base(self) -> str:
        """What the training stages load: a GGUF base is dequantized once into a native folder,
        cached in the data folder (finetune/bases/), since reading a GGUF takes 12-15 s against
        2 s for the folder, and a job loads its base up to eight times (sample, reward, PPO's
        policy and reference, eval)."""
        gguf = self.base_gguf()
        if gguf is None:
            return self.base_path()
        st = gguf.stat()
        folder = home() / "finetune" / "bases" / f"{gguf.stem}-{st.st_size}-{st.st_mtime_ns}"
        if not (folder / "model_config.json").exists():
            from engine.training.loader import load
            from engine.training.model.checkpoint import save_model

            self.emit({"event": "progress", "stage": "data", "note": f"reading {gguf.name} for training"})
            base = load(self.base_path())
            save_model(folder, base.model, base.tokenizer, {"source": str(gguf)})
        return str(folder)

    def base_figure(self, key: dict, compute: Callable[[], float]) -> float:
        """A number about the base model (its checker score), kept beside its training copy in
        finetune/bases/ so the next job on the same base reads it instead of recomputing it."""
        folder = Path(self.training_base())
        if folder.parent != home() / "finetune" / "bases":
            return compute()
        path = folder / "figures.json"
        try:
            figures = json.loads(path.read_text())
        except (OSError, ValueError):
            figures = {}
        name = json.dumps(key, sort_keys=True)
        if not isinstance(figures.get(name), (int, float)):
            figures[name] = compute()
            write_json_atomic(path, figures)
        return figures[name]

    def base_gguf(self) -> Path | None:
        """The base model's GGUF file, if it is one (for its chat template and side-by-side answers)."""
        from engine.models import registry

        p = self.base_path()
        if p == registry.DEFAULT_MODEL:
            return registry.resolve(p)[1]
        return Path(p) if p.endswith(".gguf") else None

    def tuned_dir(self) -> Path:
        name = {"sft": "sft", "dpo": "dpo", "rlhf": "ppo"}[self.spec.method]
        return self.job_dir / name / "model"


def _threads(spec: JobSpec) -> None:
    import torch

    torch.set_num_threads(spec.threads or os.cpu_count() or 1)


def _check_stop(summary: dict, stage: str) -> dict:
    if summary.get("stop_reason") == "signal":
        raise JobCancelled(f"{stage} stopped; it resumes from its checkpoint")
    return summary


def _steps_for(n_items: float, per_step: int, epochs: float, cap: int | None, exact: int | None = None) -> int:
    """Optimizer steps for `epochs` passes over the data, at most `cap`; `exact` (the job's
    --max-steps) wins over both."""
    if exact:
        return exact
    steps = max(1, math.ceil(n_items * epochs / max(per_step, 1)))
    return min(steps, cap) if cap else steps


def stage_data(ctx: StageContext, job: JobContext) -> dict:
    """Read and validate every source; write the training and held-out files."""
    from engine.training.data.conversations import Conversation, split, write_conversations
    from engine.training.data.preferences import split_held_out, write_preferences

    from .sources import Dataset, read_source

    spec = job.spec
    ds = Dataset([], [], {})
    store = None
    try:
        for source in spec.data:
            if source == DEMO:
                continue
            if source.split(":", 1)[0] == "chats" and store is None:
                from engine.store import Store

                # the app may be writing an answer right now: not ours to mark interrupted
                store = Store.open(spec.db, mark_interrupted=False)
            ds = ds + read_source(source, store=store)
    finally:
        if store is not None:
            store.close()
    convs, comps = list(ds.conversations), list(ds.comparisons)
    if spec.method == "sft" and not convs and comps:
        # rankings without demonstrations: the best answer of each is the demonstration
        for c in comps:
            best = c.ranking[0][0] if c.ranking else 0
            convs.append(Conversation([*c.prompt, {"role": "assistant", "content": c.responses[best]}]))
    if spec.method == "sft" and not convs:
        raise ValueError("SFT needs demonstrations: answers you thumbed up or edited, or a conversations file; "
                         "none were found in " + ", ".join(spec.data))
    if spec.method in ("dpo", "rlhf") and not comps and DEMO not in spec.data:
        raise ValueError(f"{spec.method.upper()} needs rankings: compare answers in a chat (Compare) or give a "
                         "preference file; none were found in " + ", ".join(spec.data))
    out = ctx.stage_dir
    train_c, held_c = split(convs, 0.1) if len(convs) >= 10 else (convs, [])
    write_conversations(out / "train.jsonl", train_c)
    write_conversations(out / "heldout.jsonl", held_c)
    ptrain, pheld = split_held_out(comps, 0.1, seed=spec.seed) if len(comps) >= 10 else (comps, [])
    write_preferences(out / "prefs.jsonl", ptrain)
    write_preferences(out / "prefs_heldout.jsonl", pheld)
    (out / "report.json").write_text(json.dumps(ds.report, indent=2, default=str) + "\n")
    res = {"conversations": len(train_c), "heldout_conversations": len(held_c), "comparisons": len(ptrain),
           "heldout_comparisons": len(pheld)}
    job.emit({"event": "data", **res, "report": ds.report})
    return res


def stage_sample(ctx: StageContext, job: JobContext) -> dict:
    """The preference demo's rankings: K answers per train prompt from the base model, ranked by
    the demo's scripted labeller; the same for some held-out prompts, which only measure the
    reward model (and DPO's implicit reward): they are never trained on."""
    from engine.training.data.preferences import write_preferences
    from engine.training.loader import load
    from engine.training.sampler import SamplingParams
    from engine.training.train.labeller import LABELLERS
    from engine.training.train.sample import sample_comparisons, task_prompts

    c = {**PRESET_CONFIGS[job.spec.preset]["sample"], **ctx.config}
    base = load(job.training_base())
    train = task_prompts("brief", "train", c["n_prompts"], job.spec.seed)
    held = task_prompts("brief", "test", c.get("heldout_prompts", 0), job.spec.seed) if c.get("heldout_prompts") else []
    prompts = train + held
    params = SamplingParams(max_new_tokens=c["max_new_tokens"], temperature=c["temperature"], seed=job.spec.seed)
    done: list = []
    batch = 16
    for i in range(0, len(prompts), batch):
        done += sample_comparisons(base.model, base.tokenizer, prompts[i : i + batch], params, c["k"], batch_size=64)
        job.emit({"event": "progress", "stage": "sample", "fraction": min((i + batch) / len(prompts), 1.0)})
    ranked = [LABELLERS["brief"](x) for x in done]
    write_preferences(ctx.stage_dir / "rankings.jsonl", ranked[: len(train)])
    if held:
        write_preferences(ctx.stage_dir / HELDOUT_RANKINGS, ranked[len(train) :])
    pairs = [len(x.pairs()) for x in ranked]
    return {"prompts": len(train), "answers": len(ranked) * c["k"],
            "with_a_preference": sum(n > 0 for n in pairs[: len(train)]), "pairs": sum(pairs[: len(train)]),
            "heldout_prompts": len(held), "heldout_pairs": sum(pairs[len(train) :])}


HELDOUT_RANKINGS = "heldout_rankings.jsonl"


def _heldout_preference_files(job: JobContext) -> list[str]:
    """Rankings kept for measuring only: the demo's held-out prompts' rankings."""
    path = job.job_dir / "sample" / HELDOUT_RANKINGS
    return [str(path)] if path.exists() and path.stat().st_size else []


def _preference_files(job: JobContext) -> list[str]:
    files = []
    prefs = job.job_dir / "data" / "prefs.jsonl"
    if prefs.exists() and prefs.stat().st_size:
        files.append(str(prefs))
    demo = job.job_dir / "sample" / "rankings.jsonl"
    if demo.exists():
        files.append(str(demo))
    return files


def stage_sft(ctx: StageContext, job: JobContext) -> dict:
    from engine.training.data.conversations import read_conversations
    from engine.training.train.config import from_dict
    from engine.training.train.sft import SFTConfig, run_sft

    c = dict(ctx.config)
    epochs, cap = c.pop("epochs", 1), c.pop("max_steps", None)
    train, held = job.job_dir / "data" / "train.jsonl", job.job_dir / "data" / "heldout.jsonl"
    n_held = len(read_conversations(held)[0]) if held.stat().st_size else 0
    convs, _ = read_conversations(train)
    # run_sft holds out by a hash of each conversation, the same split the data stage wrote
    data = [str(train)] + ([str(held)] if n_held else [])
    # optimizer steps for the epochs asked: the data's tokens (about 4 characters a token) over a step's
    seq_len = c["train"]["seq_len"]
    tokens = sum(len(m["content"]) // 4 + 4 for cv in convs for m in cv.messages)
    steps = _steps_for(tokens, c["train"]["micro_batch_size"] * seq_len, epochs, cap, job.spec.max_steps)
    c["train"] = {**c["train"], "max_steps": steps, "progress": False, "ckpt_every_s": 60, "log_every": 1,
                  "threads": job.spec.threads, "seed": job.spec.seed}
    if "lora" not in c and base_parameters(job.spec) > FULL_FINETUNE_MAX_PARAMS:
        c["lora"] = dict(DEFAULT_LORA)  # full fine-tuning of a large model does not fit a laptop: adapters, merged at the end
    cfg = from_dict(SFTConfig, {**c, "model": job.training_base(), "data": data, "out_dir": str(ctx.stage_dir),
                                "val_fraction": 0.1 if n_held else 0.0, "max_eval_conversations": 64})
    job.tail.follow("sft", ctx.stage_dir / "metrics.jsonl", steps)
    summary = _check_stop(run_sft(cfg, resume=_has_checkpoint(ctx.stage_dir)), "sft")
    return {"heldout_loss_before": summary["heldout_loss_before"], "heldout_loss": summary["heldout_loss_after"],
            "steps": summary["steps"], "train_time_s": summary["train_time_s"]}


def _freeze(c: dict, job: JobContext) -> dict:
    """A preset's freeze_fraction (the share of blocks kept fixed: a cheaper backward on a CPU) as
    the stage's freeze_layers for this base model."""
    frac = c.pop("freeze_fraction", 0.0)
    if frac and "freeze_layers" not in c:
        c["freeze_layers"] = int(base_layers(job) * frac)
    return c


def base_layers(job: JobContext) -> int:
    """The base model's number of blocks, from its GGUF header or config (no weights loaded)."""
    from engine.models import registry
    from engine.models.gguf_info import read_gguf_info

    p = job.base_path()
    if p == registry.DEFAULT_MODEL or p.endswith(".gguf"):
        info = read_gguf_info(registry.resolve(p)[1] if p == registry.DEFAULT_MODEL else p)
        return int(info.arch_value("block_count", 0))
    folder = Path(p)
    if (folder / "model_config.json").exists():
        return int(json.loads((folder / "model_config.json").read_text())["n_layer"])
    return int(json.loads((folder / "config.json").read_text()).get("num_hidden_layers", 0))


def _has_checkpoint(stage_dir: Path) -> bool:
    ck = stage_dir / "checkpoints"
    return ck.exists() and any(ck.iterdir())


def _comparison_count(files: list[str], pairs: bool = False) -> int:
    """The comparisons that hold at least one (better, worse) pair (the others train nothing),
    or with pairs=True the pairs themselves."""
    from engine.training.data.preferences import read_preferences

    counts = [len(c.pairs()) for f in files for c in read_preferences(f)]
    return sum(counts) if pairs else sum(n > 0 for n in counts)


def stage_reward(ctx: StageContext, job: JobContext) -> dict:
    from engine.training.train.config import from_dict
    from engine.training.train.reward import RewardConfig, train_reward_model

    c = _freeze(dict(ctx.config), job)
    cap = c.pop("max_steps", None) or c["train"].get("max_steps")
    files, held = _preference_files(job), _heldout_preference_files(job)
    n = _comparison_count(files) * (1.0 if held else 0.9)  # without held-out files, a tenth is held out
    steps = _steps_for(n, c["train"]["micro_batch_size"], c.pop("epochs", 1), cap, job.spec.max_steps)
    c["train"] = {**c["train"], "max_steps": steps, "progress": False, "ckpt_every_s": 60, "log_every": 1,
                  "threads": job.spec.threads, "seed": job.spec.seed}
    cfg = from_dict(RewardConfig, {**c, "model": job.training_base(), "data": files, "out_dir": str(ctx.stage_dir),
                                   "eval_data": held})
    job.tail.follow("reward", ctx.stage_dir / "metrics.jsonl", steps)
    stats = _check_stop(train_reward_model(cfg, resume=_has_checkpoint(ctx.stage_dir)), "reward")
    return {k: stats[k] for k in ("heldout_accuracy", "heldout_comparisons", "train_pairs", "train_seconds") if k in stats}


def stage_ppo(ctx: StageContext, job: JobContext) -> dict:
    from engine.training.data.preferences import read_preferences
    from engine.training.train.config import from_dict
    from engine.training.train.ppo import PPOConfig, train_ppo

    c = _freeze(dict(ctx.config), job)
    c.pop("max_steps", None)
    prompts = ctx.stage_dir / "prompts.jsonl"
    if not prompts.exists():
        with open(prompts, "w", encoding="utf-8") as f:
            for path in _preference_files(job):
                for comp in read_preferences(path):
                    extra = {k: v for k, v in comp.extra.items() if k in ("task", "answer", "task_meta")}
                    f.write(json.dumps({"messages": comp.prompt, **extra}) + "\n")
    steps = c["train"]["max_steps"]
    c["train"] = {**c["train"], "progress": False, "ckpt_every_s": 150, "log_every": 1, "threads": job.spec.threads,
                  "seed": job.spec.seed}
    cfg = from_dict(PPOConfig, {**c, "model": job.training_base(), "reward_model": str(job.job_dir / "reward" / "model"),
                                "prompts": [str(prompts)], "out_dir": str(ctx.stage_dir), "eval_every": 0,
                                "eval_n": 0})
    job.tail.follow("ppo", ctx.stage_dir / "metrics.jsonl", steps)
    result = _check_stop(train_ppo(cfg, resume=_has_checkpoint(ctx.stage_dir)), "ppo")
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def stage_dpo(ctx: StageContext, job: JobContext) -> dict:
    from engine.training.train.config import from_dict
    from engine.training.train.dpo import DPOConfig, train_dpo

    c = _freeze(dict(ctx.config), job)
    cap = c.pop("max_steps", None) or c["train"].get("max_steps")
    epochs = c.pop("epochs", 1)
    files, held = _preference_files(job), _heldout_preference_files(job)
    n = _comparison_count(files, pairs=True) * (1.0 if held else 0.9)
    steps = _steps_for(n, c["train"]["micro_batch_size"], epochs, cap, job.spec.max_steps)
    c["train"] = {**c["train"], "max_steps": steps, "progress": False, "ckpt_every_s": 60, "log_every": 1,
                  "threads": job.spec.threads, "seed": job.spec.seed}
    cfg = from_dict(DPOConfig, {**c, "model": job.training_base(), "data": files, "out_dir": str(ctx.stage_dir),
                                "eval_data": held})
    job.tail.follow("dpo", ctx.stage_dir / "metrics.jsonl", steps)
    summary = _check_stop(train_dpo(cfg, resume=_has_checkpoint(ctx.stage_dir)), "dpo")
    return {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _heldout_prompts(job: JobContext, n: int) -> list[list[dict]]:
    """Prompts the job never trained on: the demo's test prompts, held-out conversations' first
    user turns, held-out comparisons' prompts."""
    from engine.training.data.conversations import read_conversations
    from engine.training.data.preferences import read_preferences

    out: list[list[dict]] = []
    if DEMO in job.spec.data:
        from engine.training.train.sample import task_prompts

        out += [p.prompt for p in task_prompts("brief", "test", n, job.spec.seed)]
    held = job.job_dir / "data" / "heldout.jsonl"
    if held.exists() and held.stat().st_size:
        for cv in read_conversations(held)[0]:
            cut = next((i for i, m in enumerate(cv.messages) if m["role"] == "assistant"), None)
            if cut:
                out.append(cv.messages[:cut])
    pheld = job.job_dir / "data" / "prefs_heldout.jsonl"
    if pheld.exists() and pheld.stat().st_size:
        out += [c.prompt for c in read_preferences(pheld)]
    return out[:n]


def stage_eval(ctx: StageContext, job: JobContext) -> dict:
    """The numbers: the demo checker's pass rate (base vs tuned), the KL of the tuned model to
    the base on its own samples, the training stages' held-out figures."""
    from engine.training.loader import load

    c = {**PRESET_CONFIGS[job.spec.preset]["eval"], **ctx.config}
    out: dict[str, Any] = {}
    tuned = load(job.tuned_dir())
    base = load(job.training_base()) if DEMO in job.spec.data or job.spec.method != "sft" else None
    if DEMO in job.spec.data:
        from engine.training.eval.tasks import evaluate_tasks

        def checker(m) -> float:
            return evaluate_tasks(m.model, m.tokenizer, "brief", n=c["n"], max_new_tokens=c["max_new_tokens"],
                                  seed=job.spec.seed, with_loss=False, batch_size=64)["mean_accuracy"]

        # the base model's score does not change: the second job on the same base reads it back
        key = {"checker": "brief", "n": c["n"], "max_new_tokens": c["max_new_tokens"], "seed": job.spec.seed}
        out["checker_base"] = job.base_figure(key, lambda: checker(base))
        job.emit({"event": "progress", "stage": "eval", "fraction": 0.4})
        out["checker_tuned"] = checker(tuned)
        job.emit({"event": "progress", "stage": "eval", "fraction": 0.8})
    if job.spec.method in ("dpo", "rlhf"):
        from engine.training.eval.rlhf import sequence_kl
        from engine.training.sampler import SamplingParams
        from engine.training.train.sample import generate_answers

        prompts = _heldout_prompts(job, c["kl_prompts"]) or [[{"role": "user", "content": "Hello! Who are you?"}]]
        answers = [a[0] for a in generate_answers(tuned.model, tuned.tokenizer, prompts,
                                                  SamplingParams(max_new_tokens=c["max_new_tokens"], temperature=1.0,
                                                                 seed=job.spec.seed))]
        out["kl_to_base"] = sequence_kl(tuned.model, base.model, answers, 1.0, tuned.tokenizer.pad_id)
    results = ctx.results
    for stage, keys in (("sft", ("heldout_loss_before", "heldout_loss")), ("reward", ("heldout_accuracy",)),
                        ("dpo", ("heldout_accuracy_before", "heldout_accuracy_after")), ("ppo", ("kl", "reward"))):
        for k in keys:
            if k in results.get(stage, {}):
                out[f"{stage}_{k}"] = results[stage][k]
    (ctx.stage_dir / "eval.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def stage_export(ctx: StageContext, job: JobContext) -> dict:
    """F16 GGUF → quantized GGUF → registered; then the side-by-side answers with llama.cpp."""
    from engine.models import registry
    from engine.models.gguf_info import read_gguf_info
    from engine.training.loader import load
    from engine.training.model.gguf_export import export_gguf, quantize_gguf

    spec = job.spec
    tuned = load(job.tuned_dir())
    base_gguf = job.base_gguf()
    template = read_gguf_info(base_gguf).chat_template if base_gguf is not None else hf_chat_template(job.base_path())
    f16 = ctx.stage_dir / f"{spec.name}-f16.gguf"
    quant = ctx.stage_dir / f"{spec.name}-{spec.quant}.gguf"
    if not quant.exists():  # a resumed export skips what a killed one finished (both files are renamed into place)
        if not f16.exists():
            job.emit({"event": "progress", "stage": "export", "fraction": 0.1, "note": "writing the F16 GGUF"})
            export_gguf(tuned.model, tuned.tokenizer, f16, chat_template=template, name=spec.name)
        job.emit({"event": "progress", "stage": "export", "fraction": 0.4, "note": f"quantizing to {spec.quant}"})
        quantize_gguf(f16, quant, spec.quant, nthread=spec.threads or 0)
    del tuned
    f16.unlink(missing_ok=True)  # the quantized file is what the app runs; the tuned folder stays for resuming
    job.emit({"event": "progress", "stage": "export", "fraction": 0.6, "note": "answering held-out prompts"})
    c = {**PRESET_CONFIGS[spec.preset]["eval"]}
    rows = side_by_side(base_gguf, quant, _heldout_prompts(job, c["side_by_side"]), c["max_new_tokens"])
    (ctx.stage_dir / "side_by_side.json").write_text(json.dumps(rows, indent=2) + "\n")
    # last: the model enters the list only as a whole file, with everything the tab shows about it
    lineage = {"base": spec.base, "method": spec.method, "preset": spec.preset, "data": spec.data,
               "job": str(job.job_dir), "metrics": ctx.results.get("eval", {}), "created": time.time()}
    entry = registry.add_model(quant, spec.name, source="finetuned", lineage=lineage)
    return {"model": entry.name, "gguf": str(quant), "size": entry.size}


def hf_chat_template(folder: str) -> str | None:
    """A Hugging Face folder's chat template (tokenizer_config.json), or None (ChatML is written)."""
    path = Path(folder) / "tokenizer_config.json"
    try:
        t = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(t, list):  # several named templates: the default one
        t = next((x.get("template") for x in t if isinstance(x, dict) and x.get("name") == "default"), None)
    return t if isinstance(t, str) else None


def side_by_side(base_gguf: Path | None, tuned_gguf: Path, prompts: list[list[dict]], max_tokens: int) -> list[dict]:
    """Greedy answers of the base and the tuned model to the same held-out prompts, by llama.cpp."""
    from engine.runtime import LlamaRuntime, RuntimeSettings, Sampling

    rows = [{"prompt": p[-1]["content"], "messages": p, "answers": {}} for p in prompts]
    if not prompts:
        return rows
    settings = RuntimeSettings(n_ctx=1024, check_memory=False, session_cache_mb=0)
    sampling = Sampling(temperature=0.0, max_tokens=max_tokens)
    for label, path in (("base", base_gguf), ("tuned", tuned_gguf)):
        if path is None:
            continue
        rt = LlamaRuntime(path, settings, name=label)
        try:
            for row in rows:
                prompt = rt.build_prompt(row["messages"], max_tokens)
                row["answers"][label] = "".join(rt.generate(prompt.tokens, sampling)).strip()
        finally:
            rt.close()
    return rows


STAGE_FUNCS: dict[str, tuple[Callable[[StageContext, JobContext], dict], tuple[str, ...], float]] = {
    "data": (stage_data, (), 5),
    "sample": (stage_sample, ("data",), 180),
    "tokenizer": (lambda ctx, job: _pipeline_stage("tokenizer", ctx, job), (), 30),
    "pretrain": (lambda ctx, job: _pipeline_stage("pretrain", ctx, job), ("tokenizer",), 240),
    "sft": (stage_sft, ("data", "pretrain"), 240),
    "reward": (stage_reward, ("data", "sample"), 150),
    "ppo": (stage_ppo, ("data", "reward"), 360),
    "dpo": (stage_dpo, ("data", "sample"), 180),
    "eval": (stage_eval, ("sft", "dpo", "ppo"), 60),
    "export": (stage_export, ("eval",), 30),
}


def _pipeline_stage(name: str, ctx: StageContext, job: JobContext) -> dict:
    """From scratch: the pipeline's own tokenizer and pre-training stages, on its preset."""
    from engine.training import pipeline

    if name == "pretrain":
        job.tail.follow("pretrain", ctx.stage_dir / "metrics.jsonl", ctx.config.get("train", {}).get("max_steps"))

    return _check_stop(getattr(pipeline, f"stage_{name}")(ctx), name)


# ---- running -------------------------------------------------------------------------------------
def run_job(job_dir: str | Path, emit: Emit = lambda e: None) -> dict:
    """Run (or resume) the job in job_dir; returns result.json's content. Raises JobCancelled
    when stopped by SIGTERM/SIGINT (the folder then resumes), ValueError on bad input."""
    folder = Path(job_dir)
    spec = JobSpec.load(folder)
    names = stage_names(spec)
    (folder / ERROR_FILE).unlink(missing_ok=True)
    started_fresh = not any((folder / n).is_dir() for n in names)
    (folder / PID_FILE).write_text(str(os.getpid()))
    tail = MetricsTail(emit).start()
    job = JobContext(spec, folder, emit, tail)
    stages = []
    for name in names:
        func, inputs, expected = STAGE_FUNCS[name]
        stages.append(Stage(name, _bound(func, job, names), tuple(i for i in inputs if i in names), expected))
    config = {name: stage_config(spec, name) for name in names}
    # the data stage reads the same for dpo and rlhf (rankings), so those two share its fingerprint
    needs = "demonstrations" if spec.method == "sft" else "rankings"
    config["data"] = {**config.get("data", {}), "_spec": {"base": spec.base, "data": spec.data, "needs": needs,
                                                           "db": spec.db, "seed": spec.seed}}
    emit({"event": "job", "dir": str(folder), "stages": names, "method": spec.method, "base": spec.base,
          "name": spec.name})
    restore = _cancel_on_signals()
    t0 = time.time()
    try:
        try:
            _threads(spec)
            results = run_stages(stages, folder, config, log=lambda msg: None)
        finally:
            tail.stop()  # the last metrics go out before the job's final event
    except JobCancelled as e:
        emit({"event": "cancelled", "message": str(e)})
        raise
    except BaseException as e:
        write_json_atomic(folder / ERROR_FILE, {"error": f"{type(e).__name__}: {e}", "time": time.time()})
        emit({"event": "error", "message": str(e) or type(e).__name__, "kind": type(e).__name__})
        raise
    finally:
        restore()
        (folder / PID_FILE).unlink(missing_ok=True)
    result = {"model": results["export"]["model"], "gguf": results["export"]["gguf"], "stages": results,
              "seconds": round(time.time() - t0, 1), "finished": time.time()}
    if started_fresh:
        from .estimate import record_calibration

        d = results["data"]
        try:
            record_calibration(spec, d["conversations"] + d["heldout_conversations"],
                               d["comparisons"] + d["heldout_comparisons"], result["seconds"])
        except (OSError, ValueError) as e:  # an estimate's memory is not worth failing a finished job for
            print(f"finetune: calibration not saved: {e}")
    write_json_atomic(folder / RESULT_FILE, result)
    emit({"event": "done", **result})
    return result


def _bound(func, job: JobContext, names: list[str]):
    def run(ctx: StageContext) -> dict:
        index = names.index(ctx.stage_dir.name)
        job.emit({"event": "stage", "name": ctx.stage_dir.name, "index": index, "of": len(names), "status": "started"})
        out = func(ctx, job)
        job.emit({"event": "stage", "name": ctx.stage_dir.name, "index": index, "of": len(names), "status": "done",
                  "results": out})
        return out

    return run


def _cancel_on_signals() -> Callable[[], None]:
    """SIGTERM/SIGINT outside a training loop stop the job at once (the trainer installs its own
    handler while it trains: it checkpoints first, and its stage then raises JobCancelled)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise JobCancelled(f"stopped by {signal.Signals(signum).name}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(s, h) for s, h in old.items()] and None
