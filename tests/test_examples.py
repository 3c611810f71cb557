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


README_RUNS = {
    "greeter": ({"name": "ada"}, lambda out: out == {"greeting": "Hello, ADA!"}),
    "answerer": ({"question": "Where is my invoice?"}, lambda out: out["tier"] == "local"),
    "cached": ({"question": "hi", "tenant": "t"}, lambda out: out == "answer to hi"),
    "validated": ({"question": "When does a refund for a duplicate charge reach my card?"},
                  lambda out: "5-7 business days" in out["reply"] and out["sources"] == [1]),
    "governed": ({"question": "hi", "tenant": "acme"}, lambda out: out == "local"),
    "triaged": ({"ticket": "I was charged twice this month, please refund one payment"},
                lambda out: out == {"category": "billing",
                                    "sources": ["refund-duplicate-charge"]}),
    "guarded": ({"ticket": "I'm jo@example.com", "user_id": "u1", "ai_consent": True},
                lambda out: out == "I'm jo@example.com"),
    "split": ({"user_id": "u1"}, lambda out: out["variant"] in ("control", "concise")),
    "flagged": ({"text": "hi", "user_id": "u-42", "tenant": "acme"},
                lambda out: out == {"summary": "Summary of hi",
                                    "reply": "Hi, we got your message."}),
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
