"""Every shipped example works: pipelines/, the README's YAML, and the checked-in schema."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from engine.compile import compile_file, compile_pipeline
from engine.registry import Registry
from engine.runtime.batch import read_jsonl, run_batch
from engine.spec import parse_spec
from engine.spec.schema import pipeline_schema

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = sorted((ROOT / "pipelines").glob("*.yaml"))
SCHEMA_FILE = ROOT / "schemas" / "pipeline.schema.json"
README_YAML = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)


def test_there_are_examples() -> None:
    assert [p.name for p in PIPELINES] == ["support_triage.yaml"]
    assert README_YAML


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_pipeline_compiles_cleanly_and_points_editors_at_the_schema(path: Path) -> None:
    pipeline = compile_file(path)
    assert pipeline.warnings == ()
    first = path.read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schemas/pipeline.schema.json"


async def test_flagship_triages_its_sample_tickets() -> None:
    offline = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    pipeline = compile_file(ROOT / "pipelines" / "support_triage.yaml", env=offline)
    source = ROOT / "pipelines" / "data" / "tickets.jsonl"
    results = []
    with source.open() as handle:
        await run_batch(pipeline, read_jsonl(handle), results.append, concurrency=1)
    await pipeline.resources.aclose()
    by_id = {r.id: r for r in results}
    assert len(results) == len(source.read_text().splitlines())
    assert all(r.ok for r in results)
    assert by_id["T-1001"].output["category"] == "billing"
    assert by_id["T-1002"].output["queue"] == "tech-support"
    assert by_id["T-1003"].handed_off and by_id["T-1003"].output["queue"] == "on-call"
    assert by_id["T-1004"].output["category"] == "general"
    # No API key here: the hosted tiers are skipped and the offline local tier answers,
    # grounded in the knowledge-base passage that fits, with its citation.
    refund = by_id["T-1001"].output
    assert refund["answered_by"] == "local"
    assert "original payment method" in refund["reply"] and "[1]" in refund["reply"]
    assert "knowledge base" in by_id["T-1004"].output["reply"]  # nothing fits: no invention
    assert "[" not in by_id["T-1004"].output["reply"]
    # The guard: an injection attempt goes to the non-AI path; personal data is replaced
    # before any model and appears in no stage output or trace.
    attack = by_id["T-1014"]
    assert (attack.finished_by, attack.output["blocked"]) == ("refuse", "injection")
    trace = json.dumps([event.to_json() for event in by_id["T-1013"].events])
    assert "4111" not in trace and "jane.doe@example.com" not in trace
    # The cache: the same ticket again, and a paraphrase, are answered without the models.
    again, paraphrase = by_id["T-1015"], by_id["T-1016"]
    assert (again.finished_by, again.events[-1].notes["cache"]) == ("lookup", "exact")
    assert again.output == refund
    assert (paraphrase.finished_by, paraphrase.events[-1].notes["cache"]) == (
        "lookup", "semantic")
    assert paraphrase.output == by_id["T-1005"].output


README_RUNS = {
    "greeter": ({"name": "ada"}, lambda out: out == {"greeting": "Hello, ADA!"}),
    "answerer": ({"question": "Where is my invoice?"}, lambda out: out["tier"] == "local"),
    "cached": ({"question": "hi", "tenant": "t"}, lambda out: out == "answer to hi"),
    "guarded": ({"ticket": "I'm jo@example.com", "user_id": "u1", "ai_consent": True},
                lambda out: out == "I'm jo@example.com"),
}


@pytest.mark.parametrize("text", README_YAML)
async def test_readme_example_compiles_and_runs(text: str) -> None:
    offline = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    pipeline = compile_pipeline(parse_spec(text, "README.md", env=offline),
                                Registry.from_entry_points(), offline)
    record, expected = README_RUNS[pipeline.name]
    result = await pipeline.run(record)
    await pipeline.resources.aclose()
    assert result.status == "ok", result.error
    assert expected(result.output), result.output


def test_checked_in_schema_is_current() -> None:
    fresh = pipeline_schema(Registry.from_entry_points(builtin_only=True))
    assert json.loads(SCHEMA_FILE.read_text()) == fresh, "run `make schema` and commit it"


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_examples_satisfy_the_schema(path: Path) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(path.read_text()))


def test_schema_rejects_what_the_loader_rejects() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    bad = {"version": 1, "name": "x", "stages": {"a": {"type": "route", "with": {"nope": 1}}}}
    assert not validator.is_valid(bad)
    typo = {"version": 1, "name": "x", "stgaes": {}}
    assert not validator.is_valid(typo)
