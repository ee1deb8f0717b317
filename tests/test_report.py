"""The run report: markdown, JSON with flat keys, PNG plots."""

import json

from engine.training.eval.report import plot_lines, read_jsonl, series, write_report


def test_report_files(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.5}\n{"step": 3, "lo')
    rows = read_jsonl(tmp_path / "m.jsonl")  # the cut last line is skipped
    assert series(rows, "loss") == ([1, 2], [3.0, 2.5])
    png = plot_lines(tmp_path / "plots" / "loss.png", "loss", {"train": series(rows, "loss")})
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert plot_lines(tmp_path / "empty.png", "none", {"x": ([], [])}) is None
    md, js = write_report(
        tmp_path,
        "Run",
        {"pretrain": {"val_bpb": 2.4}, "ppo": {"heldout_score": 0.5}},
        [("loss", png)],
        [{"prompt": "2+2?", "expected": "4", "answers": {"sft": "4", "ppo": "four | 4"}}],
    )
    data = json.loads(js.read_text())
    assert data["pretrain.val_bpb"] == 2.4 and data["ppo.heldout_score"] == 0.5
    text = md.read_text()
    assert "![loss](plots/loss.png)" in text and "four \\| 4" in text
