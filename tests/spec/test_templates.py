"""Templates and conditions (engine/template.py): typed single expressions, strict rendering,
lenient conditions, the sandbox, and the stage references the compiler checks."""

from __future__ import annotations

from typing import Any

import pytest
from jinja2.exceptions import SecurityError, UndefinedError

from engine.template import (
    Condition,
    Template,
    compile_condition,
    compile_template,
    compile_value,
    render_value,
)

SCOPE: dict[str, Any] = {
    "input": {"ticket": "help", "meta": {"lang": "en"}, "n": 3, "tags": ["a", "b"]},
    "stages": {"classify": {"output": {"urgency": "high"}}, "skipped": {"output": None}},
    "env": {"REGION": "eu"},
}


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("{{ input.meta }}", {"lang": "en"}),
        ("{{ input.n }}", 3),
        ("  {{ input.n + 1 }}\n", 4),
        ("{{ input.tags }}", ["a", "b"]),
        ("{{ stages.skipped.output }}", None),
        ("{{ input.n > 2 }}", True),
        ("{{ {'k': input.n} }}", {"k": 3}),
        ("{{ env.REGION }}", "eu"),
    ],
)
def test_a_single_expression_keeps_its_type(source: str, value: Any) -> None:
    rendered = Template(source).render(SCOPE)
    assert rendered == value
    assert type(rendered) is type(value)


@pytest.mark.parametrize(
    ("source", "text"),
    [
        ("n={{ input.n }}", "n=3"),
        ("{{ input.n }}{{ input.n }}", "33"),
        ("{{ input.n }} and {{ input.meta.lang }}", "3 and en"),
        ("{% if input.n %}yes{% endif %}", "yes"),
        ("{{ '}}' }}", "}}"),
        ("no markup at all", "no markup at all"),
    ],
)
def test_anything_else_renders_a_string(source: str, text: str) -> None:
    assert Template(source).render(SCOPE) == text


@pytest.mark.parametrize(
    "source", ["{{ input.missing }}", "x {{ input.missing }}", "{{ stages.nope.output }}"]
)
def test_a_missing_variable_is_an_error_when_rendering(source: str) -> None:
    with pytest.raises(UndefinedError):
        Template(source).render(SCOPE)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("input.n > 2", True),
        ("{{ input.n > 5 }}", False),
        ("stages.classify.output.urgency == 'high'", True),
        ("input.vip", False),
        ("input.vip.level == 'gold'", False),
        ("input.vip.level > 2", False),
        ("stages.nope.output.urgency == 'high'", False),
        ("stages.skipped.output.urgency == 'high'", False),
        ("not input.vip", True),
    ],
)
def test_conditions_treat_missing_values_as_false(source: str, expected: bool) -> None:
    assert Condition(source).evaluate(SCOPE) is expected


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ input.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "x{{ input.ticket.__class__.__base__ }}",
    ],
)
def test_the_sandbox_blocks_attribute_escapes(source: str) -> None:
    with pytest.raises(SecurityError):
        Template(source).render(SCOPE)


def test_the_sandbox_blocks_mutation_and_conditions_cannot_escape() -> None:
    with pytest.raises(SecurityError):
        Template("{{ input.tags.append('x') }}").render(SCOPE)
    assert SCOPE["input"]["tags"] == ["a", "b"]
    assert Condition("''.__class__.__mro__").evaluate(SCOPE) is False


@pytest.mark.parametrize(
    ("source", "refs"),
    [
        ("{{ stages.answer.output }}", {"answer"}),
        ("{{ stages['answer'].output }}", {"answer"}),
        ('{{ stages["a"].output }} {{ stages.b }}', {"a", "b"}),
        ("{% for t in stages.x.output %}{{ t }}{% endfor %}", {"x"}),
        ("{{ input.stages.fake }}", set()),
        ("{{ stages[input.name] }}", set()),
        ("plain text stages.x", set()),
    ],
)
def test_template_stage_refs(source: str, refs: set[str]) -> None:
    assert Template(source).stage_refs == refs


def test_condition_stage_refs() -> None:
    assert Condition("stages.a.output and stages['b'].output").stage_refs == {"a", "b"}


@pytest.mark.parametrize("source", ["{{ input.ticket ", "{% if %}", "{{ x }} {{"])
def test_template_syntax_errors_are_value_errors(source: str) -> None:
    with pytest.raises(ValueError, match="template syntax error"):
        Template(source)


@pytest.mark.parametrize("source", ["input.x ==", "{{ a b }}", "("])
def test_condition_syntax_errors_are_value_errors(source: str) -> None:
    with pytest.raises(ValueError, match="condition syntax error"):
        Condition(source)


def test_compile_helpers() -> None:
    assert compile_condition(True).evaluate(SCOPE) is True
    assert compile_condition(False).evaluate(SCOPE) is False
    with pytest.raises(ValueError, match="expected a condition"):
        compile_condition(3)
    with pytest.raises(ValueError, match="expected a template string"):
        compile_template(["x"])
    template = Template("{{ input.n }}")
    assert compile_template(template) is template
    assert template == Template("{{ input.n }}")
    assert hash(template) == hash(Template("{{ input.n }}"))


def test_compile_value_and_render_value_walk_data() -> None:
    value = compile_value({"a": "{{ input.n }}", "b": ["x {{ input.ticket }}", 2], "c": "plain"})
    assert isinstance(value["a"], Template)
    assert value["c"] == "plain"
    assert render_value(value, SCOPE) == {"a": 3, "b": ["x help", 2], "c": "plain"}
