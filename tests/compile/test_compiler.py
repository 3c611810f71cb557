"""The compiler: spec + registry → CompiledPipeline, graph checks, and warnings."""

from __future__ import annotations

import textwrap

import pytest

from engine.compile import CompiledPipeline, compile_pipeline
from engine.errors import Diagnostic, SpecError
from engine.registry import Registry
from engine.spec import parse_spec

HEADER = """\
version: 1
name: t
models:
  smart: {model: openai/gpt-4o}
resources:
  kb: {type: index}
"""


def build(body: str, registry: Registry) -> CompiledPipeline:
    text = HEADER + textwrap.dedent(body)
    return compile_pipeline(parse_spec(text, "p.yaml", env={}), registry, env={})


def problems(body: str, registry: Registry) -> list[Diagnostic]:
    with pytest.raises(SpecError) as info:
        build(body, registry)
    return info.value.diagnostics


def messages(body: str, registry: Registry) -> list[str]:
    return [d.message for d in problems(body, registry)]


TRIAGE = """\
stages:
  classify: {type: template, with: {output: {urgency: "{{ input.urgency }}"}}}
  triage:
    type: route
    needs: [classify]
    with:
      routes:
        - {when: "stages.classify.output.urgency == 'high'", to: human}
        - {to: answer}
  answer:
    type: llm
    needs: [triage, classify]
    with: {model: smart, store: kb, prompt: "Reply to {{ input.ticket }}"}
  human: {type: fallback, needs: [triage], with: {response: "A specialist will call."}}
output: "{{ stages.answer.output }}"
"""


def test_a_valid_pipeline_compiles_to_a_frozen_dag(registry: Registry) -> None:
    pipeline = build(TRIAGE, registry)
    assert pipeline.name == "t"
    assert pipeline.warnings == ()
    assert set(pipeline.graph.edges) == {
        ("classify", "triage"), ("triage", "answer"), ("classify", "answer"), ("triage", "human"),
    }
    assert pipeline.roots == ("classify",)
    assert set(pipeline.sinks) == {"answer", "human"}
    assert pipeline.stages["triage"].branches == {"human", "answer"}
    assert pipeline.stages["classify"].dependents == ("triage", "answer")
    assert pipeline.deadline == 30.0
    with pytest.raises(AttributeError):
        pipeline.name = "other"  # type: ignore[misc]


def test_needs_may_be_a_single_name_and_duplicates_collapse(registry: Registry) -> None:
    pipeline = build(
        """\
        stages:
          a: {type: template, with: {output: hi}}
          b: {type: template, needs: a, with: {output: "{{ stages.a.output }}"}}
          c: {type: template, needs: [b, b], with: {output: "{{ stages.b.output }}"}}
        """,
        registry,
    )
    assert pipeline.stages["b"].needs == ("a",)
    assert pipeline.stages["c"].needs == ("b",)


def test_templates_may_read_any_ancestor_not_only_direct_needs(registry: Registry) -> None:
    pipeline = build(
        """\
        stages:
          a: {type: template, with: {output: hi}}
          b: {type: template, needs: [a], with: {output: hi}}
          c:
            type: template
            needs: [b]
            if: "stages.a.output == 'hi'"
            with: {output: "{{ stages.a.output }}"}
        """,
        registry,
    )
    assert pipeline.stages["c"].condition is not None


def test_a_stage_that_needs_itself(registry: Registry) -> None:
    [diagnostic] = problems(
        "stages:\n  a: {type: template, needs: [a], with: {output: hi}}\n", registry
    )
    assert diagnostic.message == "stage 'a' needs itself"
    assert diagnostic.path == ("stages", "a", "needs", 0)


def test_a_longer_cycle_is_named_in_full(registry: Registry) -> None:
    [diagnostic] = problems(
        """\
        stages:
          a: {type: template, needs: [c], with: {output: hi}}
          b: {type: template, needs: [a], with: {output: hi}}
          c: {type: template, needs: [b], with: {output: hi}}
        """,
        registry,
    )
    cycle = diagnostic.message.removeprefix("a cycle in `needs`: ").split(" → ")
    assert len(cycle) == 4 and cycle[0] == cycle[-1]
    assert set(cycle) == {"a", "b", "c"}


