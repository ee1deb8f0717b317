"""Preference formats: K-wise with ties, TRL pairs, HH-RLHF transcripts, and their errors."""

import gzip
import json

import pytest
import torch

from engine.paths import shared_data_dir
from engine.training.data.preferences import (
    Comparison,
    parse_ranking,
    parse_record,
    read_preferences,
    split_held_out,
    write_preferences,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_kwise_with_ties_gives_every_pair_but_tied_ones():
    c = parse_record({"prompt": "2+2?", "responses": ["4", "5", "four", "x"], "ranking": [0, [2, 1], 3], "task": "t"})
    assert c.prompt == [{"role": "user", "content": "2+2?"}]
    assert c.ranking == [[0], [2, 1], [3]]
    assert sorted(c.pairs()) == sorted([(0, 2), (0, 1), (0, 3), (2, 3), (1, 3)])
    assert c.extra == {"task": "t"}
    rec = c.to_record()
    assert rec["ranking"] == [0, [2, 1], 3] and rec["task"] == "t"
    assert parse_record(rec).pairs() == c.pairs()  # the written form reads back the same


def test_trl_pairs_explicit_and_implicit_prompt():
    s = parse_record({"prompt": "hi", "chosen": "hello", "rejected": "go away"})
    assert s.responses == ["hello", "go away"] and s.pairs() == [(0, 1)]
    conv = parse_record(
        {
            "prompt": [{"role": "user", "content": "hi"}],
            "chosen": [{"role": "assistant", "content": "hello"}],
            "rejected": [{"role": "assistant", "content": "no"}],
        }
    )
    assert conv.responses == ["hello", "no"]
    u = {"role": "user", "content": "hi"}
    implicit = parse_record(
        {"chosen": [u, {"role": "assistant", "content": "a"}], "rejected": [u, {"role": "assistant", "content": "b"}]}
    )
    assert implicit.prompt == [u] and implicit.responses == ["a", "b"]


def test_hh_transcript_is_split_into_shared_prompt_and_two_replies():
    base = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant:"
    c = parse_record({"chosen": base + " 4", "rejected": base + " Fish."})
    assert [m["role"] for m in c.prompt] == ["user", "assistant", "user"]
    assert c.prompt[-1]["content"] == "What is 2+2?"
    assert c.responses == ["4", "Fish."]


@pytest.mark.parametrize(
    "rec, message",
    [
        ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}, "exactly once"),
        ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 2]}, "exactly once"),
        ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, []]}, "non-empty lists"),
        ({"prompt": "p", "messages": [], "responses": ["a"]}, "exactly one of"),
        ({"prompt": "p", "chosen": "a"}, "missing 'rejected'"),
        ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: X\n\nAssistant: c"}, "differ"),
        ({"chosen": "no markers", "rejected": "no markers"}, "HH-RLHF"),
        ({"messages": [{"role": "bot", "content": "x"}], "responses": ["a"]}, r"'messages'\[0\]"),
        ({"text": "x"}, "not a preference record"),
    ],
)
def test_malformed_records_name_the_problem(rec, message):
    with pytest.raises(ValueError, match=message):
        parse_record(rec, "f.jsonl:7")


