"""Harm scoring for the validate stage: a local, offline default and a provider plug-in point.

`HarmScorer` is the one contract: `await scorer.score(text)` → `HarmVerdict(score in [0, 1],
categories, source)`. The score is calibrated so that **0.7** (the issue's example threshold,
`THRESHOLD`) is a sensible cut; 0.5 is a lenient "flag for review", 0.9 a strict one.

`LocalHarm` (the offline default) joins two signals and reports the stronger one:

- **similarity** (all-MiniLM-L6-v2, the shared `Embedder`): for every piece of the text (the
  whole text, then each sentence), the margin between its max cosine to a shipped set of
  short harmful exemplars per category (`EXEMPLARS`: insult, harassment, hate, threat,
  self_harm, sexual, dangerous) and its max cosine to benign *contrasts* (`CONTRASTS`: the
  violent-sounding idioms of tech support — kill the process, terminate the instance, attack
  surface — and neutral talk of health, law and safety policy). The contrasts are what keep
  "kill -9 the worker" from scoring as "I will kill you"; sentences are what keep one insult
  in a long, polite answer from being averaged away. Category score = sigmoid(k·(margin - m0) +
  logit 0.7): a margin of `_MARGIN_AT_CUT` sits exactly on the cut.
- **profanity** (`alt-profanity-check`: a TF-IDF + linear SVM, calibrated, trained on a
  large corpus of real toxic comments, bundled in the wheel, no download): its probability,
  max over the pieces, mapped so that `_PROFANITY_AT_CUT` (0.9) sits on the cut. A high bar
  on purpose: in support traffic "the damn printer" and "the old pods were killed" score
  0.7-0.8 and are not harmful, while swearing at a person mostly scores above 0.95.

Why this choice (measured by `bench/harm_eval.py` on `tests/data/harm/labelled.jsonl`, 165
support answers and tickets written for this purpose, 40 % harmful, with hard negatives):

    candidate (cut 0.7 unless said)          precision  recall  F1     p50 / text
    profanity-check as shipped, p >= 0.7         0.857   0.182  0.300   2.8 ms
    profanity-check calibrated, p >= 0.9         1.000   0.152  0.263   0.5 ms (fast path)
    max cosine to exemplars, best cut (bound)        -       -  0.814  11 ms
    similarity margin, exemplars vs contrasts    0.900   0.818  0.857  11.1 ms
    both: the default                            0.902   0.833  0.866  12.4 ms
    both, cut chosen by 5-fold cross-validation  0.859   0.833  0.846

Profanity-check alone cannot see threats, self-harm encouragement, sexual advances or
dangerous instructions that use no swear word: its recall is poor at any cut (best F1 0.69,
at p >= 0.07). The contrasts lift plain similarity from 0.81 to 0.86. Similarity carries the
decision; on this set profanity adds one insult and no false positive, for 0.5 ms. It stays
as cheap insurance: a model trained on far more real abuse than these few exemplars, for
insults worded unlike any of them. `detoxify` would be stronger but needs weights from a
hub, which this project may not download.

Limits, said plainly: the exemplars, the contrasts and the labelled set were written by the
same hands (no text is shared between them, and the contrasts cover the hard-negative
families the issue names, so figures on those families are optimistic); the cut was chosen
on that set (the bench also reports it cross-validated). English only. What it gets wrong
on the set: veiled threats with no violent word ("I know where you live now"), hateful
tropes in a calm tone, and, on the benign side, blunt frustration with the product ("your
chatbot is useless") and safety notices ("swollen batteries can catch fire").

`ModerationHarm` is the plug-in point for a provider moderation endpoint (OpenAI's
`omni-moderation-latest`, or any OpenAI-compatible one) through `litellm.amoderation`; its
score is the max of the provider's category scores.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from openai import AsyncOpenAI

    from engine.guard.injection import TextEmbedder

__all__ = ["HarmScorer", "HarmVerdict", "LocalHarm", "ModerationHarm", "pieces"]

THRESHOLD = 0.7
"""The cut the local score is calibrated for (the issue's example config)."""

_MARGIN_AT_CUT = 0.06
"""Similarity margin (harmful minus benign cosine) that maps to `THRESHOLD`."""
_SLOPE = 17.0
"""Logit per unit of margin: a logistic fit of the labelled set's margins."""
_PROFANITY_AT_CUT = 0.9
"""profanity-check probability that maps to `THRESHOLD`."""
_FLOOR = 0.25
"""Cosine that MiniLM gives unrelated short sentences: a text no nearer than this to any
exemplar is near no harm, whatever the contrasts (which cannot cover every benign topic)."""
_MIN_WORDS = 4
_MAX_PIECES = 32
"""Sentences beyond this are grouped, so a 10 KB text costs a bounded forward pass."""
_SENTENCE = re.compile(r"(?<=[.!?;])\s+|\n+")
_INSTALL_HINT = ("the local harm scorer needs alt-profanity-check: "
                 "pip install 'engine[local,validate]'")

EXEMPLARS: dict[str, tuple[str, ...]] = {
    "insult": (
        "you are so stupid", "you're an idiot and a moron", "what a worthless, pathetic person",
        "you are a useless piece of garbage", "nobody is dumber than you",
        "you're too dense to understand anything", "go away, you annoying clown",
        "you are a fucking moron", "you stupid bitch", "shut your mouth, you ignorant fool",
        "you have the brains of a child", "you are incompetent and clueless",
        "only a complete idiot would do that",
    ),
    "harassment": (
        "I will post your personal information online",
        "I'm going to keep harassing you until you give up",
        "everyone is making fun of you behind your back",
        "I know your address and where your family lives",
        "I will ruin your life and your reputation", "you deserve to be miserable and alone",
        "I'll spam you with messages day and night",
        "I will tell your employer and your neighbours what you did",
        "I'll make your life hell until you stop complaining",
    ),
    "hate": (
        "people of your race are inferior", "immigrants are vermin and should be deported",
        "women are inferior and belong in the kitchen",
        "all members of that religion are violent extremists",
        "homosexuals are disgusting and sick", "black people are criminals",
        "disabled people are useless to society", "I hate your kind, you people are animals",
        "foreigners are dirty and stupid", "those people are all thieves and terrorists",
        "your religion is evil and should be banned",
    ),
    "threat": (
        "I will kill you", "I'm going to hurt you badly", "I will beat you up",
        "you'll be dead soon", "I will shoot you",
        "I'm going to come to your house and attack you", "I will set your building on fire",
        "I'll make you suffer and bleed", "you and your family will get hurt", "I'll stab you",
        "you will end up in the hospital", "I will break your bones",
    ),
    "self_harm": (
        "you should kill yourself", "go hurt yourself",
        "the world would be better without you, end your life", "just commit suicide",
        "cut your wrists", "overdose on your pills", "stop eating until you disappear",
        "why don't you just die",
    ),
    "sexual": (
        "send me naked pictures", "I want to have sex with you", "take off your clothes for me",
        "I'm getting aroused thinking about your body", "let's talk dirty",
        "I want to touch you sexually", "sleep with me and I'll do what you ask",
        "you make me so horny", "I want to see you naked",
    ),
    "dangerous": (
        "how to make a bomb at home", "mix bleach with ammonia to make a toxic gas",
        "disable the safety device and ignore the warning",
        "here is how to poison someone without getting caught", "drink bleach to cure the illness",
        "short-circuit the fuse to get more power from the outlet",
        "how to hack into someone else's account and steal their data",
        "make an incendiary weapon from gasoline", "puncture the lithium battery",
    ),
}
"""Short, plain statements of each kind of harm; a text near one of them is suspect."""

CONTRASTS: tuple[str, ...] = (
    # violent-sounding tech support
    "kill the task and restart the application", "terminate the server when you are done",
    "run the command to execute the job", "the service crashed and the process died",
    "send us an email with the details", "security vulnerability in the software",
    "cancel the download and try again", "call the API endpoint",
    "the child process is terminated when the parent exits",
    "the attack was blocked by the firewall", "penetration testing of the staging environment",
    "the script failed on a large file", "I'm dying to try the new feature",
    # routine support and frustration
    "thank you for contacting customer support", "your order has shipped and will arrive soon",
    "I have updated your account settings", "please verify your identity and billing details",
    "the app keeps crashing on my phone", "we have escalated your ticket to the technical team",
    "how do I change my password", "I was charged twice, please refund me",
    "please escalate this to a manager", "I want to cancel my subscription",
    "you can export the report from the dashboard", "this problem is driving me crazy",
    "I am frustrated with this terrible service",
    # health, law and safety policy in a neutral tone
    "the patient's medication and treatment", "doctor appointment and prescription",
    "legal advice about the contract", "your legal rights under the data protection law",
    "we do not tolerate abusive behaviour", "please do not use abusive language with our staff",
    "report harassment to our trust and safety team", "if you are in crisis, please seek help",
    "never mix chemicals, for your safety", "for your safety, do not open the device",
)
"""Benign texts that share words with harm; a text nearer to these than to harm is not."""


def _slices(exemplars: dict[str, tuple[str, ...]]) -> dict[str, slice]:
    """Each category's columns in the matrix of all exemplars (stacked in dict order)."""
    cuts, start = {}, 0
    for name, texts in exemplars.items():
        cuts[name] = slice(start, start + len(texts))
        start += len(texts)
    return cuts


_SLICES = _slices(EXEMPLARS)


@dataclass(frozen=True, slots=True)
class HarmVerdict:
    """`score` in [0, 1] (≥ `THRESHOLD` is harmful for the local scorer); `categories` maps
    each category to its own score (None when the source gives none); `source` says who
    scored (`local`, or `moderation:<model>`)."""

    score: float
    categories: dict[str, float] | None
    source: str

    def to_json(self) -> dict[str, Any]:
        return {"score": self.score, "categories": self.categories, "source": self.source}


class HarmScorer(Protocol):
    """What the validate stage calls; `LocalHarm`, `ModerationHarm` or a user's own."""

    async def score(self, text: str) -> HarmVerdict: ...


def pieces(text: str) -> list[str]:
    """The whole text, then its sentences (grouped to at most `_MAX_PIECES`) if several."""
    sentences = _sentences(text)
    if len(sentences) <= 1:
        return [text.strip()]
    size = math.ceil(len(sentences) / _MAX_PIECES)
    groups = [" ".join(sentences[i:i + size]) for i in range(0, len(sentences), size)]
    return [text.strip(), *groups]


def _sentences(text: str) -> list[str]:
    """Sentences, a fragment under `_MIN_WORDS` words joined to its neighbour: alone, "What
    should I do?" sits as near an exemplar as to any contrast, by chance."""
    merged: list[str] = []
    for sentence in (s.strip() for s in _SENTENCE.split(text)):
        if not sentence:
            continue
        if merged and min(len(sentence.split()), len(merged[-1].split())) < _MIN_WORDS:
            merged[-1] = f"{merged[-1]} {sentence}"
        else:
            merged.append(sentence)
    return merged


def _to_score(logit: float) -> float:
    """sigmoid(logit + logit(THRESHOLD)): a logit of 0 lands exactly on the cut."""
    z = logit + math.log(THRESHOLD / (1 - THRESHOLD))
    return round(1 / (1 + math.exp(-max(-50.0, min(50.0, z)))), 4)


def _profanity_score(probability: float) -> float:
    p = min(max(probability, 1e-6), 1 - 1e-6)
    q = _PROFANITY_AT_CUT
    return _to_score(math.log(p / (1 - p)) - math.log(q / (1 - q)))


class _Profanity:
    """alt-profanity-check's bundled model, with its five calibrated SVMs as one matrix.

    `predict_proba` costs ≈ 2.4 ms per call, nearly all of it scikit-learn's per-call checks
    (holding the GIL); the same arithmetic as two sparse products costs ≈ 0.2 ms. The fast
    path is checked against `predict_proba` at load; on any mismatch the slow path is used.
    """

    def __init__(self) -> None:
        try:
            from profanity_check import (  # type: ignore[import-untyped]  # loads at import
                profanity_check as bundled,
            )
        except ImportError as error:
            raise ImportError(_INSTALL_HINT) from error
        import numpy as np

        self._vectorizer = bundled.vectorizer
        self._model = bundled.model
        self._fast: tuple[npt.NDArray[np.float64], ...] | None = None
        try:
            parts = self._model.calibrated_classifiers_
            self._fast = (
                np.vstack([p.estimator.coef_ for p in parts]).T,
                np.array([p.estimator.intercept_[0] for p in parts]),
                np.array([p.calibrators[0].a_ for p in parts]),
                np.array([p.calibrators[0].b_ for p in parts]),
            )
        except (AttributeError, IndexError, TypeError):
            return
        probe = ["you are a stupid idiot", "kill the process and restart", "thanks, all good"]
        if not np.allclose(self._probability(probe), self._slow(probe), atol=1e-6):
            self._fast = None

    def _slow(self, texts: list[str]) -> npt.NDArray[np.float64]:
        return self._model.predict_proba(self._vectorizer.transform(texts))[:, 1]  # type: ignore[no-any-return]

    def _probability(self, texts: list[str]) -> npt.NDArray[np.float64]:
        if self._fast is None:
            return self._slow(texts)
        import numpy as np

        coef, intercept, a, b = self._fast
        decision = self._vectorizer.transform(texts) @ coef + intercept
        return np.asarray(1 / (1 + np.exp(a * decision + b))).mean(axis=1)  # type: ignore[no-any-return]

    def max_probability(self, texts: list[str]) -> float:
        """The highest probability over `texts` (blocking: call through `to_thread`)."""
        return float(self._probability(texts).max())


class LocalHarm:
    """The offline default scorer (see the module docstring); one per process, safe to share.

    `embedder` is the process's shared `Embedder` resource; without one, a private one is
    made on first use. Models load on `warm_up()` (or on the first `score`), off the loop.
    """

    def __init__(self, embedder: TextEmbedder | None = None) -> None:
        self.embedder = embedder
        self._profanity: _Profanity | None = None
        self._exemplars: npt.NDArray[np.float32] | None = None
        self._contrasts: npt.NDArray[np.float32] | None = None
        self._lock = asyncio.Lock()

    async def warm_up(self) -> None:
        """Load both models and embed the exemplars now, not on the first record."""
        embedder = self._embedder()
        warm = getattr(embedder, "warm_up", None)
        if warm is not None:
            await warm()
        await self._ready()

    def _embedder(self) -> TextEmbedder:
        if self.embedder is None:
            from engine.resources.embeddings import Embedder

            self.embedder = Embedder()
        return self.embedder

    async def _ready(self) -> tuple[_Profanity, npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        if self._profanity is None or self._exemplars is None or self._contrasts is None:
            async with self._lock:  # concurrent first calls load once
                if self._profanity is None:
                    self._profanity = await asyncio.to_thread(_Profanity)
                if self._exemplars is None or self._contrasts is None:
                    embedder = self._embedder()
                    self._exemplars = await embedder.embed(
                        [text for texts in EXEMPLARS.values() for text in texts])
                    self._contrasts = await embedder.embed(list(CONTRASTS))
        assert self._profanity and self._exemplars is not None and self._contrasts is not None
        return self._profanity, self._exemplars, self._contrasts

    async def similarity(self, text: str) -> dict[str, float]:
        """The similarity signal alone: a calibrated score per category."""
        return await self._similarity(pieces(text))

    async def profanity(self, text: str) -> float:
        """The profanity signal alone, as a calibrated score."""
        return await self._profanity_of(pieces(text))

    async def score(self, text: str) -> HarmVerdict:
        """Both signals concurrently; the verdict is the strongest category."""
        if not text.strip():
            return HarmVerdict(0.0, dict.fromkeys([*EXEMPLARS, "profanity"], 0.0), "local")
        parts = pieces(text)
        categories, profanity = await asyncio.gather(self._similarity(parts),
                                                     self._profanity_of(parts))
        categories["profanity"] = profanity
        return HarmVerdict(max(categories.values()), categories, "local")

    async def _similarity(self, parts: list[str]) -> dict[str, float]:
        """Per category, the best margin over the pieces (one forward pass for all of them)."""
        import numpy as np

        _, exemplars, contrasts = await self._ready()
        vectors = await self._embedder().embed(parts)
        benign = np.maximum((vectors @ contrasts.T).max(axis=1, keepdims=True), _FLOOR)
        margins = vectors @ exemplars.T - benign
        return {name: _to_score(_SLOPE * (float(margins[:, cut].max()) - _MARGIN_AT_CUT))
                for name, cut in _SLICES.items()}

    async def _profanity_of(self, parts: list[str]) -> float:
        model, _, _ = await self._ready()
        return _profanity_score(await asyncio.to_thread(model.max_probability, parts))


class ModerationHarm:
    """A provider moderation endpoint through `litellm.amoderation`: score = max category score.

    `model` is a litellm model string (`openai/omni-moderation-latest`); `api_base` points it
    at any OpenAI-compatible server. litellm's `amoderation` forwards neither a timeout nor a
    retry count to the SDK client it builds (that one retries twice, with a 600 s timeout),
    so this class hands it its own client: one attempt, `timeout` seconds. Retrying is the
    caller's decision, as for every model call in engine.
    """

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        api_base: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.model = model
        self.api_key = api_key
        self.api_base = api_base
        self.timeout = timeout
        self._litellm: Any = None
        self._client: AsyncOpenAI | None = None

    async def warm_up(self) -> None:
        """Import litellm (seconds) off the event loop, before the first record."""
        if self._litellm is None:
            from engine.providers.client import load_litellm

            self._litellm = await asyncio.to_thread(load_litellm)

    def _sdk_client(self) -> AsyncOpenAI:
        if self._client is None:
            from openai import AsyncOpenAI

            self._client = AsyncOpenAI(
                api_key=self.api_key or os.environ.get("OPENAI_API_KEY"),
                base_url=self.api_base, timeout=self.timeout, max_retries=0,
            )
        return self._client

    async def score(self, text: str) -> HarmVerdict:
        """One moderation call; raises the provider's error (an `openai` exception) unchanged."""
        await self.warm_up()
        response = await self._litellm.amoderation(
            input=text, model=self.model, api_key=self.api_key, api_base=self.api_base,
            client=self._sdk_client(),
        )
        categories = _category_scores(response)
        return HarmVerdict(max(categories.values(), default=0.0), categories,
                           f"moderation:{self.model}")

    async def aclose(self) -> None:
        """Close the pooled HTTP connections."""
        if self._client is not None:
            await self._client.close()
            self._client = None


def _category_scores(response: Any) -> dict[str, float]:
    """The first result's category scores as plain floats, names in snake case.

    The SDK's dump names a score both `self_harm` and `self-harm` (field and alias) and
    leaves the categories it did not receive as None; one name each, numbers only, remain.
    """
    scores = response.results[0].category_scores
    raw = scores.model_dump() if hasattr(scores, "model_dump") else dict(scores or {})
    return {re.sub(r"[^a-z0-9]+", "_", str(name).lower()): float(value)
            for name, value in raw.items()
            if isinstance(value, int | float) and not isinstance(value, bool)}
