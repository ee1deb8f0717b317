"""Pipeline presets: every one parses into the stages' configs (fast), and the GPU-sized ones
start and run a step on this CPU (slow)."""

import json

import pytest

from engine.training.pipeline import available, load_pipeline_config, run_pipeline
from engine.training.runner import StageContext
from engine.training.train.config import from_dict


def stage_configs(preset):
    from engine.training.pipeline import _section
    from engine.training.train.ppo import PPOConfig
    from engine.training.train.pretrain import PretrainConfig
    from engine.training.train.reward import RewardConfig
    from engine.training.train.sft import SFTConfig

    cfg = load_pipeline_config(preset)
    out = {}
    for name, cls, base in (("pretrain", PretrainConfig, "tiny"), ("sft", SFTConfig, "sft"),
                            ("reward", RewardConfig, "reward"), ("ppo", PPOConfig, "ppo")):
        if name not in cfg:
            continue
        section = {k: v for k, v in cfg[name].items() if k != "expected_s"}
        ctx = StageContext(None, None, section, cfg)
        out[name] = from_dict(cls, _section(ctx, base))
    return cfg, out


@pytest.mark.parametrize("preset", ["tiny", "small", "gpt2-124m", "smollm2"])
def test_preset_parses(preset):
    assert preset in available()
    cfg, configs = stage_configs(preset)
    assert cfg["expected"]  # each preset says its expected time and hardware
    if preset == "smollm2":
        assert cfg["base_model"] == "smollm2-135m-instruct" and "pretrain" not in cfg["stages"]
    else:
        assert configs["pretrain"].model.n_layer >= 4
    if preset == "gpt2-124m":
        m = configs["pretrain"].model
        assert (m.family, m.n_layer, m.d_model, m.max_seq_len) == ("gpt2", 12, 768, 1024)


# shrink batches and evaluation (not the model) so one step fits a CPU test
SMOKE = [
    "pretrain.train.max_steps=1", "pretrain.train.micro_batch_size=1", "pretrain.train.seq_len=64",
    "pretrain.train.batch_tokens=null", "pretrain.train.eval_tokens=256", "pretrain.train.compile=false",
    "pretrain.samples=0", "sft.train.max_steps=1", "sft.train.micro_batch_size=1", "sft.train.seq_len=128",
    "sft.max_eval_conversations=2", "sft.eval_tasks=null", "sft.builtin_scale=0.01",
]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["small", "gpt2-124m"])
def test_gpu_presets_start_on_cpu(tmp_path, preset):
    out = tmp_path / preset
    results = run_pipeline(preset, out, SMOKE + ["tokenizer.tokenizer.vocab_size=2048"], until_stage="sft")
    assert results["pretrain"]["step"] == 1
    assert (out / "sft" / "model" / "model_config.json").exists()


@pytest.mark.slow
def test_smollm2_pipeline_end_to_end_on_cpu(tmp_path):
    out = tmp_path / "smollm2"
    # a few steps leave the answers tied under the checker; people's rankings (as the chat page
    # exports them) make sure the reward model has pairs
    people = tmp_path / "people.jsonl"
    people.write_text("".join(
        json.dumps({"prompt": f"What is {a} + {a}?", "responses": [str(2 * a), "I don't know"], "ranking": [0, 1]})
        + "\n" for a in range(10, 20)))
    tiny_counts = [f"rank.import=[{people}]",
        "sft.train.max_steps=2", "sft.train.micro_batch_size=2", "sft.max_eval_conversations=4", "sft.eval_n=2",
        "sft.builtin_scale=0.01", "sample={k: 2, n_prompts: 8, max_new_tokens: 8}",
        "reward.train.max_steps=2", "reward.train.micro_batch_size=2", "reward.norm_samples=8",
        "ppo={n_prompts: 8, rollout_batch: 4, minibatch_size: 4, max_new_tokens: 8, eval_every: 0, eval_n: 2}",
        "ppo.train.max_steps=1", "ppo.train.micro_batch_size=2", "eval={n: 2, max_new_tokens: 8}", "tasks=add2",
    ]
    run_pipeline("smollm2", out, tiny_counts)
    report = json.loads((out / "report.json").read_text())
    assert report["ppo.heldout_score"] is not None and report["reward.heldout_accuracy"] is not None
