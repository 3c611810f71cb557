# ruff: noqa: RUF001  (look-alike characters are the subject of this file)
"""Fold text into one canonical form so detection rules see through obfuscation.

Attackers hide "ignore previous instructions" from keyword rules with invisible characters,
Cyrillic look-alikes, leetspeak, letter spacing, punctuation inside words, or by encoding the
payload (base64, hex, rot13). `normalize` undoes all of that *once*, cheaply (a handful of
`str.translate` calls and precompiled regexes, no per-character Python loop), so every rule is
written against plain lower-case Latin text and runs on:

- `Normalized.text`: the folded input (NFKC, invisibles removed, homoglyphs and accents
  folded, casefolded, split words re-joined, leetspeak folded, spacing collapsed);
- `Normalized.segments`: decoded candidates (embedded base64 and hex runs, the rot13 of the
  whole text when that reading looks like language, a `1→l` leet reading), each folded the
  same way.

The folded text is for *detection only*; it is never shown to a user or sent to a model.
Ordinary numbers survive: leetspeak is folded only inside tokens that mix letters with digits
or `@`/`$`, and `10am`, `3rd`, `64gb` style tokens are left alone.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass

__all__ = ["Normalized", "Segment", "fold", "normalize"]

# Zero-width, joiners, soft hyphen, bidi embeddings/overrides/isolates, word joiner, BOM,
# invisible operators, Mongolian vowel separator, tag characters (used for "ASCII smuggling").
_INVISIBLE: dict[int, None] = dict.fromkeys(
    [0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x3164, 0xFEFF, 0xFFA0,
     *range(0x200B, 0x2010), *range(0x202A, 0x202F), *range(0x2060, 0x2070)],
)
_TAGS = re.compile("[\U000e0000-\U000e007f]")
# The same set as one character class: a search finds nothing on most text, and `sub` is much
# cheaper than a dict-driven `str.translate` over every character of a non-ASCII ticket.
_INVISIBLE_CHARS = re.compile(
    "[" + "".join(re.escape(chr(cp)) for cp in _INVISIBLE) + "\U000e0000-\U000e007f]"
)

# Look-alikes (lower case: applied after casefold), Cyrillic and Greek → Latin.
_HOMOGLYPHS = {
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d",
    "ӏ": "l", "ԛ": "q", "ԝ": "w", "ғ": "f", "һ": "h", "ո": "n", "ս": "u", "ց": "g",
    "α": "a", "β": "b", "γ": "y", "ε": "e", "ζ": "z", "η": "n", "ι": "i", "κ": "k", "μ": "u",
    "ν": "v", "ο": "o", "ρ": "p", "σ": "o", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ϲ": "c",
    "ı": "i", "ɑ": "a", "ɡ": "g", "ⅰ": "i", "ꞵ": "b",
}


def _accent_table() -> dict[int, str]:
    """Latin letters with diacritics → base letter, so `instrucciónes` == `instrucciones`."""
    table: dict[int, str] = {}
    for cp in range(0xC0, 0x250):
        base = unicodedata.normalize("NFD", chr(cp))[0]
        if base.isascii() and base.isalpha() and base != chr(cp):
            table[cp] = base.lower()
    table.update({ord("ø"): "o", ord("ł"): "l", ord("đ"): "d", ord("æ"): "ae", ord("œ"): "oe"})
    return table


_FOLD = {**_accent_table(), **{ord(k): v for k, v in _HOMOGLYPHS.items()}}
_HOMOGLYPH_CHARS = re.compile("[" + "".join(_HOMOGLYPHS) + "]")
_FOLD_CHARS = re.compile("[" + "".join(re.escape(chr(cp)) for cp in _FOLD) + "]")
_LEET_I = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t",
                         "@": "a", "$": "s", "!": "i"})
_LEET_L = str.maketrans({"0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t",
                         "@": "a", "$": "s", "!": "i"})
_ROT13 = str.maketrans(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "nopqrstuvwxyzabcdefghijklmNOPQRSTUVWXYZABCDEFGHIJKLM",
)
# Is the rot13 reading worth decoding and scanning? Only if it reads as language: it must hold
# at least two of these, searched for *in rot13 form* in the folded text (so the reading itself
# is built only when it passes). English function words count as whole words; the stems of what
# the rules look for (instructions, prompts, personas; in every rule language) as substrings,
# so letter-spaced or run-together payloads count too. Rotated, these are not words in any
# language the tickets use ("gur", "naq", "lbhe", "vafgeh"...), so ordinary text fails the test
# and skips a whole second pass of the rules; an encoded sentence of any length passes it.
_ROT13_WORDS = ("the", "and", "you", "your", "all", "for", "with", "this", "that", "are",
                "now", "not", "have", "been", "will", "then", "me", "is", "it", "do", "of", "to")
_ROT13_STEMS = (
    "instru", "istru", "prompt", "system", "sistem", "ignor", "disregard", "forget", "overrid",
    "bypass", "previous", "earlier", "above", "rule", "regla", "regle", "regel", "regra",
    "regol", "guideline", "directive", "restric", "filter", "polic", "safety", "develop",
    "mode", "pretend", "reveal", "repeat", "secret", "hidden", "jailbr", "anything", "unrestr",
    "olvid", "anterior", "oubli", "consign", "precedent", "vergiss", "anweisung", "vorherig",
    "esquec", "dimentic", "assistant", "persona",
)
_ROT13_WORD = re.compile(r"\b(?:" + "|".join(w.translate(_ROT13) for w in _ROT13_WORDS) + r")\b")
_ROT13_STEM = tuple(w.translate(_ROT13) for w in _ROT13_STEMS)  # `in` beats a regex here

# Split words: "ig.nore", "i-g-n-o-r-e", "sys*tem" (not "_" or "|": they belong to delimiters
# such as `<|im_start|>` that the rules look for verbatim).
_IN_WORD_PUNCT = re.compile(r"(?<=[a-z0-9@$])[.\-*'`~•·/|](?=[a-z0-9@$])")
# Letter-spaced runs of at least two single characters: "i g n o r e" → "ignore".
_SPACED = re.compile(r"(?<!\S)(?:\S )+\S(?!\S)")
# Tokens mixing letters with digits or @/$ (leetspeak candidates), and the units to spare.
_LEET_TOKEN = re.compile(r"(?<![a-z0-9@$!])(?=[a-z0-9@$!]*[a-z])[a-z0-9@$!]*[0-9@$][a-z0-9@$!]*")
_UNIT = re.compile(
    r"\d+(?:st|nd|rd|th|am|pm|s|k|m|x|h|d|g|gb|mb|tb|kb|kg|cm|mm|ml|px|hz|min|mp|v|w)"
)
_ONE_AS_L = re.compile(r"(?<=[aeoul1])1")
_HSPACE = re.compile(r"[^\S\n]+")
_NEWLINES = re.compile(r" ?\n[\s]*")

_B64 = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}|[A-Za-z0-9_\-]{16,}={0,2}")
# Eight or more `(?:\\x|0x)?[0-9a-fA-F]{2}[ :,]?` groups; the first one is spelled out as three
# alternatives (same matches, same order) so the engine can skip positions by their first char.
_HEX = re.compile(r"(?:\\x[0-9a-fA-F]{2}|0x[0-9a-fA-F]{2}|[0-9a-fA-F]{2})[ :,]?"
                  r"(?:(?:\\x|0x)?[0-9a-fA-F]{2}[ :,]?){7,}")
_HEX_STRIP = re.compile(r"\\x|0x|[^0-9a-fA-F]")
_MAX_SEGMENTS = 8


@dataclass(frozen=True, slots=True)
class Segment:
    """A decoded candidate: `kind` is base64, hex, rot13 or leet-l; `text` is folded."""

    kind: str
    text: str


@dataclass(frozen=True, slots=True)
class Normalized:
    """The folded text, the decoded candidates, and which obfuscations were seen."""

    text: str
    segments: tuple[Segment, ...]
    flags: frozenset[str]

    def candidates(self) -> list[tuple[str, str]]:
        """(source, text) pairs to scan: the folded text first, then every segment."""
        return [("text", self.text), *((s.kind, s.text) for s in self.segments)]


def _fold_char(match: re.Match[str]) -> str:
    return _FOLD[ord(match.group())]


def _fold_leet(match: re.Match[str], table: dict[int, str]) -> str:
    """Fold one mixed token; `1` reads as `l` after a vowel or another `l` ("ru1es", "a11")."""
    token = match.group()
    if _UNIT.fullmatch(token):
        return token
    if table is _LEET_I and "1" in token:
        token = _ONE_AS_L.sub("l", token)
    return token.translate(table)


def _fold_core(text: str, flags: set[str]) -> str:
    """Everything but decoding: canonical lower-case Latin text with collapsed spacing."""
    if not text.isascii():
        # Same result as `translate(_INVISIBLE)`, `_TAGS.sub` and `translate(_FOLD)`, but only
        # the characters that change are visited (see `_fold_core_reference` in the tests).
        text = unicodedata.normalize("NFKC", text)
        if _INVISIBLE_CHARS.search(text):
            flags.add("invisible")
            text = _INVISIBLE_CHARS.sub("", text)
        text = text.casefold()
        if _HOMOGLYPH_CHARS.search(text):
            flags.add("homoglyph")
        if _FOLD_CHARS.search(text):
            text = _FOLD_CHARS.sub(_fold_char, text)
    else:
        text = text.lower()
    joined = _IN_WORD_PUNCT.sub("", text)
    if _SPACED.search(joined):
        flags.add("spaced")
        joined = _SPACED.sub(lambda m: m.group().replace(" ", ""), joined)
    return _NEWLINES.sub("\n", _HSPACE.sub(" ", joined)).strip()


def fold(text: str, flags: set[str] | None = None) -> str:
    """The folded form of `text` (no decoding): what rules and the similarity signal read."""
    seen = flags if flags is not None else set()
    core = _fold_core(text, seen)
    folded = _LEET_TOKEN.sub(lambda m: _fold_leet(m, _LEET_I), core)
    if folded != core:
        seen.add("leet")
    return folded


def _leet_l_windows(core: str, pad: int = 80) -> str:
    """The `1→l` reading, only around the tokens that contain a 1 (cheap on long text)."""
    spans: list[tuple[int, int]] = []
    for match in _LEET_TOKEN.finditer(core):
        if "1" in match.group():
            lo, hi = max(0, match.start() - pad), match.end() + pad
            if spans and lo <= spans[-1][1]:
                spans[-1] = (spans[-1][0], hi)
            else:
                spans.append((lo, hi))
    return "\n".join(
        _LEET_TOKEN.sub(lambda m: _fold_leet(m, _LEET_L), core[lo:hi]) for lo, hi in spans
    )


def _reads_as_rot13(folded: str) -> bool:
    """Whether the rot13 reading holds two or more function words or rule stems (see above)."""
    hits = 0
    for stem in _ROT13_STEM:
        if stem in folded:
            hits += 1
            if hits == 2:
                return True
    for _ in _ROT13_WORD.finditer(folded):
        hits += 1
        if hits == 2:
            return True
    return False


def _printable(data: bytes) -> str | None:
    """UTF-8 text that is mostly printable and has letters, else None (binary, random ids)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(text) < 6:
        return None
    good = sum(ch.isprintable() or ch in "\n\t\r" for ch in text)
    letters = sum(ch.isalpha() for ch in text)
    if good < 0.95 * len(text) or letters < 0.5 * len(text.replace(" ", "")):
        return None
    return text