def test_output_and_if_refer_only_to_known_upstream_stages(registry: Registry) -> None:
    found = problems(
        """\
        stages:
          a: {type: template, with: {output: hi}}
          b: {type: template, if: "stages.a.output", with: {output: hi}}
        output: "{{ stages.ghost.output }}"
        """,
        registry,
    )
    assert [(d.message, d.path) for d in found] == [
        ("refers to stage 'a', which is not upstream of 'b'", ("stages", "b", "if")),
        ("refers to unknown stage 'ghost'", ("output",)),
    ]


def test_route_to_an_unknown_stage(registry: Registry) -> None:
    assert messages(
        """\
        stages:
          r: {type: route, with: {routes: [{to: nowhere}]}}
        """,
        registry,
    ) == ["routes to unknown stage 'nowhere'"]


def test_on_error_handler_rules(registry: Registry) -> None:
    found = messages(
        """\
        stages:
          a: {type: template, on_error: a, with: {output: hi}}
          b: {type: template, on_error: h, with: {output: hi}}
          h: {type: fallback, with: {response: sorry}}
          c: {type: template, needs: [h], with: {output: hi}}
        """,
        registry,
    )
    assert found == [
        "a stage cannot be its own on_error handler",
        "on_error handler 'h' is needed by other stages",
    ]


def test_a_valid_on_error_handler_is_not_a_root(registry: Registry) -> None:
    pipeline = build(
        """\
        stages:
          a: {type: template, on_error: sorry, with: {output: hi}}
          sorry: {type: fallback, with: {response: sorry}}
        output: "{{ stages.a.output }}"
        """,
        registry,
    )
    assert pipeline.roots == ("a",)
    assert pipeline.warnings == ()


def test_a_handler_with_needs_is_nobody_s_dependent(registry: Registry) -> None:
    pipeline = build(
        """\
        stages:
          src: {type: template, with: {output: x}}
          a: {type: template, needs: [src], on_error: sorry, with: {output: hi}}
          sorry: {type: fallback, needs: [src], with: {response: sorry}}
        output: "{{ stages.a.output }}"
        """,
        registry,
    )
    assert pipeline.stages["src"].dependents == ("a",)
    assert "sorry" not in pipeline.roots


def test_weighted_route_needs_a_key(registry: Registry) -> None:
    [diagnostic] = problems(
        """\
        stages:
          r: {type: route, with: {routes: [{to: a, weight: 1}]}}
          a: {type: template, needs: [r], with: {output: hi}}
        """,
        registry,
    )
    assert diagnostic.path == ("stages", "r", "with")
    assert "weighted rules need a `key`" in diagnostic.message


def test_a_bad_template_in_with_is_located(registry: Registry) -> None:
    [diagnostic] = problems(
        "stages:\n  a: {type: llm, with: {model: smart, prompt: '{{ input.x '}}\n", registry
    )
    assert diagnostic.path == ("stages", "a", "with", "prompt")
    assert (diagnostic.line, diagnostic.column) == (8, 47)
    assert "template syntax error" in diagnostic.message


def test_the_input_schema_validates_records(registry: Registry) -> None:
    pipeline = build(
        """\
        input:
          schema: {type: object, required: [ticket], properties: {ticket: {type: string}}}
        stages:
          a: {type: template, with: {output: "{{ input.ticket }}"}}
        """,
        registry,
    )
    assert pipeline.input_validator.is_valid({"ticket": "x"})
    assert not pipeline.input_validator.is_valid({"ticket": 1})


def test_a_stage_whose_constructor_fails_is_a_diagnostic(registry: Registry) -> None:
    from engine.stages.template import TemplateStage

    class Broken(TemplateStage):
        def __init__(self, setup):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    broken = Registry.of({"broken": Broken, "template": TemplateStage})
    [diagnostic] = problems("stages:\n  a: {type: broken, with: {output: hi}}\n", broken)
    assert "failed to set up: RuntimeError: boom" in diagnostic.message
