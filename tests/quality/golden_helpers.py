"""A small pipeline and a runner of `engine test` for the golden tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.cli import main

PIPELINE = """\
version: 1
name: golden-sample
defaults: {timeout: 5s}
input:
  schema: {type: object, required: [ticket], properties: {ticket: {type: string}}}
stages:
  wait:
    type: sleep
    with: {seconds: 30ms}
  pick:
    type: route
    needs: [wait]
    with:
      routes:
        - {when: "'urgent' in input.ticket", to: escalate}
        - {to: answer}
  escalate:
    type: finish
    needs: [pick]
    with: {output: {category: urgent}, handed_off: true}
  answer:
    type: template
    needs: [pick]
    with:
      output:
        category: billing
        themes: [double charge, refund]
        actions: [refund]
        reply: "We have refunded the duplicate charge."
output: "{{ stages.answer.output }}"
"""


def write(folder: Path, dataset: str, pipeline: str = PIPELINE,
          name: str = "golden.yaml") -> Path:
    (folder / "p.yaml").write_text(pipeline)
    path = folder / name
    path.write_text(dataset)
    return path


def engine_test(dataset: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """`engine test` on `dataset`; its exit code and its --json report."""
    report = dataset.parent / "report.json"
    code = main(["test", "-d", str(dataset), "--no-store", "--json", str(report), *args])
    return code, json.loads(report.read_text()) if report.exists() else {}


def use_samples(monkeypatch: Any) -> None:
    """The CLI reads entry points; give it the sample stages (sleep, finish...) too."""
    from engine.registry import Registry
    from engine.testing import sample_registry

    monkeypatch.setattr(Registry, "from_entry_points", classmethod(
        lambda cls, builtin_only=False: sample_registry()))
