"""The model-graded assertions: `similar_to` (local embeddings) and `rubric` (a model's verdict).

`similar_to` embeds the value and the reference with the pipeline's own embedder
(all-MiniLM-L6-v2, offline) and compares their cosine similarity with `threshold`.

`rubric` asks model tiers whether the value meets the rubric, through the same fallback
pyramid as a `generate` stage (retries, breakers, the next tier on failure), with the
pipeline's `defaults.retry` and `defaults.breaker`. The tiers are the assertion's `model`
(a tier of the pipeline, or any litellm model string such as `openai/gpt-4o-mini`), else the
command line's `--judge`. The verdict is JSON, `{"pass": true|false, "reason": "..."}`; an
answer that is not is an invalid attempt and the next tier is asked. No verdict from any
tier fails the assertion, saying why.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from engine.compile import CompiledPipeline
from engine.providers.client import Completion
from engine.providers.pyramid import Pyramid
from engine.providers.structured import parse_json
from engine.quality.assertions import MISSING, Assertion, short
from engine.quality.golden import Dataset
from engine.spec.models import ModelTier

__all__ = ["RUBRIC_PROMPT", "Judge"]

RUBRIC_PROMPT = (
    "You grade one output of an automated pipeline against a rubric. Answer with JSON only: "
    '{"pass": true or false, "reason": "one short sentence"}.'
)
CALL_TIMEOUT = 60.0
"""Seconds a rubric verdict may take, retries and fallbacks included."""


class Judge:
    """Built once per `engine test` run, with the compiled pipeline it grades."""

    def __init__(self, pipeline: CompiledPipeline, default_models: Sequence[str] = ()) -> None:
        self.pipeline = pipeline
        self.default_models = tuple(default_models)
        self._pyramids: dict[tuple[str, ...], Pyramid] = {}

    def problems(self, dataset: Dataset) -> list[str]:
        """Why some rubric cannot be graded (no model, an unknown tier), before anything runs:
        a usage error, not a failed case."""
        found = []
        for case in dataset.cases:
            for assertion in case.expect:
                if assertion.op == "rubric":
                    problem = self._unknown(self._models(assertion))
                    if problem:
                        found.append(f"{dataset.file}:{assertion.line}: case '{case.name}': "
                                     f"{problem}")
        return found

    def _models(self, assertion: Assertion) -> tuple[str, ...]:
        model = assertion.options.get("model")
        if model is None:
            return self.default_models
        return (model,) if isinstance(model, str) else tuple(model)

    def _unknown(self, names: tuple[str, ...]) -> str | None:
        if not names:
            return "a rubric needs a model: `model:` in the assertion, or --judge TIER"
        tiers = self.pipeline.loaded.spec.models
        for name in names:
            if name not in tiers and "/" not in name:
                return (f"unknown model tier '{name}' (the pipeline has "
                        f"{', '.join(tiers) or 'none'}; or give a litellm model: "
                        "provider/model)")
        return None

    async def check(self, assertion: Assertion, actual: Any) -> str | None:
        """None when the value passes, else why not (see the module docstring)."""
        if actual is MISSING:
            return f"no value at {assertion.path}"
        if assertion.op == "similar_to":
            return await self._similar(actual, assertion.expected,
                                       float(assertion.options["threshold"]))
        return await self._rubric(actual, assertion.expected, self._models(assertion))

    async def _similar(self, actual: Any, reference: str, threshold: float) -> str | None:
        if not isinstance(actual, str):
            return f"not text: {short(actual)}"
        vectors = await self.pipeline.resources.embedder().embed([actual, reference])
        similarity = float(vectors[0] @ vectors[1])
        if similarity >= threshold:
            return None
        return f"similarity {similarity:.2f} < {threshold:g}: got {short(actual)}"

    async def _rubric(self, actual: Any, rubric: str, models: tuple[str, ...]) -> str | None:
        text = actual if isinstance(actual, str) else json.dumps(actual, ensure_ascii=False)
        messages = [{"role": "system", "content": RUBRIC_PROMPT},
                    {"role": "user", "content": f"Rubric: {rubric}\n\nOutput:\n{text}"}]
        verdicts: list[dict[str, Any]] = []

        def accept(completion: Completion) -> str | None:
            verdict = parse_json(completion.text)
            if not isinstance(verdict, dict) or not isinstance(verdict.get("pass"), bool):
                return 'the reply is not {"pass": true|false, "reason": ...}'
            verdicts.append(verdict)
            return None

        deadline = time.monotonic() + CALL_TIMEOUT
        outcome = await self._pyramid(models).call(
            messages, lambda: deadline - time.monotonic(), accept=accept)
        if outcome.completion is None or not verdicts:
            return f"no verdict: {outcome.failed()}"
        verdict = verdicts[-1]
        if verdict["pass"]:
            return None
        return f"the judge ({outcome.tier}) says: {verdict.get('reason') or 'no reason given'}"

    def _pyramid(self, models: tuple[str, ...]) -> Pyramid:
        if models not in self._pyramids:
            spec = self.pipeline.loaded.spec
            tiers = [(name, spec.models.get(name) or ModelTier(model=name)) for name in models]
            self._pyramids[models] = Pyramid(tiers, spec.defaults.retry, spec.defaults.breaker,
                                             self.pipeline.resources)
        return self._pyramids[models]
