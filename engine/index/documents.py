"""Documents → chunks: what an `index` resource reads, and how it cuts it up.

Files come from the resource's globs (relative to the pipeline's folder), sorted, so two runs
over the same folder produce the same chunks in the same order. Two formats:

- Markdown (`.md`, `.markdown`): one document per file; its id is the file stem, its title
  the first `# ` heading (else the stem). The title line itself is not part of any chunk
  (the title travels with every chunk instead). Sections (`##`... headings, outside code
  fences) are never mixed in one chunk: a chunk about two topics embeds as neither.
- JSONL (`.jsonl`): one document per line, `{"id": ..., "text": ..., "title": ...}` (title
  optional, defaults to the id; other keys are ignored). A bad line is an error naming
  `file:line`.

A section longer than `chunk_size` is cut at the coarsest boundary that fits — paragraph,
line, sentence, word — and the next chunk repeats the last `chunk_overlap` characters (from a
word start) of the previous one, so a sentence cut at a boundary is whole in one of them.

Why 800 / 100 by default: all-MiniLM-L6-v2 reads at most 256 word pieces and silently drops
the rest. Dense technical text runs ≈ 3.5 characters per word piece (measured on this repo's
README), prose ≈ 4; 800 characters ≈ 230 pieces leaves room for the title prefix, so no chunk
loses its end, while still holding a full answer paragraph. 100 characters of overlap is
about one sentence.

What is embedded is `Chunk.embed_text`: the chunk prefixed by its `context` — the title and
the headings above it (`Refunds > Steps`) — so a chunk that only says "press Submit" still
knows what it is about. Passages show `text`, the chunk itself.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from engine.errors import EngineError

__all__ = [
    "CHUNKER_VERSION",
    "Chunk",
    "DocumentError",
    "IndexSettings",
    "chunk_jsonl",
    "chunk_markdown",
    "find_files",
    "label",
    "read_chunks",
    "split_text",
]

CHUNKER_VERSION = 1
"""Bump when the chunking rules change: persisted indexes built by older rules rebuild."""

MARKDOWN = frozenset({".md", ".markdown"})
JSONL = frozenset({".jsonl"})

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_BOUNDARIES = (
    re.compile(r"(?<=\n\n)"),  # paragraphs
    re.compile(r"(?<=\n)"),  # lines (list items)
    re.compile(r"(?<=[.!?;:]\s)"),  # sentences
    re.compile(r"(?<=\s)"),  # words
)
"""Coarsest first. Each split keeps the separator at the end of the piece before it, so the
pieces of a text concatenate back to exactly that text."""


class DocumentError(EngineError):
    """A document cannot be found, read or parsed; the message names the file (and line)."""


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class IndexSettings(BaseModel):
    """The settings of a `type: index` resource (everything but `type`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    documents: Annotated[list[str], BeforeValidator(_one_or_many)] = Field(
        min_length=1, description="globs relative to the pipeline's folder; .md and .jsonl")
    chunk_size: int = Field(800, ge=100, le=20_000, description="characters per chunk")
    chunk_overlap: int = Field(100, ge=0, description="characters repeated between chunks")

    @model_validator(mode="after")
    def _overlap_fits(self) -> IndexSettings:
        if self.chunk_overlap > self.chunk_size // 2:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be at most half of "
                             f"chunk_size ({self.chunk_size})")
        return self


@dataclass(frozen=True, slots=True)
class Chunk:
    """One searchable passage. `id` is `<source>#<n>`, n counting from 1 within its document."""

    id: str
    source: str
    title: str
    text: str
    context: str
    """Title and headings above the chunk; embedded before `text`, never shown."""

    @property
    def embed_text(self) -> str:
        return f"{self.context}\n\n{self.text}" if self.context else self.text


# -- files --------------------------------------------------------------------------------------
def label(path: Path, base_dir: Path) -> str:
    """How messages and the manifest name a file: relative to the pipeline's folder if inside."""
    try:
        return path.relative_to(base_dir).as_posix()
    except ValueError:
        return path.as_posix()


def find_files(base_dir: Path, patterns: Sequence[str]) -> list[Path]:
    """The files the globs match, sorted; each glob must match a readable .md or .jsonl file.

    Cheap (no file is opened), so the compiler can call it: a typo in a glob is reported when
    the pipeline is validated, not when the first record runs. Hidden files are not matched,
    so an index's own `.engine/` folder never indexes itself."""
    found: set[Path] = set()
    for pattern in patterns:
        matches = [base_dir / name for name in sorted(glob.glob(
            pattern, root_dir=base_dir, recursive=True))]  # root_dir: base_dir taken literally
        files = [path for path in matches if path.is_file()]
        if not files:
            raise DocumentError(f"documents: {pattern!r} matches no file in {base_dir}")
        for path in files:
            _check_file(path, base_dir)
        found.update(files)
    return sorted(found)


def _check_file(path: Path, base_dir: Path) -> None:
    if path.suffix.lower() not in MARKDOWN | JSONL:
        raise DocumentError(f"documents: {label(path, base_dir)} is neither Markdown (.md) "
                            "nor JSONL (.jsonl)")
    if not os.access(path, os.R_OK):
        raise DocumentError(f"documents: {label(path, base_dir)} cannot be read "
                            "(permission denied)")


