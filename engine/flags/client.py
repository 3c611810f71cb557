"""A pipeline's flags at run time: its OpenFeature client, and one record's view of it.

`PipelineFlags` is built once when the pipeline compiles. Each record gets a `RecordFlags`
(the executor puts it in the scope, where `flag()` finds it): its evaluation context is
rendered on the first `flag()` call only, and each flag is evaluated once per record, so a
record sees one value per flag even when the file changes while it runs (an `if:` and a
route's `when:` never disagree).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import UndefinedError
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagEvaluationDetails

from engine.template import Template

__all__ = ["PipelineFlags", "RecordFlags"]

_log = logging.getLogger("engine.flags")

Default = bool | str | int | float
_Evaluate = Callable[[OpenFeatureClient, str, Any, EvaluationContext],
                     FlagEvaluationDetails[Any]]
_BY_TYPE: dict[type, _Evaluate] = {
    bool: OpenFeatureClient.get_boolean_details,
    str: OpenFeatureClient.get_string_details,
    int: OpenFeatureClient.get_integer_details,
    float: OpenFeatureClient.get_float_details,
}
"""The SDK method for each kind of default (`bool` before `int`: exact types are looked up)."""


class PipelineFlags:
    """Evaluates flags through `client` for records whose context the templates render."""

    def __init__(self, client: OpenFeatureClient, targeting_key: Template | None,
                 attributes: Mapping[str, Template], env: Mapping[str, str]) -> None:
        self.client = client
        self._targeting_key = targeting_key
        self._attributes = attributes
        self._env = env
        self._warned: set[tuple[str, str]] = set()

    def bind(self, record: Any) -> RecordFlags:
        return RecordFlags(self, record)

    def context(self, record: Any) -> EvaluationContext:
        """The record's evaluation context; a value its record lacks is left out (a record
        without a user id is evaluated without a targeting key, never failed)."""
        scope = {"input": record, "env": self._env}
        key = _render(self._targeting_key, scope)
        attributes = {name: value for name, template in self._attributes.items()
                      if (value := _render(template, scope)) is not None}
        return EvaluationContext(None if key is None else str(key), attributes)

    def evaluate(self, name: str, default: Default, context: EvaluationContext) -> Any:
        """The flag's value, or `default` with a warning (once per flag and problem) when
        the provider does not know the flag or fails: flags never fail a run."""
        details = _BY_TYPE[type(default)](self.client, name, default, context)
        if details.error_code is not None:
            self._warn(name, f"{details.error_code}: {details.error_message or ''}")
        return details.value

    def _warn(self, name: str, problem: str) -> None:
        if (name, problem) not in self._warned:
            self._warned.add((name, problem))
            _log.warning("flag %r: its default is used (%s)", name, problem)


class RecordFlags:
    """One record's flags: the context rendered once, each flag evaluated once."""

    __slots__ = ("_context", "_flags", "_record", "_values")

    def __init__(self, flags: PipelineFlags, record: Any) -> None:
        self._flags = flags
        self._record = record
        self._context: EvaluationContext | None = None
        self._values: dict[tuple[str, Default, type], Any] = {}

    def value(self, name: str, default: Default) -> Any:
        if type(default) not in _BY_TYPE:  # before it is hashed: a list would fail there
            raise TypeError(f"flag({name!r}, default): the default must be a bool, str, int "
                            f"or float, not {type(default).__name__}")
        key = (name, default, type(default))  # True == 1: the type tells them apart
        if key not in self._values:
            if self._context is None:
                self._context = self._flags.context(self._record)
            self._values[key] = self._flags.evaluate(name, default, self._context)
        return self._values[key]


def _render(template: Template | None, scope: Mapping[str, Any]) -> Any:
    if template is None:
        return None
    try:
        return template.render(scope)
    except UndefinedError:
        return None
