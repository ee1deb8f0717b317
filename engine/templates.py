"""Hidden prompt template sets: what the chat engine wraps around each turn, never shown.

A template set is one YAML file (format documented at the top of
assets/templates/default.yaml):

- `before`: hidden instructions placed before the conversation (the system message);
- `after`: hidden instructions appended to EACH user message (after a blank line);
- `answers`: what is shown instead of an answer when moderation flags the prompt
  (`prompt`) or the model's answer (`answer`), per category with a `default`, and the
  `error` answer shown when moderation itself failed (fail closed).

    lib = TemplateLibrary.load()                 # shipped sets, then the user's (override)
    t = lib.get("tutor")
    t.system(date="2025-01-31", model="SmolLM2")  # the hidden system message
    t.wrap_user("What is 2+2?", date=..., model=...)
    t.answer("prompt", ["self-harm/intent"])     # the template answer for a flagged prompt

Placeholders in `before`/`after`: {date} and {model} (PLACEHOLDERS); in `answers.prompt`
and `answers.answer`: {category}; `answers.error` takes none. `{{` and `}}` are literal
braces. Rendering is deterministic for given values, so the caller fixes `date` once per
chat: the hidden prefix then stays byte-identical and the runtime's prefix cache keeps it.

Every problem in a file raises `TemplateError` naming the file and line
(`my.yaml:7: before: unknown placeholder {foo}; allowed: {date}, {model}`).
"""

from __future__ import annotations

import datetime as _dt
import difflib
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode

from engine.moderation.taxonomy import CATEGORIES, PARENT
from engine.paths import assets_dir, atomic_writer, home

log = logging.getLogger(__name__)

# Placeholders allowed in `before` and `after`, and what fills them when the caller gives no value.
PLACEHOLDERS: dict[str, str] = {
    "date": "today's date, ISO 8601 (2025-01-31); give it once per chat, default: today",
    "model": "the model's display name; default: 'an AI assistant'",
}
ANSWER_PLACEHOLDERS: dict[str, str] = {
    "category": "the flagged category in words ('self-harm intent'); 'unsafe content' if none",
}
DEFAULT_MODEL_NAME = "an AI assistant"

# How `{category}` reads in a template answer.
CATEGORY_LABELS: dict[str, str] = {
    "harassment": "harassment",
    "harassment/threatening": "threatening harassment",
    "hate": "hate speech",
    "hate/threatening": "threatening hate speech",
    "illicit": "illegal activity",
    "illicit/violent": "violent illegal activity",
    "self-harm": "self-harm",
    "self-harm/intent": "self-harm intent",
    "self-harm/instructions": "self-harm instructions",
    "sexual": "sexual content",
    "sexual/minors": "sexual content involving minors",
    "violence": "violence",
    "violence/graphic": "graphic violence",
}
NO_CATEGORY_LABEL = "unsafe content"
assert set(CATEGORY_LABELS) == set(CATEGORIES), "CATEGORY_LABELS must cover the moderation taxonomy"

ANSWER_KINDS = ("prompt", "answer", "error")
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_NULL = "tag:yaml.org,2002:null"
# `{{`, `}}`, a placeholder `{name}`, or a lone brace (an error)
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


class TemplateError(ValueError):
    """A template set that cannot be used; the message names the file and line."""


