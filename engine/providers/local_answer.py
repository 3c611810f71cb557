"""The offline local model's answering logic: extractive, grounded, deterministic, pure Python.

No language model is involved. The answer is built only from sentences of knowledge-base
passages found in the messages, so it cannot invent facts; with nothing relevant it says so
and promises a human follow-up. `engine.providers.local` wraps this for litellm.

Passage convention (what the generate stage's prompts must follow), in any non-assistant
message (system or user):

    Passages:
    [1] Refunds go back to the original payment method within 5-7 business days.
    [2] To reset your password, use "Forgot password" on the sign-in page.

    Question: I was charged twice, can I get a refund?

* Heading form (recommended): a line holding only `Passages:`, `Context:`, `Knowledge base:`,
  `Sources:`, `Documents:` or `References:` (case-insensitive, `#`/`*` markup allowed) opens a
  block that runs to the next heading line (`Question:`, `Ticket:`, `Instructions:`, ...,
  a markdown `#` heading or `---`) or the end of the message. Inside it, `[N]` at the start
  of a line starts passage N (blank lines may occur inside a passage); without any `[N]`,
  blank-line-separated paragraphs are passages 1, 2, ...
* Bare form: lines starting with `[N]` anywhere else; each passage then ends at the next
  `[N]` line, a blank line or a heading line.
* Put instructions before the block, or after a heading line such as `Instructions:`: in
  the heading form, unheaded text after the passages reads as part of the last passage.
* The question is the `Question:` / `Ticket:` / `Customer message:` ... section of the last
  user message if it has one, else that message with its passage blocks removed.
* Labels are kept: `[7]` is cited as `[7]`, and `sources` lists the labels cited.

JSON mode: `answer(..., json_mode=None)` switches to JSON when a system (or developer)
message contains the word `JSON` (upper case; user text never switches it).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ["LocalAnswer", "Passage", "answer", "count_tokens", "parse_passages", "stem"]

_BLOCK_HEADING = re.compile(
    r"^\s*[#*]*\s*(?:passages|context|knowledge[ -]?base|sources|documents|references)"
    r"\s*[*]*\s*:?\s*[*]*\s*$", re.I)
_QUESTION_HEADING = re.compile(
    r"^\s*[#*]*\s*(?:question|ticket|customer(?: message| question)?|user(?: question)?|"
    r"message|query|request)\s*[*]*\s*:\s*[*]*\s*(?P<rest>.*)$", re.I)
_OTHER_HEADING = re.compile(
    r"^\s*(?:#{1,6}\s|-{3,}\s*$|[*]*(?:instructions?|task|rules|answer|response|output|"
    r"format)\s*[*]*\s*:)", re.I)
_PASSAGE_START = re.compile(r"^\s*\[(?P<n>\d{1,3})\]\s*(?P<text>.*)$")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_WORD = re.compile(r"[A-Za-z0-9]+(?:['\u2019][A-Za-z]+)?")
_TOKEN = re.compile(r"\w+|[^\w\s]")
_JSON_WORD = re.compile(r"\bJSON\b")

_STOPWORD_TEXT = """
a about above after again against all also am an and any are as at be because been before
being below between both but by can cannot could did do does doing done down during each
few for from further get gets getting got had has have having he her here hers him his how
i if in into is it its itself just let me more most my myself no nor not now of off on once
only or other our ours out over own please same she should so some such than that the their
them then there these they this those through to too under until up very was we were what
when where which while who whom why will with would you your yours yourself hi hello hey
thanks thank regards dear help need needs want wants like know tell ask asking asked able
im ive id dont doesnt didnt cant couldnt wont isnt arent wasnt werent hasnt havent hadnt
youre thats whats theres one two us may might must shall yes ok okay still really
issue issues problem problems question questions something anything everything someone
within without every few many much several three four five lot lots
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())

_SUFFIXES = (("ations", ""), ("ation", ""), ("ments", ""), ("ment", ""), ("ingly", ""),
             ("ings", ""), ("ing", ""), ("edly", ""), ("ies", "y"), ("ied", "y"), ("ed", ""),
             ("es", ""), ("ly", ""), ("s", ""), ("e", ""))

# Tunables. A passage is relevant when the query terms it shares carry at least
# MIN_COVERAGE of the query's IDF weight (terms absent from every passage weigh the most),
# or MIN_COVERAGE_MANY if it shares MANY_TERMS distinct terms or more (long tickets). The
# best sentence of a relevant passage must score MIN_SCORE under BM25 (sentences as
# documents); sentences under KEEP_RATIO x the best are dropped.
MIN_COVERAGE = 0.3
MIN_COVERAGE_MANY = 0.15
MANY_TERMS = 3
MIN_SCORE = 0.8
KEEP_RATIO = 0.5
MAX_SENTENCES = 3
MAX_SENTENCE_CHARS = 400
K1, B = 1.2, 0.75

