"""Time to first token of a follow-up turn in a long conversation, against the prefill of only its
new tokens, a cold replay of the whole prompt, and after switching to another session and back.

    python bench/followup_ttft.py [--history-tokens 3000] [--threads N]

A conversation of about 3,000 tokens (real OpenAssistant exchanges when ../shared/data is there,
else generated text) is stored with the default hidden templates. The engine answers one turn to
warm it (that is the cold replay), then a follow-up; its time to first token (send() called ->
the model's first token, so prompt moderation, storing and rendering count) is divided by the time
raw llama.cpp takes to prefill just the follow-up's new tokens on top of a cached prefix
(goal <= 1.3), and compared with a cold replay of the whole prompt (goal: >= 10x faster).
Then a second long session takes a turn, and the first session's next turn is timed the same way
(goal <= 1.3x its new tokens' prefill): the session KV cache at work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from engine.models.registry import resolve
from engine.moderation import Moderator
from engine.paths import shared_data_dir
from engine.runtime import LlamaRuntime, RuntimeSettings, Sampling, common_prefix
from engine.store import Store
from engine.templates import TemplateLibrary
from engine.turn import Chat

SAMPLING = Sampling(temperature=0.0, max_tokens=8, seed=1)


def exchanges(skip: int = 0) -> list[tuple[str, str]]:
    """(user, assistant) pairs of real conversations (OASST validation set), or generated text."""
    data = shared_data_dir()
    path = data / "oasst" / "oasst1-en-validation.jsonl" if data else None
    if path and path.exists():
        msgs = [json.loads(line) for line in path.open(encoding="utf-8")]
        by_id = {m["message_id"]: m for m in msgs}
        pairs = []
        for m in msgs:
            parent = by_id.get(m.get("parent_id") or "")
            if m["role"] == "assistant" and parent and parent["role"] == "prompter":
                pairs.append((parent["text"], m["text"]))
        return pairs[skip:]
    return [(f"Question {i}: tell me about topic {i}.", f"Topic {i} is interesting because " * 12) for i in range(skip, 400)]


def fill(chat: Chat, pairs: list[tuple[str, str]], target: int) -> int:
    """A session whose rendered history is about `target` tokens (stored as the app stores it)."""
    sid = chat.new_session(title="long")
    session = chat.store.get_session(sid)
    ts, values = chat.template_for(session), chat._values(session)
    for user, bot in pairs:
        if len(chat.runtime.tokenize_messages(chat.history(sid))) > target:
            break
        chat.store.add_message(sid, "user", user, hidden=ts.wrap_user(user, **values), template_set=ts.name,
                               template_version=ts.version)  # fmt: skip
        chat.store.add_message(sid, "assistant", bot, finish_reason="stop", model=chat.runtime.name)
    return sid


def timed_turn(chat: Chat, sid: int, text: str) -> tuple[float, dict]:
    """send() -> the model's first token, and the stored answer's timings."""
    t0 = time.perf_counter()
    started = None
    for ev in chat.send(sid, text, sampling=SAMPLING):
        if ev.kind == "started":
            started = time.perf_counter() - t0
    msg = chat.store.branch(sid)[-1]
    timings = {**msg["timings"], "prompt_tokens": msg["prompt_tokens"]}
    return started + timings["ttft_s"], timings


class RawLlama:
    """Raw llama.cpp on session A's prompts: times the prefill of only a turn's new tokens, on
    top of the same cached prefix the engine reused (caught up first, untimed)."""

    def __init__(self, llm):
        self.llm = llm

    def cold(self, tokens: list[int]) -> float:
        self.llm.reset()
        return self._timed(tokens)

    def new_tokens(self, tokens: list[int], reused: int) -> float:
        llm = self.llm
        common = common_prefix(llm.input_ids[: llm.n_tokens], tokens)
        llm.n_tokens = min(common, reused)
        if llm.n_tokens < reused:
            llm.eval(tokens[llm.n_tokens : reused])
        return self._timed(tokens[reused:])

    def _timed(self, tokens: list[int]) -> float:
        t0 = time.perf_counter()
        self.llm.eval(tokens)
        self.llm.sample(temp=0.0)
        return time.perf_counter() - t0


def prompt_of_last_turn(chat: Chat, sid: int) -> list[int]:
    branch = chat.store.branch(sid)
    return chat.runtime.build_prompt(chat.history(sid, branch[-2]["id"]), SAMPLING.max_tokens).tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--history-tokens", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import llama_cpp

    name, path = resolve(None)
    settings = RuntimeSettings(n_ctx=4096, n_threads=args.threads)
    runtime = LlamaRuntime(path, settings, name=name)
    n_threads, n_batch_threads = settings.threads()
    raw = RawLlama(llama_cpp.Llama(model_path=str(path), n_ctx=4096, n_threads=n_threads,
                                   n_threads_batch=n_batch_threads, n_batch=settings.n_batch,
                                   flash_attn=settings.flash_attn, verbose=False))  # fmt: skip
    follow, switch = [], []
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "bench.db")
        chat = Chat(store, runtime, Moderator.from_config(None), TemplateLibrary.load(), SAMPLING)
        pairs = exchanges()
        a = fill(chat, pairs, args.history_tokens)
        b = fill(chat, pairs[len(store.branch(a)) // 2 + 5 :], args.history_tokens)

        cold, t_cold = timed_turn(chat, a, "Thanks. Can you summarise what we discussed?")
        cold_raw = raw.cold(prompt_of_last_turn(chat, a))
        print(f"history: {t_cold['prompt_tokens']} prompt tokens in session A ({len(store.branch(a))} messages)")
        for i in range(args.rounds):
            ttft, t = timed_turn(chat, a, f"And what should I read next? ({i})")
            ref = raw.new_tokens(prompt_of_last_turn(chat, a), t["reused_tokens"])
            follow.append((ttft, ref, t["prompt_tokens"] - t["reused_tokens"]))
            print(f"  (prefill {t['prefill_s'] * 1000:.0f} ms, ttft in runtime {t['ttft_s'] * 1000:.0f} ms)")
        for i in range(args.rounds):
            timed_turn(chat, b, f"Thanks. Can you summarise that? ({i})")  # session B takes the model
            ttft, t = timed_turn(chat, a, f"One more question: why? ({i})")
            ref = raw.new_tokens(prompt_of_last_turn(chat, a), t["reused_tokens"])
            switch.append((ttft, ref, t["prompt_tokens"] - t["reused_tokens"]))
            print(f"  (switch {t['switch_s'] * 1000:.0f} ms, prefill {t['prefill_s'] * 1000:.0f} ms, "
                  f"ttft in runtime {t['ttft_s'] * 1000:.0f} ms)")  # fmt: skip
        store.close()

    def show(label: str, rows: list[tuple[float, float, int]]) -> None:
        ratios = sorted(r[0] / r[1] for r in rows)
        for ttft, ref, new in rows:
            print(f"  {label}: TTFT {ttft * 1000:.0f} ms, raw prefill of its {new} new tokens {ref * 1000:.0f} ms, "
                  f"ratio {ttft / ref:.2f}")  # fmt: skip
        print(f"{label}: median ratio {statistics.median(ratios):.2f} (goal <= 1.3)")

    print(f"threads {settings.threads()} (decode, prompt), batch {settings.n_batch}, flash_attn {settings.flash_attn}")
    print(f"cold replay through the engine (first turn on the history): {cold * 1000:.0f} ms "
          f"({t_cold['prompt_tokens']} tokens)")  # fmt: skip
    print(f"cold replay, raw llama.cpp, same prompt:                    {cold_raw * 1000:.0f} ms")
    show("follow-up", follow)
    med_follow = statistics.median(r[0] for r in follow)
    print(f"cold replay (raw) / follow-up TTFT (median): {cold_raw / med_follow:.1f}x (goal >= 10x)")
    show("back from another session", switch)


if __name__ == "__main__":
    main()