def test_file_errors_name_file_and_line(tmp_path):
    p = tmp_path / "prefs.jsonl"
    p.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n\n{oops\n")
    with pytest.raises(ValueError, match=r"prefs.jsonl:3: not valid JSON"):
        read_preferences(p)
    p.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"]}) + "\n")
    with pytest.raises(ValueError, match=r"prefs.jsonl:1: no 'ranking'"):
        read_preferences(p)
    assert read_preferences(p, require_ranking=False)[0].ranking is None


def test_roundtrip_gzip_and_held_out_split_by_prompt(tmp_path):
    cs = [Comparison([{"role": "user", "content": f"q{i % 10}"}], ["a", "b"], [[i % 2], [1 - i % 2]]) for i in range(40)]
    out = tmp_path / "x.jsonl.gz"
    assert write_preferences(out, cs) == 40
    back = read_preferences(out)
    assert [c.pairs() for c in back] == [c.pairs() for c in cs]
    train, held = split_held_out(back, 0.2)
    assert len(held) == 8 and not {c.prompt[0]["content"] for c in train} & {c.prompt[0]["content"] for c in held}
    assert split_held_out(back, 0.2)[1] == held  # deterministic


def test_parse_ranking_accepts_nested_singletons():
    assert parse_ranking([[1], [0, 2]], 3) == [[1], [0, 2]]


def test_real_hh_rlhf_file_reads_directly_from_gzip():
    data = shared_data_dir()
    path = data / "hh-rlhf" / "helpful-online-test.jsonl.gz" if data else None
    if path is None or not path.exists():
        pytest.skip("shared HH-RLHF data not available")
    cs = read_preferences(path, skip_invalid=True)
    assert len(cs) + cs.skipped == 1137 and cs.skipped <= 5
    assert all(c.prompt[-1]["role"] == "user" and len(c.responses) == 2 for c in cs)
    with gzip.open(path, "rt") as f:
        first = json.loads(f.readline())
    assert first["chosen"].endswith(cs[0].responses[0])


# ---- sampling K answers and the scripted labeller ----------------------------------------------
def test_builtin_labeller_ranks_by_checker_then_clean_end():
    from engine.training.data.tasks import TASKS
    from engine.training.train.labeller import item_record, rank_builtin

    item = TASKS["add2"].items("train", 1)[0]
    right, wrong = item.answer, str(int(item.answer) + 1)
    c = Comparison(
        item.messages,
        [wrong, right + " is the sum", right, right, "no idea at all"],
        None,
        {**item_record(item), "finish_reasons": ["stop", "stop", "length", "stop", "stop"]},
    )
    ranked = rank_builtin(c)
    # right+clean, right but cut off, then the wrong ones tied ("85 is the sum" fails the number checker)
    assert ranked.ranking == [[3], [2], [0, 1, 4]]
    same = rank_builtin(Comparison(item.messages, [right + ".", right], None, item_record(item)))
    assert same.ranking == [[0, 1]]  # both right and clean: a tie, whatever their lengths
    assert ranked.extra["correct"] == [False, False, True, True, False]
    tie = rank_builtin(Comparison(item.messages, [right, right], None, item_record(item)))
    assert tie.ranking == [[0, 1]] and tie.pairs() == []


def test_labeller_rejects_prompts_without_a_task():
    from engine.training.train.labeller import rank_builtin

    with pytest.raises(ValueError, match="f.jsonl:2: the builtin labeller needs"):
        rank_builtin(Comparison([{"role": "user", "content": "hi"}], ["a"], None, {}, "f.jsonl:2"))


def test_sample_writes_k_answers_then_rank_cli(tmp_path):

    from engine.cli import main
    from engine.training.model import GPT, ModelConfig
    from engine.training.model.checkpoint import save_model
    from engine.training.tokenizer import Tokenizer

    tok = Tokenizer.train(["What is 12 + 34? 46. Who are you? " * 30], vocab_size=300)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=16, max_seq_len=96))
    save_model(tmp_path / "m", model, tok)
    out, ranked = tmp_path / "s.jsonl", tmp_path / "r.jsonl"
    args = ["sample", "--model", str(tmp_path / "m"), "--tasks", "add2,identity", "-n", "4", "-k", "3"]
    assert main([*args, "--out", str(out), "--max-new-tokens", "8"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 4 and all(len(r["responses"]) == 3 and len(r["finish_reasons"]) == 3 for r in recs)
    assert main(["rank", "--labeller", "builtin", str(out), str(ranked)]) == 0
    assert all(c.ranking is not None for c in read_preferences(ranked))