GROUNDED_INTRO = "Here is what our knowledge base says:"
GROUNDED_OUTRO = ("If this does not resolve it, reply to this message and a member of our team "
                  "will follow up.")


@dataclass(frozen=True)
class Passage:
    label: int
    text: str


@dataclass(frozen=True)
class LocalAnswer:
    """`text` is the reply (JSON text in JSON mode); `sources` the cited passage labels."""

    text: str
    grounded: bool
    sources: tuple[int, ...] = ()
    json_mode: bool = False


def stem(word: str) -> str:
    """Stemming-lite: strip a common suffix (twice at most), then undouble a final letter."""
    w = word.lower().replace("'", "").replace("\u2019", "")
    if w.isdigit():
        return w
    for _ in range(2):
        for suffix, repl in _SUFFIXES:
            if (w.endswith(suffix) and len(w) - len(suffix) + len(repl) >= 3
                    and not (suffix == "s" and w[-2] in "su")):
                w = w[: len(w) - len(suffix)] + repl
                break
        else:
            break
    if len(w) > 3 and w[-1] == w[-2]:
        w = w[:-1]
    return w


def _terms(text: str) -> list[str]:
    out = []
    for m in _WORD.finditer(text):
        raw = m.group().lower().replace("'", "").replace("\u2019", "")
        if raw not in _STOPWORDS and len(raw) > 1:
            out.append(stem(raw))
    return out


def count_tokens(text: str) -> int:
    """Approximate token count (word pieces and punctuation), deterministic and fast."""
    return len(_TOKEN.findall(text))


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content
                         if isinstance(p, dict) and p.get("type", "text") == "text")
    return ""


def parse_passages(text: str) -> tuple[list[Passage], str]:
    """The passages in `text` and the text left once their blocks are removed."""
    lines = text.splitlines()
    passages: list[Passage] = []
    rest: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if _BLOCK_HEADING.match(line):
            j = i + 1
            while j < len(lines) and not _is_heading(lines[j]):
                j += 1
            passages.extend(_split_block(lines[i + 1:j], start=len(passages) + 1))
            i = j
        elif _PASSAGE_START.match(line):
            j = i + 1
            while (j < len(lines) and lines[j].strip() and not _is_heading(lines[j])
                   and not _BLOCK_HEADING.match(lines[j])):
                j += 1
            passages.extend(_split_block(lines[i:j], start=len(passages) + 1))
            i = j
        else:
            rest.append(line)
            i += 1
    return passages, "\n".join(rest).strip()


def _is_heading(line: str) -> bool:
    return bool(_QUESTION_HEADING.match(line) or _OTHER_HEADING.match(line)
                or _BLOCK_HEADING.match(line))


def _split_block(lines: list[str], start: int) -> list[Passage]:
    if any(_PASSAGE_START.match(line) for line in lines):
        found: list[tuple[int, list[str]]] = []
        for line in lines:
            m = _PASSAGE_START.match(line)
            if m:
                found.append((int(m.group("n")), [m.group("text")]))
            elif found:
                found[-1][1].append(line)
        chunks = [(n, " ".join(s.strip() for s in body if s.strip())) for n, body in found]
    else:
        paragraphs = re.split(r"\n\s*\n", "\n".join(lines))
        bodies = [" ".join(p.split()) for p in paragraphs if p.strip()]
        chunks = [(start + k, body) for k, body in enumerate(bodies)]
    return [Passage(n, body) for n, body in chunks if body]


