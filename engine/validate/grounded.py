"""Groundedness: which sentences of an answer do the retrieved passages support?

The validate stage's `grounded:` check calls `await grounding(answer, passages, embedder)`
and counts the unsupported sentences as hallucination hits.

1. **Sentences.** The answer is cut into sentences (`split_sentences`): blank lines, list
   items (`-`, `*`, `•`, `1.`) and lines ending in `.`/`!`/`?`/`:` end a block; inside a
   block a sentence ends at `.`/`!`/`?` followed by a space and a capital, a digit or an
   opening quote — so `5.2`, `99.9%`, `acme.example/orders` and `e.g. Chrome` stay whole.
   Citation markers (`[1]`, `[1, 2]`, `[3][4]`) and Markdown emphasis are removed first:
   they are not content.
2. **Claims only.** A sentence that makes no factual claim is skipped, not scored
   (`claim_free`): a question, a greeting, thanks, a one-clause apology or sympathy, a
   closing or an invitation to reply, an interjection ("Great question!"), a lead-in
   ending in `:` that starts "Here is/are" or has at most six words ("Common causes:"); a
   "Here is ...:" lead-in also ends a sentence inside a line. The patterns are deliberately
   narrow, and a sentence holding a digit, an email address or a URL is never skipped: an
   invented phone number in a "let us know" sentence is a hallucination.
3. **Evidence.** Passages are cut the same way. A *unit* is one passage sentence, two
   neighbouring ones (answers merge adjacent facts), or a list item joined to the lead-in
   above it ("Team plan prices per seat per month:" + "10 USD ... billed yearly"). For each
   answer sentence and unit: `semantic` — the cosine of their all-MiniLM-L6-v2 vectors
   mapped linearly from `COS_FLOOR` (0) to `COS_CEIL` (1); `lexical` — the weighted share of
   the sentence's content terms (stemmed) found in the unit, numbers, codes and names
   weighing `SPECIFIC_WEIGHT`. The sentence's support is the best unit's
   `W_SEMANTIC·semantic + (1 - W_SEMANTIC)·lexical`; `passage` names that unit's passage.
4. **Specifics.** A number (digits or a number word: `1,000` = `1000`, "five" = `5`), a token
   mixing letters and digits (`M3`, `SHA512`) or a capitalised name that *no* passage
   mentions caps the score at `MISSING_CAP`; a number that the passages mention, but not
   the best unit, caps it at `MOVED_CAP` ("refund within 2 days" against "within 5-7 days"
   when a 2 appears elsewhere). Both caps sit below any sensible cut: embeddings barely
   tell "5-7 business days" from "2 business days" (cosine ≈ 0.8).

Why this scoring — measured by `bench/validate.py` on `bench/data/validate/grounded.jsonl`
(100 answers, 319 factual sentences, 37 % unsupported; F1 of flagging unsupported ones):

    candidate                         F1 at 0.6    best cut (F1)
    semantic only                     0.63         0.80 (0.69)
    lexical only                      0.68         0.72 (0.82)
    semantic + specifics caps         0.80         0.70 (0.81)
    lexical + specifics caps          0.84         0.67 (0.88)
    even blend + caps (this module)   0.87         0.60 (0.87)   P 0.87 / R 0.88 at 0.6

The specifics caps are what work (+0.16 F1 on either signal alone); semantic similarity
alone is poor. Blend weights 0.3-0.6 and floors 0.2-0.5 all land within ±0.01 F1 (one to
three sentences), so the even blend was kept, its floor and ceiling set so that the best
cut is the stage's default 0.6: on this set the embedding half does not raise F1 above
lexical + caps, but a lexical share alone is coarse on short claims (a two-term sentence
scores 0, 0.5 or 1) and blind to synonyms. What neither catches: a claim that reuses the
passage's words to say the opposite ("changes your sign-in address" against "does not
change"), and a paraphrase sharing few words with the passage (5 of 15 such sentences in
the set pass). Treat the figures as optimistic: the set was written with the scorer.

Cost: one `embedder.embed` call per `grounding` call, holding every factual answer sentence
and every passage sentence (the shared `Embedder` micro-batches concurrent callers and
remembers recent texts, so passages retrieved again cost nothing); joined units are the
normalised sum of their sentences' vectors, never embedded. About 30 ms p50 per answer on
first sight of its texts, 1 ms when they are remembered (bench/validate.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from engine.providers.local_answer import stem

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "MIN_SUPPORT",
    "Grounding",
    "SentenceSupport",
    "TextEmbedder",
    "claim_free",
    "grounding",
    "split_sentences",
]

MIN_SUPPORT = 0.6
"""The stage's default cut: `supported = score >= min_support`."""