def _decode_b64(run: str) -> str | None:
    body = run.rstrip("=")
    if len(body) % 4 == 1:
        return None
    padded = body + "=" * (-len(body) % 4)
    try:
        if "-" in body or "_" in body:
            data = base64.urlsafe_b64decode(padded)
        else:
            data = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return _printable(data)


def _decode_hex(run: str) -> str | None:
    digits = _HEX_STRIP.sub("", run)
    if len(digits) % 2:
        digits = digits[:-1]
    try:
        return _printable(bytes.fromhex(digits))
    except ValueError:
        return None


def _decoded(text: str) -> list[tuple[str, str]]:
    """Embedded encoded runs in the raw text (case matters for base64, so before folding)."""
    found: list[tuple[str, str]] = []
    if len(text) < 16:
        return found
    for match in _HEX.finditer(text):
        decoded = _decode_hex(match.group())
        if decoded is not None:
            found.append(("hex", decoded))
    for match in _B64.finditer(text):
        run = match.group()
        if len(run) % 4 == 1 or (run.isalpha() and run.islower()):
            continue
        decoded = _decode_b64(run)
        if decoded is not None:
            found.append(("base64", decoded))
    return found[:_MAX_SEGMENTS]


def normalize(text: str) -> Normalized:
    """Fold `text` and decode what is embedded in it; see the module docstring."""
    flags: set[str] = set()
    core = _fold_core(text, flags)
    folded = _LEET_TOKEN.sub(lambda m: _fold_leet(m, _LEET_I), core)
    segments: list[Segment] = []
    if folded != core:
        flags.add("leet")
        if "1" in core:
            segments.append(Segment("leet-l", _leet_l_windows(core)))
    for kind, decoded in _decoded(text):
        flags.add(kind)
        segments.append(Segment(kind, fold(decoded)))
    if _reads_as_rot13(folded):
        # rot13 leaves accented letters alone, so rotate before folding them (non-ASCII only).
        rot13 = folded.translate(_ROT13) if text.isascii() else fold(text.translate(_ROT13))
        segments.append(Segment("rot13", rot13))
    return Normalized(folded, tuple(segments), frozenset(flags))
