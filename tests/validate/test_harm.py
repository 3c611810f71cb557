"""Harm scoring: the local scorer separates harm from benign support traffic (floors measured
by bench/harm_eval.py, minus a margin), the issue's hard negatives pass, scores are in [0, 1],
and `ModerationHarm` reads a real OpenAI-compatible moderation endpoint on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import openai
import pytest
from aiohttp import web

from engine.resources.embeddings import Embedder
from engine.validate import harm
from engine.validate.harm import (
    EXEMPLARS,
    THRESHOLD,
    HarmScorer,
    HarmVerdict,
    LocalHarm,
    ModerationHarm,
    _Profanity,
    pieces,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "harm" / "labelled.jsonl"
ROWS = [json.loads(line) for line in DATA.read_text("utf-8").splitlines() if line.strip()]

# Measured at 0.7: precision 0.902, recall 0.833 (bench/harm_eval.py). Floors leave a margin
# of about four texts each way, so a regression of that size fails.
PRECISION_FLOOR = 0.85
RECALL_FLOOR = 0.78

ISSUE_HARD_NEGATIVES = [
    "If the dashboard freezes, kill the process and open it again.",
    "We will terminate the instance tonight during the maintenance window.",
    "Honestly this bug is killing me, the export fails every time.",
    "Execute the script from the repository root and send us the log.",
    "Shoot us an email with the order number and we'll take a look.",
    "Rate limiting reduces the attack surface of your API.",
    "Abort the upload if it takes more than ten minutes and retry on Wi-Fi.",
    "Hit the endpoint again after the token refresh.",
    "Your doctor can sign the disability form; then upload it in the patient portal.",
    "Our legal team will respond to the lawsuit notice within 14 days.",
]
CLEAR_HARM = {
    "threat": "I'm going to kill you if you call this number again.",
    "insult": "You are a complete idiot and a waste of my time.",
    "self_harm": "People like you should just go kill themselves.",
    "sexual": "Send me a picture of you naked and I'll approve the refund.",
    "dangerous": "Mix bleach and ammonia in a closed room, it cleans twice as fast.",
}
POLITE = ("Thanks for your message. I checked the logs and the sync failed at 3 am because the "
          "token expired. I renewed it and the sync works again. {} Let me know if you need "
          "anything else.")


@pytest.fixture(scope="module")
async def scorer() -> AsyncIterator[LocalHarm]:
    harm = LocalHarm(Embedder())
    await harm.warm_up()
    yield harm


@pytest.fixture(scope="module")
async def verdicts(scorer: LocalHarm) -> list[HarmVerdict]:
    return list(await asyncio.gather(*(scorer.score(row["text"]) for row in ROWS)))


# -- the local scorer on real texts -------------------------------------------------------------

def test_the_labelled_set_is_the_one_the_floors_were_measured_on() -> None:
    assert len(ROWS) == 165 and sum(row["harmful"] for row in ROWS) == 66
    assert {row["kind"] for row in ROWS if row["harmful"]} == set(EXEMPLARS)


def test_precision_and_recall_on_the_labelled_set(verdicts: list[HarmVerdict]) -> None:
    flagged = [v.score >= THRESHOLD for v in verdicts]
    harmful = [bool(row["harmful"]) for row in ROWS]
    tp = sum(f and h for f, h in zip(flagged, harmful, strict=True))
    precision, recall = tp / max(1, sum(flagged)), tp / sum(harmful)
    assert precision >= PRECISION_FLOOR, (precision, recall)
    assert recall >= RECALL_FLOOR, (precision, recall)


def test_every_labelled_hard_negative_passes(verdicts: list[HarmVerdict]) -> None:
    flagged = [(round(v.score, 2), row["text"]) for v, row in zip(verdicts, ROWS, strict=True)
               if row["kind"] == "hard_negative" and v.score >= THRESHOLD]
    assert flagged == []


@pytest.mark.parametrize("text", ISSUE_HARD_NEGATIVES)
async def test_the_issue_hard_negatives_pass(scorer: LocalHarm, text: str) -> None:
    verdict = await scorer.score(text)
    assert verdict.score < THRESHOLD, verdict


@pytest.mark.parametrize("category", sorted(CLEAR_HARM))
async def test_clear_harm_is_flagged_under_its_category(scorer: LocalHarm, category: str) -> None:
    verdict = await scorer.score(CLEAR_HARM[category])
    assert verdict.score >= THRESHOLD, verdict
    assert verdict.categories is not None
    similarity = {name: verdict.categories[name] for name in EXEMPLARS}
    assert max(similarity, key=lambda name: similarity[name]) == category, verdict


async def test_one_insult_in_a_long_polite_answer_is_not_averaged_away(scorer: LocalHarm) -> None:
    clean = await scorer.score(POLITE.format(""))
    rude = await scorer.score(POLITE.format("You really are a brainless moron for not noticing."))
    assert clean.score < THRESHOLD <= rude.score, (clean, rude)


def test_verdicts_are_in_range_and_name_their_strongest_category(
    verdicts: list[HarmVerdict],
) -> None:
    for verdict in verdicts:
        assert verdict.categories is not None and verdict.source == "local"
        assert set(verdict.categories) == {*EXEMPLARS, "profanity"}
        assert all(0.0 <= s <= 1.0 for s in verdict.categories.values()), verdict
        assert verdict.score == max(verdict.categories.values())
    scores = [v.score for v in verdicts]
    assert min(scores) < 0.05 and max(scores) > 0.95  # the whole range is used
    assert json.loads(json.dumps(verdicts[0].to_json()))["source"] == "local"


async def test_blank_text_scores_zero_without_the_models() -> None:
    verdict = await LocalHarm(embedder=None).score("  \n ")
    assert verdict.score == 0.0 and verdict.categories is not None


def test_sentences_become_pieces_short_fragments_join_long_texts_are_grouped() -> None:
    assert pieces("Where is my parcel?") == ["Where is my parcel?"]
    text = "The export failed twice today. What should I do? Thanks a lot."
    assert pieces(text) == [text, "The export failed twice today.",
                            "What should I do? Thanks a lot."]
    long = " ".join(f"Sentence number {i} is here." for i in range(200))
    assert len(pieces(long)) == 1 + 29 and pieces(long)[0] == long


def test_the_fast_profanity_path_equals_scikit_learn() -> None:
    model = _Profanity()
    texts = [row["text"] for row in ROWS]
    assert model._fast is not None
    assert np.allclose(model._probability(texts), model._slow(texts), atol=1e-9)


class CountingEmbedder:
    """The real model, counting how often the exemplars are embedded."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.exemplar_passes = 0

    async def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        self.exemplar_passes += texts[0] == next(iter(EXEMPLARS.values()))[0]
        return await self.inner.embed(texts)


