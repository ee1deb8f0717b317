"""The resumable run directory: skip unchanged stages, re-run changed ones, --from/--until."""

import pytest

from engine.training.runner import Stage, run_stages


def make_stages(calls, fail_at=None):
    def step(name):
        def run(ctx):
            calls.append(name)
            if name == fail_at:
                raise KeyboardInterrupt  # a kill in the middle of this stage
            (ctx.stage_dir / "out.txt").write_text(name + str(ctx.config))
            ctx.progress(0.5, "half")
            return {"value": len(calls)}

        return run

    return [
        Stage("a", step("a")),
        Stage("b", step("b"), inputs=("a",)),
        Stage("c", step("c"), inputs=("b",)),
    ]


def test_rerun_skips_finished_stages(tmp_path):
    calls = []
    run_stages(make_stages(calls), tmp_path, {"a": {"x": 1}}, log=lambda *a: None)
    assert calls == ["a", "b", "c"]
    run_stages(make_stages(calls), tmp_path, {"a": {"x": 1}}, log=lambda *a: None)
    assert calls == ["a", "b", "c"]


def test_changed_config_reruns_that_stage_and_everything_after(tmp_path):
    calls = []
    run_stages(make_stages(calls), tmp_path, {}, log=lambda *a: None)
    calls.clear()
    run_stages(make_stages(calls), tmp_path, {"b": {"lr": 2}}, log=lambda *a: None)
    assert calls == ["b", "c"]


def test_killed_stage_runs_again_without_redoing_earlier(tmp_path):
    calls = []
    with pytest.raises(KeyboardInterrupt):
        run_stages(make_stages(calls, fail_at="b"), tmp_path, {}, log=lambda *a: None)
    assert not (tmp_path / "b" / "DONE.json").exists()
    calls.clear()
    results = run_stages(make_stages(calls), tmp_path, {}, log=lambda *a: None)
    assert calls == ["b", "c"] and set(results) == {"a", "b", "c"}


def test_from_and_until(tmp_path):
    calls = []
    run_stages(make_stages(calls), tmp_path, {}, until_stage="b", log=lambda *a: None)
    assert calls == ["a", "b"]
    calls.clear()
    run_stages(make_stages(calls), tmp_path, {}, from_stage="b", log=lambda *a: None)
    assert calls == ["b", "c"]
    with pytest.raises(ValueError, match="unknown stage 'z'"):
        run_stages(make_stages(calls), tmp_path, {}, from_stage="z")
    with pytest.raises(RuntimeError, match="has not been run"):
        run_stages(make_stages([]), tmp_path / "fresh", {}, from_stage="c", log=lambda *a: None)


def test_old_checkpoints_are_kept_only_for_the_same_config(tmp_path):
    """A killed stage resumes from its files only while its config is unchanged; a re-run
    with another config (or of a finished stage) starts from an empty folder, never from the
    old run's checkpoints."""
    seen = []

    def b(ctx):
        seen.append(sorted(p.name for p in ctx.stage_dir.iterdir()))
        ckpt = ctx.stage_dir / "checkpoints"
        ckpt.mkdir(exist_ok=True)
        if ctx.config.get("kill"):
            raise KeyboardInterrupt
        return {}

    stages = [Stage("a", lambda ctx: {}), Stage("b", b, inputs=("a",))]
    with pytest.raises(KeyboardInterrupt):
        run_stages(stages, tmp_path, {"b": {"kill": True}}, log=lambda *a: None)
    with pytest.raises(KeyboardInterrupt):  # same config: the checkpoint is still there to resume
        run_stages(stages, tmp_path, {"b": {"kill": True}}, log=lambda *a: None)
    run_stages(stages, tmp_path, {"b": {"kill": False}}, log=lambda *a: None)  # changed: fresh folder
    run_stages(stages, tmp_path, {"b": {"kill": False}}, from_stage="b", log=lambda *a: None)  # forced: fresh
    assert seen == [["STARTED.json"], ["STARTED.json", "checkpoints"], ["STARTED.json"], ["STARTED.json"]]
