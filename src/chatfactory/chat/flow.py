"""The seven-step chat flow (MISSION.md, part 2), with no HTTP in it:

    1. the user's message arrives (with the whole past conversation);
    2. moderation checks the latest user message;
    4. flagged: the configured template answers, the model is NOT called;
    3. passed: the prompt is built (history, hidden instructions before and after, trimmed to
       the context window, chat/prompt.py) and sent to the model;
    5. the model generates;
    6. moderation checks the answer, with its prompt (`moderate_output(answer, prompt)`);
    7. passed: shown; flagged: the template is shown instead.

Streaming keeps step 6 in front of the user: text is released only after it passed moderation
(the moderator's StreamModerator checks sentence-sized chunks and holds the unfinished one
back). A flag mid-stream cancels generation; the answer ends with the template and
finish_reason "content_filter". `complete` moderates the whole answer once and replaces it.

A moderator that raises fails closed (treated as flagged) unless the config says
`fail_closed: false`. Moderation runs in worker threads: it may take tens of milliseconds
(an encoder, an external endpoint) and must not stall the event loop that serves other streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from chatfactory.engine.generate import SamplingParams
from chatfactory.engine.scheduler import Engine, EngineRequest
from chatfactory.moderation import CATEGORIES, ModerationResult, Moderator
from chatfactory.tokenizer import IM_END

from .config import FlowConfig
from .prompt import Prompt, build_prompt, visible_history

log = logging.getLogger(__name__)


@dataclass
class FlowResult:
    content: str  # what the user sees: the answer, a template, or (streamed) released text + template
    finish_reason: str  # "stop" | "length" | "content_filter" | "cancelled"
    template_used: str | None  # None, "input" (prompt flagged, model not called), "output" (answer flagged)
    input_moderation: ModerationResult
    output_moderation: ModerationResult | None  # None when the model was not called
    prompt_tokens: int
    completion_tokens: int
    hidden_version: str  # FlowConfig.version that built the prompt / chose the template
    ttft_s: float | None  # flow start -> the model's first token (None: model not called)
    total_s: float


@dataclass
class FlowEvent:
    type: str  # "delta" (text) or "done" (result)
    text: str = ""
    result: FlowResult | None = None


def moderation_failure(error: BaseException, flagged: bool) -> ModerationResult:
    """The verdict when the moderator itself failed: flagged (fail closed) or not (fail open)."""
    return ModerationResult(
        flagged=flagged,
        categories=dict.fromkeys(CATEGORIES, False),
        category_scores=dict.fromkeys(CATEGORIES, 0.0),
        details={"errors": [f"{type(error).__name__}: {error}"], "failed_closed": flagged},
    )


class ChatFlow:
    """Moderated chat over one or more engines (one per served model)."""

    def __init__(self, engines: dict[str, Engine], moderator: Moderator, config: FlowConfig):
        self.engines = engines
        self.moderator = moderator
        self.config = config

    # ---- the flow ----------------------------------------------------------------------------
    async def stream(
        self, model: str, messages: list[dict], params: SamplingParams, stop: Sequence[str] = ()
    ) -> AsyncIterator[FlowEvent]:
        """Yields "delta" events with moderated text, then one "done" event with the FlowResult.
        Bad input (unknown model, malformed messages, context window) raises ValueError before
        the first event. Closing the stream early cancels the generation."""
        t0 = time.perf_counter()
        engine, user_text = self._engine(model), visible_history(messages)[-1]["content"]
        verdict = await self._moderate(self.moderator.moderate, user_text)
        if verdict.flagged:  # step 4: the model never sees it
            yield FlowEvent("delta", self.config.template_input_flagged)
            yield FlowEvent("done", result=self._input_template(verdict, t0))
            return
        prompt = self.build_prompt(engine, messages, params)
        failure = None
        try:  # scores the prompt once, for the conversation-aware checks of every chunk
            watcher = await asyncio.to_thread(self.moderator.stream, user_text)
        except Exception as e:
            log.exception("output moderation could not start")
            watcher, failure = None, moderation_failure(e, self.config.fail_closed)
            if failure.flagged:  # failing closed: no answer could be checked, so none is generated
                yield FlowEvent("delta", self.config.template_output_flagged)
                content = self.config.template_output_flagged
                yield FlowEvent(
                    "done",
                    result=self._result(None, verdict, failure, content, "content_filter", "output", t0),
                )
                return
        req = engine.submit(prompt.ids, self._chat_params(engine, params), stop)
        shown: list[str] = []
        flag, out_verdict = None, failure  # failing open: the failure is the answer's verdict
        try:
            # aclosing: the engine stream's own cleanup runs now, not when garbage is collected
            async with contextlib.aclosing(req.stream()) as deltas:
                async for delta in deltas:
                    if watcher is None:  # failing open after a moderation error: text passes unchecked
                        released, res = delta.text, None
                    else:
                        try:
                            released, res = await asyncio.to_thread(watcher.feed, delta.text)
                        except Exception as e:
                            log.exception("output moderation failed mid-stream")
                            res = moderation_failure(e, self.config.fail_closed)
                            released = "" if res.flagged else watcher.pending  # all not yet released
                            watcher = None
                    out_verdict = res or out_verdict
                    if released:
                        shown.append(released)
                        yield FlowEvent("delta", released)
                    if res is not None and res.flagged:
                        flag = res
                        break
            if flag is None and watcher is not None:
                try:
                    released, res = await asyncio.to_thread(watcher.finish)
                except Exception as e:
                    log.exception("output moderation failed at the end of a stream")
                    res = moderation_failure(e, self.config.fail_closed)
                    released = "" if res.flagged else watcher.pending
                out_verdict = res
                if res.flagged:
                    flag = res
                elif released:
                    shown.append(released)
                    yield FlowEvent("delta", released)
        finally:
            if req.finish_reason is None:
                req.cancel()  # a flag, or the caller closed this stream (client went away)
        if flag is not None:  # step 7, flagged: what was shown stays, the template ends it
            sep = "\n\n" if shown else ""
            yield FlowEvent("delta", sep + self.config.template_output_flagged)
            content = "".join(shown) + sep + self.config.template_output_flagged
            yield FlowEvent(
                "done", result=self._result(req, verdict, flag, content, "content_filter", "output", t0)
            )
            return
        finish = req.finish_reason or "cancelled"
        yield FlowEvent(
            "done", result=self._result(req, verdict, out_verdict, "".join(shown), finish, None, t0)
        )

    async def complete(
        self, model: str, messages: list[dict], params: SamplingParams, stop: Sequence[str] = ()
    ) -> FlowResult:
        """The whole answer at once: generated in full, then moderated once with its prompt."""
        t0 = time.perf_counter()
        engine, user_text = self._engine(model), visible_history(messages)[-1]["content"]
        verdict = await self._moderate(self.moderator.moderate, user_text)
        if verdict.flagged:
            return self._input_template(verdict, t0)
        prompt = self.build_prompt(engine, messages, params)
        req = engine.submit(prompt.ids, self._chat_params(engine, params), stop)
        try:
            async with contextlib.aclosing(req.stream()) as deltas:
                answer = "".join([d.text async for d in deltas])
        finally:
            if req.finish_reason is None:
                req.cancel()
        out = await self._moderate(self.moderator.moderate_output, answer, user_text)
        if out.flagged:
            content = self.config.template_output_flagged
            return self._result(req, verdict, out, content, "content_filter", "output", t0)
        return self._result(req, verdict, out, answer, req.finish_reason or "cancelled", None, t0)

    # ---- pieces ------------------------------------------------------------------------------
    def build_prompt(self, engine: Engine, messages: list[dict], params: SamplingParams) -> Prompt:
        return build_prompt(
            messages, engine.tokenizer, self.config, engine.context_window, params.max_new_tokens
        )

    def _engine(self, model: str) -> Engine:
        engine = self.engines.get(model)
        if engine is None:
            raise ValueError(f"model {model!r} is not served here; available: {sorted(self.engines)}")
        return engine

    @staticmethod
    def _chat_params(engine: Engine, params: SamplingParams) -> SamplingParams:
        """A chat answer ends at <|im_end|> (the engine always stops at eos too)."""
        end = engine.tokenizer.token_id(IM_END)
        if end in params.stop_token_ids:
            return params
        return dataclasses.replace(params, stop_token_ids=(*params.stop_token_ids, end))

    async def _moderate(self, fn: Callable[..., ModerationResult], *args: Any) -> ModerationResult:
        try:
            return await asyncio.to_thread(fn, *args)
        except Exception as e:
            log.exception(
                "moderation failed (%s)", "failing closed" if self.config.fail_closed else "failing open"
            )
            return moderation_failure(e, self.config.fail_closed)

    def _input_template(self, verdict: ModerationResult, t0: float) -> FlowResult:
        return FlowResult(
            content=self.config.template_input_flagged, finish_reason="content_filter", template_used="input",
            input_moderation=verdict, output_moderation=None, prompt_tokens=0, completion_tokens=0,
            hidden_version=self.config.version, ttft_s=None, total_s=time.perf_counter() - t0,
        )  # fmt: skip

    def _result(
        self,
        req: EngineRequest | None,
        verdict: ModerationResult,
        out: ModerationResult | None,
        content: str,
        finish: str,
        template: str | None,
        t0: float,
    ) -> FlowResult:
        ttft = None  # flow start -> first token: prompt moderation and rendering count too
        if req is not None and req.first_token_at is not None:
            ttft = req.first_token_at - t0
        return FlowResult(
            content=content, finish_reason=finish, template_used=template, input_moderation=verdict,
            output_moderation=out, prompt_tokens=req.prompt_tokens if req else 0,
            completion_tokens=req.completion_tokens if req else 0, hidden_version=self.config.version,
            ttft_s=ttft, total_s=time.perf_counter() - t0,
        )  # fmt: skip