class UnknownTemplateSet(KeyError):
    """`TemplateLibrary.get` of a name it does not have."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


# --- text with placeholders --------------------------------------------------------------

# A parsed template: literals at even indices, placeholder names at odd ones.
Parts = tuple[str, ...]


def _parse(text: str, allowed: Iterable[str]) -> tuple[Parts, tuple[int, str, str] | None]:
    """(parts, None) or (partial parts, (offset, token, message)) for the first problem."""
    allowed = tuple(allowed)
    parts: list[str] = []
    literal: list[str] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        literal.append(text[pos : m.start()])
        pos = m.end()
        tok = m.group(0)
        if tok == "{{":
            literal.append("{")
        elif tok == "}}":
            literal.append("}")
        elif m.group(1) is not None:
            name = m.group(1)
            if name not in allowed:
                allowed_s = (
                    "allowed: " + ", ".join("{" + a + "}" for a in allowed)
                    if allowed
                    else "no placeholders are allowed here"
                )
                what = "empty placeholder {}" if not name else f"unknown placeholder {tok}"
                return (), (
                    m.start(),
                    tok,
                    f"{what}; {allowed_s} (write {{{{ and }}}} for literal braces)",
                )
            parts += ["".join(literal), name]
            literal = []
        else:
            return (), (m.start(), tok, f"unmatched '{tok}' (write {tok}{tok} for a literal brace)")
    literal.append(text[pos:])
    parts.append("".join(literal))
    return tuple(parts), None


def _render(parts: Parts, values: dict[str, str]) -> str:
    return "".join(values[p] if i % 2 else p for i, p in enumerate(parts))


def _uses(parts: Parts) -> frozenset[str]:
    return frozenset(parts[1::2])


# --- the YAML schema, checked on the composed node tree (which keeps line numbers) --------


class _Checker:
    def __init__(self, text: str, label: str):
        self.text = text
        self.lines = text.splitlines()
        self.label = label
        self._construct = SafeConstructor()

    def error(self, node_or_line: Node | int, where: str, msg: str) -> TemplateError:
        line = node_or_line if isinstance(node_or_line, int) else node_or_line.start_mark.line + 1
        return TemplateError(f"{self.label}:{line}: {where + ': ' if where else ''}{msg}")

    def compose(self) -> Node:
        loader = yaml.SafeLoader(self.text)
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark else 1
            problem = "; ".join(p for p in (e.context, e.problem) if p) or str(e)
            raise TemplateError(f"{self.label}:{line}: invalid YAML: {problem}") from None
        except yaml.YAMLError as e:
            raise TemplateError(f"{self.label}:1: invalid YAML: {e}") from None
        finally:
            loader.dispose()
        if node is None:
            raise TemplateError(f"{self.label}:1: empty file; expected a mapping (see default.yaml)")
        return node

    def mapping(
        self, node: Node, where: str, required: Iterable[str], optional: Iterable[str] = ()
    ) -> dict[str, tuple[Node, Node]]:
        """{key: (key node, value node)}, after checking keys: unknown, duplicate, missing."""
        required = list(required)
        known = required + list(optional)
        if not isinstance(node, MappingNode):
            raise self.error(node, where, f"expected a mapping with keys {', '.join(known)}")
        out: dict[str, tuple[Node, Node]] = {}
        for knode, vnode in node.value:
            if not (isinstance(knode, ScalarNode) and knode.tag == _STR):
                raise self.error(knode, where, f"keys must be strings, got {knode.value!r}")
            key = knode.value
            here = f"{where}.{key}" if where else key
            if key in out:
                first = out[key][0].start_mark.line + 1
                raise self.error(knode, here, f"duplicate key (first at line {first})")
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.error(knode, here, f"unknown key{hint}; allowed: {', '.join(known)}")
            out[key] = (knode, vnode)
        missing = [k for k in required if k not in out]
        if missing:
            raise self.error(node, where, f"missing required key(s): {', '.join(missing)}")
        return out

    def string(self, node: Node, where: str, *, allow_null: bool = False) -> str:
        if isinstance(node, ScalarNode) and node.tag == _STR:
            return node.value
        if allow_null and isinstance(node, ScalarNode) and node.tag == _NULL:
            return ""
        got = node.value if isinstance(node, ScalarNode) else node.id
        raise self.error(node, where, f"must be a string, got {got!r} (quote it)")

    def integer(self, node: Node, where: str) -> int:
        if isinstance(node, ScalarNode) and node.tag == _INT:
            return int(self._construct.construct_yaml_int(node))
        got = node.value if isinstance(node, ScalarNode) else node.id
        raise self.error(node, where, f"must be an integer, got {got!r}")

    def template(self, node: Node, where: str, allowed: Iterable[str], *, allow_null: bool = False) -> Parts:
        value = self.string(node, where, allow_null=allow_null)
        parts, problem = _parse(value, allowed)
        if problem:
            offset, token, msg = problem
            raise self.error(self._line_of(node, value, offset, token), where, msg)
        return parts

    def _line_of(self, node: Node, value: str, offset: int, token: str) -> int:
        """The 1-based source line of `value[offset]` (the token), as near as YAML lets us tell."""
        start, end = node.start_mark.line, node.end_mark.line
        if node.style == "|":  # literal block: value lines map one to one onto source lines
            return start + 2 + value.count("\n", 0, offset)
        pattern = re.compile(r"(?<!\{)" + re.escape(token) + r"(?!\})") if len(token) > 1 else None
        if pattern:
            for i in range(start, min(end, len(self.lines) - 1) + 1):
                if pattern.search(self.lines[i]):
                    return i + 1
        return start + 1 + (1 if node.style == ">" else 0)


# --- a template set ------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateSet:
    """One set of hidden instructions and template answers (one YAML file)."""

    name: str
    version: int
    title: str
    description: str
    path: Path | None
    before: str = field(repr=False)  # the raw templates, placeholders unfilled
    after: str = field(repr=False)
    digest: str = field(repr=False)  # sha256 (12 hex) of before, after and answers
    text: str = field(repr=False, compare=False)  # the YAML source (for the settings editor)
    _before: Parts = field(repr=False, compare=False)
    _after: Parts = field(repr=False, compare=False)
    # kind ("prompt"/"answer") -> ((category or "default", parts), ...); "error" -> (("error", parts),)
    _answers: tuple[tuple[str, tuple[tuple[str, Parts], ...]], ...] = field(repr=False, compare=False)

    # --- loading ---

    @classmethod
    def from_file(cls, path: str | Path) -> TemplateSet:
        """Load and check one file; its name must equal the file's stem."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise TemplateError(f"{path}:1: not UTF-8 text ({e.reason} at byte {e.start})") from None
        return cls.from_text(text, path.stem, path)

    @classmethod
    def from_text(cls, text: str, name: str, path: Path | None = None) -> TemplateSet:
        """Check YAML `text` as the set `name` (errors name `path`, or `<name>.yaml`)."""
        path = Path(path) if path is not None else None
        label = str(path) if path is not None else f"{name}.yaml"
        if not NAME_RE.fullmatch(name or ""):
            raise TemplateError(
                f"{label}:1: bad set name {name!r}: use 1-64 lowercase letters, digits, '-' or '_'"
                " (it is the file name)"
            )
        c = _Checker(text, label)
        root = c.compose()
        top = c.mapping(
            root,
            "",
            required=("name", "version", "title", "before", "after", "answers"),
            optional=("description",),
        )
        got_name = c.string(top["name"][1], "name")
        if got_name != name:
            raise c.error(top["name"][1], "name", f"{got_name!r} must equal the file name {name!r}")
        version = c.integer(top["version"][1], "version")
        if version < 1:
            raise c.error(top["version"][1], "version", f"must be 1 or more, got {version}")
        title = c.string(top["title"][1], "title").strip()
        if not title:
            raise c.error(top["title"][1], "title", "must not be empty (it is shown in the picker)")
        description = (
            c.string(top["description"][1], "description", allow_null=True) if "description" in top else ""
        )
        before = c.template(top["before"][1], "before", PLACEHOLDERS, allow_null=True)
        after = c.template(top["after"][1], "after", PLACEHOLDERS, allow_null=True)

        ans = c.mapping(top["answers"][1], "answers", required=ANSWER_KINDS)
        answers: list[tuple[str, tuple[tuple[str, Parts], ...]]] = []
        for kind in ("prompt", "answer"):
            node = ans[kind][1]
            where = f"answers.{kind}"
            if isinstance(node, ScalarNode):  # `prompt: "..."` is short for `prompt: {default: "..."}`
                answers.append((kind, (("default", c.template(node, where, ANSWER_PLACEHOLDERS)),)))
                continue
            per_cat = c.mapping(node, where, required=("default",), optional=CATEGORIES)
            answers.append(
                (
                    kind,
                    tuple(
                        (k, c.template(v, f"{where}.{k}", ANSWER_PLACEHOLDERS))
                        for k, (_, v) in per_cat.items()
                    ),
                )
            )
        answers.append(("error", (("error", c.template(ans["error"][1], "answers.error", ())),)))

        raw_before = c.string(top["before"][1], "before", allow_null=True)
        raw_after = c.string(top["after"][1], "after", allow_null=True)
        digest = hashlib.sha256(
            json.dumps([raw_before, raw_after, answers], ensure_ascii=False).encode()
        ).hexdigest()[:12]
        return cls(
            name=name,
            version=version,
            title=title,
            description=description.strip(),
            path=path,
            before=raw_before,
            after=raw_after,
            digest=digest,
            text=text,
            _before=before,
            _after=after,
            _answers=tuple(answers),
        )

    # --- rendering ---

    @property
    def uses(self) -> frozenset[str]:
        """The placeholders `before` and `after` use (e.g. to key a prefix cache)."""
        return _uses(self._before) | _uses(self._after)

    @staticmethod
    def _values(values: dict[str, object]) -> dict[str, str]:
        unknown = sorted(set(values) - set(PLACEHOLDERS))
        if unknown:
            raise TypeError(f"unknown placeholder value(s) {unknown}; known: {sorted(PLACEHOLDERS)}")
        date = values.get("date")
        if date is None:
            date = _dt.date.today()
        if isinstance(date, _dt.datetime):
            date = date.date()
        model = values.get("model")
        return {
            "date": date.isoformat() if isinstance(date, _dt.date) else str(date),
            "model": DEFAULT_MODEL_NAME if model is None else str(model),
        }

    def system(self, **values: object) -> str:
        """`before` with placeholders filled ('' when there is none): the hidden system message.

        values: date (str or datetime.date; default today: pass it once per chat so the
        prefix stays the same) and model (str).
        """
        return _render(self._before, self._values(values))

    def after_user(self, **values: object) -> str:
        """`after` with placeholders filled ('' when there is none)."""
        return _render(self._after, self._values(values))

    def wrap_user(self, text: str, **values: object) -> str:
        """A user message as the model sees it: text, a blank line, then `after`."""
        after = self.after_user(**values)
        return f"{text}\n\n{after}" if after.strip() else text

    def answer(self, kind: str, categories: Iterable[str] = ()) -> str:
        """The template answer to show.

        kind: "prompt" (the user's message was flagged), "answer" (the model's answer was)
        or "error" (moderation failed). For the first two, the first of `categories` with an
        answer of its own wins, else the first whose parent category ("self-harm" for
        "self-harm/intent") has one, else `default`.
        """
        table = dict(self._answers)
        if kind not in table:
            raise ValueError(f"answer kind must be one of {', '.join(ANSWER_KINDS)}, got {kind!r}")
        if kind == "error":
            return _render(table["error"][0][1], {})
        answers = dict(table[kind])
        cats = list(categories)
        chosen: tuple[str | None, Parts] | None = None
        for c in cats:
            if c in answers:
                chosen = (c, answers[c])
                break
        else:
            for c in cats:
                parent = PARENT.get(c)
                if parent in answers:
                    chosen = (c, answers[parent])
                    break
        if chosen is None:
            chosen = (cats[0] if cats else None, answers["default"])
        cat, parts = chosen
        label = CATEGORY_LABELS.get(cat, cat.replace("/", " ")) if cat else NO_CATEGORY_LABEL
        return _render(parts, {"category": label})