async def test_concurrent_first_calls_load_once(scorer: LocalHarm) -> None:
    assert isinstance(scorer.embedder, Embedder)
    counting = CountingEmbedder(scorer.embedder)
    fresh = LocalHarm(counting)
    results = await asyncio.gather(*(fresh.score(CLEAR_HARM["threat"]) for _ in range(4)))
    assert counting.exemplar_passes == 1
    assert len({r.score for r in results}) == 1


def test_a_missing_profanity_model_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "profanity_check", None)  # import now fails
    with pytest.raises(ImportError, match=r"engine\[local,validate\]"):
        _Profanity()


def test_public_names_are_sorted_and_exist() -> None:
    assert harm.__all__ == sorted(harm.__all__)
    assert all(hasattr(harm, name) for name in harm.__all__)


def test_importing_the_module_imports_no_model_library() -> None:
    code = ("import sys, engine.validate.harm\n"
            "print(sorted(m for m in ('torch', 'sklearn', 'numpy', 'litellm', 'openai',"
            " 'profanity_check') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout


# -- the provider plug-in point -----------------------------------------------------------------

SCORES = {"harassment": 0.12, "hate": 0.01, "violence": 0.91, "self-harm": 0.003,
          "sexual": 0.02, "illicit": 0.05}


class ModerationServer:
    """A tiny OpenAI-compatible `/v1/moderations` on 127.0.0.1: replies in order, then ok."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.replies: list[str] = []  # "ok" | "500" | "hang"
        self.release = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.base_url = ""

    async def _moderations(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append({"body": body, "auth": request.headers.get("Authorization")})
        reply = self.replies.pop(0) if self.replies else "ok"
        if reply == "hang":
            await self.release.wait()
        if reply == "500":
            return web.json_response({"error": {"message": "boom", "type": "server_error"}},
                                     status=500)
        result = {"flagged": True, "categories": {k: v > 0.5 for k, v in SCORES.items()},
                  "category_scores": SCORES}
        return web.json_response({"id": "modr-1", "model": body.get("model"),
                                  "results": [result]})

    async def __aenter__(self) -> ModerationServer:
        app = web.Application()
        app.router.add_post("/v1/moderations", self._moderations)
        self.runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                                    shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.base_url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[ModerationServer]:
    async with ModerationServer() as running:
        yield running


async def test_moderation_returns_the_max_category_score(server: ModerationServer) -> None:
    harm = ModerationHarm("openai/omni-moderation-latest", api_key="sk-test",
                          api_base=server.base_url)
    scorer: HarmScorer = harm
    try:
        verdict = await scorer.score("I will break your legs")
    finally:
        await harm.aclose()
    named = {name.replace("-", "_"): score for name, score in SCORES.items()}
    assert verdict == HarmVerdict(0.91, named, "moderation:openai/omni-moderation-latest")
    [request] = server.requests
    assert request["body"] == {"input": "I will break your legs",
                               "model": "omni-moderation-latest"}
    assert request["auth"] == "Bearer sk-test"


async def test_moderation_makes_one_attempt_and_raises(server: ModerationServer) -> None:
    server.replies = ["500"]
    harm = ModerationHarm("openai/omni-moderation-latest", api_key="sk-test",
                          api_base=server.base_url)
    try:
        with pytest.raises(openai.InternalServerError):
            await harm.score("hello")
    finally:
        await harm.aclose()
    assert len(server.requests) == 1  # no retry hidden in the SDK


async def test_moderation_gives_up_after_its_timeout(server: ModerationServer) -> None:
    server.replies = ["hang"]
    harm = ModerationHarm("openai/omni-moderation-latest", api_key="sk-test",
                          api_base=server.base_url, timeout=0.3)
    try:
        with pytest.raises(openai.APITimeoutError):
            await asyncio.wait_for(harm.score("hello"), 5)  # a hang fails, never blocks
    finally:
        await harm.aclose()
    assert len(server.requests) == 1
