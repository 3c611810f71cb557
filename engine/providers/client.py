"""One model call, through litellm or directly over HTTP to an OpenAI-compatible endpoint.

`ModelClient.complete` makes exactly one attempt: no retries (litellm's own retries are off,
`max_retries=0`), no fallback — those belong to the generate stage, so that only one layer
ever retries. It returns a `Completion` with the text, token usage, cost and, when
streaming, the time to the first token; it raises the provider's exception unchanged (the
`openai` exception classes, which litellm's subclass, or `http_chat`'s) for
`providers.errors.classify`.

Two transports, chosen per model tier:
- `litellm` (default): any provider litellm knows, and the offline `local/...` model.
- `direct`: a plain aiohttp POST (`http_chat`) to any OpenAI-compatible endpoint (OpenAI,
  vLLM, llama.cpp, Ollama). litellm costs ≈ 3 ms of CPU per call, the POST ≈ 0.15 ms; on a
  2-core box that caps throughput near 300 calls/s, and the direct path lifts it.

litellm is imported lazily and configured for offline use first: its remote cost-map fetch
at import costs seconds and fails without a network.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.providers.http_chat import ChatEndpoint, Piece
    from engine.spec.models import ModelTier

__all__ = ["Completion", "ModelClient", "StreamInterrupted", "is_local", "load_litellm"]


def is_local(model: str) -> bool:
    """`local/<name>`: engine's offline model, served in process (see providers/local.py)."""
    return model.startswith("local/")


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    model: str
    ttft: float | None = None
    """Seconds to the first content token, when streaming."""


class StreamInterrupted(Exception):
    """A stream broke after its first token reached the caller: no retry, no fallback."""

    def __init__(self, partial: str, cause: BaseException) -> None:
        super().__init__(f"the stream broke after {len(partial)} characters: "
                         f"{type(cause).__name__}: {cause}")


