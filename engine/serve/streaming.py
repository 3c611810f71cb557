"""`stream: true`: the answer as server-sent events, in OpenAI's `chat.completion.chunk` form.

What a streamed answer shows:
- A pipeline whose `generate` stage streams (`stream: true` in its `with:`) sends the model's
  text as it arrives. Pseudonyms the guard put in (`<EMAIL_1>`) are restored in the stream
  too: text is sent a word at a time (up to the last whitespace received), and each piece
  goes through the run's finalizers, the guard's restore, as the final output would. A
  placeholder written with spaces inside (`< EMAIL_1 >`) is not restored in the stream.
- A pipeline that does not stream (the flagship), or a run answered without the streaming
  stage (a cache hit, a hand-off, a guard's refusal), sends its whole final answer as one
  content chunk when the run ends.
- Streamed text is the model's answer before any later stage looks at it: a `validate`
  stage after a streaming `generate` cannot take back what was sent. Pipelines that must
  check answers before users see them should not stream that stage.

No retry or fallback happens after the first byte has been sent: the pipeline's tiers fall
back only before their first token. A failure after it ends the stream with an `error`
event (OpenAI's error shape, which the SDKs raise) and `data: [DONE]`. The response's HTTP
status is 200 once the first byte is out; refusals (401, 429, 503...) come before it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from engine.runtime.context import RunHooks
from engine.serve.idempotency import Outcome
from engine.serve.openai import ApiError, chunk, error_body

__all__ = ["LiveText", "events"]

_log = logging.getLogger(__name__)
_LAST_SPACE = re.compile(r"\s\S*\Z")
_DONE = b"data: [DONE]\n\n"


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


class LiveText:
    """The `on_token` target of a streamed run: whole words, pseudonyms restored, queued for
    the response; `None` in the queue marks the end of the run."""

    def __init__(self, trace_id: str, cache_control: str | None) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.hooks = RunHooks(trace_id, cache_control=cache_control, on_token=self)
        self._pending = ""

    def __call__(self, text: str) -> None:
        self._pending += text
        match = _LAST_SPACE.search(self._pending)
        if match is not None:
            cut = match.start() + 1
            piece, self._pending = self._pending[:cut], self._pending[cut:]
            self._put(piece)

    def end(self, _: object = None) -> None:
        """The run is over (a task's done callback): send what is left, then the end mark."""
        if self._pending:
            self._put(self._pending)
            self._pending = ""
        self.queue.put_nowait(None)

    def _put(self, piece: str) -> None:
        for finalize in self.hooks.finalizers:
            restored = finalize(piece)
            piece = restored if isinstance(restored, str) else piece
        self.queue.put_nowait(piece)


async def events(run: asyncio.Task[Outcome], live: LiveText, response_id: str, model: str,
                 created: int, include_usage: bool) -> AsyncIterator[bytes]:
    """The SSE body: the role chunk, the live text, the final answer if nothing streamed, the
    finish chunk, the usage chunk if asked (`stream_options.include_usage`), `[DONE]`.

    The first chunk waits for the first text or the run's end: a replayed answer (same
    `Idempotency-Key`) then carries the id of the run that produced it. A client that leaves
    does not stop the run: its result is still observed, audited and kept for its key."""
    role = {"role": "assistant", "content": ""}
    while (piece := await live.queue.get()) is not None:
        if role:
            yield _event(chunk(response_id, model, created, role))
            role = {}
        yield _event(chunk(response_id, model, created, {"content": piece}))
    try:
        body = run.result().body
    except ApiError as exc:
        yield _event(exc.body())
        yield _DONE
        return
    except Exception:
        _log.exception("stream %s failed", response_id)
        yield _event(error_body("internal error; the server log has the details",
                                "server_error"))
        yield _DONE
        return
    response_id = body["id"]
    if role:
        yield _event(chunk(response_id, model, created, role))
        yield _event(chunk(response_id, model, created,
                           {"content": body["choices"][0]["message"]["content"]}))
    yield _event(chunk(response_id, model, created, {}, "stop"))
    if include_usage:
        yield _event(chunk(response_id, model, created, None, usage=body["usage"]))
    yield _DONE
