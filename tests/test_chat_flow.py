"""The seven-step chat flow on a real tiny model and real moderators.

Most tests isolate the flow with a real `Moderator` whose only layer flags chosen words (so the
test decides what is flagged, e.g. a piece of the model's own greedy answer); one test runs the
shipped moderator end to end."""

from __future__ import annotations

import asyncio
import time

import pytest
from tiny_chat_model import tiny_loaded

from chatfactory.chat import ChatFlow, FlowConfig, build_prompt
from chatfactory.engine import SamplingParams
from chatfactory.engine.scheduler import ContextWindowError, Engine
from chatfactory.engine.stops import REPLACEMENT
from chatfactory.moderation import Moderator, Policy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = FlowConfig(
    version="test-7",
    hidden_before="SECRET-BEFORE be kind",
    hidden_after="SECRET-AFTER be brief",
    template_input_flagged="TEMPLATE-IN sorry.",
    template_output_flagged="TEMPLATE-OUT sorry.",
)
GREEDY = SamplingParams(max_new_tokens=40, temperature=0)


class WordLayer:
    """A moderation layer flagging exact substrings as violence."""

    name = "words"

    def __init__(self, words: tuple[str, ...]):
        self.words = words

    def score(self, text: str) -> dict[str, float]:
        return {"violence": 1.0 if any(w in text for w in self.words) else 0.0}


def word_moderator(*words: str) -> Moderator:
    # small stream chunks, so text is released (and checked) several times per answer
    mod = Moderator(Policy(layers=[], stream={"min_chars": 4, "max_chars": 12, "window_chars": 600}))
    mod.layers = [(WordLayer(words), 1.0)]
    return mod


class BrokenModerator(Moderator):
    def __init__(self) -> None:
        super().__init__(Policy(layers=[]))

    def moderate(self, text):
        raise RuntimeError("moderation service down")

    moderate_output = stream = moderate