def load_litellm() -> Any:
    """Import litellm configured for offline, quiet, single-layer-retry use."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    litellm.num_retries = 0
    return litellm


class ModelClient:
    """Makes single model calls; holds the direct endpoints it reuses (one pool each)."""

    def __init__(self) -> None:
        self._direct: dict[tuple[str | None, str | None], ChatEndpoint] = {}
        self._litellm: Any = None
        self._rates: dict[str, tuple[float, float]] = {}
        self._local_ready = False

    @property
    def litellm(self) -> Any:
        if self._litellm is None:
            self._litellm = load_litellm()
        return self._litellm

    async def aclose(self) -> None:
        """Close pooled connections: ours, and the clients litellm caches per event loop."""
        for endpoint in self._direct.values():
            await endpoint.aclose()
        self._direct.clear()
        if self._litellm is not None:
            from litellm.llms.custom_httpx.async_client_cleanup import (
                close_litellm_async_clients,
            )

            await close_litellm_async_clients()  # type: ignore[no-untyped-call]
            self._litellm.in_memory_llm_clients_cache.flush_cache()

    async def warm_up(self, tiers: Iterable[ModelTier]) -> None:
        """Import litellm (seconds) and register the local model before the first call."""
        tiers = list(tiers)
        local = [tier for tier in tiers if is_local(tier.model)]
        hosted = [tier for tier in tiers if tier not in local]
        if local or any(tier.transport == "litellm" or tier.price is None for tier in hosted):
            await asyncio.to_thread(lambda: self.litellm)  # also prices the direct tiers
        for tier in hosted:
            if tier.price is None:
                self.rates(tier.model)
        if local:
            # litellm loads the custom-provider path on its first call (~0.2 s): pay it now.
            await self.complete(local[0], [{"role": "user", "content": "warm up"}], timeout=5)

    async def complete(
        self,
        tier: ModelTier,
        messages: list[dict[str, Any]],
        *,
        timeout: float,
        stream: bool = False,
        headers: Mapping[str, str] | None = None,
        on_token: Callable[[str], None] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Completion:
        """`params` are this call's request parameters (a `response_format`, say), applied
        over the tier's own `params`."""
        if is_local(tier.model) and not self._local_ready:
            from engine.providers.local import register_local_provider

            register_local_provider()
            self._local_ready = True
        call = self._direct_call if tier.transport == "direct" else self._litellm_call
        started = time.perf_counter()
        request = {**tier.params, **(params or {})}
        text, usage, ttft = await call(tier, request, messages, timeout, stream,
                                       dict(headers or {}), on_token, started)
        input_tokens, output_tokens = usage
        return Completion(text, input_tokens, output_tokens,
                          self.cost(tier, input_tokens, output_tokens), tier.model, ttft)

    async def _litellm_call(self, tier: ModelTier, request: dict[str, Any],
                            messages: list[dict[str, Any]],
                            timeout: float, stream: bool, headers: dict[str, str],
                            on_token: Callable[[str], None] | None, started: float
                            ) -> tuple[str, tuple[int, int], float | None]:
        kwargs: dict[str, Any] = {**request, "model": tier.model, "messages": messages,
                                  "timeout": timeout, "max_retries": 0}
        if tier.api_base:
            kwargs["api_base"] = tier.api_base
        if tier.api_key:
            kwargs["api_key"] = tier.api_key.get_secret_value()
        if headers:
            kwargs["extra_headers"] = headers
        if stream:
            kwargs |= {"stream": True, "stream_options": {"include_usage": True}}
        response = await self.litellm.acompletion(**kwargs)
        if stream:
            return await _consume(_litellm_pieces(response), on_token, started)
        return _text(response), _usage(response), None

    async def _direct_call(self, tier: ModelTier, request: dict[str, Any],
                           messages: list[dict[str, Any]],
                           timeout: float, stream: bool, headers: dict[str, str],
                           on_token: Callable[[str], None] | None, started: float
                           ) -> tuple[str, tuple[int, int], float | None]:
        endpoint = self._endpoint(tier)
        model = tier.model.split("/", 1)[1] if "/" in tier.model else tier.model
        body = {**request, "model": model, "messages": messages}
        if stream:
            return await _consume(endpoint.stream(body, timeout=timeout, headers=headers),
                                  on_token, started)
        text, usage = await endpoint.complete(body, timeout=timeout, headers=headers)
        return text, usage, None

    def _endpoint(self, tier: ModelTier) -> ChatEndpoint:
        key = tier.api_key.get_secret_value() if tier.api_key else None
        slot = (tier.api_base, key)
        if slot not in self._direct:
            from engine.providers.http_chat import ChatEndpoint  # aiohttp: ≈ 90 ms to import

            # What the openai SDK did, as users expect: its environment variables fill in a
            # tier that names no endpoint or key.
            base = (tier.api_base or os.environ.get("OPENAI_BASE_URL")
                    or "https://api.openai.com/v1")
            self._direct[slot] = ChatEndpoint(base, key or os.environ.get("OPENAI_API_KEY"))
        return self._direct[slot]

    def cost(self, tier: ModelTier, input_tokens: int, output_tokens: int) -> float:
        """USD for one call: the tier's `price` (per 1M tokens) or litellm's cost map."""
        if tier.price is not None:
            return (input_tokens * tier.price.input + output_tokens * tier.price.output) / 1e6
        if is_local(tier.model):
            return 0.0
        per_input, per_output = self.rates(tier.model)
        return input_tokens * per_input + output_tokens * per_output

    def rates(self, model: str) -> tuple[float, float]:
        """USD per input and output token from litellm's cost map, looked up once per model
        (a model it has no price for costs 0; tiered prices above a size are ignored)."""
        if model not in self._rates:
            try:
                rate = self.litellm.cost_per_token(model=model, prompt_tokens=1_000_000,
                                                   completion_tokens=1_000_000)
                self._rates[model] = (rate[0] / 1e6, rate[1] / 1e6)
            except Exception:  # not in the cost map: say 0 rather than fail the call
                self._rates[model] = (0.0, 0.0)
        return self._rates[model]


async def _consume(pieces: AsyncGenerator[Piece, None], on_token: Callable[[str], None] | None,
                   started: float) -> tuple[str, tuple[int, int], float | None]:
    """Read a chat stream; once a token is out, a broken stream is `StreamInterrupted`."""
    parts: list[str] = []
    usage = (0, 0)
    ttft = None
    try:
        async with aclosing(pieces):
            async for delta, chunk_usage in pieces:
                if chunk_usage is not None:
                    usage = chunk_usage
                if delta:
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    parts.append(delta)
                    if on_token is not None:
                        on_token(delta)
    except Exception as exc:
        if not parts:
            raise
        raise StreamInterrupted("".join(parts), exc) from exc
    return "".join(parts), usage, ttft


async def _litellm_pieces(stream: Any) -> AsyncGenerator[Piece, None]:
    """litellm's chunk objects as (content delta, usage) pieces."""
    async for chunk in stream:
        choices = getattr(chunk, "choices", None) or []
        delta = choices[0].delta.content if choices and choices[0].delta else None
        yield delta, _usage(chunk) if getattr(chunk, "usage", None) else None


def _text(response: Any) -> str:
    content = response.choices[0].message.content
    return content if isinstance(content, str) else ""


def _usage(response: Any) -> tuple[int, int]:
    usage = getattr(response, "usage", None)
    if usage is None:
        return 0, 0
    return int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0)