def extract_question(text: str) -> str:
    """The question section of a (passage-free) message, or all of it."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _QUESTION_HEADING.match(line)
        if m:
            body = [m.group("rest")]
            for nxt in lines[i + 1:]:
                if _is_heading(nxt):
                    break
                body.append(nxt)
            question = "\n".join(body).strip()
            if question:
                return question
    return text.strip()


def answer(messages: list[dict[str, Any]], json_mode: bool | None = None) -> LocalAnswer:
    """Answer the last user turn from the passages in `messages` (see the module docstring)."""
    passages: list[Passage] = []
    question = ""
    system_text = []
    for message in messages:
        role = message.get("role")
        if role == "assistant":
            continue
        found, rest = parse_passages(message_text(message))
        passages.extend(found)
        if role in ("system", "developer"):
            system_text.append(rest)
        elif role == "user":
            question = extract_question(rest)
    if json_mode is None:
        json_mode = any(_JSON_WORD.search(t) for t in system_text)
    reply, sources = _compose(passages, question)
    if not json_mode:
        return LocalAnswer(reply, bool(sources), sources, False)
    payload = {"reply": reply, "sources": list(sources), "grounded": bool(sources),
               "tier": "local"}
    return LocalAnswer(json.dumps(payload, ensure_ascii=False), bool(sources), sources, True)


class _Sentence(NamedTuple):
    passage: int  # index into the passages list
    position: int  # order within the passage
    text: str
    terms: list[str]


def _compose(passages: list[Passage], question: str) -> tuple[str, tuple[int, ...]]:
    query = list(dict.fromkeys(_terms(question)))
    sentences = [_Sentence(p_idx, pos, text.strip(), _terms(text))
                 for p_idx, passage in enumerate(passages)
                 for pos, text in enumerate(_SENTENCE_SPLIT.split(passage.text)) if text.strip()]
    ranked = _rank(sentences, query) if query and sentences else []
    if not ranked or ranked[0][0] < MIN_SCORE:
        return _fallback(question), ()
    best = ranked[0][0]
    chosen = [item for item in ranked if item[0] >= KEEP_RATIO * best][:MAX_SENTENCES]
    order = list(dict.fromkeys(s.passage for _, s in chosen))
    parts = []
    for p_idx in order:
        picked = sorted((s for _, s in chosen if s.passage == p_idx), key=lambda s: s.position)
        quoted = " ".join(_clip(s.text) for s in picked)
        parts.append(f"{quoted} [{passages[p_idx].label}]")
    sources = tuple(dict.fromkeys(passages[p].label for p in order))
    return f"{GROUNDED_INTRO} {' '.join(parts)}\n\n{GROUNDED_OUTRO}", sources


def _rank(sentences: list[_Sentence], query: list[str]) -> list[tuple[float, _Sentence]]:
    """BM25 over sentences, keeping those of passages that share enough query terms;
    best first, ties in document order (deterministic)."""
    n = len(sentences)
    avg_len = sum(len(s.terms) for s in sentences) / n or 1.0
    df: dict[str, int] = {}
    for s in sentences:
        for t in set(s.terms):
            df[t] = df.get(t, 0) + 1
    idf = {t: math.log(1 + (n - df.get(t, 0) + 0.5) / (df.get(t, 0) + 0.5)) for t in query}
    matched: dict[int, set[str]] = {}
    for s in sentences:
        matched.setdefault(s.passage, set()).update(set(s.terms) & idf.keys())
    total = sum(idf.values())
    relevant = {p for p, terms in matched.items()
                if (cov := sum(idf[t] for t in terms) / total) >= MIN_COVERAGE
                or (len(terms) >= MANY_TERMS and cov >= MIN_COVERAGE_MANY)}
    ranked = []
    for s in sentences:
        if s.passage not in relevant:
            continue
        norm = K1 * (1 - B + B * len(s.terms) / avg_len)
        score = sum(idf[t] * tf * (K1 + 1) / (tf + norm)
                    for t in query if (tf := s.terms.count(t)))
        if score > 0:
            ranked.append((score, s))
    ranked.sort(key=lambda item: (-item[0], item[1].passage, item[1].position))
    return ranked


def _clip(sentence: str) -> str:
    if len(sentence) <= MAX_SENTENCE_CHARS:
        return sentence
    return sentence[: MAX_SENTENCE_CHARS].rsplit(" ", 1)[0] + " ..."


def _fallback(question: str) -> str:
    """Acknowledge the topic with the question's own words; state no fact."""
    keywords: list[str] = []
    seen: set[str] = set()
    for m in _WORD.finditer(question):
        word = m.group()
        low = word.lower().replace("'", "").replace("\u2019", "")
        if (low in _STOPWORDS or len(low) < 3 or any(c.isdigit() for c in low)
                or stem(low) in seen):
            continue
        seen.add(stem(low))
        before = question[: m.start()].rstrip()
        proper = word[0].isupper() and bool(before) and before[-1] not in ".!?:\n"
        keywords.append(word if word.isupper() or proper else low)
        if len(keywords) == 3:
            break
    if not keywords:
        topic = "your message"
    elif len(keywords) == 1:
        topic = f"your message about {keywords[0]}"
    else:
        topic = f"your message about {', '.join(keywords[:-1])} and {keywords[-1]}"
    return (f"Thanks for {topic}. I could not find an answer to this in our knowledge base, "
            "so rather than guess, I have passed it on: a member of our team will follow up "
            "with you.")
