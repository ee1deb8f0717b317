"""`chatfactory moderation score`: JSONL of texts in, JSONL of verdicts out (same order)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main
from engine.moderation import CATEGORIES, Moderator

# the shipped rule layer alone: needs no encoder package, and flags only what it matches
POLICY = str(Path(__file__).parent / "moderation_rules_only.yaml")

TEXTS = [
    "What is the capital of France?",
    "I will kill you and your whole family",
    "Thanks, that helps!",
    "",
    "Unicode is fine: caf\u00e9 \u2764",
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def score(tmp_path, inp: Path, *extra: str) -> tuple[int, Path]:
    out = tmp_path / "scores.jsonl"
    rc = main(["moderation", "score", "--input", str(inp), "--output", str(out), "--config", POLICY, *extra])
    return rc, out


@pytest.mark.parametrize("batch", ["1", "2", "64"])
def test_scores_every_line_in_order(tmp_path, capsys, batch):
    inp = write_jsonl(tmp_path / "texts.jsonl", [{"text": t, "id": i} for i, t in enumerate(TEXTS)])
    rc, out = score(tmp_path, inp, "--batch-size", batch)
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(TEXTS)
    expected = Moderator.from_config(POLICY).moderate_batch(TEXTS)
    for row, res in zip(rows, expected):
        assert set(row) == {"flagged", "score", "categories"}
        assert isinstance(row["flagged"], bool) and isinstance(row["score"], float)
        assert set(row["categories"]) == set(CATEGORIES)
        assert all(isinstance(v, bool) for v in row["categories"].values())
        assert row["flagged"] == res.flagged
        assert row["score"] == pytest.approx(max(res.category_scores.values()))
        assert row["categories"] == res.categories
    assert [r["flagged"] for r in rows] == [False, True, False, False, False]
    assert rows[1]["score"] > rows[0]["score"]
    assert "scored 5 texts (1 flagged)" in capsys.readouterr().out


def test_blank_lines_are_skipped(tmp_path):
    inp = tmp_path / "texts.jsonl"
    inp.write_text('{"text": "hello"}\n\n   \n{"text": "I will kill you"}\n\n')
    rc, out = score(tmp_path, inp)
    assert rc == 0
    assert [json.loads(x)["flagged"] for x in out.read_text().splitlines()] == [False, True]


def test_empty_input_gives_empty_output(tmp_path):
    inp = tmp_path / "texts.jsonl"
    inp.write_text("")
    rc, out = score(tmp_path, inp)
    assert rc == 0 and out.read_text() == ""


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("{not json", ["not JSON"]),
        ('["a list"]', ["a JSON list, not an object"]),
        ('"just a string"', ["a JSON str, not an object"]),
        ('{"txt": "typo"}', ['no "text" key']),
        ('{"text": 42}', ['"text" is int']),
        ('{"text": null}', ['"text" is NoneType']),
    ],
)
def test_bad_line_names_file_and_line_and_writes_nothing(tmp_path, capsys, line, words):
    inp = tmp_path / "texts.jsonl"
    inp.write_text('{"text": "fine"}\n\n' + line + '\n{"text": "after"}\n')
    rc, out = score(tmp_path, inp)
    assert rc == 1
    err = capsys.readouterr().err
    assert f"{inp}:3: " in err
    for w in words:
        assert w in err, err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.jsonl"]  # no temp file left behind


def test_bad_utf8_names_the_line(tmp_path, capsys):
    inp = tmp_path / "texts.jsonl"
    inp.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    rc, out = score(tmp_path, inp)
    assert rc == 1 and f"{inp}:2: not UTF-8" in capsys.readouterr().err
    assert not out.exists()


def test_existing_output_is_kept_when_input_is_bad(tmp_path):
    out = tmp_path / "scores.jsonl"
    out.write_text("previous run\n")
    inp = tmp_path / "texts.jsonl"
    inp.write_text('{"text": "a"}\n[]\n')
    rc, _ = score(tmp_path, inp)
    assert rc == 1 and out.read_text() == "previous run\n"


def test_failure_while_moderating_leaves_no_partial_file(tmp_path, monkeypatch):
    inp = write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in TEXTS])
    calls = []

    def flaky(self, texts):
        calls.append(len(texts))
        if len(calls) > 1:
            raise ValueError("moderator broke")
        return real(self, texts)

    real = Moderator.moderate_batch
    monkeypatch.setattr(Moderator, "moderate_batch", flaky)
    rc, out = score(tmp_path, inp, "--batch-size", "2")
    assert rc == 1 and len(calls) == 2
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.jsonl"]


def test_missing_input_file(tmp_path, capsys):
    rc, out = score(tmp_path, tmp_path / "nope.jsonl")
    assert rc == 1 and "nope.jsonl" in capsys.readouterr().err
    assert not out.exists()