# Calibration (see the module docstring and bench/validate.py).
COS_FLOOR = 0.35
COS_CEIL = 0.95
W_SEMANTIC = 0.5
SPECIFIC_WEIGHT = 2.0
MISSING_CAP = 0.3
"""The score of a claim with a number, code or name that no passage mentions."""
MOVED_CAP = 0.5
"""The score of a claim whose best unit lacks one of its numbers ("refund within 2 days"
against "refund within 5-7 days", where a 2 appears elsewhere in the passages)."""
_ITEMS = 8
"""How many list items after a lead-in sentence (one ending in `:`) are joined to it."""


class TextEmbedder(Protocol):
    """What grounding needs: `engine.resources.embeddings.Embedder` or a test double."""

    async def embed(self, texts: list[str]) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True, slots=True)
class SentenceSupport:
    """One factual sentence: its support in [0, 1] and the passage that supports it best."""

    text: str
    score: float
    supported: bool
    passage: int | None  # index into the passages; None when there are none

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Grounding:
    """The factual sentences of an answer, scored; `hits` counts the unsupported ones."""

    sentences: list[SentenceSupport]
    hits: int
    skipped: list[str] = field(default_factory=list)  # sentences that make no claim

    @property
    def grounded(self) -> bool:
        return self.hits == 0

    def to_json(self) -> dict[str, Any]:
        return {"hits": self.hits, "sentences": [s.to_json() for s in self.sentences],
                "skipped": list(self.skipped)}


# -- sentences ------------------------------------------------------------------------------
_CITATION = re.compile(r"\s*\[\d{1,3}(?:\s*[,;\u2013-]\s*\d{1,3})*\]")
_MD_LINK = re.compile(r"\[([^\]\n]+)\]\([^)\s]+\)")
_EMPHASIS = re.compile(r"\*\*|__|`")
_HEADING = re.compile(r"^\s*#{1,6}\s+")
_BULLET = re.compile(r"^\s*(?:[-*•▪◦]|\d{1,2}[.)])\s+")
_INLINE_ITEM = re.compile(
    r"(?:(?<=[:.!?])|(?<=[a-z0-9)]))[ \t]+(?P<marker>[-•▪◦])[ \t]+(?=[A-Z])"
    r"|(?<=[:.!?])[ \t]+(?P<number>\d{1,2}[.)])[ \t]+(?=[A-Z])")
_BOUNDARY = re.compile(
    r"[.!?]+[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])|(?P<colon>:)\s+(?=[A-Z])")