# --- the library -----------------------------------------------------------------------------


def shipped_templates_dir() -> Path:
    """Where the shipped sets live: assets/templates."""
    return assets_dir() / "templates"


def user_templates_dir() -> Path:
    """Where the user's own sets live: home()/templates (not created until a set is saved)."""
    return home() / "templates"


class TemplateLibrary:
    """The shipped sets and the user's (a user set overrides a shipped one of the same name)."""

    def __init__(
        self, sets: dict[str, TemplateSet], user: set[str], errors: list[str], shipped: Path, user_path: Path
    ):
        self._sets = sets
        self._user = user
        self.errors = errors  # one line per user file that could not be loaded
        self.shipped_dir = shipped
        self.user_dir = user_path

    @classmethod
    def load(cls, user_dir: Path | None = None, *, shipped: Path | None = None) -> TemplateLibrary:
        """Shipped sets (assets/templates; a broken one raises), then the user's (default
        `home()/templates`; a broken one is skipped and described in `errors`)."""
        shipped = Path(shipped) if shipped is not None else shipped_templates_dir()
        user_path = Path(user_dir) if user_dir is not None else user_templates_dir()
        sets: dict[str, TemplateSet] = {}
        for p in sorted(shipped.glob("*.yaml")):
            sets[p.stem] = TemplateSet.from_file(p)
        if "default" not in sets:
            raise TemplateError(f"{shipped}: no shipped 'default' template set (default.yaml)")
        user: set[str] = set()
        errors: list[str] = []
        if user_path.is_dir():
            for p in sorted(user_path.glob("*.yaml")):
                try:
                    sets[p.stem] = TemplateSet.from_file(p)
                except TemplateError as e:
                    errors.append(str(e))
                except OSError as e:
                    errors.append(f"{p}: cannot read: {e.strerror or e}")
                else:
                    user.add(p.stem)
        for e in errors:
            log.warning("template set skipped: %s", e)
        return cls(sets, user, errors, shipped, user_path)

    def names(self) -> list[str]:
        """All set names, "default" first, then alphabetical."""
        return sorted(self._sets, key=lambda n: (n != "default", n))

    def __contains__(self, name: object) -> bool:
        return name in self._sets

    def __iter__(self) -> Iterator[TemplateSet]:
        return (self._sets[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._sets)

    def get(self, name: str) -> TemplateSet:
        try:
            return self._sets[name]
        except KeyError:
            raise UnknownTemplateSet(
                f"no template set named {name!r}; known: {', '.join(self.names())}"
            ) from None

    def default(self) -> TemplateSet:
        return self.get("default")

    def is_user_set(self, name: str) -> bool:
        """True when `name` comes from the user's folder (possibly overriding a shipped set)."""
        return name in self._user

    def save_user_set(self, text: str, name: str) -> TemplateSet:
        """Check `text` (TemplateError), write it atomically to user_dir/name.yaml, reload."""
        path = self.user_dir / f"{name}.yaml"
        TemplateSet.from_text(text, name, path)  # raises before anything is written
        self.user_dir.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path, newline="") as f:
            f.write(text)
        fresh = self.load(self.user_dir, shipped=self.shipped_dir)
        self._sets, self._user, self.errors = fresh._sets, fresh._user, fresh.errors
        return self.get(name)
