"""Token counting and truncation that work offline, with the tokenizer of the tier's model.

tiktoken normally downloads its encodings on first use; litellm's wheel bundles
cl100k_base, o200k_base and p50k_base under `litellm_core_utils/tokenizers/` with tiktoken's
cache file names, so pointing `TIKTOKEN_CACHE_DIR` there makes tiktoken work with no network
(without importing litellm, which costs seconds). Models tiktoken does not know (Anthropic,
local, Ollama...) are counted with cl100k_base: within a few percent for English text, and a
limit is a budget, not an invoice.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tiktoken

__all__ = ["TokenCounter"]

FALLBACK_ENCODING = "cl100k_base"


def _bundled_encodings() -> None:
    """Point tiktoken at the encodings litellm ships, unless the user chose a folder."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return
    spec = importlib.util.find_spec("litellm")
    if spec is not None and spec.origin is not None:
        folder = os.path.join(os.path.dirname(spec.origin), "litellm_core_utils", "tokenizers")
        os.environ["TIKTOKEN_CACHE_DIR"] = folder


@functools.cache
def _encoding(model: str) -> tiktoken.Encoding:
    _bundled_encodings()
    import tiktoken

    name = model.split("/", 1)[-1]
    try:
        return tiktoken.encoding_for_model(name)
    except KeyError:
        return tiktoken.get_encoding(FALLBACK_ENCODING)


class TokenCounter:
    """Counts and truncates text as `model` would tokenize it (a litellm model string)."""

    def __init__(self, model: str) -> None:
        self.model = model

    def count(self, text: str) -> int:
        return len(_encoding(self.model).encode(text, disallowed_special=()))

    def truncate(self, text: str, limit: int) -> str:
        """The longest prefix of `text` within `limit` tokens, cut on a token boundary."""
        encoding = _encoding(self.model)
        tokens = encoding.encode(text, disallowed_special=())
        if len(tokens) <= limit:
            return text
        return encoding.decode(tokens[:limit])
