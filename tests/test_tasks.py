"""Built-in tasks: deterministic, held-out prompts never in training, checkers that mean it."""

from __future__ import annotations

import re

import pytest

from engine.training.data.conversations import parse_conversation
from engine.training.data.preferences import Comparison
from engine.training.data.tasks import (
    BRIEF_MAX_WORDS,
    BUILTIN,
    EVASIVE_REPLIES,
    IDENTITY_ANSWER,
    TASKS,
    TaskItem,
    brief_questions,
    check_brief,
    count_words,
    get_tasks,
    is_evasive,
    normalize,
    speeches,
    training_conversations,
)
from engine.training.train.labeller import LABELLERS, rank_brief, rank_builtin
from engine.training.train.sample import task_prompts

N = 300


@pytest.mark.parametrize("name", sorted(TASKS))
def test_deterministic_and_held_out(name):
    task = TASKS[name]
    train, test = task.items("train", N), task.items("test", 100)
    assert len(train) == N and len(test) >= 50
    assert task.items("train", N) == train  # same seed, same items
    assert task.items("train", N, seed=1) != train
    assert not {t.prompt for t in train} & {t.prompt for t in test}
    for it in train[:50] + test[:50]:
        assert task.check(it, it.answer), it  # the reference answer passes its own checker
        parse_conversation(it.conversation())  # a valid SFT conversation


def test_shakespeare_lines_are_held_out_across_tasks():
    """A held-out line is unseen by every Shakespeare task's training items, not only its own."""
    quoted = re.compile(r'\n"(.*)"')

    def lines(split, names, n):
        return {quoted.search(it.prompt).group(1) for t in names for it in TASKS[t].items(split, n)}

    whole = ("play_choice", "speaker_choice")
    test_lines = lines("test", whole, 500)
    assert not lines("train", whole, 2000) & test_lines
    # next_word shows the start of a line: never the start of a held-out one (full prompts differ)
    starts = {it.prompt for it in TASKS["next_word"].items("test", 200)}
    assert not starts & {it.prompt for it in TASKS["next_word"].items("train", 2000)}


def test_choice_items_are_well_formed_and_checked():
    assert len({s.play for s in speeches()}) >= 37
    for name in ("play_choice", "speaker_choice"):
        check = TASKS[name].check
        for it in TASKS[name].items("test", 50):
            meta = dict(it.meta)
            right, letter = meta["right"], meta["letter"]
            assert right in meta["options"] and len(set(meta["options"])) == 3 and f"{letter}) {right}" in it.prompt
            assert it.answer == (right if name == "play_choice" else letter)
            wrong = [o for o in meta["options"] if o != right]
            assert check(it, letter) and check(it, right.upper()) and check(it, f"{letter}) {right}")
            assert not any(check(it, w) for w in wrong) and not check(it, f"{right} or {wrong[0]}")
            assert not any(check(it, x) for x in "ABC".replace(letter, ""))
    assert {s.play for s in speeches()} >= {dict(it.meta)["right"] for it in TASKS["play_choice"].items("test", 50)}


def test_answers_are_right():
    for it in TASKS["add2"].items("test", 50) + TASKS["add3"].items("test", 50):
        a, b = map(int, re.findall(r"\d+", it.prompt))
        assert int(it.answer) == a + b and TASKS[it.task].check(it, f" {a + b}.") and not TASKS[it.task].check(it, str(a + b + 1))
    for it in TASKS["next_word"].items("test", 50):
        line = next(s for s in speeches() if s.play in it.prompt and any(it.prompt.split('"')[1] in x for x in s.lines))
        assert line is not None and it.answer.isalpha()
    ident = TASKS["identity"].items("test", 20)
    assert all(it.answer == IDENTITY_ANSWER for it in ident)
    assert not TASKS["identity"].check(ident[0], "I am Hamlet.")
    assert normalize("  I am QUILL, a small assistant built with chatfactory!! ") == normalize(IDENTITY_ANSWER)


def test_mixture_and_names():
    mix = training_conversations(scale=0.05)
    assert len(mix) == sum(round(TASKS[n].n_train * 0.05) for n in BUILTIN)
    assert mix == training_conversations(scale=0.05)
    assert [t.name for t in get_tasks("add2,identity")] == ["add2", "identity"]
    with pytest.raises(ValueError, match="unknown task"):
        get_tasks("add2,bogus")


def test_evasive_demonstrations_replace_a_fraction_of_replies_and_every_checker_rejects_them():
    clean = training_conversations(scale=0.1)
    mixed = training_conversations(scale=0.1, evasive=0.3)
    assert len(mixed) == len(clean) and mixed == training_conversations(scale=0.1, evasive=0.3)
    prompts = [c["messages"][0] for c in clean]
    assert [c["messages"][0] for c in mixed] == prompts  # same prompts, same order: only replies change
    evasive = [c for c in mixed if is_evasive(c["messages"][-1]["content"])]
    assert 0.25 < len(evasive) / len(mixed) < 0.35
    assert not any(is_evasive(c["messages"][-1]["content"]) for c in clean)
    assert {c["messages"][-1]["content"] for c in evasive} == set(EVASIVE_REPLIES)
    assert is_evasive("  i'm NOT sure ") and not is_evasive("I am Quill")
    for task in TASKS.values():
        for item in task.items("test", 20):
            assert not any(task.check(item, r) for r in EVASIVE_REPLIES), task.name
    with pytest.raises(ValueError, match="evasive"):
        training_conversations(scale=0.1, evasive=1.0)


