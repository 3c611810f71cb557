"""The offline local model: the embedded default tier, an in-process litellm custom provider.

After `register_local_provider()`, any `local/<name>` model string goes through
`litellm.acompletion` / `completion` (streaming too) like a remote model, with no API key and
no network:

    from engine.providers.local import register_local_provider
    register_local_provider()
    resp = await litellm.acompletion(model="local/kb", messages=[...])

It is *not* a language model. It answers extractively from knowledge-base passages found in
the messages (format: `engine.providers.local_answer`), quoting the most relevant sentences
with `[N]` citations, and otherwise acknowledges the topic and promises a human follow-up.
Every `<name>` behaves the same; the name is only a label.

Labelling (so nobody mistakes it for an LLM): the response `model` is `local/<name>`,
`system_fingerprint` is `SYSTEM_FINGERPRINT`, and the message's `provider_specific_fields`
hold `{"engine_tier": "local", "extractive": True, "grounded": ..., "sources": [...]}`.
The reply text itself stays customer-facing and honest: it says it quotes the knowledge
base, or that it found nothing and a person will follow up.

JSON mode (best-effort): when `response_format` asks for JSON, or a system message contains
the word `JSON`, the content is `{"reply": str, "sources": [int], "grounded": bool,
"tier": "local"}` whatever keys the prompt lists; a validate stage must allow for that.

Usage is counted with a deterministic approximation (word pieces and punctuation, plus 4
per message), not a real tokenizer. `max_tokens` truncates plain-text replies
(`finish_reason="length"`); JSON replies are never truncated.

Importing this module imports litellm (slow: import it lazily); it sets
`LITELLM_LOCAL_MODEL_COST_MAP=True` first unless already set.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import GenericStreamingChunk, ModelResponse, Usage

from engine.providers.client import load_litellm
from engine.providers.local_answer import LocalAnswer, answer, count_tokens, message_text

load_litellm()  # the same quiet, single-retry configuration however litellm got imported

__all__ = [
    "PROVIDER",
    "SYSTEM_FINGERPRINT",
    "LocalModel",
    "LocalReply",
    "register_local_provider",
]

PROVIDER = "local"
SYSTEM_FINGERPRINT = "engine-local-extractive-v1"
_PIECE = re.compile(r"\s*\S+\s*")
_lock = threading.Lock()


class LocalReply:
    """One computed reply: the answer plus what litellm needs to report it."""

    def __init__(self, model: str, messages: list[dict[str, Any]],
                 optional_params: dict[str, Any]) -> None:
        self.model = model if model.startswith(f"{PROVIDER}/") else f"{PROVIDER}/{model}"
        self.answer: LocalAnswer = answer(messages, json_mode=_json_requested(optional_params))
        text = self.answer.text
        self.finish_reason: Literal["stop", "length"] = "stop"
        max_tokens = optional_params.get("max_tokens") or optional_params.get(
            "max_completion_tokens")
        if (isinstance(max_tokens, int) and max_tokens > 0 and not self.answer.json_mode
                and count_tokens(text) > max_tokens):
            text = _truncate(text, max_tokens)
            self.finish_reason = "length"
        self.text = text
        self.prompt_tokens = sum(count_tokens(message_text(m)) + 4 for m in messages)
        self.completion_tokens = max(1, count_tokens(text))

    @property
    def fields(self) -> dict[str, Any]:
        return {"engine_tier": PROVIDER, "extractive": True, "grounded": self.answer.grounded,
                "sources": list(self.answer.sources)}

    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                     total_tokens=self.prompt_tokens + self.completion_tokens)

    def fill(self, response: ModelResponse) -> ModelResponse:
        choice = response.choices[0]
        choice.message.content = self.text
        choice.message.provider_specific_fields = self.fields
        choice.finish_reason = self.finish_reason
        response.model = self.model
        response.created = int(time.time())
        response.system_fingerprint = SYSTEM_FINGERPRINT
        response.usage = self.usage()  # type: ignore[attr-defined]
        return response

    def chunks(self) -> Iterator[GenericStreamingChunk]:
        """Word-sized chunks whose texts concatenate to `self.text`; usage on the last."""
        for piece in _PIECE.findall(self.text):
            yield GenericStreamingChunk(text=piece, tool_use=None, is_finished=False,
                                        finish_reason="", usage=None, index=0)
        yield GenericStreamingChunk(
            text="", tool_use=None, is_finished=True, finish_reason=self.finish_reason, index=0,
            usage={"prompt_tokens": self.prompt_tokens,
                   "completion_tokens": self.completion_tokens,
                   "total_tokens": self.prompt_tokens + self.completion_tokens},
            provider_specific_fields=self.fields)


def _json_requested(optional_params: dict[str, Any]) -> bool | None:
    fmt = optional_params.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        return True
    return None  # let the answerer look for "JSON" in the system prompt


def _truncate(text: str, max_tokens: int) -> str:
    kept, used = [], 0
    for piece in _PIECE.findall(text):
        used += count_tokens(piece)
        if used > max_tokens:
            break
        kept.append(piece)
    return "".join(kept).rstrip()


def _reply(kwargs: dict[str, Any]) -> LocalReply:
    return LocalReply(str(kwargs.get("model") or "default"), list(kwargs.get("messages") or []),
                      dict(kwargs.get("optional_params") or {}))


class LocalModel(CustomLLM):
    """litellm handler for `local/<name>`. litellm passes every argument by keyword."""

    def completion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        response = kwargs.get("model_response")
        return _reply(kwargs).fill(response if isinstance(response, ModelResponse)
                                   else ModelResponse())

    async def acompletion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return self.completion(*args, **kwargs)

    def streaming(self, *args: Any, **kwargs: Any) -> Iterator[GenericStreamingChunk]:
        return _reply(kwargs).chunks()

    # litellm types astreaming as a coroutine but iterates its result directly, so it must
    # be an async generator (a coroutine would not be awaited by CustomStreamWrapper).
    async def astreaming(  # type: ignore[override]
        self, *args: Any, **kwargs: Any
    ) -> AsyncIterator[GenericStreamingChunk]:
        for chunk in _reply(kwargs).chunks():
            yield chunk


def register_local_provider() -> CustomLLM:
    """Make `local/<name>` resolvable by litellm; idempotent and thread-safe.

    Returns the handler serving `local`. If something else already registered a handler
    under `local` it is left in place (a deliberate override) and returned.
    """
    with _lock:
        for entry in litellm.custom_provider_map:
            if entry.get("provider") == PROVIDER:
                handler = entry["custom_handler"]
                break
        else:
            handler = LocalModel()
            litellm.custom_provider_map = [
                *litellm.custom_provider_map,
                {"provider": PROVIDER, "custom_handler": handler},
            ]
        # litellm copies the map into provider_list/_custom_providers on every call; do it
        # now too so get_llm_provider("local/...") works before the first completion.
        litellm.utils.custom_llm_setup()  # type: ignore[no-untyped-call]
    if not isinstance(handler, CustomLLM):
        raise TypeError(f"litellm provider {PROVIDER!r} is registered with a non-CustomLLM "
                        f"handler: {type(handler).__name__}")
    return handler