_LEAD_IN = re.compile(r"here(?:'s| is| are)\b[^:]*:", re.IGNORECASE)
_LAST_WORD = re.compile(r"(\S+)$")
_ABBREVIATION_TEXT = "e.g eg i.e ie approx vs mr mrs ms dr prof st no nr fig cf incl esp ca resp"
_ABBREVIATIONS = frozenset(_ABBREVIATION_TEXT.split())
"""Words whose period never ends a sentence (`etc.` can, so it is not here)."""


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, citation markers and Markdown emphasis removed; a list run
    into one line ("Pay with: - cards - SEPA", as quoting tiers flatten them) is a list."""
    text = _EMPHASIS.sub("", _MD_LINK.sub(r"\1", _CITATION.sub("", text)))
    text = _INLINE_ITEM.sub(lambda m: "\n" + (m.group("marker") or m.group("number")) + " ", text)
    sentences: list[str] = []
    for block in _blocks(text):
        sentences.extend(_split_block(block))
    return sentences


def _blocks(text: str) -> list[str]:
    """Paragraphs and list items. A line that does not end a sentence continues on the next
    line (a hard-wrapped paragraph), and a list item only on an indented one."""
    blocks: list[list[str]] = []
    continues = in_item = False
    for raw in text.splitlines():
        line = _HEADING.sub("", raw).strip()
        if not line:
            continues = False
            continue
        bullet = _BULLET.match(line)
        if bullet:
            line = line[bullet.end():]
        if bullet or not continues or (in_item and not raw[:1].isspace()):
            blocks.append([line])
            in_item = bool(bullet)
        else:
            blocks[-1].append(line)
        continues = not line.endswith((".", "!", "?", ":"))
    return [" ".join(lines) for lines in blocks]


def _split_block(block: str) -> list[str]:
    pieces: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(block):
        head = block[start:match.end()].strip()
        if _is_abbreviation(block[start:match.start()]) or (
                match.group("colon") and not _LEAD_IN.fullmatch(head)):
            continue  # a colon ends only a lead-in: "Here is what we found: ..."
        pieces.append(block[start:match.end()])
        start = match.end()
    pieces.append(block[start:])
    cleaned = (" ".join(piece.split()) for piece in pieces)
    return [piece for piece in cleaned if any(c.isalnum() for c in piece)]


def _is_abbreviation(head: str) -> bool:
    """Whether the period ending `head` belongs to an abbreviation or an initial."""
    word = _LAST_WORD.search(head)
    if not word:
        return False
    token = word.group(1).lstrip("(\"'“").lower()
    return token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha())


# -- sentences that make no claim --------------------------------------------------------------
_CLAIM_FREE = re.compile("|".join((
    r".*\?[\"'\u201d\u2019)]*",  # a question back to the user
    r"(?:hi|hello|hey|dear|greetings|good (?:morning|afternoon|evening))\b[^.!?]{0,40}[,.!]*",
    r"(?:many |and )?(?:thanks|thank you)\b.*",
    r"(?:(?:i'?m|i am|we'?re|we are) )?(?:so |very |really |truly |terribly )?"
    r"(?:sorry|apologi[sz]e)\b[^,;:]*",  # one clause: "Sorry, but X" states X
    r"(?:we )?apologi[sz]e\b[^,;:]*",
    r"i (?:completely |totally |fully |can )?(?:understand|imagine|see)\b[^,;:]*",
    r"that (?:sounds|must be)\b[^,;:]*",
    r"(?:please )?(?:let (?:me|us) know|feel free|(?:do not|don'?t) hesitate)\b.*",
    r"(?:i |we )?hope (?:this|that) helps\b.*",
    r"have a (?:great|nice|good|lovely|wonderful)\b.*",
    r"(?:best|kind|warm)(?:est)? (?:regards|wishes)\b.*|regards\b.*|cheers\b.*",
    r"(?:(?:i'?m|we'?re|i am|we are) )?(?:happy|glad) to help\b.*",
    r"if you (?:have|'ve got) any (?:other |more |further )?questions\b.*",
    r"if (?:this|that|these steps?) (?:does not|doesn'?t|did not|didn'?t|do not|don'?t) "
    r"(?:resolve|fix|solve|help)\b.*",
    # saying that nothing was found and a person will follow up claims nothing about the
    # product (a promise with a number or a name in it is still checked: see below)
    r"(?:sorry, )?(?:i|we) (?:could not|couldn'?t|cannot|can'?t|did not|didn'?t) find\b.*",
    r"(?:sure|absolutely|of course|certainly|no problem|okay|ok|got it|great question|"
    r"good question)[!.]*",
    _LEAD_IN.pattern,  # "Here is what our knowledge base says:"
    r"(?:\S+ ){0,5}\S+:",  # a short lead-in: "Common causes:"
)), re.IGNORECASE)
_SPECIFIC_MARK = re.compile(r"\d|@|https?://|www\.|\b[\w-]+\.(?:com|example|org|net|io)\b")


def claim_free(sentence: str) -> bool:
    """Whether `sentence` makes no factual claim (see the module docstring, step 2)."""
    return not _SPECIFIC_MARK.search(sentence) and bool(_CLAIM_FREE.fullmatch(sentence))


# -- terms --------------------------------------------------------------------------------------
_TOKEN = re.compile(
    r"(?P<number>(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.])\d+(?:\.\d+)?(?![\w]))"
    r"|(?P<word>[A-Za-z0-9]+(?:['\u2019][A-Za-z]+)?)")
_NUMBER_WORDS = {
    "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "twenty": "20",
    "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "ninety": "90",
    "hundred": "100", "thousand": "1000",
}
_STOPWORD_TEXT = """
a about above after again all also am an and any are as at be because been before being
below between both but by can could did do does doing done down during each for from
further get gets got had has have having he her here hers him his how i if in into is it
its itself just let me more most my myself nor now of off on once only or other our ours
out over own please same she should so some such than that the their them then there these
they this those through to too under until up very was we were what when where which while
who whom why will with would you your yours yourself us may might must shall still really
one ones s t d ll m re ve don doesn didn isn aren wasn weren hasn haven hadn won
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


@dataclass(frozen=True, slots=True)
class _Terms:
    """A text's content terms (stemmed), and which of them are specifics."""

    terms: frozenset[str]
    specifics: frozenset[str]
    numbers: frozenset[str]


def _terms(text: str) -> _Terms:
    terms: set[str] = set()
    specifics: set[str] = set()
    for match in _TOKEN.finditer(text):
        term, specific = _term(match, text)
        if term:
            terms.add(term)
            if specific:
                specifics.add(term)
    numbers = {t for t in specifics if t.replace(".", "", 1).isdigit()}
    return _Terms(frozenset(terms), frozenset(specifics), frozenset(numbers))


def _term(match: re.Match[str], text: str) -> tuple[str | None, bool]:
    """One token as a term: numbers normalised, names and codes kept whole and marked."""
    if match.group("number"):
        digits = match.group("number").replace(",", "")
        return (digits.lstrip("0") or "0") if "." not in digits else digits, True
    word = match.group("word")
    low = word.lower().replace("\u2019", "'").split("'")[0]
    if low in _NUMBER_WORDS:
        return _NUMBER_WORDS[low], True
    if low in _STOPWORDS or len(low) < 2:
        return None, False
    if any(c.isdigit() for c in low):
        return low, True
    return stem(low), _is_name(text, match.start(), match.end())