def read_chunks(path: Path, data: bytes, name: str, settings: IndexSettings) -> list[Chunk]:
    """The chunks of one file's bytes; `name` is how errors refer to the file."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})"
                            ) from None
    if path.suffix.lower() in JSONL:
        return chunk_jsonl(text, name, settings.chunk_size, settings.chunk_overlap)
    return chunk_markdown(text, path.stem, settings.chunk_size, settings.chunk_overlap)


# -- Markdown -----------------------------------------------------------------------------------
def chunk_markdown(text: str, doc_id: str, size: int, overlap: int) -> list[Chunk]:
    """Chunks of one Markdown document, section by section."""
    title, sections = _sections(text)
    title = title or doc_id
    chunks: list[Chunk] = []
    for headings, body in sections:
        context = " > ".join((title, *headings))
        for piece in split_text(body, size, overlap):
            chunks.append(Chunk(f"{doc_id}#{len(chunks) + 1}", doc_id, title, piece, context))
    return chunks


def _sections(text: str) -> tuple[str | None, list[tuple[tuple[str, ...], str]]]:
    """The title (first `# ` heading) and the sections as (headings above, body with its own
    heading line). Sections with nothing but a heading are dropped: their heading lives on in
    the context of the sections below it."""
    title: str | None = None
    stack: list[tuple[int, str]] = []
    sections: list[tuple[tuple[str, ...], list[str]]] = [((), [])]
    fenced = False
    for line in text.splitlines():
        heading = None if fenced else _HEADING.match(line)
        if _FENCE.match(line):
            fenced = not fenced
        if heading and len(heading[1]) == 1 and title is None:
            title = heading[2].strip()
        elif heading:
            level = len(heading[1])
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, heading[2].strip()))
            sections.append((tuple(name for _, name in stack), [line]))
        else:
            sections[-1][1].append(line)
    return title, [(path, "\n".join(lines).strip()) for path, lines in sections
                   if any(line.strip() for line in lines[1 if path else 0:])]


# -- JSONL --------------------------------------------------------------------------------------
def chunk_jsonl(text: str, name: str, size: int, overlap: int) -> list[Chunk]:
    """Chunks of a JSONL file, one document per non-blank line."""
    chunks: list[Chunk] = []
    seen: dict[str, int] = {}
    for number, doc_id, title, body in _records(text, name):
        if doc_id in seen:
            raise DocumentError(f"{name}:{number}: id {doc_id!r} is already used on line "
                                f"{seen[doc_id]}")
        seen[doc_id] = number
        context = title if title != doc_id else ""  # a bare id says nothing to the model
        for n, piece in enumerate(split_text(body, size, overlap), start=1):
            chunks.append(Chunk(f"{doc_id}#{n}", doc_id, title, piece, context))
    return chunks


def _records(text: str, name: str) -> Iterator[tuple[int, str, str, str]]:
    """(line number, id, title, text) per line, or a DocumentError naming `name:line`."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DocumentError(f"{name}:{number}: not valid JSON: {exc.msg} (column "
                                f"{exc.colno})") from None
        problem = _record_problem(record)
        if problem:
            raise DocumentError(f"{name}:{number}: {problem}")
        doc_id = str(record["id"])
        yield number, doc_id, record.get("title") or doc_id, record["text"]


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "expected a JSON object with `id` and `text`"
    doc_id = record.get("id")
    if isinstance(doc_id, bool) or not isinstance(doc_id, str | int) or doc_id == "":
        return "`id` must be a non-empty string or an integer"
    if not isinstance(record.get("text"), str):
        return "`text` must be a string"
    if not isinstance(record.get("title", ""), str | None):
        return "`title` must be a string"
    return None


# -- splitting ----------------------------------------------------------------------------------
def split_text(text: str, size: int, overlap: int) -> list[str]:
    """`text` in chunks of at most `size` characters, cut at the coarsest boundaries that fit,
    each chunk after the first starting with the previous one's last `overlap` characters."""
    chunks: list[str] = []
    current = ""
    for piece in _pieces(text, size - overlap, 0):  # room for the overlap in every chunk
        if current.strip() and len(current) + len(piece) > size:
            chunks.append(current)
            current = _tail(current, overlap)
        current += piece
    chunks.append(current)
    return [chunk.strip() for chunk in chunks if chunk.strip()]


def _pieces(text: str, limit: int, level: int) -> list[str]:
    """`text` split at boundary `level` (and finer where needed) into pieces of ≤ `limit`."""
    if len(text) <= limit:
        return [text]
    if level == len(_BOUNDARIES):  # one "word" longer than a chunk: cut it
        return [text[i:i + limit] for i in range(0, len(text), limit)]
    pieces: list[str] = []
    for part in _BOUNDARIES[level].split(text):
        if part:
            pieces += _pieces(part, limit, level + 1)
    return pieces


def _tail(chunk: str, overlap: int) -> str:
    """The last `overlap` characters of `chunk`, starting at a word (never mid-word)."""
    if overlap == 0:
        return ""
    tail = chunk[-overlap:]
    if len(chunk) > overlap and not chunk[-overlap - 1].isspace():
        space = re.search(r"\s", tail)
        tail = tail[space.end():] if space else ""
    return tail.lstrip()
