"""PII detection and sanitization for the guard stage: find, then redact/mask/pseudonymize.

```python
scanner = PiiScanner(["EMAIL", "PHONE", "CREDIT_CARD"])        # once per config: loads Presidio
findings = scanner.find(text)                                 # spans, scores, recognizers
clean = scanner.apply(text, findings, "pseudonymize")         # "Mail <EMAIL_1> …"
answer = restore(model_answer, clean.mapping)                 # values back for the user
```

Detection is Presidio's pattern recognizers called directly plus libphonenumber for phone
numbers (see `pii_detect` for why not `AnalyzerEngine`); PERSON needs `ner=True`, which loads
spaCy's small English model (~0.2-2.5 s once, then ~16 ms per KB: see `bench/pii.py`).

Raw values never appear in a `PiiFinding` or in `Sanitized.text`/`counts`; the one place they
do is `Sanitized.mapping` (placeholder → original value), which `restore` needs. The caller must
keep that mapping out of logs, traces and stage outputs: store it per request and drop it when
the request ends. Its `repr` is hidden for the same reason.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from engine.guard.pii_detect import (
    ENTITIES,
    Detector,
    PiiFinding,
    build_detectors,
    check_entities,
    load_ner,
    resolve_overlaps,
)

__all__ = [
    "ACTIONS",
    "ENTITIES",
    "PiiAction",
    "PiiFinding",
    "PiiScanner",
    "Sanitized",
    "restore",
]

PiiAction = Literal["redact", "mask", "pseudonymize", "block"]
ACTIONS: tuple[str, ...] = get_args(PiiAction)
DEFAULT_THRESHOLD = 0.4
"""Presidio's floor for a weak pattern with a context word: a bare 9-digit number (0.05) or an
unformatted national phone number (0.3) is not reported without "SSN"/"call" nearby."""


@dataclass(frozen=True, slots=True)
class Sanitized:
    """The text to send on, what was replaced, and (pseudonymize only) how to undo it.

    `mapping` holds the original values: never log it (it is left out of `repr`).
    """

    text: str
    mapping: dict[str, str] = field(repr=False)
    counts: dict[str, int]


class PiiScanner:
    """Finds the configured PII entities in text; build once per config, reuse per request.

    Construction loads what the entities need and nothing else (Presidio recognizers, the
    phonenumbers metadata, and spaCy's NER model only for PERSON with `ner=True`), so the guard
    stage builds it at compile/warm-up time. `find` and `apply` are thread-safe: no state
    changes after construction.
    """

    def __init__(self, entities: Sequence[str], ner: bool = False,
                 score_threshold: float = DEFAULT_THRESHOLD) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be within 0..1, got {score_threshold}")
        self.entities = check_entities(entities, ner)
        self.ner = ner
        self.score_threshold = score_threshold
        self._detectors: list[Detector] = build_detectors(self.entities)
        if ner and "PERSON" in self.entities:
            self._detectors.append(load_ner(self.entities))

    def find(self, text: str) -> list[PiiFinding]:
        """Entities in `text` scoring at least the threshold, overlaps resolved, by position."""
        found = [f for detect in self._detectors for f in detect(text)
                 if f.score >= self.score_threshold]
        return resolve_overlaps(found)

    def apply(self, text: str, findings: Iterable[PiiFinding], action: PiiAction,
              mapping: Mapping[str, str] | None = None) -> Sanitized:
        """Replace each finding according to `action`.

        - `redact`: `<EMAIL>`; `mask`: every character becomes `*` (length kept), except
          CREDIT_CARD, whose digits but the last four become `*` with separators kept
          (`**** **** **** 1111`); `block`: text unchanged (the caller refuses when any
          finding exists; `counts` says what).
        - `pseudonymize`: `<EMAIL_1>`, `<EMAIL_2>`… numbered per entity in order of
          appearance; the same value (compared normalized: e-mail case, phone/card/SSN
          digits, IBAN spacing, IP notation) always gets the same placeholder. Pass an earlier
          `mapping` to continue it, e.g. over several fields of one request; the returned
          mapping includes it.
        """
        if action not in ACTIONS:
            raise ValueError(f"unknown PII action {action!r}; known: {', '.join(ACTIONS)}")
        ordered = sorted(findings, key=lambda f: f.start)
        counts = dict(Counter(f.entity for f in ordered))
        if action == "block":
            return Sanitized(text, {}, counts)
        out: list[str] = []
        pos = 0
        placeholders = _Placeholders(mapping or {})
        for f in ordered:
            if f.start < pos or f.end > len(text) or f.start >= f.end:
                raise ValueError(f"findings overlap or fall outside the text at {f.start}:"
                                 f"{f.end}; pass the result of find() on this text")
            value = text[f.start:f.end]
            if action == "redact":
                replacement = f"<{f.entity}>"
            elif action == "mask":
                replacement = _mask(f.entity, value)
            else:
                replacement = placeholders.get(f.entity, value)
            out += (text[pos:f.start], replacement)
            pos = f.end
        out.append(text[pos:])
        return Sanitized("".join(out), placeholders.mapping, counts)


def _mask(entity: str, value: str) -> str:
    if entity != "CREDIT_CARD":
        return "*" * len(value)
    keep = 4
    chars = list(value)
    for i in range(len(chars) - 1, -1, -1):
        if chars[i].isdigit():
            if keep:
                keep -= 1
            else:
                chars[i] = "*"
    return "".join(chars)


def _normalize(entity: str, value: str) -> str:
    """The identity of a value, so `john@x.com` and `John@X.com` share a placeholder."""
    if entity in ("PHONE", "CREDIT_CARD", "US_SSN"):
        return "".join(c for c in value if c.isdigit() or c == "+")
    if entity == "IBAN":
        return "".join(value.split()).replace("-", "").upper()
    if entity == "IP_ADDRESS":
        try:
            return str(ipaddress.ip_interface(value))
        except ValueError:
            return value.lower()
    return " ".join(value.split()).casefold()


_PLACEHOLDER_RE = re.compile(r"<([A-Z][A-Z_]*)_(\d+)>")


class _Placeholders:
    def __init__(self, mapping: Mapping[str, str]) -> None:
        self.mapping = dict(mapping)
        self._by_value: dict[tuple[str, str], str] = {}
        self._next: Counter[str] = Counter()
        for placeholder, value in self.mapping.items():
            m = _PLACEHOLDER_RE.fullmatch(placeholder)
            if m:
                entity, n = m.group(1), int(m.group(2))
                self._by_value[entity, _normalize(entity, value)] = placeholder
                self._next[entity] = max(self._next[entity], n)

    def get(self, entity: str, value: str) -> str:
        key = (entity, _normalize(entity, value))
        placeholder = self._by_value.get(key)
        if placeholder is None:
            self._next[entity] += 1
            placeholder = f"<{entity}_{self._next[entity]}>"
            self._by_value[key] = placeholder
            self.mapping[placeholder] = value
        return placeholder


def restore(text: str, mapping: Mapping[str, str]) -> str:
    """Put the original values back where a model's answer uses the placeholders.

    Handled forms of `<EMAIL_1>` (each any number of times): exact; another or no bracket
    (`[EMAIL_1]`, `{EMAIL_1}`, `<<EMAIL_1>>`, `&lt;EMAIL_1&gt;`, `EMAIL_1`, `<EMAIL_1`);
    spaces inside brackets (`< EMAIL_1 >`); other case (`<email_1>`); a space or hyphen
    instead of the underscore when bracketed (`<EMAIL 1>`, `[IP-ADDRESS-1]`); markdown
    escapes (`EMAIL\\_1`). A bare form needs the underscore (`EMAIL_1`, not `email 1`) so
    ordinary prose is never rewritten. Placeholders not in `mapping` (a model inventing
    `<EMAIL_7>`) and numbers glued to more digits (`EMAIL_12` for `EMAIL_1`) stay as they are.
    """
    if not mapping:
        return text
    values: dict[tuple[str, int], str] = {}
    for placeholder, value in mapping.items():
        m = _PLACEHOLDER_RE.fullmatch(placeholder)
        if m:
            values[m.group(1), int(m.group(2))] = value
    if not values:
        return text
    names = sorted({entity for entity, _ in values}, key=len, reverse=True)
    name_re = "|".join(re.escape(n).replace("_", r"\\?[_ -]") for n in names)
    pattern = re.compile(
        rf"(?:(?P<open>(?:&lt;|\\?<){{1,2}}|\[{{1,2}}|\{{{{1,2}})\s*)?"
        rf"\b(?P<name>{name_re})(?P<sep>\\?_|[ -])?(?P<num>\d+)\b"
        rf"(?:\s*(?P<close>(?:&gt;|\\?>){{1,2}}|\]{{1,2}}|\}}{{1,2}}))?",
        re.IGNORECASE)

    def put_back(m: re.Match[str]) -> str:
        bracketed = m.group("open") or m.group("close")
        if not bracketed and (m.group("sep") or "").lstrip("\\") != "_":
            return m.group()
        entity = re.sub(r"\\?[_ -]", "_", m.group("name")).upper()
        return values.get((entity, int(m.group("num"))), m.group())

    return pattern.sub(put_back, text)