def _is_name(text: str, start: int, end: int) -> bool:
    """A capitalised word inside a sentence, not the addressee ("..., Maria.")."""
    before = text[:start].rstrip(" \"'\u201c\u2018(*")
    if not text[start].isupper() or not before or before[-1] in ".!?:;-\u2013\u2014\n":
        return False
    return not (before[-1] == "," and text[end:end + 1] in (",", ".", "!", "?", ""))


# -- scoring ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Units:
    """The passages' units (see `_units`): each one's passage, terms and vector."""

    passage: list[int]  # the passage of each unit
    terms: list[frozenset[str]]
    vectors: npt.NDArray[np.float32]  # one row per unit, L2-normalised
    known: frozenset[str]  # every term of every passage


async def grounding(answer: str, passages: Sequence[str], embedder: TextEmbedder, *,
                    min_support: float = MIN_SUPPORT) -> Grounding:
    """Score each factual sentence of `answer` against `passages` (one embed call)."""
    sentences = split_sentences(answer)
    claims = [s for s in sentences if not claim_free(s)]
    skipped = [s for s in sentences if claim_free(s)]
    if not claims:
        return Grounding([], 0, skipped)
    split = [split_sentences(p) for p in passages]
    if not any(split):  # nothing to be grounded in: every claim is a hit
        return Grounding([SentenceSupport(c, 0.0, False, None) for c in claims], len(claims),
                         skipped)
    vectors = await embedder.embed(claims + [s for sents in split for s in sents])
    units = _units(split, vectors[len(claims):])
    scored = [_support(claim, vectors[i], units, min_support) for i, claim in enumerate(claims)]
    return Grounding(scored, sum(not s.supported for s in scored), skipped)


def _units(split: list[list[str]], vectors: npt.NDArray[np.float32]) -> _Units:
    """Each passage sentence; each pair of neighbours; each list item under its lead-in
    ("Team plan prices per seat per month:" + "10 USD ... billed yearly"). A joined unit's
    vector is the normalised sum of its sentences' vectors: no extra forward pass."""
    passage: list[int] = []
    terms: list[frozenset[str]] = []
    rows: list[npt.NDArray[np.float32]] = []
    start = 0
    for index, sents in enumerate(split):
        own = [_terms(s).terms for s in sents]
        block = vectors[start:start + len(sents)]
        start += len(sents)
        for members in _joins(sents):
            passage.append(index)
            terms.append(frozenset().union(*(own[k] for k in members)))
            joined = block[list(members)].sum(axis=0)
            rows.append(joined / max(float(np.linalg.norm(joined)), 1e-6))
    known = frozenset().union(*terms) if terms else frozenset()
    return _Units(passage, terms, np.stack(rows).astype(np.float32), known)


def _joins(sents: list[str]) -> list[tuple[int, ...]]:
    """The sentence indexes of each unit of one passage (see `_units`)."""
    joins: list[tuple[int, ...]] = [(k,) for k in range(len(sents))]
    joins += [(k, k + 1) for k in range(len(sents) - 1)]
    for k, sentence in enumerate(sents):
        if sentence.endswith(":"):
            joins += [(k, item) for item in range(k + 2, min(k + 1 + _ITEMS, len(sents)))]
    return joins


def _support(claim: str, vector: npt.NDArray[np.float32], units: _Units,
             min_support: float) -> SentenceSupport:
    """The claim's best unit by the blend of semantic and lexical support; capped when a
    specific is missing from every passage, or a number from that unit."""
    own = _terms(claim)
    semantic = np.clip((units.vectors @ vector - COS_FLOOR) / (COS_CEIL - COS_FLOOR), 0.0, 1.0)
    lexical = np.array([_coverage(own, unit) for unit in units.terms]) if own.terms else semantic
    blend = W_SEMANTIC * semantic + (1.0 - W_SEMANTIC) * lexical
    best = int(np.argmax(blend))
    score = float(blend[best])
    if own.specifics - units.known:
        score = min(score, MISSING_CAP)
    elif own.numbers - units.terms[best]:
        score = min(score, MOVED_CAP)
    score = round(score, 4)
    return SentenceSupport(claim, score, score >= min_support, units.passage[best])


def _coverage(own: _Terms, unit: frozenset[str]) -> float:
    """The weighted share of the claim's terms that the unit contains."""
    def weight(term: str) -> float:
        return SPECIFIC_WEIGHT if term in own.specifics else 1.0
    total = sum(weight(t) for t in own.terms)
    return sum(weight(t) for t in own.terms & unit) / total
