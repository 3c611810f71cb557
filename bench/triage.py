"""The flagship's accuracy: `pipelines/support_triage.yaml` on 344 labelled tickets, offline.

Run 1 — offline, as `make run` runs it: no API key, so the hosted tiers are skipped, the
classify stage's embedding engine decides alone and the local extractive tier writes the
replies. Prints category accuracy, recall of `high` urgency (a missed urgent ticket is the
costly error), the share auto-answered and whether the cited article is the labelled one,
the share of article-less tickets queued rather than answered, cost per ticket, throughput.

Run 2 — the cascade on the stub provider: the hosted tiers point at the chaos stub, which
answers classification requests as a perfect classifier would (it looks the ticket up in
the labels), so the figures are the cascade's ceiling; what it measures is the share of
tickets the cascade sends to a model (target ≤ 30 %).

    .venv/bin/python bench/triage.py [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from report import print_table

from engine.compile import CompiledPipeline, compile_pipeline
from engine.providers.stub import StubProvider
from engine.providers.stub_config import StubConfig, content_text
from engine.registry import Registry
from engine.resources import Resources
from engine.results import RunResult
from engine.runtime.batch import InputRecord, run_batch
from engine.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "pipelines" / "support_triage.yaml"
LABELLED = ROOT / "pipelines" / "data" / "triage_labelled.jsonl"
CLASSIFY_PROMPT = "You classify one message"


def load_labelled() -> list[dict[str, Any]]:
    return [json.loads(line) for line in LABELLED.read_text().splitlines() if line.strip()]


class Oracle(StubProvider):
    """The stub, answering classification requests with the ticket's true labels."""

    def __init__(self, labelled: list[dict[str, Any]]) -> None:
        super().__init__(StubConfig(seed=1))
        self.labelled = [(set(row["ticket"].lower().split()), row) for row in labelled]
        self.classified = 0

    def reply_for(self, model: str, messages: list[dict[str, Any]]) -> str:
        if not any(CLASSIFY_PROMPT in content_text(m) for m in messages):
            return super().reply_for(model, messages)
        self.classified += 1
        words = set(content_text(messages[-1]).lower().split())
        _, row = max(self.labelled, key=lambda item: len(item[0] & words) / len(item[0] | words))
        return json.dumps({"category": row["category"], "urgency": row["urgency"],
                           "confidence": 0.9})


async def run(env: Mapping[str, str], labelled: list[dict[str, Any]], concurrency: int
              ) -> tuple[list[RunResult], float]:
    resources = Resources()
    pipeline: CompiledPipeline = compile_pipeline(load_spec(PIPELINE, env), Registry
                                                  .from_entry_points(), env, resources)
    await pipeline.warm_up()
    items = [InputRecord(i, {"id": row["id"], "user_id": row["user_id"],
                             "ticket": row["ticket"]}, row["id"])
             for i, row in enumerate(labelled)]
    results: list[RunResult] = []
    start = time.perf_counter()
    await run_batch(pipeline, items, results.append, concurrency)
    elapsed = time.perf_counter() - start
    await resources.aclose()
    results.sort(key=lambda result: result.index)
    return results, elapsed


def figures(results: list[RunResult], labelled: list[dict[str, Any]]) -> dict[str, float]:
    outputs = [result.output if result.ok else {} for result in results]
    pairs = list(zip(outputs, labelled, strict=True))
    high = [(out, row) for out, row in pairs if row["urgency"] == "high"]
    routine = [(out, row) for out, row in pairs if row["urgency"] == "low"]
    with_article = [(out, row) for out, row in routine if row["article"]]
    without = [(out, row) for out, row in routine if not row["article"]]
    answered = [(out, row) for out, row in pairs if out.get("action") == "answered"]
    return {
        "errors": sum(not result.ok for result in results),
        "category": share(out.get("category") == row["category"] for out, row in pairs),
        "team": share(out.get("team") == row["team"] for out, row in pairs),
        "high_recall": share(out.get("urgency") == "high" for out, _ in high),
        "high_precision": share(row["urgency"] == "high" for out, row in pairs
                                if out.get("urgency") == "high"),
        "answered": share(out.get("action") == "answered" for out, _ in pairs),
        "answerable_answered": share(out.get("action") == "answered" for out, _ in with_article),
        "right_article": share(row["article"] in (out.get("sources") or [])
                               for out, row in answered),
        "unanswerable_queued": share(out.get("action") != "answered" for out, _ in without),
        "cost": sum(float(out.get("cost_usd") or 0) for out in outputs) / len(outputs),
        "llm_classified": share(out.get("classified_by") == "llm" for out in outputs),
    }


def share(flags: Any) -> float:
    values = list(flags)
    return sum(values) / len(values) if values else 0.0


def offline_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_API_BASE")}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    labelled = load_labelled()
    results, elapsed = await run(offline_env(), labelled, args.concurrency)
    local = figures(results, labelled)
    print(f"run 1, offline (embedding engine only): {len(results)} tickets in {elapsed:.1f} s")
    async with Oracle(labelled) as oracle:
        env = {**offline_env(), "OPENAI_API_KEY": "stub", "OPENAI_API_BASE": oracle.base_url}
        results, _ = await run(env, labelled, args.concurrency)
        cascade = figures(results, labelled)
        print(f"run 2, cascade on the stub: {oracle.classified} classification calls")
    pct = "{:.1%}".format
    print_table([
        ("errors", str(local["errors"]), "0", local["errors"] == 0),
        ("category accuracy (embedding)", pct(local["category"]), "≥ 90%",
             local["category"] >= 0.90),
        ("high-urgency recall (embedding)", pct(local["high_recall"]), "≥ 97%",
             local["high_recall"] >= 0.97),
        ("high-urgency precision", pct(local["high_precision"]), "", None),
        ("team accuracy", pct(local["team"]), "", None),
        ("auto-answered, all tickets", pct(local["answered"]), "", None),
        ("answered, of those an article answers", pct(local["answerable_answered"]), "",
             None),
        ("answers citing the labelled article", pct(local["right_article"]), "", None),
        ("queued, of routine tickets no article answers", pct(local["unanswerable_queued"]),
             "", None),
        ("cost per ticket, offline", f"${local['cost']:.5f}", "", None),
        ("throughput, offline", f"{len(labelled) / elapsed:.1f} tickets/s", "", None),
        ("cascade: tickets classified by a model", pct(cascade["llm_classified"]), "≤ 30%",
             cascade["llm_classified"] <= 0.30),
        ("cascade: category accuracy (oracle model)", pct(cascade["category"]), "", None),
        ("cascade: high-urgency precision (oracle model)", pct(cascade["high_precision"]), "",
         None),
        ("cascade: auto-answered, all tickets", pct(cascade["answered"]), "", None),
        ("cascade: high-urgency recall (oracle model)", pct(cascade["high_recall"]), "",
             None),
        ("cascade: cost per ticket (stub, gpt-4o prices)", f"${cascade['cost']:.5f}", "",
             None),
    ])


if __name__ == "__main__":
    asyncio.run(main())
