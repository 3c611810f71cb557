"""The persisted index: embedded once, reused by later processes, re-embedded only where a
file changed, rebuilt when the model or the chunking changes, never broken by its own files.

A "later process" is a new `Resources` (so a new embedder and a new index object) over the
same folder: all that survives between them is what is on disk."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from index_kb import CHUNKS, write_kb
from resources_pool import opened

from engine.index import DocumentError, DocumentIndex, IndexSettings
from engine.spec.models import Resource

TOTAL = sum(CHUNKS.values())
DOCUMENTS = ["kb/*.md", "kb/*.jsonl"]


def open_index(base: Path, **settings: object) -> DocumentIndex:
    """The `kb` index as a fresh process would open it."""
    spec = Resource.model_validate({"type": "index", "documents": DOCUMENTS, **settings})
    return opened().index("kb", spec, base)


async def sources(index: DocumentIndex, query: str, k: int = 6) -> list[str]:
    return [hit.chunk.source for hit in await index.search(query, k)]


def manifest(base: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((base / ".engine/index/kb/manifest.json").read_text())
    return data


async def test_a_first_load_embeds_everything_and_persists_it(tmp_path: Path) -> None:
    write_kb(tmp_path)
    index = open_index(tmp_path)
    await index.load()
    assert (index.embedded_chunks, index.reused_chunks) == (TOTAL, 0)
    saved = manifest(tmp_path)
    files = saved["files"]
    assert sorted(files) == ["kb/faq.jsonl", "kb/password.md", "kb/refunds.md", "kb/shipping.md"]
    assert saved["model"] == index.model and saved["chunk_size"] == 800
    password = files["kb/password.md"]
    assert len(password["sha256"]) == 64
    assert [c["id"] for c in password["chunks"]] == ["password#1", "password#2"]
    vectors = np.load(tmp_path / ".engine/index/kb" / password["vectors"], allow_pickle=False)
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert len(list((tmp_path / ".engine/index/kb").glob("*.npy"))) == 4
    assert not list((tmp_path / ".engine/index/kb").glob("*.tmp"))


async def test_unchanged_documents_are_not_embedded_again(tmp_path: Path) -> None:
    write_kb(tmp_path)
    await open_index(tmp_path).load()
    again = open_index(tmp_path)
    assert await sources(again, "I forgot my password and cannot sign in", 1) == ["password"]
    assert (again.embedded_chunks, again.reused_chunks) == (0, TOTAL)


async def test_only_a_changed_file_is_embedded_and_a_removed_one_disappears(
        tmp_path: Path) -> None:
    kb = write_kb(tmp_path)
    await open_index(tmp_path).load()
    old = manifest(tmp_path)["files"]
    (kb / "refunds.md").write_text("# Refund policy\n\nRefunds are paid within 14 days.\n")
    (kb / "shipping.md").unlink()
    again = open_index(tmp_path)
    await again.load()
    assert again.embedded_chunks == CHUNKS["refunds"]
    assert again.reused_chunks == CHUNKS["password"] + CHUNKS["faq"]
    assert "shipping" not in await sources(again, "How long does delivery take?")
    assert [c.text for c in again.chunks() if c.source == "refunds"] == [
        "Refunds are paid within 14 days."]
    files = manifest(tmp_path)["files"]
    assert sorted(files) == [
        "kb/faq.jsonl", "kb/password.md", "kb/refunds.md"]
    on_disk = {p.name for p in (tmp_path / ".engine/index/kb").glob("*.npy")}
    assert on_disk == {f["vectors"] for f in files.values()}  # stale vectors deleted
    assert old["kb/shipping.md"]["vectors"] not in on_disk


async def test_other_chunk_settings_or_another_model_rebuild_everything(tmp_path: Path) -> None:
    write_kb(tmp_path)
    await open_index(tmp_path).load()
    smaller = open_index(tmp_path, chunk_size=400)
    await smaller.load()
    assert (smaller.embedded_chunks, smaller.reused_chunks) == (TOTAL, 0)
    settings = IndexSettings(documents=DOCUMENTS, chunk_size=400)
    other = DocumentIndex("kb", settings, tmp_path, opened().embedder(), model="other-model@2")
    await other.load()
    assert (other.embedded_chunks, other.reused_chunks) == (TOTAL, 0)
    assert manifest(tmp_path)["model"] == "other-model@2"


async def test_concurrent_first_searches_build_the_index_once(tmp_path: Path) -> None:
    write_kb(tmp_path)
    index = open_index(tmp_path)
    found = await asyncio.gather(*(sources(index, "When is support open?", 1)
                                   for _ in range(5)))
    assert found == [["hours"]] * 5
    assert (index.embedded_chunks, index.reused_chunks) == (TOTAL, 0)


async def test_damaged_files_on_disk_mean_embedding_again_not_an_error(tmp_path: Path) -> None:
    write_kb(tmp_path)
    await open_index(tmp_path).load()
    files = manifest(tmp_path)["files"]
    (tmp_path / ".engine/index/kb" / files["kb/faq.jsonl"]["vectors"]).write_bytes(b"garbage")
    again = open_index(tmp_path)
    await again.load()
    assert (again.embedded_chunks, again.reused_chunks) == (CHUNKS["faq"], TOTAL - CHUNKS["faq"])
    (tmp_path / ".engine/index/kb/manifest.json").write_text("{not json")
    third = open_index(tmp_path)
    assert await sources(third, "Where do I download my invoice?", 1) == ["invoice"]
    assert third.embedded_chunks == TOTAL


async def test_a_folder_that_cannot_be_written_still_serves_from_memory(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_kb(tmp_path)
    (tmp_path / ".engine").write_text("a file where the index folder should be")
    index = open_index(tmp_path)
    with caplog.at_level(logging.WARNING, logger="engine.index.store"):
        assert await sources(index, "How do I get my money back?", 1) == ["refunds"]
    assert "index 'kb' is not persisted" in caplog.text
    assert index.embedded_chunks == TOTAL


async def test_two_files_with_one_document_id_are_an_error(tmp_path: Path) -> None:
    kb = write_kb(tmp_path)
    (kb / "more").mkdir()
    (kb / "more/refunds.md").write_text("# Refunds again\n\nSame id, other folder.\n")
    spec = Resource.model_validate({"type": "index", "documents": ["kb/**/*.md"]})
    index = opened().index("kb", spec, tmp_path)
    with pytest.raises(DocumentError, match=r"document id 'refunds' is used by both "
                                            r"kb/more/refunds\.md and kb/refunds\.md"):
        await index.load()
