"""Token counting and truncation that work offline, with the tokenizer of the tier's model.

tiktoken normally downloads its encodings on first use; litellm's wheel bundles
cl100k_base, o200k_base and p50k_base under `litellm_core_utils/tokenizers/` with tiktoken's
cache file names, so pointing `TIKTOKEN_CACHE_DIR` there makes tiktoken work with no network
(without importing litellm, which costs seconds). Models tiktoken does not know (Anthropic,
Ollama...) are counted with litellm's token counter, which carries their tokenizers; text is
cut on cl100k_base token boundaries until that count fits. `local/` models use cl100k_base.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import TYPE_CHECKING, Any

from engine.providers.client import is_local

if TYPE_CHECKING:
    import tiktoken

__all__ = ["TokenCounter", "encoding_for"]

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
def encoding_for(model: str) -> tuple[tiktoken.Encoding, bool]:
    """The model's tiktoken encoding and whether it is exact (else cl100k_base stands in)."""
    _bundled_encodings()
    import tiktoken

    name = model.split("/", 1)[-1]
    try:
        return tiktoken.encoding_for_model(name), True
    except KeyError:
        return tiktoken.get_encoding(FALLBACK_ENCODING), False


class TokenCounter:
    """Counts and truncates text as `model` would tokenize it (a litellm model string)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._litellm: Any = None

    def count(self, text: str) -> int:
        encoding, exact = encoding_for(self.model)
        if exact or is_local(self.model):
            return len(encoding.encode(text, disallowed_special=()))
        return int(self.litellm.token_counter(model=self.model, text=text))

    @property
    def litellm(self) -> Any:
        if self._litellm is None:
            from engine.providers.client import load_litellm

            self._litellm = load_litellm()
        return self._litellm

    def truncate(self, text: str, limit: int) -> str:
        """The longest prefix of `text` within `limit` tokens, cut on a token boundary."""
        encoding, _ = encoding_for(self.model)
        tokens = encoding.encode(text, disallowed_special=())
        keep = limit
        while keep > 0:
            cut = encoding.decode(tokens[:keep])
            over = self.count(cut) - limit
            if over <= 0:
                return cut
            keep -= over
        return ""
