"""The seven-step turn (MISSION.md, part 2), on llama.cpp and the SQLite store:

    1. the user's message arrives; it is stored (committed) before anything else happens;
    2. moderation checks it;
    4. flagged: the template answer is stored and shown, and the model is NOT called;
    3. passed: the whole conversation (the visible branch) plus the hidden instructions before
       (system) and after each user message goes to the model, trimmed to its context window;
    5. the model streams its answer;
    6. moderation checks the answer as it streams: text is released only after it passed;
    7. passed: shown and stored. Flagged: generation stops, the template replaces the answer
       (finish reason `content_filter`), and the held-back text is dropped.

`Chat.send` (and `regenerate`, `edit`) are generators of `TurnEvent`s, for a GUI worker or a
terminal: `started`, `delta` (released text), `verdict`, `replace` (a template replaces what
was shown), `done` (with the stored answer). A moderator that raises fails closed.

Durability: the assistant row is created (finish_reason NULL) before generation and its
released text is saved as it streams, so a crash leaves every sent message and the partial
answer, which the next start marks `interrupted` (Store.open). Stop keeps the answer with
finish reason `cancelled`.

Flagged exchanges never reach the model again: a flagged prompt and its template answer, and a
flagged answer with the prompt it answered, are left out of the replayed history.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from engine.moderation import CATEGORIES, ModerationResult, Moderator
from engine.runtime import LlamaRuntime, Sampling
from engine.store import ACTIVE_LEAF, Store
from engine.templates import TemplateLibrary, TemplateSet

log = logging.getLogger(__name__)

SAVE_EVERY_S = 0.5  # how often released text of a streaming answer is written to the store
MAX_MESSAGE_CHARS = 100_000  # ~25k tokens: more than any bundled model's context; a bigger paste is refused


@dataclass
class TurnEvent:
    kind: str  # "started" | "delta" | "verdict" | "replace" | "done"
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def verdict_dict(stage: str, result: ModerationResult) -> dict[str, Any]:
    """What the store keeps of a moderation result (and what the GUI's notice shows)."""
    top = max(result.category_scores.values()) if result.category_scores else 0.0
    out = {
        "stage": stage, "flagged": result.flagged, "categories": result.flagged_categories,
        "score": round(float(top), 4),
    }  # fmt: skip
    if result.details.get("failed_closed") or result.details.get("errors"):
        out["errors"] = result.details.get("errors", [])
        out["failed_closed"] = bool(result.details.get("failed_closed"))
    return out


def failure_result(error: BaseException, fail_closed: bool = True) -> ModerationResult:
    """The verdict when the moderator itself failed: flagged (fail closed, the default) or, when
    the user turned fail-closed off in Settings, passed with the error recorded."""
    return ModerationResult(
        flagged=fail_closed, categories=dict.fromkeys(CATEGORIES, False),
        category_scores=dict.fromkeys(CATEGORIES, 0.0),
        details={"errors": [f"{type(error).__name__}: {error}"], "failed_closed": fail_closed},
    )  # fmt: skip


def template_answer(templates: TemplateSet, stage: str, result: ModerationResult) -> str:
    if result.details.get("failed_closed"):
        return templates.answer("error")
    return templates.answer(stage, result.flagged_categories)


class Chat:
    """The chat engine: one store, one loaded model, one moderator, the template library."""

    def __init__(
        self,
        store: Store,
        runtime: LlamaRuntime | None,
        moderator: Moderator,
        templates: TemplateLibrary,
        sampling: Sampling | None = None,
    ):
        self.store = store
        self.runtime = runtime
        self.moderator = moderator
        self.templates = templates
        self.sampling = sampling or Sampling()

    # ---- sessions ----------------------------------------------------------------------------
    def new_session(self, title: str = "New chat", template_set: str | None = None) -> int:
        ts = self.templates.get(template_set) if template_set else self.templates.default()
        model = self.runtime.name if self.runtime else None
        return self.store.create_session(
            title=title, model=model, template_set=ts.name, template_version=ts.version
        )

    def template_for(self, session: dict) -> TemplateSet:
        name = session.get("template_set") or "default"
        try:
            return self.templates.get(name)
        except KeyError:
            log.warning("session %s: template set %r is gone; using default", session["id"], name)
            return self.templates.default()

    # ---- the turn ----------------------------------------------------------------------------
    def send(
        self,
        session_id: int,
        text: str,
        *,
        cancel: threading.Event | None = None,
        sampling: Sampling | None = None,
        parent_id: Any = ACTIVE_LEAF,
    ) -> Iterator[TurnEvent]:
        """A new user message (under the active leaf, or under `parent_id` for an edit) and its answer."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the message is empty")
        if len(text) > MAX_MESSAGE_CHARS:
            raise ValueError(
                f"the message is {len(text):,} characters long; the limit is {MAX_MESSAGE_CHARS:,} "
                "(about 25,000 tokens, more than the model can read at once): send a shorter part"
            )
        session = self.store.get_session(session_id)
        ts = self.template_for(session)
        values = self._values(session)
        user_id = self.store.add_message(
            session_id, "user", text, hidden=ts.wrap_user(text, **values),
            template_set=ts.name, template_version=ts.version, parent_id=parent_id,
        )  # fmt: skip
        if session.get("title") in (None, "", "New chat"):
            self.store.update_session(session_id, title=title_from(text))
        yield from self._answer(session_id, user_id, text, ts, cancel, sampling)

    def regenerate(
        self, session_id: int, user_message_id: int, *, cancel=None, sampling=None
    ) -> Iterator[TurnEvent]:
        """Another answer to a stored user message: a new branch beside the earlier answers."""
        msg = self.store.get_message(user_message_id)
        if msg["role"] != "user" or msg["session_id"] != session_id:
            raise ValueError(f"message {user_message_id} is not a user message of session {session_id}")
        self.store.select_branch(session_id, user_message_id)
        session = self.store.get_session(session_id)
        yield from self._answer(session_id, user_message_id, msg["content"], self.template_for(session), cancel, sampling)

    def edit(self, session_id: int, message_id: int, text: str, *, cancel=None, sampling=None) -> Iterator[TurnEvent]:
        """Resend an edited user message: a new sibling of the original (a new branch)."""
        msg = self.store.get_message(message_id)
        if msg["role"] != "user" or msg["session_id"] != session_id:
            raise ValueError(f"message {message_id} is not a user message of session {session_id}")
        yield from self.send(session_id, text, cancel=cancel, sampling=sampling, parent_id=msg["parent_id"])

    def history(self, session_id: int, leaf_id: int | None = None) -> list[dict[str, str]]:
        """The messages the model gets for the branch ending at `leaf_id` (default: the active
        leaf): hidden instructions included, flagged exchanges left out."""
        session = self.store.get_session(session_id)
        ts = self.template_for(session)
        branch = self.store.branch(session_id, leaf_id)
        system = ts.system(**self._values(session))
        out = [{"role": "system", "content": system}] if system else []
        skip = set()
        for i, m in enumerate(branch):
            if m.get("flagged"):
                skip.add(i)
                if m["role"] == "assistant" and i > 0 and branch[i - 1]["role"] == "user":
                    skip.add(i - 1)  # the prompt that led to a flagged answer goes with it
        for i, m in enumerate(branch):
            if i in skip or m["role"] == "system":
                continue
            if m["role"] == "assistant" and m.get("finish_reason") is None:
                continue  # the answer being written now
            if m["role"] == "assistant" and not m["content"]:
                continue
            content = m.get("hidden") or m["content"] if m["role"] == "user" else m["content"]
            out.append({"role": m["role"], "content": content})
        return out

    # ---- pieces ------------------------------------------------------------------------------
    def _values(self, session: dict) -> dict[str, str]:
        """Placeholder values, fixed for a session so its hidden prefix never changes."""
        day = datetime.date.fromtimestamp(float(session.get("created") or time.time())).isoformat()
        return {"date": day, "model": session.get("model") or (self.runtime.name if self.runtime else "")}

    @property
    def fail_closed(self) -> bool:
        return getattr(self.moderator, "fail_closed", True)

    def _moderate(self, fn, *args) -> ModerationResult:
        try:
            return fn(*args)
        except Exception as e:  # fail closed (by default): an unchecked text is never shown
            log.exception("moderation failed (%s)", "failing closed" if self.fail_closed else "failing open")
            return failure_result(e, self.fail_closed)

    def _answer(
        self, session_id: int, user_id: int, text: str, ts: TemplateSet, cancel, sampling
    ) -> Iterator[TurnEvent]:
        t0 = time.perf_counter()
        cancel = cancel or threading.Event()
        sampling = sampling or self.sampling
        store = self.store
        verdict = self._moderate(self.moderator.moderate, text)
        store.update_message(user_id, moderation=verdict_dict("prompt", verdict), flagged=verdict.flagged)
        common = {"template_set": ts.name, "template_version": ts.version}
        if verdict.flagged:  # step 4: the model never sees it
            answer = template_answer(ts, "prompt", verdict)
            aid = store.add_message(
                session_id, "assistant", answer, parent_id=user_id, flagged=True, finish_reason="content_filter",
                moderation=verdict_dict("prompt", verdict), model=None, **common,
            )  # fmt: skip
            yield TurnEvent("started", data={"user_id": user_id, "assistant_id": aid, "dropped": 0})
            yield TurnEvent("verdict", data=verdict_dict("prompt", verdict))
            yield TurnEvent("replace", answer)
            yield TurnEvent("done", answer, self._done(aid, t0, template=True))
            return
        if self.runtime is None:
            raise RuntimeError("no model is loaded")
        runtime = self.runtime
        messages = self.history(session_id, user_id)
        prompt = runtime.build_prompt(messages, sampling.max_tokens)  # ContextOverflowError: nothing generated
        aid = store.add_message(
            session_id, "assistant", "", parent_id=user_id, model=runtime.name, hidden=None, **common
        )
        shown: list[str] = []  # released text, kept whatever happens next
        try:
            yield TurnEvent(
                "started",
                data={"user_id": user_id, "assistant_id": aid, "dropped": prompt.dropped,
                      "prompt_tokens": len(prompt.tokens), "n_ctx": runtime.n_ctx},
            )  # fmt: skip
            yield from self._stream(session_id, aid, text, ts, prompt, sampling, cancel, shown, t0)
        except GeneratorExit:  # the caller stopped reading: a cancel, kept with what was shown
            cancel.set()
            self._settle(aid, shown, "cancelled")
            raise
        except BaseException:  # llama.cpp or the store failed: keep what was shown
            self._settle(aid, shown, "interrupted")
            raise

    def _settle(self, aid: int, shown: list[str], reason: str) -> None:
        """An answer that ended early keeps its released text, unless it was already finished."""
        try:
            if self.store.get_message(aid)["finish_reason"] is None:
                self.store.update_message(aid, content="".join(shown), finish_reason=reason)
        except Exception:  # the store is gone (closing down): the next start marks it interrupted
            log.warning("answer %s could not be settled as %s", aid, reason, exc_info=True)

    def _stream(self, session_id, aid, text, ts, prompt, sampling, cancel, shown, t0) -> Iterator[TurnEvent]:
        store, runtime = self.store, self.runtime
        try:
            watcher = self.moderator.stream(text)
        except Exception as e:
            log.exception("output moderation could not start")
            if self.fail_closed:  # no answer can be checked, so none is generated
                yield from self._flag(aid, ts, failure_result(e), t0)
                return
            watcher = None  # failing open: the answer streams unchecked
        flag: ModerationResult | None = None
        last: ModerationResult | None = None
        gen = runtime.generate(prompt.tokens, sampling, cancel, session=session_id)
        last_save = time.perf_counter()
        stream = iter(gen)
        try:
            for delta in stream:
                if watcher is None:  # failing open after a moderation error
                    released, res = delta, None
                else:
                    try:
                        released, res = watcher.feed(delta)
                    except Exception as e:
                        log.exception("output moderation failed mid-stream")
                        res = failure_result(e, self.fail_closed)
                        released = "" if res.flagged else watcher.pending  # it holds this delta too
                        if not res.flagged:
                            watcher, last, res = None, res, None
                if res is not None:
                    last = res
                if res is not None and res.flagged:
                    flag = res
                    break
                if released:
                    shown.append(released)
                    yield TurnEvent("delta", released)
                    now = time.perf_counter()
                    if now - last_save >= SAVE_EVERY_S:
                        store.update_message(aid, content="".join(shown))
                        last_save = now
        finally:
            stream.close()  # stops generation (a flag, or the caller went away)
        stats = gen.stats
        if flag is None and watcher is not None:
            try:
                released, res = watcher.finish()
            except Exception as e:
                log.exception("output moderation failed at the end of a stream")
                res = failure_result(e, self.fail_closed)
                released = "" if res.flagged else watcher.pending
            last = res
            if res.flagged:
                flag = res
            elif released:
                shown.append(released)
                yield TurnEvent("delta", released)
        usage = {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens}
        timings = {
            "ttft_s": stats.ttft_s, "prefill_s": stats.prefill_s, "decode_s": stats.decode_s,
            "tokens_per_s": stats.tokens_per_s, "reused_tokens": stats.reused_tokens, "switch_s": stats.switch_s,
            "dropped_messages": prompt.dropped, "total_s": time.perf_counter() - t0,
        }  # fmt: skip
        if flag is not None:
            yield from self._flag(aid, ts, flag, t0, usage, timings)
            return
        finish = stats.finish_reason or "cancelled"
        content = "".join(shown)
        store.update_message(
            aid, content=content, finish_reason=finish, moderation=verdict_dict("answer", last) if last else None,
            timings=timings, **usage,
        )  # fmt: skip
        if last is not None:
            yield TurnEvent("verdict", data=verdict_dict("answer", last))
        yield TurnEvent("done", content, self._done(aid, t0))

    def _flag(self, aid: int, ts: TemplateSet, result: ModerationResult, t0: float, usage=None, timings=None):
        answer = template_answer(ts, "answer", result)
        self.store.update_message(
            aid, content=answer, flagged=True, finish_reason="content_filter",
            moderation=verdict_dict("answer", result), timings=timings, **(usage or {}),
        )  # fmt: skip
        yield TurnEvent("verdict", data=verdict_dict("answer", result))
        yield TurnEvent("replace", answer)
        yield TurnEvent("done", answer, self._done(aid, t0, template=True))

    def _done(self, aid: int, t0: float, template: bool = False) -> dict[str, Any]:
        msg = self.store.get_message(aid)
        return {"message": msg, "template": template, "total_s": time.perf_counter() - t0}


def title_from(text: str, limit: int = 48) -> str:
    """A session title from its first message: the first line, cut at a word."""
    line = " ".join(text.strip().split())
    if len(line) <= limit:
        return line
    cut = line.rfind(" ", 0, limit)
    return line[: cut if cut > limit // 2 else limit].rstrip(" ,.;:") + "…"
