"""The flags file of the file provider, and how one flag picks a variant for a context.

```yaml
flags:
  llm-summarization-enabled: true      # on for everyone (false: off): the kill switch
  new-prompt:
    variants: {on: true, off: false}   # the default variants of a boolean flag
    default: off                       # what everyone gets when no rule matches
    enabled: true                      # false: `default` for everyone, rules kept
    rules:                             # the first rule that matches decides
      - {users: [alice, bob], variant: on}            # targeting keys
      - {tenants: [acme], variant: on}                # the `tenant` attribute
      - {match: {plan: [pro, team]}, rollout: {on: 50}}  # attributes; a list: one of
      - {rollout: {on: 10}}            # 10 % of targeting keys, sticky; the rest: default
  prompt-version:
    variants: {v1: "prompts/a.j2", v2: "prompts/b.j2"}
    default: v1
    rules: [{rollout: {v2: 25}}]
```

A rule matches when every condition it has holds (`users`, `tenants`, `match`; none: every
context). A rollout places the targeting key on a sticky point (`engine.sticky`, salted by the
flag's name) and gives the variants their percentages; a context without a targeting key
skips rollout rules. An unquoted `on` / `off` where a variant is named (YAML reads them as
booleans) names the `on` / `off` variant. Reasons are OpenFeature's: STATIC,
TARGETING_MATCH, SPLIT, DEFAULT, DISABLED.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Annotated, Any

from openfeature.flag_evaluation import Reason
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from engine.sticky import sticky_point

__all__ = ["Flag", "FlagsFile", "Rule"]

Scalar = str | int | float | bool


def _variant_name(value: Any) -> Any:
    """YAML reads an unquoted `on` / `off` as a boolean: there, it names that variant."""
    return ("on" if value else "off") if isinstance(value, bool) else value


VariantName = Annotated[str, BeforeValidator(_variant_name)]
Value = Scalar | dict[str, Any] | list[Any]
_ON_OFF: dict[str, Value] = {"on": True, "off": False}


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)


class Rule(_Model):
    """Who a rule matches and what they get: a `variant`, or a `rollout` split."""

    users: frozenset[str] | None = Field(None, description="targeting keys")
    tenants: frozenset[str] | None = Field(None, description="values of the tenant attribute")
    match: dict[str, Scalar | list[Scalar]] = Field(
        default_factory=dict, description="attributes equal to (a list: one of)")
    variant: VariantName | None = None
    rollout: dict[str, float] | None = Field(
        None, description="variant → percentage of targeting keys; the rest get the default")

    @model_validator(mode="after")
    def _one_outcome(self) -> Rule:
        if (self.variant is None) == (self.rollout is None):
            raise ValueError("a rule gives either a `variant` or a `rollout`")
        shares = (self.rollout or {}).values()
        if any(share < 0 for share in shares) or sum(shares) > 100:
            raise ValueError("rollout percentages are >= 0 and add up to 100 at most")
        return self

    def matches(self, key: str | None, attributes: Mapping[str, Any]) -> bool:
        if self.users is not None and key not in self.users:
            return False
        if self.tenants is not None and attributes.get("tenant") not in self.tenants:
            return False
        for name, wanted in self.match.items():
            value = attributes.get(name)
            if value != wanted and not (isinstance(wanted, list) and value in wanted):
                return False
        return True

    def split(self, flag: str, key: str) -> str | None:
        """The rollout variant of `key`, or None when it falls in the remainder."""
        assert self.rollout is not None
        point = sticky_point(flag, key) * 100
        bounds = itertools.accumulate(self.rollout.values())
        return next((v for v, upper in zip(self.rollout, bounds, strict=True) if point < upper),
                    None)

    def variants(self) -> set[str]:
        return {self.variant} if self.variant is not None else set(self.rollout or ())


class Flag(_Model):
    """One flag. `true` / `false` alone is short for a boolean flag that is on / off."""

    variants: dict[str, Value] = Field(default_factory=lambda: dict(_ON_OFF))
    default: VariantName = Field("off", description="the variant when no rule matches")
    enabled: bool = Field(True, description="false: the default variant for everyone")
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"default": "on" if data else "off"} if isinstance(data, bool) else data

    @model_validator(mode="after")
    def _known_variants(self) -> Flag:
        used = {self.default}.union(*(rule.variants() for rule in self.rules))
        unknown = sorted(used - set(self.variants))
        if unknown:
            raise ValueError(f"unknown variant(s) {', '.join(unknown)}; "
                             f"variants: {', '.join(self.variants)}")
        return self

    def resolve(self, name: str, key: str | None, attributes: Mapping[str, Any]
                ) -> tuple[str, Reason]:
        """The variant for this context, and why (an OpenFeature reason)."""
        if not self.enabled:
            return self.default, Reason.DISABLED
        if not self.rules:
            return self.default, Reason.STATIC
        for rule in self.rules:
            if not rule.matches(key, attributes):
                continue
            if rule.variant is not None:
                return rule.variant, Reason.TARGETING_MATCH
            if key:
                return rule.split(name, key) or self.default, Reason.SPLIT
        return self.default, Reason.DEFAULT


class FlagsFile(_Model):
    flags: dict[str, Flag] = Field(default_factory=dict)
