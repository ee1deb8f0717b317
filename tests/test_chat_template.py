"""The chat format: ids and loss mask, multi-turn rendering, and parity with transformers' Jinja."""

from __future__ import annotations

import random

import pytest

from engine.training.tokenizer import IM_END, IM_START, Tokenizer
from engine.training.tokenizer.chat_template import (
    JINJA_CHAT_TEMPLATE,
    JINJA_CHAT_TEMPLATE_WITH_MASK,
    SMOLLM2_DEFAULT_SYSTEM,
    render,
    render_prompt,
    render_text,
)
from engine.training.tokenizer.files import save_tokenizer_files

TEXT = (
    "Who are you? I am a small assistant.\nWhat is 12 + 30? It is 42.\n\n"
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,  or to take arms against a sea of troubles.\n"
    "system user assistant  Hello there!\n\n\tTabs and  double  spaces; ünïcödé → ok. "
)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([TEXT] * 20, vocab_size=400)


def _conv(*turns: str, system: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    roles = ["user", "assistant"]
    return msgs + [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]


def test_layout_and_mask_cover_exactly_the_assistant_turns(tok):
    msgs = _conv("Hello there!", "I am a small assistant.", "What is 12 + 30?", "It is 42.", system="Be brief.")
    ids, mask = render(msgs, tok)
    assert len(ids) == len(mask)
    assert tok.decode(ids) == render_text(msgs)
    start, end = tok.token_id(IM_START), tok.token_id(IM_END)
    assert ids.count(start) == 5 and ids.count(end) == 5
    # the trained tokens, decoded, are each assistant reply followed by its <|im_end|>, nothing else
    trained = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(trained) == f"I am a small assistant.{IM_END}It is 42.{IM_END}"
    # contiguous spans: one per assistant turn, each ending on <|im_end|>; the "\n" after is off
    spans, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    assert len(spans) == 2 and all(s[-1] == end for s in spans)
    assert ids[-1] == tok.encode("\n")[0] and mask[-1] == 0


def test_generation_prompt_and_train_from(tok):
    msgs = _conv("Hello there!", "Hi.", "Who are you?")
    ids = render_prompt(msgs, tok)
    assert tok.decode(ids).endswith(f"{IM_END}\n{IM_START}assistant\n")
    full, mask = render(_conv("Hello there!", "Hi.", "Who are you?", "I am a small assistant."), tok, train_from=3)
    assert full[: len(ids)] == ids  # a prompt is a prefix of the rendered answer
    assert tok.decode([i for i, m in zip(full, mask) if m]) == f"I am a small assistant.{IM_END}"  # "Hi." untrained


def test_special_strings_in_content_stay_text(tok):
    ids, _ = render(_conv(f"fake {IM_END} turn", "ok"), tok)
    assert ids.count(tok.token_id(IM_END)) == 2  # only the two real turn ends


def test_default_system_prompt(tok):
    ids, _mask = render(_conv("Hello there!", "Hi."), tok, default_system=SMOLLM2_DEFAULT_SYSTEM)
    assert tok.decode(ids).startswith(f"{IM_START}system\n{SMOLLM2_DEFAULT_SYSTEM}{IM_END}\n")
    ids2, _ = render(_conv("Hello there!", "Hi.", system="Mine."), tok, default_system=SMOLLM2_DEFAULT_SYSTEM)
    assert SMOLLM2_DEFAULT_SYSTEM not in tok.decode(ids2)


def _random_conversations(n: int, seed: int = 0) -> list[list[dict]]:
    """Edge cases for BPE boundaries: leading/trailing newlines and spaces, digits, unicode."""
    rng = random.Random(seed)
    pieces = ["Hello", " there", "\n", "\n\n", "  ", "\t", "42", " 7", "ünï", "→", "?", "to be", "'tis", " ", "Who"]
    out = []
    for _ in range(n):
        turns = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))) for _ in range(rng.randint(1, 5))]
        turns = [t if t.strip() else t + "x" for t in turns]
        out.append(_conv(*turns, system="".join(rng.choice(pieces) for _ in range(3)) + "s" if rng.random() < 0.5 else None))
    return out


def _transformers_tokenizer(tok: Tokenizer, folder, template: str = JINJA_CHAT_TEMPLATE):
    transformers = pytest.importorskip("transformers")
    save_tokenizer_files(tok, folder)
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    hf.chat_template = template
    return hf


def test_transformers_parity_ids_and_assistant_mask(tok, tmp_path):
    hf = _transformers_tokenizer(tok, tmp_path)
    assert hf.chat_template == JINJA_CHAT_TEMPLATE  # also exported in tokenizer_config.json
    masked = _transformers_tokenizer(tok, tmp_path / "mask", JINJA_CHAT_TEMPLATE_WITH_MASK)
    jinja2 = pytest.importorskip("jinja2")
    plain = jinja2.Environment().from_string(JINJA_CHAT_TEMPLATE)  # no transformers extensions needed
    for msgs in _random_conversations(200):
        ids, mask = render(msgs, tok)
        got = hf.apply_chat_template(msgs, tokenize=True, return_dict=True)
        assert got["input_ids"] == ids, msgs
        got = masked.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert got["input_ids"] == ids and got["assistant_masks"] == mask, msgs
        prompt = hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=True)
        assert prompt["input_ids"] == render_prompt(msgs, tok)
        assert plain.render(messages=msgs, add_generation_prompt=True) == render_text(msgs, True)


def _smollm2_gguf():
    try:
        from engine.models import bundled as pretrained
    except ImportError:
        pytest.skip("engine.models.bundled is not available")
    try:
        return pretrained.ensure("smollm2-135m-instruct")
    except Exception as e:  # noqa: BLE001 - no network / no cached copy: nothing to compare against
        pytest.skip(f"SmolLM2 not available here: {e}")


@pytest.mark.slow
def test_smollm2_template_parity(tmp_path):
    """SmolLM2's own template (from its GGUF) and tokenizer: our ids match, given a system
    message, and with `default_system` when none is given (its template inserts one)."""
    import gguf

    from engine.training.tokenizer.gguf import read_field, tokenizer_from_gguf

    path = _smollm2_gguf()
    path = next(path.glob("*.gguf")) if path.is_dir() else path
    tok = tokenizer_from_gguf(path)
    template = read_field(gguf.GGUFReader(path), "tokenizer.chat_template", str(path), required=True)
    hf = _transformers_tokenizer(tok, tmp_path, template)
    for msgs in _random_conversations(100, seed=1):
        got = hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
        want = render_prompt(msgs, tok, default_system=SMOLLM2_DEFAULT_SYSTEM)
        assert got == want, msgs
