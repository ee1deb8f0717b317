"""The end-to-end pipeline on a microscopic configuration: every stage, the report, resume."""

import json
import os

import pytest

from engine.training.pipeline import load_pipeline_config, run_pipeline

MICRO = [
    "tasks=add2",
    "tokenizer.tokenizer.vocab_size=300",
    "pretrain.model={family: llama, n_layer: 1, n_head: 2, d_model: 32, max_seq_len: 320}",
    "pretrain.train={max_steps: 2, seq_len: 64, micro_batch_size: 4, eval_tokens: 2000, time_budget: null}",
    "pretrain.samples=0",
    "sft.builtin_scale=0.01",
    "sft.max_eval_conversations=8",
    "sft.eval_n=4",
    "sft.train={max_steps: 2, micro_batch_size: 4, seq_len: 256, time_budget: null}",
    "sample={k: 2, n_prompts: 6, max_new_tokens: 6}",
    "reward.norm_samples=8",
    "reward.train={max_steps: 2, micro_batch_size: 4}",
    "ppo={n_prompts: 8, rollout_batch: 4, minibatch_size: 4, max_new_tokens: 6, eval_every: 0, eval_n: 2}",
    "ppo.train={max_steps: 1, micro_batch_size: 4, time_budget: null}",
    "eval={n: 2, max_new_tokens: 6}",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    lines = [f"ROMEO: {i} and {i + 1} make {2 * i + 1}, sweet love, the night is young.\n" for i in range(400)]
    for k in range(4):
        (d / f"doc{k}.txt").write_text("".join(lines[k * 100 : (k + 1) * 100]))
    return d


def test_every_stage_runs_and_the_report_has_its_numbers(tmp_path, corpus):
    out = tmp_path / "run"
    # an untrained micro model's answers all tie under the scripted labeller; imported rankings
    # (as people's rankings exported from the chat page would be) give the reward model pairs
    people = tmp_path / "people.jsonl"
    people.write_text("".join(
        json.dumps({"prompt": f"What is {a} + {a}?", "responses": [str(2 * a), str(2 * a + 1), "no idea"],
                    "ranking": [0, 1, 2]}) + "\n" for a in range(10, 30)))
    overrides = MICRO + [f"tokenizer.data.paths=[{corpus}]", "tokenizer.data.val_fraction=0.25",
                         f"rank.import=[{people}]"]
    results = run_pipeline("tiny", out, overrides)
    assert list(results) == ["tokenizer", "pretrain", "sft", "sample", "rank", "reward", "ppo", "eval", "report"]
    report = json.loads((out / "report.json").read_text())
    for key in ("pretrain.val_bpb", "sft.format_adherence", "sft.heldout_score", "reward.heldout_accuracy",
                "ppo.heldout_score", "ppo.kl_to_sft", "ppo.win_rate_vs_sft"):
        assert report[key] is not None, key
    assert report["pretrain.val_bpb"] > 0
    # PPO's prompts come from the run's tasks, not the PPO preset's default (all built-in tasks)
    assert json.loads((out / "ppo" / "model" / "meta.json").read_text())["config"]["tasks"] == "add2"
    md = (out / "report.md").read_text()
    assert "Headline numbers" in md and "answered by each model" in md
    assert any(p.suffix == ".png" for p in (out / "plots").iterdir())

    # a re-run with the same config skips every stage: nothing is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/DONE.json")}
    run_pipeline("tiny", out, overrides)
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("*/DONE.json")}

    # a killed stage (no DONE.json) runs again; the ones before it are not redone
    os.remove(out / "ppo" / "DONE.json")
    pretrain_done = (out / "pretrain" / "DONE.json").stat().st_mtime_ns
    results = run_pipeline("tiny", out, overrides)
    assert (out / "pretrain" / "DONE.json").stat().st_mtime_ns == pretrain_done
    assert (out / "ppo" / "DONE.json").exists() and "report" in results


def test_preset_errors():
    with pytest.raises(ValueError, match="no preset 'nope'"):
        load_pipeline_config("nope")
    cfg = load_pipeline_config("tiny", ["sft.train.lr=0.01"])
    assert cfg["sft"]["train"]["lr"] == 0.01
