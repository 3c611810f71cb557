"""The cache fingerprint changes with every file that can shape an answer."""

from __future__ import annotations

from pathlib import Path

from engine.cache.keys import fingerprint
from engine.spec import parse_spec

SPEC = """\
version: 1
name: fp
resources:
  kb: {type: index, documents: ["kb/*.md"]}
  faq: {type: index, documents: faq.jsonl}
stages:
  a: {type: template, with: {output: "x"}}
"""


def test_documents_named_by_a_resource_glob_or_path_are_fingerprinted(tmp_path: Path) -> None:
    (tmp_path / "kb").mkdir()
    article = tmp_path / "kb" / "refunds.md"
    article.write_text("# Refunds\nFive days.")
    faq = tmp_path / "faq.jsonl"
    faq.write_text('{"id": "1", "text": "hi"}\n')
    spec = parse_spec(SPEC, base_dir=tmp_path).spec
    first = fingerprint(spec, tmp_path)
    assert fingerprint(spec, tmp_path) == first  # stable
    article.write_text("# Refunds\nSeven days.")
    second = fingerprint(spec, tmp_path)
    assert second != first
    (tmp_path / "kb" / "new.md").write_text("# New")
    third = fingerprint(spec, tmp_path)
    assert third != second
    faq.write_text('{"id": "1", "text": "hello"}\n')
    assert fingerprint(spec, tmp_path) != third