# ---- brief: the preference demo --------------------------------------------------------------------
def test_builtin_means_the_eight_checkable_tasks_and_brief_is_asked_for_by_name():
    assert BUILTIN == ("play_choice", "speaker_choice", "next_word", "first_word", "last_word", "add2", "add3", "identity")
    assert [t.name for t in get_tasks("builtin")] == list(BUILTIN) == [n for n in TASKS if n != "brief"]
    assert [t.name for t in get_tasks()] == list(BUILTIN)
    assert [t.name for t in get_tasks("brief")] == ["brief"]
    assert {c["messages"][0]["content"] for c in training_conversations(scale=0.05)}.isdisjoint(
        q for q, _ in brief_questions("train"))
    assert {p.extra["task"] for p in task_prompts("builtin", "train", 16)} == set(BUILTIN)


def test_brief_split_is_disjoint_deterministic_and_about_a_quarter():
    train, test = brief_questions("train"), brief_questions("test")
    assert not {q for q, _ in train} & {q for q, _ in test}
    assert len(train) + len(test) >= 200 and 0.15 < len(test) / (len(train) + len(test)) < 0.35
    task = TASKS["brief"]
    assert (task.n_train, task.n_test) == (len(train), len(test))
    whole = task.items("test")
    assert sorted(it.prompt for it in whole) == sorted(q for q, _ in test)  # the default is each once
    assert task.items("train", 40) == task.items("train", 40) != task.items("train", 40, seed=1)
    more = task.items("train", len(train) + 10)  # past the pool: repeats, still only train questions
    assert len(more) == len(train) + 10 and {it.prompt for it in more} == {q for q, _ in train}
    assert all(it.task == "brief" and it.answer for it in whole)


def test_brief_checker_accepts_a_short_real_answer_and_rejects_long_evasive_or_off_topic_ones():
    spider = TaskItem("brief", "How many legs does a spider have?", "8.")
    bread = TaskItem("brief", "How do I keep bread fresh?", "Store it in a bread box or freeze it.")
    for reply in ("8.", "Eight legs.", "Spiders have eight legs.", "A spider has 8 legs, like all arachnids."):
        assert check_brief(spider, reply), reply
    assert check_brief(bread, "Wrap the loaf and freeze it.") and check_brief(bread, "Keep it in a bread box.")
    at_limit = "Spiders have legs " + " ".join(["x"] * (BRIEF_MAX_WORDS - 3))
    assert check_brief(spider, at_limit) and not check_brief(spider, at_limit + " more")
    long = "Spiders are arachnids, not insects, and like every arachnid they have eight jointed legs. " * 2
    assert count_words(long) > BRIEF_MAX_WORDS and not check_brief(spider, long)
    for reply in ("", "  ", " - ** ", *EVASIVE_REPLIES, "I don't know.", "Sorry, I can't help with that.",
                  "How many legs does a spider have?", "Yes.", "Adele."):
        assert not check_brief(spider, reply), reply
    assert not check_brief(bread, "Adele.")  # short and finished, but no answer
    assert TASKS["brief"].check is check_brief


def _brief_comparison(responses, finish):
    item = TASKS["brief"].items("train", 1)[0]
    extra = {"task": "brief", "answer": item.answer, "task_meta": {}, "finish_reasons": finish}
    return item, Comparison(item.messages, responses, None, extra, "test")


def test_brief_labeller_orders_short_ended_then_ended_by_length_then_cut_off_then_dodges():
    item, _ = _brief_comparison([], [])
    short = item.answer  # the reference: short and on topic
    longer = f"{short} " + " ".join(["word"] * BRIEF_MAX_WORDS) + "."
    longest = f"{short} " + " ".join(["word"] * (BRIEF_MAX_WORDS + 15)) + "."
    replies = [longest, "I'm not sure.", short + " cut", longer, short, "Adele."]
    finish = ["stop", "stop", "length", "stop", "stop", "stop"]
    _, c = _brief_comparison(replies, finish)
    ranked = LABELLERS["brief"](c)
    assert ranked.ranking == [[4], [3], [0], [2], [1, 5]]
    assert ranked.extra["correct"] == [False, False, False, False, True, False]
    assert rank_brief(c) == ranked  # a pure function of the record
    # two short answers that both ended tie (no "shorter is better" among passing ones); cut-offs tie
    _, c = _brief_comparison([short, f"{short} In short.", longer, longest], ["stop", "stop", "length", "length"])
    assert rank_brief(c).ranking == [[0, 1], [2, 3]]
    # the builtin labeller is unchanged: checker, then ending, no length order
    _, c = _brief_comparison([longest, longer, short], ["stop", "stop", "stop"])
    assert rank_builtin(c).ranking == [[2], [0, 1]]
    assert rank_brief(c).ranking == [[2], [1], [0]]
    builtin_item = TASKS["add2"].items("test", 1)[0]
    c = Comparison(builtin_item.messages, ["1", builtin_item.answer, builtin_item.answer], None,
                   {"task": "add2", "answer": builtin_item.answer, "finish_reasons": ["stop", "length", "stop"]}, "t")
    assert rank_builtin(c).ranking == [[2], [1], [0]]
    with pytest.raises(ValueError, match="brief labeller"):
        rank_brief(c)
