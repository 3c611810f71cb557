"""The `extract` stage, run the way users run it: YAML → spec → compiled pipeline → run."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
from engine_extract import ExtractStage

from engine.compile import CompiledPipeline, compile_pipeline
from engine.errors import SpecError
from engine.registry import Registry
from engine.spec import parse_spec
from engine.stages.route import RouteStage
from engine.stages.template import TemplateStage

REGISTRY = Registry.of(
    {"extract": ExtractStage, "route": RouteStage, "template": TemplateStage}
)

TICKET = (
    "Hi, order ORD-00417 arrived broken. Invoice inv-2024-0091 says 149.90 EUR, "
    "and a second charge of 12.5 EUR. Reply to jane.doe@example.com or jd@work.example.org."
)


def pipeline(fields: str, text: str = "{{ input.ticket }}") -> str:
    return textwrap.dedent("""\
        version: 1
        name: extract-test
        input: {schema: {type: object}}
        stages:
          fields:
            type: extract
            with:
              text: "%s"
              fields:
        %s
        output: "{{ stages.fields.output }}"
        """) % (text, textwrap.indent(textwrap.dedent(fields), " " * 8))


def compiled(fields: str, text: str = "{{ input.ticket }}") -> CompiledPipeline:
    return compile_pipeline(parse_spec(pipeline(fields, text)), REGISTRY)


async def run(fields: str, record: dict[str, Any]) -> Any:
    result = await compiled(fields).run(record)
    assert result.status == "ok", result.error
    return result.output


async def test_first_match_all_matches_groups_and_case() -> None:
    output = await run(r"""
        order_id: {pattern: 'ORD-(\d+)', group: 1}
        invoice: {pattern: 'INV-\d{4}-\d+', ignore_case: true}
        emails: {pattern: '[\w.+-]+@[\w-]+(?:\.[\w-]+)+', all: true}
        amounts: {pattern: '(?P<value>\d+(?:\.\d+)?) ?EUR', group: value, all: true}
        """, {"ticket": TICKET})
    assert output == {
        "order_id": "00417",
        "invoice": "inv-2024-0091",
        "emails": ["jane.doe@example.com", "jd@work.example.org"],
        "amounts": ["149.90", "12.5"],
    }


async def test_no_match_is_none_or_empty_list() -> None:
    output = await run(r"""
        order_id: {pattern: 'ORD-\d+'}
        invoice: {pattern: 'INV-\d+'}
        emails: {pattern: '\S+@\S+', all: true}
        """, {"ticket": "where is my parcel?"})
    assert output == {"order_id": None, "invoice": None, "emails": []}


async def test_case_matters_unless_ignore_case() -> None:
    output = await run(r"""
        strict: {pattern: 'INV-\d+'}
        loose: {pattern: 'INV-\d+', ignore_case: true}
        """, {"ticket": "see inv-77"})
    assert output == {"strict": None, "loose": "inv-77"}


async def test_an_optional_group_that_did_not_match() -> None:
    output = await run(r"""
        first: {pattern: '#(\d+)(?:/(\d+))?', group: 2}
        every: {pattern: '#(\d+)(?:/(\d+))?', group: 2, all: true}
        """, {"ticket": "#1 and #2/3"})
    assert output == {"first": None, "every": ["3"]}


async def test_a_route_can_branch_on_what_was_found() -> None:
    text = textwrap.dedent(r"""
        version: 1
        name: extract-route
        input: {schema: {type: object}}
        stages:
          fields:
            type: extract
            with:
              text: "{{ input.ticket }}"
              fields: {order_id: {pattern: 'ORD-(\d+)', group: 1}}
          triage:
            type: route
            needs: [fields]
            with:
              routes:
                - {when: "stages.fields.output.order_id", to: lookup}
                - {to: ask}
          lookup:
            type: template
            needs: [triage]
            with: {output: "order {{ stages.fields.output.order_id }}"}
          ask:
            type: template
            needs: [triage]
            with: {output: "please send your order number"}
        output: "{{ stages.lookup.output or stages.ask.output }}"
        """)
    flow = compile_pipeline(parse_spec(text), REGISTRY)
    assert (await flow.run({"ticket": TICKET})).output == "order 00417"
    assert (await flow.run({"ticket": "hello"})).output == "please send your order number"


def spec_error(fields: str) -> SpecError:
    with pytest.raises(SpecError) as caught:
        compiled(fields)
    return caught.value


@pytest.mark.parametrize(
    ("fields", "path", "words"),
    [
        (r"order_id: {pattern: 'ORD-(\d+'}", "pattern", "invalid regular expression"),
        ("order_id: {pattern: '*oops'}", "pattern", "nothing to repeat"),
        (r"order_id: {pattern: 'ORD-(\d+)', group: 2}", "group", "no group 2"),
        (r"order_id: {pattern: 'ORD-(?P<n>\d+)', group: num}", "group", "no group named 'num'"),
    ],
)
def test_config_errors_point_at_their_yaml_path(fields: str, path: str, words: str) -> None:
    (diagnostic,) = spec_error(fields).diagnostics
    assert diagnostic.path == ("stages", "fields", "with", "fields", "order_id", path)
    assert words in diagnostic.message
    assert diagnostic.line == 10  # the line of `order_id:` in the YAML text


def test_every_bad_field_is_reported_and_unknown_keys_are_refused() -> None:
    error = spec_error(r"""
        a: {pattern: '(', all: true}
        b: {pattern: 'ok', al: true}
        """)
    paths = {d.path[-2:] for d in error.diagnostics}
    assert paths == {("a", "pattern"), ("b", "al")}


def test_no_fields_is_an_error() -> None:
    error = spec_error("{}")
    assert error.diagnostics[0].path == ("stages", "fields", "with", "fields")


def test_a_pattern_that_matches_nothing_warns() -> None:
    (warning,) = compiled(r"n: {pattern: '\d*'}").warnings
    assert warning.severity == "warning"
    assert warning.path[-1] == "pattern"
    assert "empty string" in warning.message
