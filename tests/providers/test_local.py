"""The offline local model, exercised through the real `litellm.acompletion` dispatch."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from engine.providers import local_answer

# litellm is imported in a fixture, never at collection: `import litellm` installs its own
# warning filters, and pytest discards filters installed during collection, so a collection
# time import leaves other test modules facing warnings litellm meant to silence.
# Its first completion call lazily imports modules (the github_copilot authenticator, ...)
# whose `ReadOnly` TypedDict items make pydantic warn (litellm's code, not ours).
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Items? .* on TypedDict class '\w+' (is|are) using the `ReadOnly` qualifier"
    r":UserWarning:pydantic._internal._generate_schema"
)

KB = {
    1: "Refunds are issued to the original payment method within 5-7 business days. "
       "If you were charged twice for the same invoice, the duplicate charge is refunded "
       "automatically within 48 hours.",
    2: 'To reset your password, click "Forgot password" on the sign-in page. The reset link '
       "expires after 30 minutes. If the reset email does not arrive, check your spam folder "
       "or ask a workspace admin to resend it.",
    3: "The API allows 100 requests per minute per key. Requests over the limit receive "
       "HTTP 429 with a Retry-After header telling you how many seconds to wait.",
    4: "You can export all your data as CSV from Settings > Data > Export. Exports larger "
       "than 1 GB are emailed to you as a download link.",
    5: "Annual plans are billed once a year and can be switched to monthly billing at "
       "renewal. Prices shown on the pricing page exclude VAT.",
}
ALL_SENTENCES = [s for text in KB.values() for s in re.split(r"(?<=[.!?])\s+", text)]

SYSTEM = ("You are a support assistant. Answer only from the passages below and cite them "
          "as [n].")
BILLING_Q = "Hi, I was charged twice for my invoice this month. Can I get a refund?"
TECH_Q = "Resetting my password is not working: the emails never arrived. What should I do?"
OFF_TOPIC_Q = "Do you ship your hardware to Canada, and what customs duties apply?"
# Shares "business days" with the refund passage, and is still not about refunds.
NEAR_MISS_Q = "Does your hardware ship to Canada within a few business days, and which courier?"
LONG_BILLING_Q = (
    "Hello, I've been a happy customer for three years and my whole team uses your product "
    "every day. This month something went wrong: my card was charged twice for the same "
    "invoice and I'd like the duplicate refunded. Our finance department is asking about it."
)


def numbered(ids: list[int] | None = None) -> str:
    return "Passages:\n" + "\n".join(f"[{i}] {KB[i]}" for i in (ids or sorted(KB)))


def kb_in_system(question: str, system: str = SYSTEM) -> list[dict[str, Any]]:
    return [{"role": "system", "content": f"{system}\n\n{numbered()}"},
            {"role": "user", "content": question}]


def kb_in_user_unnumbered(question: str) -> list[dict[str, Any]]:
    """The other layout: a `Context:` block of blank-line-separated passages, then a
    `Question:` section, all in the user message."""
    context = "\n\n".join(KB[i] for i in sorted(KB))
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question}"}]


@pytest.fixture(autouse=True)
def litellm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """litellm with a fresh custom provider map holding only the local provider."""
    # engine.providers.local first: it sets LITELLM_LOCAL_MODEL_COST_MAP before importing
    # litellm (else litellm tries to fetch its cost map over the network, with retries).
    from engine.providers.local import register_local_provider

    lib = sys.modules["litellm"]
    monkeypatch.setattr(lib, "custom_provider_map", [])
    register_local_provider()
    yield lib


async def ask(messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    import litellm

    return await litellm.acompletion(model="local/kb", messages=messages, **kwargs)


def content(response: Any) -> str:
    text = response.choices[0].message.content
    assert isinstance(text, str)
    return text


def quoted_sentences(text: str) -> list[str]:
    return [s for s in ALL_SENTENCES if s in text]


@pytest.mark.parametrize(("layout", "question"), [(kb_in_system, BILLING_Q),
                                                  (kb_in_user_unnumbered, BILLING_Q),
                                                  (kb_in_system, LONG_BILLING_Q)])
async def test_billing_question_is_answered_from_the_refund_passage(
        layout: Any, question: str) -> None:
    response = await ask(layout(question))
    text = content(response)
    assert text.startswith(local_answer.GROUNDED_INTRO)
    assert "the duplicate charge is refunded automatically within 48 hours. [1]" in text
    assert all(s in KB[1] for s in quoted_sentences(text))  # nothing from other passages
    fields = response.choices[0].message.provider_specific_fields
    assert fields == {"engine_tier": "local", "extractive": True, "grounded": True,
                      "sources": [1]}


async def test_technical_question_is_answered_from_the_password_passage() -> None:
    text = content(await ask(kb_in_system(TECH_Q)))
    assert "If the reset email does not arrive, check your spam folder" in text
    assert re.search(r"\[2\]", text)
    assert not re.search(r"\[[13-9]\]", text)
    assert quoted_sentences(text) and all(s in KB[2] for s in quoted_sentences(text))


async def test_passage_labels_are_kept_as_given() -> None:
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user",
                 "content": f"[7] {KB[3]}\n[9] {KB[4]}\n\nWhy do my API calls fail with 429?"}]
    text = content(await ask(messages))
    assert "HTTP 429 with a Retry-After header" in text and "[7]" in text and "[9]" not in text


@pytest.mark.parametrize("question", [OFF_TOPIC_Q, NEAR_MISS_Q])
async def test_nothing_relevant_gives_a_safe_fallback_without_invented_facts(
        question: str) -> None:
    response = await ask(kb_in_system(question))
    text = content(response)
    assert quoted_sentences(text) == []
    assert not re.search(r"\[\d+\]", text)
    assert "Canada" in text and "hardware" in text  # acknowledges the topic
    assert "team will follow up" in text
    assert response.choices[0].message.provider_specific_fields["grounded"] is False


async def test_no_passages_at_all_gives_the_fallback() -> None:
    text = content(await ask([{"role": "user", "content": "How do I cancel my subscription?"}]))
    assert "cancel" in text and "subscription" in text and "team will follow up" in text


async def test_response_is_labelled_and_reports_usage() -> None:
    from engine.providers.local import SYSTEM_FINGERPRINT

    response = await ask(kb_in_system(BILLING_Q))
    assert response.model == "local/kb"
    assert response.system_fingerprint == SYSTEM_FINGERPRINT
    assert response._hidden_params["custom_llm_provider"] == "local"
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0
    assert response.usage.total_tokens == (response.usage.prompt_tokens
                                           + response.usage.completion_tokens)
    assert response.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("question", [BILLING_Q, TECH_Q, OFF_TOPIC_Q])
async def test_streaming_reassembles_to_the_non_streaming_text(question: str) -> None:
    expected = content(await ask(kb_in_system(question)))
    stream = await ask(kb_in_system(question), stream=True,
                       stream_options={"include_usage": True})
    pieces, usage, finish = [], None, None
    async for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        usage = getattr(chunk, "usage", None) or usage
    assert len(pieces) > 5  # really streamed, not one blob
    assert "".join(pieces) == expected
    assert finish == "stop"
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0


def test_sync_completion_and_streaming_match(litellm: Any) -> None:
    messages = kb_in_system(TECH_Q)
    text = content(litellm.completion(model="local/kb", messages=messages))
    stream = litellm.completion(model="local/kb", messages=messages, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text
    assert "[2]" in text


async def test_registering_twice_is_harmless(litellm: Any) -> None:
    from engine.providers.local import LocalModel, register_local_provider

    first = register_local_provider()
    second = register_local_provider()
    assert first is second and isinstance(first, LocalModel)
    entries = [e for e in litellm.custom_provider_map if e["provider"] == "local"]
    assert len(entries) == 1
    assert "[1]" in content(await ask(kb_in_system(BILLING_Q)))


@pytest.mark.parametrize("how", ["system prompt", "response_format"])
async def test_json_mode_returns_parseable_json_with_reply(how: str) -> None:
    if how == "system prompt":
        system = SYSTEM + ' Respond with JSON only: {"reply": string, "sources": [int]}.'
        response = await ask(kb_in_system(BILLING_Q, system=system))
    else:
        response = await ask(kb_in_system(BILLING_Q), response_format={"type": "json_object"})
    data = json.loads(content(response))
    assert data["sources"] == [1] and data["grounded"] is True and data["tier"] == "local"
    assert "refunded automatically within 48 hours. [1]" in data["reply"]


async def test_json_mode_fallback_is_still_json() -> None:
    system = SYSTEM + " Reply in JSON with keys reply and sources."
    data = json.loads(content(await ask(kb_in_system(OFF_TOPIC_Q, system=system))))
    assert data["sources"] == [] and data["grounded"] is False
    assert "team will follow up" in data["reply"]


async def test_a_ticket_mentioning_json_does_not_switch_to_json_mode() -> None:
    text = content(await ask(kb_in_system("Your API returns broken JSON, error 429")))
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


async def test_max_tokens_truncates_with_length_finish_reason() -> None:
    response = await ask(kb_in_system(BILLING_Q), max_tokens=8)
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens <= 8
    assert content(await ask(kb_in_system(BILLING_Q))).startswith(content(response))


async def test_same_input_gives_the_same_output() -> None:
    outputs = {content(await ask(kb_in_system(q))) for q in [TECH_Q] * 3}
    assert len(outputs) == 1
    shuffled = [{"role": "system", "content": SYSTEM + "\n\n" + numbered([5, 4, 3, 2, 1])},
                {"role": "user", "content": TECH_Q}]
    assert local_answer.answer(shuffled) == local_answer.answer(shuffled)


def test_a_few_kb_of_passages_still_give_a_grounded_answer() -> None:
    """(Its speed, ~1.3 ms for 5 KB, is a benchmark figure, not a test.)"""
    passages = "\n".join(f"[{i}] {KB[1 + i % 5]} Item {i}." for i in range(1, 31))  # ~5 KB
    messages = [{"role": "system", "content": f"{SYSTEM}\n\nPassages:\n{passages}"},
                {"role": "user", "content": BILLING_Q}]
    assert len(passages) > 4000
    result = local_answer.answer(messages)
    assert result.grounded


def test_stemming_lite_conflates_common_inflections() -> None:
    for group in (["charge", "charged", "charges", "charging"], ["refund", "refunds"],
                  ["invoice", "invoices", "invoiced"], ["reset", "resetting", "resets"]):
        assert len({local_answer.stem(w) for w in group}) == 1, group
