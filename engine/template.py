"""Templates and conditions: Jinja2 in a sandbox, compiled once, checked before anything runs.

Every string a pipeline renders — a stage's `with:` text, an `if:`, a route's `when:`, the
pipeline's `output` — becomes a `Template` or `Condition` while the spec is validated, so a
syntax error is reported with its YAML location, and the compiler can read which stages a
template refers to (`stages.<name>`) and reject references to stages that are not upstream,
and which feature flags it reads (`flag('<name>')`, see `engine.flags`).

Rendering rules, chosen so that data keeps its type:
- a template that is exactly one `{{ expression }}` returns the expression's value as is
  (a dict stays a dict, a number a number);
- anything else renders to a string;
- a missing variable is an error when rendering (a typo in a prompt must not become an empty
  string), but merely false in a condition (`input.vip` on a record without it).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Annotated, Any

from jinja2 import (
    ChainableUndefined,
    StrictUndefined,
    TemplateSyntaxError,
    Undefined,
    UndefinedError,
    nodes,
)
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BeforeValidator, PlainSerializer, PlainValidator, WithJsonSchema

from engine.flags.functions import FLAG_FUNCTION, flag

__all__ = [
    "Condition",
    "ConditionStr",
    "Template",
    "TemplateStr",
    "TemplateValue",
    "compile_condition",
    "compile_template",
    "compile_value",
    "render_value",
]

_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}).)*)\}\}\s*$", re.DOTALL)
_MARKUP = ("{{", "{%", "{#")


@functools.cache
def _environment(strict: bool) -> ImmutableSandboxedEnvironment:
    """One sandbox per undefined-policy; sandboxed because templates come from YAML files.
    `flag('name')` is a global: it reads the record's flags from the scope."""
    undefined = StrictUndefined if strict else ChainableUndefined
    env = ImmutableSandboxedEnvironment(undefined=undefined, autoescape=False)
    env.globals[FLAG_FUNCTION] = flag
    return env


def _stage_refs(ast: nodes.Node) -> frozenset[str]:
    """Names used as `stages.<name>` or `stages['<name>']` anywhere in a parsed template."""

    def on_stages(node: nodes.Getattr | nodes.Getitem) -> bool:
        return isinstance(node.node, nodes.Name) and node.node.name == "stages"

    refs = {node.attr for node in ast.find_all(nodes.Getattr) if on_stages(node)}
    refs |= {
        node.arg.value
        for node in ast.find_all(nodes.Getitem)
        if on_stages(node) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str)
    }
    return frozenset(refs)


def _flag_refs(ast: nodes.Node) -> frozenset[str]:
    """Flags named as `flag('<name>', ...)`, so the compiler can check them; a name computed
    at run time is not seen here (it fails or warns on first evaluation instead)."""
    return frozenset(
        node.args[0].value
        for node in ast.find_all(nodes.Call)
        if isinstance(node.node, nodes.Name) and node.node.name == FLAG_FUNCTION
        and node.args and isinstance(node.args[0], nodes.Const)
        and isinstance(node.args[0].value, str)
    )


def _parse(source: str, strict: bool) -> nodes.Template:
    try:
        return _environment(strict).parse(source)
    except TemplateSyntaxError as exc:
        message = f"template syntax error: {exc.message} (template line {exc.lineno})"
        raise ValueError(message) from None


class Template:
    """A compiled template; `render(scope)` with `input`, `stages` and `env` in the scope."""

    __slots__ = ("_expression", "_template", "flag_refs", "source", "stage_refs")

    def __init__(self, source: str) -> None:
        self.source = source
        self._expression: Any = None
        self._template: Any = None
        self.stage_refs: frozenset[str] = frozenset()
        self.flag_refs: frozenset[str] = frozenset()
        if not any(mark in source for mark in _MARKUP):
            return
        env = _environment(strict=True)
        ast = _parse(source, strict=True)
        self.stage_refs, self.flag_refs = _stage_refs(ast), _flag_refs(ast)
        single = _SINGLE_EXPRESSION.match(source)
        try:
            if single:
                self._expression = env.compile_expression(single["expr"], undefined_to_none=False)
            else:
                self._template = env.from_string(source)
        except TemplateSyntaxError as exc:
            raise ValueError(f"template syntax error: {exc.message}") from None

    def render(self, scope: Mapping[str, Any]) -> Any:
        if self._expression is not None:
            value = self._expression(**scope)
            if isinstance(value, Undefined):
                value._fail_with_undefined_error()
            return value
        if self._template is not None:
            return self._template.render(scope)
        return self.source

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Template) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)


class Condition:
    """A compiled boolean expression such as `stages.classify.output.urgency == 'high'`."""

    __slots__ = ("_expression", "flag_refs", "source", "stage_refs")

    def __init__(self, source: str) -> None:
        self.source = source
        expr = _SINGLE_EXPRESSION.match(source)
        text = expr["expr"] if expr else source
        try:
            self._expression = _environment(strict=False).compile_expression(text)
        except TemplateSyntaxError as exc:
            raise ValueError(f"condition syntax error: {exc.message}") from None
        ast = _parse("{{ " + text + " }}", strict=False)
        self.stage_refs, self.flag_refs = _stage_refs(ast), _flag_refs(ast)

    def evaluate(self, scope: Mapping[str, Any]) -> bool:
        """True or false; anything missing on the way (`input.vip.level > 2`) makes it false."""
        try:
            return bool(self._expression(**scope))
        except UndefinedError:
            return False

    def __repr__(self) -> str:
        return f"Condition({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Condition) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)


def compile_template(value: Any) -> Template:
    if isinstance(value, Template):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a template string")
    return Template(value)


def compile_condition(value: Any) -> Condition:
    if isinstance(value, Condition):
        return value
    if isinstance(value, bool):
        return Condition("true" if value else "false")
    if not isinstance(value, str):
        raise ValueError("expected a condition such as \"input.priority == 'high'\"")
    return Condition(value)


def compile_value(value: Any) -> Any:
    """Compile every templated string inside a mapping/list; other data stays as it is."""
    if isinstance(value, str):
        return Template(value) if any(mark in value for mark in _MARKUP) else value
    if isinstance(value, Mapping):
        return {key: compile_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [compile_value(item) for item in value]
    return value


def render_value(value: Any, scope: Mapping[str, Any]) -> Any:
    """Render a value produced by `compile_value` (or a single `Template`)."""
    if isinstance(value, Template):
        return value.render(scope)
    if isinstance(value, dict):
        return {key: render_value(item, scope) for key, item in value.items()}
    if isinstance(value, list):
        return [render_value(item, scope) for item in value]
    return value


def _source(value: Any) -> Any:
    if isinstance(value, Template | Condition):
        return value.source
    if isinstance(value, dict):
        return {key: _source(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_source(item) for item in value]
    return value


_STRING_SCHEMA = WithJsonSchema({"type": "string", "description": "Jinja2 template"})

TemplateStr = Annotated[
    Template, PlainValidator(compile_template), PlainSerializer(_source), _STRING_SCHEMA
]
"""A config field holding one template string."""

ConditionStr = Annotated[
    Condition,
    PlainValidator(compile_condition),
    PlainSerializer(_source),
    WithJsonSchema({"type": ["string", "boolean"], "description": "Jinja2 expression"}),
]
"""A config field holding a condition (a Jinja2 expression, without the braces)."""

TemplateValue = Annotated[Any, BeforeValidator(compile_value), PlainSerializer(_source)]
"""A config field holding any data whose strings are templates."""
