"""Token counting offline, with the tokenizer that matches the model."""

from __future__ import annotations

import pytest

from engine.guard.tokens import TokenCounter

TEXT = "Hello world, my invoice from last month was charged twice. Can you help?"


def test_openai_models_use_their_own_encoding() -> None:
    assert TokenCounter("openai/gpt-4o").count(TEXT) == 16  # o200k_base
    assert TokenCounter("openai/gpt-3.5-turbo").count(TEXT) == 16  # cl100k_base
    assert TokenCounter("openai/gpt-3.5-turbo").count("x" * 64) == 8


@pytest.mark.parametrize("model", ["openai/gpt-4o", "anthropic/claude-3-haiku-20240307",
                                   "local/kb"])
def test_truncation_cuts_on_a_token_boundary_within_the_limit(model: str) -> None:
    counter = TokenCounter(model)
    cut = counter.truncate(TEXT, 5)
    assert TEXT.startswith(cut) and cut
    assert counter.count(cut) <= 5 < counter.count(TEXT)
    assert counter.truncate(TEXT, 1000) == TEXT


def test_non_openai_models_are_counted_by_litellm() -> None:
    """litellm carries the tokenizers of the providers tiktoken does not know."""
    calls: list[str] = []

    class FakeLitellm:
        @staticmethod
        def token_counter(model: str, text: str) -> int:
            calls.append(model)
            return len(text.split())

    counter = TokenCounter("anthropic/claude-3-haiku-20240307")
    counter._litellm = FakeLitellm()
    assert counter.count(TEXT) == 13
    assert calls == ["anthropic/claude-3-haiku-20240307"]
    assert TokenCounter("local/kb").count(TEXT) == 16  # no litellm for the local tier
