"""`extract`: pull structured fields out of text with regular expressions.

Order ids, invoice numbers, e-mail addresses and amounts follow fixed formats; a regex finds
them exactly, for free and in microseconds, where an LLM would cost a call and sometimes
invent a digit. Run it before a model (to route on what was found, or to hand the model
clean fields) or instead of one.

Every pattern is compiled while the pipeline validates, so a broken regex or a group the
pattern does not have is a config error at its YAML path — never a failure on the first
record in production.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator

from engine.runtime.context import StageContext
from engine.stages.base import Setup, Stage, StageConfig
from engine.template import TemplateStr

__all__ = ["ExtractConfig", "ExtractStage", "FieldRule"]


class FieldRule(StageConfig):
    """How to find one field: a regex, which group to keep, first match or all of them."""

    pattern: str = Field(description="a Python regular expression")
    all: bool = Field(False, description="a list of every match instead of the first one")
    group: int | str = Field(0, description="the group to keep: a number or a (?P<name>...)")
    ignore_case: bool = False
    _regex: re.Pattern[str] = PrivateAttr()

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return value

    @field_validator("group")
    @classmethod
    def _exists(cls, value: int | str, info: ValidationInfo) -> int | str:
        if "pattern" not in info.data:  # the pattern itself is wrong; that error says enough
            return value
        regex = re.compile(info.data["pattern"])
        if isinstance(value, int) and not 0 <= value <= regex.groups:
            raise ValueError(f"the pattern has no group {value} (it has {regex.groups})")
        if isinstance(value, str) and value not in regex.groupindex:
            named = ", ".join(regex.groupindex) or "none"
            raise ValueError(f"the pattern has no group named '{value}' (named groups: {named})")
        return value

    def model_post_init(self, _context: Any) -> None:
        flags = re.IGNORECASE if self.ignore_case else 0
        self._regex = re.compile(self.pattern, flags)

    @property
    def regex(self) -> re.Pattern[str]:
        """The compiled pattern, flags included."""
        return self._regex

    def find(self, text: str) -> Any:
        """The first match (None if none), or every match; a group that took no part in a
        match is None for `all: false` and left out of the list for `all: true`."""
        if not self.all:
            match = self._regex.search(text)
            return match.group(self.group) if match else None
        found = (m.group(self.group) for m in self._regex.finditer(text))
        return [value for value in found if value is not None]


class ExtractConfig(StageConfig):
    text: TemplateStr = Field(description="the text to search, e.g. '{{ input.ticket }}'")
    fields: dict[str, FieldRule] = Field(min_length=1, description="output key → how to find it")


class ExtractStage(Stage[ExtractConfig]):
    """Outputs `{field: first match or None}` (a list for `all: true`): plain JSON data, so
    a `route` can test `stages.<name>.output.order_id` and a prompt can quote it."""

    Config = ExtractConfig

    def __init__(self, setup: Setup[ExtractConfig]) -> None:
        super().__init__(setup)
        self._fields = dict(self.config.fields)

    def check(self) -> Iterable[tuple[str, tuple[str | int, ...]]]:
        for name, rule in self._fields.items():
            if rule.regex.fullmatch("") is not None:
                yield ("the pattern matches the empty string, so it 'finds' '' in any text; "
                       "use + instead of * or anchor it", ("fields", name, "pattern"))

    async def run(self, ctx: StageContext) -> dict[str, Any]:
        text = ctx.render(self.config.text)
        # A skipped upstream stage renders as None: that is "nothing to search", not an error.
        text = "" if text is None else str(text)
        out = {name: rule.find(text) for name, rule in self._fields.items()}
        ctx.note(matched=sorted(name for name, value in out.items() if value not in (None, [])))
        return out
