"""Undo the usual tricks people use to slip words past a filter.

`normalize()` handles what can be undone on the text itself: Unicode look-alikes
and accents, zero-width characters, case, letters spaced out ("k i l l",
"k.i.l.l") and punctuation inside words ("f*ck" -> "fck"). Leetspeak and
stretched letters ("h4te", "fuuuck") are handled where the rules are compiled
(`compile_words`), because mapping "1" to "i" in the text would also rewrite
every number in it.
"""

from __future__ import annotations

import re
import unicodedata

# Look-alike letters from other scripts that NFKC leaves alone (Cyrillic, Greek).
_CONFUSABLES = str.maketrans(
    {
        "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i",
        "ј": "j", "ѕ": "s", "к": "k", "м": "m", "т": "t", "н": "h", "в": "b",
        "α": "a", "ε": "e", "ο": "o", "ι": "i", "κ": "k", "ν": "v", "τ": "t", "υ": "u",
        "ß": "ss", "ø": "o", "æ": "ae", "œ": "oe",
    }
)  # fmt: skip
_ZERO_WIDTH = re.compile("[\u200b-\u200f\u2060-\u2064\ufeff\u00ad]")
# Three or more single characters, each followed by the same separator: "k i l l", "k.i.l.l".
_SPACED = re.compile(r"(?<![\w*@$'])[\w*@$!]([ .\-_*,/|])(?:[\w*@$!]\1)+[\w*@$!](?![\w*@$])")
# Punctuation wedged between two word characters: "f*ck", "n.a.z.i", "s_e_x".
_INNER_PUNCT = re.compile(r"(?<=[a-z0-9@$])[*._\-'`\"+~^]+(?=[a-z0-9@$])")
_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Lower-case, de-obfuscated text with single spaces, for the rules to match on."""
    text = unicodedata.normalize("NFKC", text)
    text = _ZERO_WIDTH.sub("", text).lower().translate(_CONFUSABLES)
    # strip accents: "cömpletely" -> "completely"
    text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    text = _SPACED.sub(lambda m: re.sub(r"[ .\-_*,/|]", "", m.group(0)), text)
    text = _INNER_PUNCT.sub("", text)
    text = _LEETY.sub(lambda m: m.group(0).translate(_DELEET), text)
    return _SPACES.sub(" ", text).strip()


# Leetspeak is undone only in words that mix letters with digits or symbols
# ("h4te", "$hit", "k1ll"), so "5 apples" and "2024" are left alone.
_DELEET = str.maketrans(
    {"4": "a", "@": "a", "3": "e", "1": "i", "!": "i", "0": "o", "5": "s", "$": "s", "7": "t"}
)
_LEETY = re.compile(
    r"(?<![\w@$!])(?=[\w@$!]*[a-z])(?=[\w@$!]*[0-9@$!][\w@$!]*[a-z]|[\w@$!]*[a-z][\w@$!]*[0-9@$])[\w@$!]+"
)


def _letter_run(ch: str, n: int) -> str:
    # a letter may be stretched ("fuuuck"); a doubled letter must stay doubled ("ass" is not "as")
    return ch + "+" if n == 1 else ch * n + "+"


def compile_word(word: str) -> str:
    """A regex for one rule word: letters may be stretched; `*` at the end = any suffix."""
    prefix = word.endswith("*")
    word = _INNER_PUNCT.sub("", word.rstrip("*").lower())
    out = []
    for m in re.finditer(r"([a-z])\1*|[^a-z]", word):
        tok = m.group(0)
        out.append(_letter_run(tok[0], len(tok)) if tok[0].isalpha() else re.escape(tok))
    return "".join(out) + (r"[a-z0-9]*" if prefix else "") + _BOUNDARY_R


BOUNDARY_L = r"(?<![a-z0-9@$])"
_BOUNDARY_R = r"(?![a-z])"


def compile_rule(rule: str, macros: dict[str, str] | None = None) -> re.Pattern[str]:
    """`rule_regex` compiled (the rule layer joins the strings and compiles once)."""
    return re.compile(rule_regex(rule, macros))


def rule_regex(rule: str, macros: dict[str, str] | None = None) -> str:
    """Compile the rule mini-language into a regex over `normalize()`d text.

    A rule is words separated by spaces. `(a|b c|d*)` is a choice of words or
    phrases (choices nest), `word*` matches any ending, `...` is a gap of up to
    4 words and `..N` a gap of up to N words, an UPPERCASE word is replaced by
    its entry in `macros`, and a rule starting with `re:` is a raw regex.
    """
    if rule.startswith("re:"):
        return rule[3:]
    for name, body in (macros or {}).items():
        rule = re.sub(rf"\b{name}\b", lambda _m, b=body: b, rule)
    firsts = _first_chars(rule)
    # a cheap look at the first letter before entering the rule: most rules fail there
    peek = "(?=[" + "".join(sorted(firsts)).replace("-", r"\-") + "])" if firsts else ""
    return BOUNDARY_L + peek + _compile_seq(rule)


def _first_chars(seq: str) -> set[str] | None:
    """The characters a rule's match can start with (None: could not tell)."""
    out: set[str] = set()
    for tok in _split(seq.strip(), " "):
        optional = tok.startswith("(") and tok.endswith(")?")
        tok = tok[:-1] if optional else tok
        if tok.startswith("(") and tok.endswith(")"):
            for alt in _split(tok[1:-1], "|"):
                sub = _first_chars(alt)
                if sub is None:
                    return None
                out |= sub
        else:
            word = _INNER_PUNCT.sub("", tok.rstrip("*").lower())
            if not word or word.startswith("."):
                return None
            out.add(word[0])
        if not optional:
            return out
    return None


