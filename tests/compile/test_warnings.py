"""Warnings: legal but suspicious pipelines compile, with the problem in `.warnings`."""

from __future__ import annotations

import textwrap

import pytest

from engine.compile import CompiledPipeline, compile_pipeline
from engine.errors import SpecError, format_path
from engine.registry import Registry
from engine.spec import parse_spec


def build(body: str, registry: Registry) -> CompiledPipeline:
    text = "version: 1\nname: w\n" + textwrap.dedent(body)
    return compile_pipeline(parse_spec(text, "w.yaml", env={}), registry, env={})


def summary(pipeline: CompiledPipeline) -> list[tuple[str, str]]:
    assert all(w.severity == "warning" for w in pipeline.warnings)
    return [(format_path(w.path), w.message) for w in pipeline.warnings]


def test_an_unused_stage_output_is_a_warning_when_output_is_set(registry: Registry) -> None:
    pipeline = build(
        """\
        stages:
          answer: {type: template, with: {output: hi}}
          audit: {type: template, with: {output: "{{ input }}"}}
        output: "{{ stages.answer.output }}"
        """,
        registry,
    )
    [warning] = pipeline.warnings
    assert warning.path == ("stages", "audit")
    assert (warning.line, warning.column) == (5, 10)
    assert "the output of stage 'audit' is not used" in warning.message
    assert warning.hint is not None and "stages.audit.output" in warning.hint


def test_no_unused_output_warning_without_output(registry: Registry) -> None:
    pipeline = build(
        """\
        stages:
          answer: {type: template, with: {output: hi}}
          audit: {type: template, with: {output: hi}}
        """,
        registry,
    )
    assert pipeline.warnings == ()


def test_terminal_stages_and_handlers_need_no_consumer(registry: Registry) -> None:
    pipeline = build(
        """\
        stages:
          r:
            type: route
            with: {routes: [{when: "input.vip", to: human}, {to: answer}]}
          answer: {type: template, needs: [r], on_error: sorry, with: {output: hi}}
          human: {type: fallback, needs: [r], with: {response: call us}}
          sorry: {type: fallback, with: {response: sorry}}
        output: "{{ stages.answer.output }}"
        """,
        registry,
    )
    assert pipeline.warnings == ()


def test_a_route_without_a_default_rule(registry: Registry) -> None:
    pipeline = build(
        """\
        stages:
          r:
            type: route
            with:
              routes:
                - {when: "input.a", to: x}
                - {when: "input.b", to: y}
          x: {type: template, needs: [r], with: {output: hi}}
          y: {type: template, needs: [r], with: {output: hi}}
        """,
        registry,
    )
    assert summary(pipeline) == [
        ("stages.r.with.routes[1]",
         "no default rule: a record that matches no `when` skips every branch"),
    ]


def test_rules_after_the_default_rule(registry: Registry) -> None:
    pipeline = build(
        """\
        stages:
          r:
            type: route
            with:
              routes:
                - {when: "input.a", to: x}
                - {to: y}
                - {when: "input.b", to: x}
          x: {type: template, needs: [r], with: {output: hi}}
          y: {type: template, needs: [r], with: {output: hi}}
        """,
        registry,
    )
    # only this one: the route does have a default rule, so "no default rule" must not appear
    assert summary(pipeline) == [
        ("stages.r.with.routes[1]", "rules after a rule without `when` are never reached"),
    ]


def test_weighted_routes_have_no_default_rule_warnings(registry: Registry) -> None:
    pipeline = build(
        """\
        stages:
          r:
            type: route
            with:
              key: "{{ input.user }}"
              routes: [{weight: 9, to: x}, {weight: 1, to: y}]
          x: {type: template, needs: [r], with: {output: hi}}
          y: {type: template, needs: [r], with: {output: hi}}
        """,
        registry,
    )
    assert pipeline.warnings == ()


def test_warnings_ride_along_with_errors(registry: Registry) -> None:
    with pytest.raises(SpecError) as info:
        build(
            """\
            stages:
              r: {type: route, with: {routes: [{when: "input.a", to: x}]}}
              x: {type: template, with: {output: hi}}
            """,
            registry,
        )
    severities = [d.severity for d in info.value.diagnostics]
    assert severities == ["error", "warning"]