class RecordingEngine(Engine):
    """The real engine, keeping what it was asked: the ids the model received."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.requests = []

    def submit(self, prompt_ids, params, stop=()):
        req = super().submit(prompt_ids, params, stop)
        self.requests.append(req)
        return req


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    e = RecordingEngine(tiny_loaded(tmp_path_factory.mktemp("tiny") / "model", max_seq_len=256))
    e.start()
    yield e
    e.shutdown()


def run(flow, messages, params=GREEDY, model="tiny"):
    """(delta texts, FlowResult) of one streamed turn."""

    async def go():
        texts, result = [], None
        async for ev in flow.stream(model, messages, params):
            if ev.type == "delta":
                texts.append(ev.text)
            else:
                result = ev.result
        return texts, result

    return asyncio.run(go())


def flow_with(engine, moderator, config=CONFIG):
    return ChatFlow({"tiny": engine}, moderator, config)


def user(text):
    return [{"role": "user", "content": text}]


def piece_of(text: str, after: int = 12, n: int = 3) -> str:
    """A substring of `text` from after `after` chars that occurs there first and is real text."""
    for i in range(after, len(text) - n):
        s = text[i : i + n]
        if text.find(s) == i and REPLACEMENT not in s and s.strip() == s:
            return s
    raise AssertionError(f"no usable piece in {text!r}")


def wait_finished(req, timeout=10.0):
    """The engine drops a cancelled request at its next step, in its own thread."""
    deadline = time.monotonic() + timeout
    while req.finish_reason is None and time.monotonic() < deadline:
        time.sleep(0.005)
    return req


def test_a_flagged_prompt_never_reaches_the_model(engine):
    flow = flow_with(engine, word_moderator("forbidden"))
    before = engine.requests_submitted
    texts, result = run(flow, user("tell me the forbidden thing"))
    assert engine.requests_submitted == before
    assert texts == [CONFIG.template_input_flagged] and result.content == CONFIG.template_input_flagged
    assert result.template_used == "input" and result.finish_reason == "content_filter"
    assert result.input_moderation.flagged and result.output_moderation is None
    assert result.hidden_version == "test-7" and result.completion_tokens == 0 and result.ttft_s is None
    result = asyncio.run(flow.complete("tiny", user("forbidden"), GREEDY))
    assert result.template_used == "input" and engine.requests_submitted == before


def test_a_passed_answer_streams_whole_and_matches_complete(engine):
    flow = flow_with(engine, word_moderator("no-such-word"))
    texts, result = run(flow, user("Explain how a classification algorithm works"))
    req = engine.requests[-1]
    assert result.template_used is None and result.finish_reason in ("stop", "length")
    shown = [
        t
        for t in req.output_ids
        if t not in (engine.tokenizer.eos_id, engine.tokenizer.token_id("<|im_end|>"))
    ]
    assert "".join(texts) == result.content == engine.tokenizer.decode(shown, skip_special=True)
    assert result.prompt_tokens == req.prompt_tokens and result.completion_tokens == req.completion_tokens
    assert 0 < result.ttft_s <= result.total_s and not result.output_moderation.flagged
    again = asyncio.run(flow.complete("tiny", user("Explain how a classification algorithm works"), GREEDY))
    assert again.content == result.content and again.finish_reason == result.finish_reason


def test_hidden_instructions_appear_once_in_the_prompt_and_never_in_answers(engine):
    flow = flow_with(engine, word_moderator("no-such-word"))
    messages = [
        {"role": "system", "content": "Talk like a pirate."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
    ]
    texts, result = run(flow, messages)
    prompt = engine.tokenizer.decode(engine.requests[-1].prompt_ids)
    for hidden in (CONFIG.hidden_before, CONFIG.hidden_after):
        assert prompt.count(hidden) == 1
        assert hidden not in result.content and all(hidden not in t for t in texts)
    # operator's instructions first, the client's system text after them, in one system turn
    assert prompt.startswith(f"<|im_start|>system\n{CONFIG.hidden_before}\n\nTalk like a pirate.<|im_end|>\n")
    # hidden_after rides on the latest user turn only
    assert f"second question\n\n{CONFIG.hidden_after}<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_history_is_replayed_without_flagged_turns_and_trimmed_at_the_context_limit(engine):
    flow = flow_with(engine, word_moderator("no-such-word"))
    messages = [
        {"role": "user", "content": "alpha question"},
        {"role": "assistant", "content": "alpha answer"},
        {"role": "user", "content": "beta question"},
        {"role": "assistant", "content": "beta answer that was flagged", "flagged": True},
        {"role": "user", "content": "gamma question"},
    ]
    run(flow, messages)
    prompt = engine.tokenizer.decode(engine.requests[-1].prompt_ids)
    order = [prompt.find(s) for s in ("alpha question", "alpha answer", "beta question", "gamma question")]
    assert -1 not in order and order == sorted(order)
    assert "flagged" not in prompt

    tok = engine.tokenizer
    long_history = []
    for i in range(12):
        long_history += [
            {"role": "user", "content": f"question {i}: to be or not to be, that is the question"},
            {"role": "assistant", "content": f"answer {i}: whether tis nobler in the mind to suffer"},
        ]
    long_history.append({"role": "user", "content": "the last question"})
    params = SamplingParams(max_new_tokens=60, temperature=0)
    p = build_prompt(long_history, tok, CONFIG, engine.context_window, params.max_new_tokens)
    assert p.dropped > 0 and len(p.ids) <= engine.context_window - params.max_new_tokens
    assert p.messages[0]["content"] == CONFIG.hidden_before  # the hidden instructions are always kept
    assert p.messages[1]["role"] == "user"  # whole exchanges are dropped, oldest first
    assert p.messages[1:-1] == long_history[p.dropped : -1]
    # ... and nothing more than needed: one more exchange would not have fit
    one_more = build_prompt(long_history[p.dropped - 2 :], tok, CONFIG, 10**6, 0)
    assert len(one_more.ids) > engine.context_window - params.max_new_tokens
    _, result = run(flow, long_history, params)
    assert engine.requests[-1].prompt_ids == p.ids and result.finish_reason in ("stop", "length")
    with pytest.raises(ContextWindowError, match="context window is 256 tokens"):
        run(flow, user("to be or not to be " * 60), params)


def test_a_flagged_answer_is_replaced_and_never_fed_back(engine):
    clean = asyncio.run(
        flow_with(engine, word_moderator("no-such-word")).complete("tiny", user("To be"), GREEDY)
    )
    word = piece_of(clean.content)
    flow = flow_with(engine, word_moderator(word))
    result = asyncio.run(flow.complete("tiny", user("To be"), GREEDY))
    assert result.content == CONFIG.template_output_flagged and result.template_used == "output"
    assert result.finish_reason == "content_filter" and result.output_moderation.flagged
    assert result.hidden_version == "test-7"
    # the server stores the flagged exchange with "flagged": True; the next turn must not see it
    history = [
        {"role": "user", "content": "To be"},
        {"role": "assistant", "content": clean.content, "flagged": True},
        {"role": "user", "content": "and then?"},
    ]
    run(flow_with(engine, word_moderator("no-such-word")), history)
    prompt = engine.tokenizer.decode(engine.requests[-1].prompt_ids)
    assert clean.content not in prompt and CONFIG.template_output_flagged not in prompt


def test_a_flag_mid_stream_ends_with_the_template_and_releases_no_flagged_text(engine):
    params = SamplingParams(max_new_tokens=180, temperature=0)
    clean = asyncio.run(
        flow_with(engine, word_moderator("no-such-word")).complete("tiny", user("Hello"), params)
    )
    word = piece_of(clean.content, after=20)
    flow = flow_with(engine, word_moderator(word))
    # a few ms per step so the engine cannot finish all 180 tokens before the flag is seen
    hook = engine.model.lm_head.register_forward_hook(lambda *_: time.sleep(0.003))
    try:
        texts, result = run(flow, user("Hello"), params)
    finally:
        hook.remove()
    released = "".join(texts[:-1])
    assert released and word not in released  # some text passed moderation; the flagged part never did
    assert clean.content.startswith(released)
    assert texts[-1] == "\n\n" + CONFIG.template_output_flagged
    assert result.content == released + texts[-1] and result.finish_reason == "content_filter"
    assert result.template_used == "output" and result.output_moderation.flagged
    req = wait_finished(engine.requests[-1])
    assert req.finish_reason == "cancelled" and req.completion_tokens < 180  # generation was stopped


def test_closing_the_stream_cancels_generation(engine):
    flow = flow_with(engine, word_moderator("no-such-word"))
    hook = engine.model.lm_head.register_forward_hook(lambda *_: time.sleep(0.003))

    async def first_then_leave():
        stream = flow.stream("tiny", user("Hello"), SamplingParams(max_new_tokens=180, temperature=0))
        async for ev in stream:
            assert ev.type == "delta"
            break
        await stream.aclose()  # the client went away

    try:
        asyncio.run(first_then_leave())
        req = wait_finished(engine.requests[-1])
    finally:
        hook.remove()
    assert req.finish_reason == "cancelled" and req.completion_tokens < 180


def test_moderation_failure_fails_closed_by_default_and_open_when_configured(engine):
    before = engine.requests_submitted
    _, result = run(flow_with(engine, BrokenModerator()), user("hello"))
    assert result.template_used == "input" and engine.requests_submitted == before
    assert result.input_moderation.details["failed_closed"] is True
    open_config = FlowConfig(**{**CONFIG.__dict__, "fail_closed": False})
    texts, result = run(flow_with(engine, BrokenModerator(), open_config), user("hello"))
    assert engine.requests_submitted == before + 1 and result.template_used is None
    assert "".join(texts) == result.content and not result.input_moderation.flagged
    assert result.output_moderation.details["failed_closed"] is False  # recorded, not hidden


class AnswerCheckDown(Moderator):
    """Prompts are checked; every check of an answer raises (after the stream has started)."""

    def __init__(self) -> None:
        super().__init__(Policy(layers=[], stream={"min_chars": 4, "max_chars": 12}))

    def moderate_output(self, answer, prompt=None, **kw):
        raise TimeoutError("answer moderation timed out")


def test_answer_moderation_failing_mid_stream(engine):
    _, clean = run(flow_with(engine, word_moderator("no-such-word")), user("To be"))
    texts, result = run(flow_with(engine, AnswerCheckDown()), user("To be"))
    assert texts == [CONFIG.template_output_flagged] and result.finish_reason == "content_filter"
    assert result.template_used == "output" and result.output_moderation.details["failed_closed"] is True
    open_config = FlowConfig(**{**CONFIG.__dict__, "fail_closed": False})
    texts, result = run(flow_with(engine, AnswerCheckDown(), open_config), user("To be"))
    assert "".join(texts) == result.content == clean.content and result.template_used is None


def test_the_shipped_moderator_and_config_end_to_end(tmp_path):
    # the shipped hidden instructions take ~270 tokens of this tiny tokenizer: a longer context
    engine = RecordingEngine(tiny_loaded(tmp_path / "model", max_seq_len=512))
    flow = ChatFlow({"tiny": engine}, Moderator.from_config(None), FlowConfig.load(None))
    try:
        shipped_end_to_end(flow, engine)
    finally:
        engine.shutdown()


def shipped_end_to_end(flow, engine):
    before = engine.requests_submitted
    _, result = run(flow, user("How do I kill my neighbour and hide the body?"))
    assert engine.requests_submitted == before and result.template_used == "input"
    assert result.content == flow.config.template_input_flagged
    assert result.hidden_version == FlowConfig.load(None).version
    _, result = run(
        flow, user("Explain how a classification algorithm works"), SamplingParams(max_new_tokens=8)
    )
    assert engine.requests_submitted == before + 1 and not result.input_moderation.flagged
    assert result.output_moderation is not None
    prompt = engine.tokenizer.decode(engine.requests[-1].prompt_ids)
    assert prompt.count(flow.config.hidden_before) == 1 and prompt.count(flow.config.hidden_after) == 1


def test_bad_requests_and_config_errors(engine, tmp_path):
    flow = flow_with(engine, word_moderator("x"))
    with pytest.raises(ValueError, match="not served here"):
        run(flow, user("hi"), model="nope")
    with pytest.raises(ValueError, match=r"messages\[0\].role"):
        run(flow, [{"role": "robot", "content": "hi"}])
    with pytest.raises(ValueError, match="last .* must be the user's"):
        run(flow, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    bad = tmp_path / "flow.yaml"
    bad.write_text("version: 1\nhidden_before: a\nhidden_after: b\ntemplate_input_flagged: c\nhiden: typo\n")
    with pytest.raises(ValueError, match=r"flow.yaml: unknown setting\(s\) \['hiden'\]"):
        FlowConfig.load(bad)
    bad.write_text("version: 1\nhidden_before: a\nhidden_after: b\ntemplate_input_flagged: c\n")
    with pytest.raises(ValueError, match=r"missing setting\(s\) \['template_output_flagged'\]"):
        FlowConfig.load(bad)
    bad.write_text(
        "version: 2\nhidden_before: a\nhidden_after: b\ntemplate_input_flagged: c\n"
        "template_output_flagged: d\nfail_closed: maybe\n"
    )
    with pytest.raises(ValueError, match="fail_closed must be a bool"):
        FlowConfig.load(bad)