def _compile_seq(seq: str) -> str:
    out, joiner, started = "", None, False
    for tok in _split(seq.strip(), " "):
        gap = re.fullmatch(r"\.\.(\.|\d+)", tok)
        if gap:
            n = 4 if gap.group(1) == "." else int(gap.group(1))
            joiner = rf"(?:\s+\S+){{0,{n}}}?\s+"
            continue
        optional = tok.startswith("(") and tok.endswith(")?")
        tok = tok[:-1] if optional else tok
        if tok.startswith("(") and tok.endswith(")"):
            atom = "(?:" + factor([_compile_seq(a) for a in _split(tok[1:-1], "|")]) + ")"
        else:
            atom = compile_word(tok)
        sep = joiner if joiner is not None else r"\s+"
        joiner = None
        if not started and optional:  # "(a|b)? c": the option takes its own trailing space
            out += rf"(?:{atom}\s+)?"
        elif not started:
            out, started = out + atom, True
        else:
            out += f"(?:{sep}{atom})?" if optional else sep + atom
    assert started, f"rule {seq!r} has no required word"
    return out


_LEAD = re.compile(r"[a-z]+\+")


def factor(alts: list[str]) -> str:
    """Join regex alternatives as a trie on their leading letters: `k+i+ll+|k+n+i+f+e+`
    becomes `k+(?:i+ll+|n+i+f+e+)`. Python's `re` tries alternatives one by one, so
    with hundreds of words this is what keeps a message under a millisecond."""
    groups: dict[str, list[str]] = {}
    rest: list[str] = []
    for a in alts:
        m = _LEAD.match(a)
        if m:
            groups.setdefault(m.group(0), []).append(a[m.end() :])
        else:
            rest.append(a)
    out = []
    for lead, tails in groups.items():
        if len(tails) == 1:
            out.append(lead + tails[0])
        else:
            out.append(lead + "(?:" + factor(tails) + ")")
    return "|".join(out + rest)


def _split(text: str, sep: str) -> list[str]:
    """Split on `sep` outside parentheses."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == sep and depth == 0:
            if cur.strip():
                out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    assert depth == 0, f"unbalanced parentheses in rule part {text!r}"
    if cur.strip():
        out.append(cur.strip())
    return out
