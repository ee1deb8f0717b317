"""The end-to-end recipe: tokenizer → pre-training → SFT → sample K answers → rank → reward model
→ PPO → evaluation → report, in one resumable run folder.

`chatfactory pipeline --preset tiny --out runs/NAME` runs every stage in order; each stage writes
`runs/NAME/<stage>/` and is skipped on a re-run when its config and inputs are unchanged
(engine.training.runner). Training stages resume from their own checkpoints after a kill.

A pipeline preset (presets/pipeline/NAME.yaml) has one section per stage. The training sections
are the stage's own config (the same fields as `chatfactory sft --config`, etc.); paths between
stages are filled in here. Any field can be overridden: `--set sft.train.max_steps=50`.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
from pathlib import Path
from typing import Any

from engine.training.runner import Stage, StageContext, run_stages
from engine.training.train.config import apply_override, from_dict, read_yaml

PRESET_DIR = Path(__file__).parent / "presets" / "pipeline"
STAGES = ("tokenizer", "pretrain", "sft", "sample", "rank", "reward", "ppo", "eval", "report")


def available() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_pipeline_config(preset: str, overrides: list[str] = ()) -> dict:
    path = Path(preset)
    if not path.exists():
        path = PRESET_DIR / f"{preset}.yaml"
        if not path.exists():
            raise ValueError(f"pipeline: no preset {preset!r} (presets: {', '.join(available())}, or a YAML file)")
    cfg = read_yaml(path)
    unknown = sorted(set(cfg) - set(STAGES) - {"description", "expected", "stages", "base_model", "tasks", "seed"})
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown} (stages: {', '.join(STAGES)})")
    for o in overrides:
        apply_override(cfg, o)
    return cfg


def _section(ctx: StageContext, base_preset: str | None = None) -> dict:
    """This stage's config: a stage preset's defaults (the section's `base`, else base_preset),
    then the pipeline's section over it."""
    section = copy.deepcopy(ctx.config)
    section.pop("_run", None)
    base = section.pop("base", base_preset)
    data = read_yaml(base) if base else {}
    data.pop("description", None)
    data.pop("out_dir", None)
    return _deep_merge(data, section)


def _deep_merge(into: dict, new: dict) -> dict:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _deep_merge(into[k], v)
        else:
            into[k] = v
    return into


def _resume(stage_dir: Path) -> bool:
    """Resume from the stage's own checkpoint if a killed run left one."""
    return (stage_dir / "checkpoints").exists() and any((stage_dir / "checkpoints").iterdir())


# ---- the stages --------------------------------------------------------------------------------------
def stage_tokenizer(ctx: StageContext) -> dict:
    from engine.training.train.pretrain import PretrainConfig, prepare_data

    # the tokenizer section holds PretrainConfig's data and tokenizer groups
    cfg = from_dict(PretrainConfig, {k: v for k, v in _section(ctx).items() if k in ("data", "tokenizer")})
    tok, shards = prepare_data(cfg, ctx.stage_dir)
    splits = shards.manifest["splits"]
    return {
        "vocab_size": tok.vocab_size,
        "train_tokens": splits["train"]["tokens"],
        "val_tokens": splits.get("val", {}).get("tokens", 0),
    }


def stage_pretrain(ctx: StageContext) -> dict:
    from engine.training.train.pretrain import PretrainConfig, run

    data = _section(ctx, "tiny")
    data.pop("data", None), data.pop("tokenizer", None)  # both come from the tokenizer stage
    tok_dir = ctx.input_dir("tokenizer")
    data.setdefault("tokenizer", {})["path"] = str(tok_dir / "tokenizer")
    data.setdefault("data", {})["shards"] = str(tok_dir / "shards")
    data["out_dir"] = str(ctx.stage_dir)
    cfg = from_dict(PretrainConfig, data)
    result = run(cfg, resume=_resume(ctx.stage_dir))
    return {k: result[k] for k in ("val_bpb", "val_loss", "step", "tokens", "train_time", "stop_reason") if k in result}


def base_model(ctx: StageContext) -> str:
    """The model SFT starts from: this run's pre-trained model, or the preset's base_model."""
    if ctx.full_config.get("base_model"):
        return ctx.full_config["base_model"]
    return str(ctx.input_dir("pretrain") / "model")


def stage_sft(ctx: StageContext) -> dict:
    from engine.training.train.sft import SFTConfig, run_sft

    data = _section(ctx, "sft")
    data["model"] = base_model(ctx)
    data["out_dir"] = str(ctx.stage_dir)
    # the task checkers run once, in the eval stage, on the SFT and PPO models alike
    summary = run_sft(from_dict(SFTConfig, data), resume=_resume(ctx.stage_dir))
    return {
        "heldout_loss_before": summary["heldout_loss_before"],
        "heldout_loss": summary["heldout_loss_after"],
        "steps": summary["steps"],
        "train_time_s": summary["train_time_s"],
    }


def stage_sample(ctx: StageContext) -> dict:
    from engine.training.data.preferences import write_preferences
    from engine.training.loader import load
    from engine.training.sampler import SamplingParams
    from engine.training.train.sample import sample_comparisons, task_prompts

    c = {"k": 4, "n_prompts": 400, "temperature": 1.0, "max_new_tokens": 24, "seed": 0, **_section(ctx)}
    sft = load(ctx.input_dir("sft") / "model")
    prompts = task_prompts(ctx.full_config.get("tasks", "builtin"), "train", c["n_prompts"], c["seed"])
    params = SamplingParams(max_new_tokens=c["max_new_tokens"], temperature=c["temperature"], top_p=c.get("top_p", 1.0),
                            seed=c["seed"])
    comps = sample_comparisons(sft.model, sft.tokenizer, prompts, params, c["k"])
    n = write_preferences(ctx.stage_dir / "samples.jsonl", comps)
    return {"prompts": n, "answers": n * c["k"]}


def stage_rank(ctx: StageContext) -> dict:
    from engine.training.data.preferences import read_preferences, write_preferences
    from engine.training.train.labeller import LABELLERS

    name = ctx.config.get("labeller", "builtin")
    if name not in LABELLERS:
        raise ValueError(f"rank.labeller: unknown labeller {name!r} (known: {', '.join(LABELLERS)})")
    comps = read_preferences(ctx.input_dir("sample") / "samples.jsonl", require_ranking=False)
    ranked = [LABELLERS[name](c) for c in comps]
    correct = [x for c in ranked for x in c.extra.get("correct", [])]
    # rankings from people (`chatfactory feedback export`) or other files join the scripted ones
    imported = [c for f in ctx.config.get("import", []) for c in read_preferences(f)]
    n = write_preferences(ctx.stage_dir / "rankings.jsonl", ranked + imported)
    distinct = sum(len(c.ranking) > 1 for c in ranked + imported)
    return {"comparisons": n, "imported": len(imported), "with_a_preference": distinct,
            "sampled_accuracy": sum(correct) / max(len(correct), 1)}


def stage_reward(ctx: StageContext) -> dict:
    from engine.training.train.reward import RewardConfig, train_reward_model

    data = _section(ctx, "reward")
    data["model"] = str(ctx.input_dir("sft") / "model")
    data["data"] = [str(ctx.input_dir("rank") / "rankings.jsonl")]
    data["out_dir"] = str(ctx.stage_dir)
    cfg = from_dict(RewardConfig, data)
    stats = train_reward_model(cfg, resume=_resume(ctx.stage_dir))
    keep = ("heldout_accuracy", "heldout_pairs", "train_pairs", "steps", "train_time")
    return {k: stats[k] for k in keep if k in stats}


def stage_ppo(ctx: StageContext) -> dict:
    from engine.training.train.ppo import PPOConfig, train_ppo

    data = _section(ctx, "ppo")
    data["model"] = str(ctx.input_dir("sft") / "model")
    data["reward_model"] = str(ctx.input_dir("reward") / "model")
    data["out_dir"] = str(ctx.stage_dir)
    if "tasks" not in ctx.config:  # the run's tasks, not the PPO preset's default ("builtin")
        data["tasks"] = ctx.full_config.get("tasks", "builtin")
    result = train_ppo(from_dict(PPOConfig, data), resume=_resume(ctx.stage_dir))
    return {k: v for k, v in result.items() if isinstance(v, (int, float, str)) and k != "checkpoint"}


def stage_eval(ctx: StageContext) -> dict:
    from engine.training.eval.rlhf import compare
    from engine.training.eval.tasks import evaluate_tasks
    from engine.training.loader import load
    from engine.training.train.reward_model import load_reward_model
    from engine.training.train.sample import task_prompts

    c = {"n": 100, "max_new_tokens": 32, "seed": 0, **_section(ctx)}
    tasks = ctx.full_config.get("tasks", "builtin")
    sft, ppo = load(ctx.input_dir("sft") / "model"), load(ctx.input_dir("ppo") / "model")
    rm, _, _ = load_reward_model(ctx.input_dir("reward") / "model")
    out: dict[str, Any] = {}
    for name, m in (("sft", sft), ("ppo", ppo)):
        res = evaluate_tasks(m.model, m.tokenizer, tasks, n=c["n"], max_new_tokens=c["max_new_tokens"], seed=c["seed"])
        out[name] = res
    prompts = task_prompts(tasks, "test", c["n"] * 2, c["seed"])
    out["compare"] = compare(ppo.model, sft.model, rm, sft.tokenizer, prompts, max_new_tokens=c["max_new_tokens"],
                             seed=c["seed"])
    out["side_by_side"] = side_by_side(ctx, sft.tokenizer, c)
    (ctx.stage_dir / "eval.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    cmp = out["compare"]
    return {
        "sft_heldout_score": out["sft"]["mean_accuracy"],
        "ppo_heldout_score": out["ppo"]["mean_accuracy"],
        "sft_format": out["sft"]["mean_format"],
        "ppo_format": out["ppo"]["mean_format"],
        "kl_to_sft": cmp["kl_ppo_to_sft"],
        "win_rate_by_reward": cmp["win_rate_by_reward"],
        "win_rate_by_checker": cmp.get("win_rate_by_checker"),
    }


def side_by_side(ctx: StageContext, tokenizer, c: dict, per_task: int = 2) -> list[dict]:
    """The same held-out prompts answered by the base, SFT and PPO models (greedy)."""
    from engine.training.data.tasks import get_tasks
    from engine.training.loader import load
    from engine.training.sampler import SamplingParams
    from engine.training.train.sample import generate_answers

    items = [it for t in get_tasks(ctx.full_config.get("tasks", "builtin")) for it in t.items("test", per_task, c["seed"])]
    models = {"base": ctx.input_dir("pretrain") / "model", "sft": ctx.input_dir("sft") / "model",
              "ppo": ctx.input_dir("ppo") / "model"}
    if ctx.full_config.get("base_model"):
        models["base"] = ctx.full_config["base_model"]
    params = SamplingParams(max_new_tokens=c["max_new_tokens"], temperature=0.0)
    rows = [{"prompt": it.prompt, "expected": it.answer, "answers": {}} for it in items]
    for name, spec in models.items():
        if not Path(spec).exists() and name == "base" and not ctx.full_config.get("base_model"):
            continue
        m = load(spec)
        answers = generate_answers(m.model, m.tokenizer, [it.messages for it in items], params)
        for row, a in zip(rows, answers):
            row["answers"][name] = a[0].text
    return rows


def stage_report(ctx: StageContext) -> dict:
    from engine.training.eval.report import plot_lines, read_jsonl, series, write_report

    run, r = ctx.run_dir, ctx.results
    plots = []
    pdir = run / "plots"
    pre = read_jsonl(run / "pretrain" / "metrics.jsonl")
    sft = read_jsonl(run / "sft" / "metrics.jsonl")
    rew = read_jsonl(run / "reward" / "metrics.jsonl")
    ppo = read_jsonl(run / "ppo" / "metrics.jsonl")
    for title, name, lines, ylabel in (
        ("Pre-training loss", "pretrain_loss.png",
         {"train": series(pre, "loss"), "validation": series(pre, "val_loss")}, "nats/token"),
        ("SFT loss", "sft_loss.png", {"train": series(sft, "loss"), "held-out": series(sft, "heldout_loss")}, "nats/token"),
        ("Reward model", "reward.png", {"train loss": series(rew, "loss"), "held-out accuracy": series(rew, "heldout_accuracy")}, ""),
        ("PPO: reward and checker score", "ppo_reward.png",
         {"mean reward": series(ppo, "reward"), "checker score": series(ppo, "checker"),
          "held-out checker": series(ppo, "heldout_accuracy")}, ""),
        ("PPO: KL to the SFT model", "ppo_kl.png", {"KL": series(ppo, "kl")}, "nats/answer"),
    ):
        png = plot_lines(pdir / name, title, lines, ylabel=ylabel)
        if png:
            plots.append((title, png))
    ev = json.loads((run / "eval" / "eval.json").read_text())
    headline = {
        "pretrain": {"val_bpb": r.get("pretrain", {}).get("val_bpb"), "train_time_s": r.get("pretrain", {}).get("train_time")},
        "sft": {"format_adherence": ev["sft"]["mean_format"], "heldout_score": ev["sft"]["mean_accuracy"],
                "heldout_loss": r.get("sft", {}).get("heldout_loss")},
        "reward": {"heldout_accuracy": r.get("reward", {}).get("heldout_accuracy")},
        "ppo": {"heldout_score": ev["ppo"]["mean_accuracy"], "format_adherence": ev["ppo"]["mean_format"],
                "kl_to_sft": ev["compare"]["kl_ppo_to_sft"], "win_rate_vs_sft": ev["compare"]["win_rate_by_reward"],
                "win_rate_vs_sft_by_checker": ev["compare"].get("win_rate_by_checker")},
    }
    for name in ("sft", "ppo"):
        for task, res in ev[name]["tasks"].items():
            headline[name][f"accuracy.{task}"] = res["accuracy"]
    notes = [f"Stages: {', '.join(s for s in STAGES if s in r or s == 'report')}.",
             "Held-out scores are greedy decoding on the tasks' test prompts, which never appear in training."]
    md, _ = write_report(run, f"chatfactory run: {run.name}", headline, plots, ev["side_by_side"], notes)
    return {"report": str(md)}


STAGE_FUNCS = {
    "tokenizer": (stage_tokenizer, (), 20),
    "pretrain": (stage_pretrain, ("tokenizer",), 240),
    "sft": (stage_sft, ("pretrain",), 200),
    "sample": (stage_sample, ("sft",), 40),
    "rank": (stage_rank, ("sample",), 2),
    "reward": (stage_reward, ("sft", "rank"), 90),
    "ppo": (stage_ppo, ("sft", "reward"), 240),
    "eval": (stage_eval, ("sft", "ppo", "reward"), 60),
    "report": (stage_report, ("eval",), 5),
}


def build_stages(cfg: dict) -> list[Stage]:
    """The stages this preset runs (a preset on a pretrained base_model skips tokenizer and pretrain)."""
    names = cfg.get("stages") or list(STAGES)
    stages = []
    for name in names:
        func, inputs, expected = STAGE_FUNCS[name]
        inputs = tuple(i for i in inputs if i in names)
        if name == "sft" and "pretrain" not in names:
            inputs = ()
        expected = cfg.get(name, {}).get("expected_s", expected) if isinstance(cfg.get(name), dict) else expected
        stages.append(Stage(name, func, inputs, expected))
    return stages


def run_pipeline(preset: str, out: str | Path, overrides: list[str] = (), from_stage=None, until_stage=None) -> dict:
    cfg = load_pipeline_config(preset, overrides)
    run_dir = Path(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "pipeline.json").write_text(json.dumps({"preset": preset, "overrides": list(overrides), "config": cfg},
                                                      indent=2) + "\n")
    # stage configs must not carry the runner-only keys into the stages' dataclasses; the run-wide
    # keys go into every section under "_run" so that changing them re-runs the stages (fingerprints)
    run_wide = {k: cfg[k] for k in ("tasks", "base_model", "seed") if k in cfg}
    stage_cfg = {k: ({**{kk: vv for kk, vv in v.items() if kk != "expected_s"}, "_run": run_wide}
                     if isinstance(v, dict) else v) for k, v in cfg.items()}
    return run_stages(build_stages(cfg), run_dir, stage_cfg, from_stage, until_stage)


def register(subparsers) -> None:
    p = subparsers.add_parser("pipeline", help="run every stage, text to aligned model, with a report",
                              description=__doc__)
    p.add_argument("--preset", default="tiny", help=f"pipeline preset ({', '.join(available())}) or a YAML file")
    p.add_argument("--out", default=None, help="run folder (default runs/<preset>)")
    p.add_argument("--from", dest="from_stage", choices=STAGES, help="re-run from this stage on")
    p.add_argument("--until", dest="until_stage", choices=STAGES, help="stop after this stage")
    p.add_argument("--max-steps", type=int, help="cap every training stage's steps (smoke runs)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.FIELD=VALUE",
                   help="override a config field, e.g. --set sft.train.lr=5e-4 (repeatable)")
    p.add_argument("--clean", action="store_true", help="delete the run folder first")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    out = Path(args.out or f"runs/{Path(args.preset).stem}")
    if args.clean and out.exists():
        shutil.rmtree(out)
    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides += [f"{s}.train.max_steps={args.max_steps}" for s in ("pretrain", "sft", "reward", "ppo")]
    results = run_pipeline(args.preset, out, overrides, args.from_stage, args.until_stage)
    if "report" in results:
        print(f"report: {out / 'report.md'}")
    return 0
