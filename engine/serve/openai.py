"""The OpenAI wire format: the chat request we accept, the bodies we answer, the error shape.

Only the shapes live here (what any OpenAI client parses); how a conversation becomes a
pipeline's input is `engine.serve.mapping`. Sampling fields a client sends (`temperature`,
`max_tokens`, `tools`...) are accepted and ignored: the pipeline file decides those, and
rejecting them would break stock clients that always send some.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ApiError", "ChatRequest", "Message", "chunk", "completion", "error_body"]


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The content as text: the text parts of a multi-part content, joined."""
        if isinstance(self.content, list):
            return "".join(str(part.get("text", "")) for part in self.content
                           if part.get("type") == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class ApiError(Exception):
    """An HTTP error in OpenAI's format. `message` is shown to the caller: it must say what
    to change and never quote a secret, a stack or another tenant's data."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 code: str | None = None, *, param: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param, **self.extra)


def error_body(message: str, type: str, code: str | None = None, param: str | None = None,
               **extra: Any) -> dict[str, Any]:
    """`{"error": {message, type, param, code}}`: what the OpenAI SDKs turn into exceptions."""
    return {"error": {"message": message, "type": type, "param": param, "code": code, **extra}}


def completion(response_id: str, model: str, content: str, usage: dict[str, int],
               created: int | None = None) -> dict[str, Any]:
    """A `chat.completion` body with one choice."""
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": usage,
    }


def chunk(response_id: str, model: str, created: int, delta: dict[str, Any] | None,
          finish: str | None = None, usage: dict[str, int] | None = None) -> dict[str, Any]:
    """One `chat.completion.chunk`; `delta=None` makes the final usage chunk (no choices)."""
    body: dict[str, Any] = {"id": response_id, "object": "chat.completion.chunk",
                            "created": created, "model": model, "choices": []}
    if delta is not None:
        body["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    if usage is not None:
        body["usage"] = usage
    return body
