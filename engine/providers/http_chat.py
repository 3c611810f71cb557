"""OpenAI-compatible chat completions over a plain aiohttp POST: the `direct` transport.

Why not the `openai` SDK: for one small chat call it spent ≈ 1.0 ms of CPU transforming
TypedDicts, building pydantic models and driving httpx, where an aiohttp POST of the same
JSON costs ≈ 0.13 ms (httpx alone ≈ 0.5 ms); on `engine serve`'s hot path that was the
largest single cost (bench/README.md, `serve.py`). We send what the SDK sent (the body, a
Bearer key, the caller's headers) and read what it read (`choices[0]`, `usage`, SSE chunks);
the call's timeout bounds the whole call, stream included.

Failures are raised as the small classes below, named so that `errors.classify` reads them
as it read the SDK's: `ChatTimeoutError` is a `TimeoutError`, `ChatConnectionError` a
`ConnectionError` (a refused connection, or a body or stream cut short), `ChatStatusError`
carries `status_code`, `headers` (Retry-After), the error's `code` and `body`, and a 2xx
answer that is not a usable completion is `errors.MalformedResponseError`.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import aiohttp

from engine.providers.errors import MalformedResponseError

__all__ = ["ChatConnectionError", "ChatEndpoint", "ChatStatusError", "ChatTimeoutError",
           "Piece"]

Piece = tuple[str | None, tuple[int, int] | None]
"""One streamed chunk as the caller needs it: its content delta and the usage, if present."""

_POOL = 1000  # connections per endpoint, as the SDK's httpx pool; tier limits cap concurrency


class ChatTimeoutError(TimeoutError):
    """The call's total timeout passed before the answer (or the stream) was complete."""


class ChatConnectionError(ConnectionError):
    """The endpoint was unreachable, or dropped the connection before the answer was whole."""


class ChatStatusError(Exception):
    """A non-2xx answer, or an error event inside a stream.

    `classify` reads `status_code`, `headers` (Retry-After), and `code` plus `body` (the
    OpenAI error object) for the context-window and content-filter hints."""

    def __init__(self, status_code: int, headers: Mapping[str, str], body: object) -> None:
        error = body.get("error", body) if isinstance(body, dict) else body
        detail = error.get("message") if isinstance(error, dict) else None
        super().__init__(f"HTTP {status_code}: {detail or body}")
        self.status_code = status_code
        self.headers = dict(headers)
        self.body = error
        self.code = error.get("code") if isinstance(error, dict) else None


class ChatEndpoint:
    """One OpenAI-compatible `{api_base}/chat/completions`, with its own connection pool."""

    def __init__(self, api_base: str, api_key: str | None) -> None:
        self.url = api_base.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._proxy = _env_proxy(self.url)
        self._session: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def complete(self, body: dict[str, Any], *, timeout: float,
                       headers: Mapping[str, str]) -> tuple[str, tuple[int, int]]:
        """The answer's text and (input, output) tokens."""
        try:
            async with self._post(body, timeout, headers) as response:
                await _check(response)
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _transport_error(exc, self.url) from exc
        data = _json(raw)
        try:
            content = data["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise MalformedResponseError(f"no choices[0].message in the answer: "
                                         f"{raw[:200]!r}") from exc
        return (content if isinstance(content, str) else ""), _usage(data)

    async def stream(self, body: dict[str, Any], *, timeout: float,
                     headers: Mapping[str, str]) -> AsyncGenerator[Piece, None]:
        """The streamed answer's pieces; asks for the usage in the last chunk."""
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        try:
            async with self._post(body, timeout, headers) as response:
                await _check(response)
                async for data in _events(response.content):
                    yield _piece(data)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _transport_error(exc, self.url) from exc

    def _post(self, body: dict[str, Any], timeout: float, headers: Mapping[str, str]
              ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        if self._session is None:  # created in the running loop, on first use
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                limit=_POOL, ssl=_ssl_context() if self.url.startswith("https:") else True))
        return self._session.post(self.url, data=json.dumps(body).encode(),
                                  headers={**self._headers, **headers}, proxy=self._proxy,
                                  timeout=aiohttp.ClientTimeout(total=timeout))


async def _check(response: aiohttp.ClientResponse) -> None:
    if response.status < 300:
        return
    raw = await response.read()
    try:
        body: object = json.loads(raw)
    except ValueError:
        body = raw.decode("utf-8", "replace")[:500]
    raise ChatStatusError(response.status, response.headers, body)


async def _events(content: aiohttp.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """Server-sent events' `data` as JSON, until `[DONE]` or the end of the body."""
    data: list[bytes] = []
    async for raw in content:
        line = raw.rstrip(b"\r\n")
        if line.startswith(b"data:"):
            data.append(line[5:].lstrip(b" "))
        elif not line and data:
            payload = b"\n".join(data)
            data = []
            if payload == b"[DONE]":
                return
            yield _json(payload)


def _piece(chunk: dict[str, Any]) -> Piece:
    if error := chunk.get("error"):  # a provider failing mid-answer; its code if it gives one
        code = error.get("code") if isinstance(error, dict) else None
        raise ChatStatusError(code if isinstance(code, int) else 500, {}, chunk)
    choices = chunk.get("choices")
    delta = choices[0].get("delta") if choices and isinstance(choices[0], dict) else None
    content = delta.get("content") if isinstance(delta, dict) else None
    return (content if isinstance(content, str) else None,
            _usage(chunk) if chunk.get("usage") else None)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise MalformedResponseError(f"not JSON ({exc}): {raw[:200]!r}") from exc
    if not isinstance(data, dict):
        raise MalformedResponseError(f"not a JSON object: {raw[:200]!r}")
    return data


def _usage(data: dict[str, Any]) -> tuple[int, int]:
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return 0, 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def _env_proxy(url: str) -> str | None:
    """The `HTTP(S)_PROXY` / `NO_PROXY` choice the SDK's httpx made, made once per endpoint:
    aiohttp's `trust_env` makes it on every request (≈ 0.3 ms, netrc included)."""
    parts = urlsplit(url)
    if parts.hostname is None or proxy_bypass(parts.hostname):
        return None
    return getproxies().get(parts.scheme)


def _ssl_context() -> ssl.SSLContext:
    """Verify against `SSL_CERT_FILE`, else certifi's roots, as the SDK's httpx did (a slim
    image may have no system CA store)."""
    import certifi  # comes with httpx, which the openai package requires

    return ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or certifi.where())


def _transport_error(exc: BaseException, url: str) -> Exception:
    """aiohttp's exceptions under the names `classify` knows (its own say `Client...`)."""
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError is one too
        return ChatTimeoutError(f"POST {url}: no complete answer within the timeout")
    return ChatConnectionError(f"POST {url}: {type(exc).__name__}: {exc}")
