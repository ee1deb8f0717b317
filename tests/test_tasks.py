"""Built-in tasks: deterministic, held-out prompts never in training, checkers that mean it."""

from __future__ import annotations

import re

import pytest

from engine.training.data.conversations import parse_conversation
from engine.training.data.tasks import (
    EVASIVE_REPLIES,
    IDENTITY_ANSWER,
    TASKS,
    get_tasks,
    is_evasive,
    normalize,
    speeches,
    training_conversations,
)

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
    assert len(mix) == sum(round(t.n_train * 0.05) for t in TASKS.values())
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
