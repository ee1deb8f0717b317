"""Hidden prompt template sets (engine/templates.py, assets/templates/*.yaml)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
import yaml

from engine.moderation.taxonomy import CATEGORIES
from engine.paths import assets_dir
from engine.templates import (
    PLACEHOLDERS,
    TemplateError,
    TemplateLibrary,
    TemplateSet,
)

SHIPPED = sorted(p.stem for p in (assets_dir() / "templates").glob("*.yaml"))

GOOD = """\
name: {name}
version: 3
title: My set
description: For tests.
before: |-
  You are {{model}}. Today is {{date}}.
  Braces: {{{{x}}}}.
after: |-
  (Be nice.)
answers:
  prompt:
    default: "Flagged: {{category}}."
    self-harm: "Please reach out."
    self-harm/instructions: "No instructions."
    violence: "No violence."
  answer:
    default: "Answer flagged."
  error: "Moderation failed."
"""


def good(name: str = "mine") -> str:
    return GOOD.format(name=name)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CHATFACTORY_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def error_of(text: str, name: str = "mine", path: Path | None = None) -> str:
    with pytest.raises(TemplateError) as e:
        TemplateSet.from_text(text, name, path)
    return str(e.value)


# --- the shipped sets -------------------------------------------------------------------


def test_three_sets_are_shipped():
    assert {"default", "concise", "tutor"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_set_loads_and_renders(name):
    t = TemplateSet.from_file(assets_dir() / "templates" / f"{name}.yaml")
    assert t.name == name and t.version >= 1 and t.title and t.description
    system = t.system(date="2025-01-31", model="SmolLM2")
    assert system and "{" not in system and "}" not in system
    if "date" in t.uses:  # the date is in the hidden prefix: the caller fixes it per chat
        assert "2025-01-31" in system
    assert len(system) < 600, "keep the hidden instructions short: a small model prefills them every chat"
    wrapped = t.wrap_user("Hello?", date="2025-01-31", model="SmolLM2")
    assert wrapped.startswith("Hello?\n\n") and len(wrapped) > len("Hello?\n\n")
    for kind in ("prompt", "answer"):
        for cats in ([], ["harassment"], ["self-harm/intent"], CATEGORIES):
            text = t.answer(kind, cats)
            assert text and "{" not in text
    assert t.answer("error", [])
    assert "988" in t.answer("prompt", ["self-harm", "self-harm/intent"])


def test_library_lists_shipped_sets_default_first(home):
    lib = TemplateLibrary.load()
    assert lib.names()[0] == "default"
    assert set(lib.names()) == set(SHIPPED)
    assert lib.default().name == "default"
    assert lib.errors == []
    assert not lib.is_user_set("default")


def test_unknown_set_name_lists_known(home):
    lib = TemplateLibrary.load()
    with pytest.raises(KeyError) as e:
        lib.get("nope")
    msg = str(e.value)
    assert "'nope'" in msg and "default" in msg and "tutor" in msg


def test_default_yaml_documents_every_placeholder_and_key():
    head = (assets_dir() / "templates" / "default.yaml").read_text().split("\nname:")[0]
    for word in [*("{" + p + "}" for p in PLACEHOLDERS), "{category}", "{{", "before:", "after:"]:
        assert word in head, word
    for key in ("name", "version", "title", "description", "answers", "prompt", "answer", "error"):
        assert f"{key}:" in head, key


# --- rendering ---------------------------------------------------------------------------


def test_rendering_fills_placeholders_and_keeps_literal_braces():
    t = TemplateSet.from_text(good(), "mine")
    assert t.system(date="2025-01-31", model="Smol") == "You are Smol. Today is 2025-01-31.\nBraces: {x}."
    assert t.system(date=dt.date(2024, 2, 29), model="M").endswith("Today is 2024-02-29.\nBraces: {x}.")
    assert t.after_user() == "(Be nice.)"
    assert t.wrap_user("hi") == "hi\n\n(Be nice.)"
    assert t.uses == {"date", "model"}


def test_rendering_is_deterministic_and_defaults_date_to_today():
    t = TemplateSet.from_text(good(), "mine")
    assert t.system(date="2025-01-31", model="m") == t.system(date="2025-01-31", model="m")
    assert dt.date.today().isoformat() in t.system(model="m")
    with pytest.raises(TypeError, match="data"):
        t.system(data="2025-01-31")  # a typo is not silently ignored


def test_empty_before_and_after():
    text = good().replace("before: |-\n  You are {model}. Today is {date}.\n  Braces: {{x}}.", 'before: ""')
    text = text.replace("after: |-\n  (Be nice.)", "after:")
    t = TemplateSet.from_text(text, "mine")
    assert t.system(date="2025-01-01") == ""
    assert t.after_user() == ""
    assert t.wrap_user("unchanged") == "unchanged"


def test_answer_category_fallback():
    t = TemplateSet.from_text(good(), "mine")
    assert t.answer("prompt", ["self-harm/instructions"]) == "No instructions."  # its own answer
    assert t.answer("prompt", ["self-harm/intent"]) == "Please reach out."  # parent's
    assert t.answer("prompt", ["violence/graphic"]) == "No violence."
    assert t.answer("prompt", ["harassment"]) == "Flagged: harassment."  # default
    assert t.answer("prompt", ["hate/threatening"]) == "Flagged: threatening hate speech."
    assert t.answer("prompt", []) == "Flagged: unsafe content."
    # a category with its own answer beats an earlier one that only has a parent's
    assert t.answer("prompt", ["self-harm/intent", "violence"]) == "No violence."
    assert t.answer("prompt", ["harassment", "self-harm", "self-harm/intent"]) == "Please reach out."
    assert t.answer("answer", ["self-harm"]) == "Answer flagged."
    assert t.answer("error", ["violence"]) == "Moderation failed."
    with pytest.raises(ValueError, match="prompt, answer, error"):
        t.answer("input", [])


def test_answer_shorthand_string_is_default():
    text = good().replace('  answer:\n    default: "Answer flagged."', '  answer: "Short {category}."')
    t = TemplateSet.from_text(text, "mine")
    assert t.answer("answer", ["sexual"]) == "Short sexual content."


# --- errors name the file and line -------------------------------------------------------


def test_unknown_placeholder_names_file_and_line(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(good().replace("Today is {date}.", "Today is {foo}."))
    with pytest.raises(TemplateError) as e:
        TemplateSet.from_file(path)
    assert str(e.value).startswith(
        f"{path}:6: before: unknown placeholder {{foo}}; allowed: {{date}}, {{model}}"
    )
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize(
    ("old", "new", "line", "words"),
    [
        (
            'default: "Flagged: {category}."',
            'default: "Flagged: {date}."',
            12,
            ["answers.prompt.default", "{date}"],
        ),
        ('error: "Moderation failed."', 'error: "Failed {category}."', 18, ["answers.error", "{category}"]),
        ("(Be nice.)", "(Be {nice}.)", 9, ["after", "{nice}"]),
        ("(Be nice.)", "(Be { nice.)", 9, ["after", "unmatched '{'"]),
        ("(Be nice.)", "(Be nice.})", 9, ["after", "unmatched '}'"]),
        ("(Be nice.)", "(Be {}.)", 9, ["after", "empty placeholder"]),
        ("title: My set", "title: 'My {x}'", 3, None),  # no placeholders in a title: taken literally
    ],
)
def test_placeholder_errors(old, new, line, words):
    text = good().replace(old, new)
    assert text != good()
    if words is None:
        assert TemplateSet.from_text(text, "mine").title == "My {x}"
        return
    msg = error_of(text)
    assert msg.startswith(f"mine.yaml:{line}: "), msg
    for w in words:
        assert w in msg, msg


def test_placeholder_line_in_a_folded_block():
    text = good().replace("before: |-\n", "before: >-\n").replace("Braces: {{x}}.", "Oops {bad}.")
    assert error_of(text).startswith("mine.yaml:7: before: unknown placeholder {bad}")


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(good().replace("title: My set", "title: [unclosed"))
    with pytest.raises(TemplateError) as e:
        TemplateSet.from_file(path)
    assert str(e.value).startswith(f"{path}:4: invalid YAML")  # the parser notices on the next line
    bad_indent = good().replace("  error:", " error:")
    assert error_of(bad_indent).startswith("mine.yaml:18: invalid YAML"), error_of(bad_indent)


@pytest.mark.parametrize(
    ("old", "new", "expect"),
    [
        ("version: 3\n", "", "mine.yaml:1: missing required key(s): version"),
        ('  error: "Moderation failed."\n', "", "mine.yaml:11: answers: missing required key(s): error"),
        (
            '    default: "Answer flagged."',
            '    hate: "x"',
            "mine.yaml:17: answers.answer: missing required key(s): default",
        ),
        ("version: 3", "version: '3'", "mine.yaml:2: version: must be an integer, got '3'"),
        ("version: 3", "version: 0", "mine.yaml:2: version: must be 1 or more"),
        ("version: 3", "version: 1.5", "mine.yaml:2: version: must be an integer"),
        ("title: My set", "title: 12", "mine.yaml:3: title: must be a string"),
        ("title: My set", "title: ''", "mine.yaml:3: title: must not be empty"),
        ("title: My set", "title: [a]", "mine.yaml:3: title: must be a string"),
        ("after: |-\n  (Be nice.)", "after: [x]", "mine.yaml:8: after: must be a string"),
        ("name: mine", "name: other", "mine.yaml:1: name: 'other' must equal the file name 'mine'"),
        (
            "title: My set",
            "title: My set\ntitel: again",
            "mine.yaml:4: titel: unknown key (did you mean 'title'?)",
        ),
        (
            "    violence:",
            "    violense:",
            "mine.yaml:15: answers.prompt.violense: unknown key (did you mean 'violence'?)",
        ),
        ("  answer:", "  answers:", "mine.yaml:16: answers.answers: unknown key"),
        (
            "title: My set",
            "title: My set\ntitle: again",
            "mine.yaml:4: title: duplicate key (first at line 3)",
        ),
    ],
)
def test_schema_errors(old, new, expect):
    text = good().replace(old, new, 1)
    assert text != good()
    msg = error_of(text)
    assert msg.startswith(expect), msg


def test_not_a_mapping_and_empty_file():
    assert error_of(good().split("answers:")[0] + "answers: 7\n").startswith(
        "mine.yaml:10: answers: expected a mapping with keys prompt, answer, error"
    )
    assert error_of("- a\n- b\n").startswith("mine.yaml:1: expected a mapping")
    assert error_of("").startswith("mine.yaml:1: empty file")
    assert error_of("# only a comment\n").startswith("mine.yaml:1: empty file")


def test_bad_name():
    assert "bad set name" in error_of(good("My Set"), "My Set")
    assert "bad set name" in error_of(good("../x"), "../x")


def test_not_utf8(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_bytes(good().encode() + b"\xff\n")
    with pytest.raises(TemplateError, match=r"mine\.yaml:1: not UTF-8"):
        TemplateSet.from_file(path)


def test_from_text_without_path_names_the_set():
    msg = error_of(good().replace("{date}", "{when}"), "mine")
    assert msg.startswith("mine.yaml:6: before:")


def test_yaml_we_accept_is_plain_yaml():
    """The checked fields mean what any YAML reader would read."""
    raw = yaml.safe_load(good())
    t = TemplateSet.from_text(good(), "mine")
    assert (t.name, t.version, t.title, t.before, t.after) == (
        raw["name"],
        raw["version"],
        raw["title"],
        raw["before"],
        raw["after"],
    )


# --- the user's sets ---------------------------------------------------------------------


def test_user_set_overrides_shipped_and_broken_one_is_listed(home):
    user = home / "templates"
    user.mkdir(parents=True)
    (user / "default.yaml").write_text(good("default").replace("title: My set", "title: Mine"))
    (user / "extra.yaml").write_text(good("extra"))
    (user / "broken.yaml").write_text(good("broken").replace("{date}", "{foo}"))
    (user / "wrongname.yaml").write_text(good("other"))
    (user / "notes.txt").write_text("ignored")
    lib = TemplateLibrary.load()
    assert lib.default().title == "Mine" and lib.is_user_set("default")
    assert lib.default().path == user / "default.yaml"
    assert "extra" in lib.names() and "tutor" in lib.names()
    assert "broken" not in lib and "wrongname" not in lib and "other" not in lib
    assert len(lib.errors) == 2
    assert any(
        e.startswith(f"{user / 'broken.yaml'}:6: before: unknown placeholder {{foo}}") for e in lib.errors
    )
    assert any(str(user / "wrongname.yaml") in e for e in lib.errors)


def test_explicit_user_dir(tmp_path, home):
    (tmp_path / "x.yaml").write_text(good("x"))
    lib = TemplateLibrary.load(tmp_path)
    assert lib.get("x").version == 3 and lib.user_dir == tmp_path


def test_save_user_set_validates_then_writes_atomically(home, monkeypatch):
    lib = TemplateLibrary.load()
    target = home / "templates" / "mine.yaml"

    with pytest.raises(TemplateError, match=r"mine\.yaml:6: before: unknown placeholder"):
        lib.save_user_set(good().replace("{date}", "{foo}"), "mine")
    assert not target.exists()
    with pytest.raises(TemplateError, match="must equal the file name"):
        lib.save_user_set(good("other"), "mine")
    with pytest.raises(TemplateError, match="bad set name"):
        lib.save_user_set(good("../evil"), "../evil")
    assert not target.exists()

    t = lib.save_user_set(good(), "mine")
    assert t.name == "mine" and t.path == target and "mine" in lib and lib.is_user_set("mine")
    assert target.read_text() == good()
    assert lib.get("mine").text == good()

    # a second save replaces the file in one step: a failure while writing leaves the old one
    def boom(src, dst):
        raise OSError("disk full")

    with monkeypatch.context() as m, pytest.raises(OSError, match="disk full"):
        m.setattr(os, "replace", boom)
        lib.save_user_set(good().replace("version: 3", "version: 4"), "mine")
    assert target.read_text() == good()
    assert sorted(p.name for p in target.parent.iterdir()) == ["mine.yaml"]  # no temp file left

    t = lib.save_user_set(good().replace("version: 3", "version: 4"), "mine")
    assert t.version == 4 and lib.get("mine").version == 4
    assert TemplateLibrary.load().get("mine").version == 4


def test_save_user_set_can_override_a_shipped_set(home):
    lib = TemplateLibrary.load()
    shipped_digest = lib.default().digest
    t = lib.save_user_set(good("default"), "default")
    assert lib.default() is t and lib.is_user_set("default") and t.digest != shipped_digest


def test_digest_changes_with_the_text():
    a = TemplateSet.from_text(good(), "mine")
    b = TemplateSet.from_text(good().replace("(Be nice.)", "(Be kind.)"), "mine")
    c = TemplateSet.from_text(good().replace("description: For tests.", "description: Other."), "mine")
    assert a.digest != b.digest and a.digest == c.digest  # only what the model or user sees counts
