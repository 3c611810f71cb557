"""Document indexes for retrieval: the `index` resource behind the `retrieve` stage.

`documents` turns files into chunks (Markdown sections, JSONL records); `store` embeds them
once, persists the vectors next to the pipeline (`.engine/index/<name>/`) and searches them
with FAISS. One `DocumentIndex` per resource per process, from `Resources.index`.
"""

from __future__ import annotations

from engine.index.documents import Chunk, DocumentError, IndexSettings
from engine.index.store import DocumentIndex, Hit

__all__ = ["Chunk", "DocumentError", "DocumentIndex", "Hit", "IndexSettings"]
