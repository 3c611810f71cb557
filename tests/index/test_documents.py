"""Documents → chunks: sections never mix, long ones overlap, every chunk knows its title,
and a broken file is named with its line."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.index.documents import (
    DocumentError,
    IndexSettings,
    chunk_jsonl,
    chunk_markdown,
    find_files,
    read_chunks,
    split_text,
)

GUIDE = """\
# Refund policy

You can get your money back within 30 days.

## Steps

1. Open Billing.
2. Press Request refund.

## Limits

### Gift cards

Gift cards are never refunded.
"""


def test_markdown_sections_become_chunks_that_know_their_title() -> None:
    chunks = chunk_markdown(GUIDE, "refunds", 800, 100)
    assert [c.id for c in chunks] == ["refunds#1", "refunds#2", "refunds#3"]
    assert [c.text for c in chunks] == [
        "You can get your money back within 30 days.",
        "## Steps\n\n1. Open Billing.\n2. Press Request refund.",
        "### Gift cards\n\nGift cards are never refunded.",  # "## Limits" alone: no chunk
    ]
    assert {(c.source, c.title) for c in chunks} == {("refunds", "Refund policy")}
    assert chunks[1].embed_text == ("Refund policy > Steps\n\n## Steps\n\n1. Open Billing.\n"
                                    "2. Press Request refund.")
    assert chunks[2].context == "Refund policy > Limits > Gift cards"


def test_without_a_title_heading_the_stem_is_the_title() -> None:
    chunks = chunk_markdown("Just a note.\n\n## Part\n\nMore.", "notes", 800, 100)
    assert [(c.title, c.context, c.text) for c in chunks] == [
        ("notes", "notes", "Just a note."), ("notes", "notes > Part", "## Part\n\nMore.")]


def test_a_heading_inside_a_code_fence_is_text() -> None:
    text = "# Shell\n\nRun:\n\n```sh\n# not a heading\nmake\n```\n"
    chunks = chunk_markdown(text, "shell", 800, 100)
    assert [c.text for c in chunks] == ["Run:\n\n```sh\n# not a heading\nmake\n```"]


SENTENCES = [f"Sentence {i} explains step {i} of the long procedure." for i in range(40)]


def test_a_long_section_is_cut_at_sentences_and_chunks_overlap() -> None:
    chunks = split_text(" ".join(SENTENCES), 300, 60)
    assert len(chunks) >= 7
    assert all(len(chunk) <= 300 for chunk in chunks)
    for before, after in itertools.pairwise(chunks):
        shared = _overlap(before, after)
        assert 0 < len(shared) <= 60, (before, after)
        assert after.startswith(shared) and re.match(r"\w", after)  # starts at a word
    assert all(any(s in chunk for chunk in chunks) for s in SENTENCES)  # none lost or cut


def test_without_overlap_chunks_partition_the_text_at_paragraphs() -> None:
    paragraphs = [f"Paragraph {i}. " + "word " * 30 for i in range(6)]
    text = "\n\n".join(p.strip() for p in paragraphs)
    chunks = split_text(text, 400, 0)
    assert len(chunks) == 3
    assert all(chunk.startswith("Paragraph") for chunk in chunks)
    assert "\n\n".join(chunks) == text


def test_a_word_longer_than_a_chunk_is_cut_to_size() -> None:
    chunks = split_text("x" * 250, 100, 0)
    assert chunks == ["x" * 100, "x" * 100, "x" * 50]


def test_jsonl_lines_are_documents_with_their_ids_and_titles() -> None:
    text = ('{"id": "faq-1", "title": "Opening hours", "text": "We are open 9 to 5."}\n'
            "\n"
            '{"id": 7, "text": "' + " ".join(SENTENCES[:12]) + '", "tags": ["x"]}\n')
    chunks = chunk_jsonl(text, "faq.jsonl", 400, 50)
    assert chunks[0].id == "faq-1#1" and chunks[0].title == "Opening hours"
    assert chunks[0].embed_text == "Opening hours\n\nWe are open 9 to 5."
    rest = chunks[1:]
    assert [c.id for c in rest] == ["7#1", "7#2"]
    assert {(c.source, c.title, c.context) for c in rest} == {("7", "7", "")}  # no bare-id prefix


@pytest.mark.parametrize(("line", "problem"), [
    ('{"id": "b", "text": "x"', "faq.jsonl:3: not valid JSON"),
    ('["b", "x"]', "faq.jsonl:3: expected a JSON object"),
    ('{"id": "b"}', "faq.jsonl:3: `text` must be a string"),
    ('{"id": true, "text": "x"}', "faq.jsonl:3: `id` must be"),
    ('{"id": "a", "text": "again"}', "faq.jsonl:3: id 'a' is already used on line 1"),
])
def test_a_bad_jsonl_line_is_named_by_file_and_line(line: str, problem: str) -> None:
    text = '{"id": "a", "text": "first"}\n\n' + line + "\n"
    with pytest.raises(DocumentError) as caught:
        chunk_jsonl(text, "faq.jsonl", 800, 100)
    assert str(caught.value).startswith(problem)


def test_files_are_found_sorted_once_and_checked(tmp_path: Path) -> None:
    for name in ("b.md", "a.md", "faq.jsonl", "notes.txt"):
        (tmp_path / "kb" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "kb" / name).write_text("x")
    found = find_files(tmp_path, ["kb/*.md", "kb/a.md", "kb/*.jsonl"])
    assert [p.name for p in found] == ["a.md", "b.md", "faq.jsonl"]
    with pytest.raises(DocumentError, match=r"'docs/\*\.md' matches no file in "):
        find_files(tmp_path, ["kb/*.md", "docs/*.md"])
    with pytest.raises(DocumentError, match=r"kb/notes\.txt is neither Markdown"):
        find_files(tmp_path, ["kb/*"])


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    settings = IndexSettings(documents=["*.md"])
    with pytest.raises(DocumentError, match=r"kb/latin\.md: not UTF-8 text"):
        read_chunks(tmp_path / "latin.md", "café".encode("latin-1"), "kb/latin.md", settings)


def test_index_settings_defaults_and_limits() -> None:
    settings = IndexSettings.model_validate({"documents": "kb/*.md"})
    assert (settings.documents, settings.chunk_size, settings.chunk_overlap) == (
        ["kb/*.md"], 800, 100)
    with pytest.raises(ValidationError, match=r"chunk_overlap \(500\) must be at most half"):
        IndexSettings.model_validate({"documents": ["a"], "chunk_size": 800, "chunk_overlap": 500})
    with pytest.raises(ValidationError, match="chunk_sise"):
        IndexSettings.model_validate({"documents": ["a"], "chunk_sise": 800})


def _overlap(before: str, after: str) -> str:
    """The longest suffix of `before` that `after` starts with."""
    for start in range(len(before)):
        if after.startswith(before[start:]):
            return before[start:]
    return ""
