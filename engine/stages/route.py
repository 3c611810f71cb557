"""`route`: choose which downstream branches run — by condition, or by sticky weights.

Conditional: the first rule whose `when` is true wins; a rule without `when` is the default.
Weighted (A/B splits, canaries): `key` is rendered per record and hashed with the stage name,
so the same key always takes the same branch and the shares converge to the weights. Each
weighted rule is a *variant* (its `name`, else its targets joined by `+`): the route notes
which one a record took and says it in its output (`{"to": [...], "variant": "b"}`), so the
stored trace carries it to `engine report --by variant`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from pydantic import Field, model_validator

from engine.runtime.context import StageContext
from engine.spec.types import StageNames
from engine.stages.base import Branch, Setup, Stage, StageConfig
from engine.sticky import sticky_point
from engine.template import ConditionStr, TemplateStr


class Rule(StageConfig):
    when: ConditionStr | None = None
    weight: float | None = Field(None, gt=0)
    to: StageNames = Field(min_length=1, description="the stage(s) this rule selects")
    name: str | None = Field(None, min_length=1, description="weighted routing: the variant's "
                             "name in traces and reports (default: the targets joined by +)")

    @property
    def variant(self) -> str:
        return self.name or "+".join(self.to)


class RouteConfig(StageConfig):
    routes: list[Rule] = Field(min_length=1)
    key: TemplateStr | None = Field(None, description="weighted routing: the sticky key")

    @model_validator(mode="after")
    def _one_mode(self) -> RouteConfig:
        weighted = [rule.weight is not None for rule in self.routes]
        if self.key is not None and not all(weighted):
            raise ValueError("with `key`, every rule needs a `weight` (weighted routing)")
        if self.key is None and any(weighted):
            raise ValueError(
                "weighted rules need a `key` to stay sticky, e.g. '{{ input.user_id }}'"
            )
        if self.key is not None and any(rule.when is not None for rule in self.routes):
            raise ValueError("a rule has either `when` (conditional) or `weight` (weighted)")
        if self.key is None and any(rule.name is not None for rule in self.routes):
            raise ValueError("`name` names a variant of a weighted route (`key` and `weight`)")
        variants = [rule.variant for rule in self.routes]
        if self.key is not None and len(set(variants)) < len(variants):
            raise ValueError(f"two weighted rules are the same variant {variants}: give each "
                             "a distinct `name`")
        return self


class RouteStage(Stage[RouteConfig]):
    Config = RouteConfig

    def __init__(self, setup: Setup[RouteConfig]) -> None:
        super().__init__(setup)
        weights = [rule.weight or 0.0 for rule in self.config.routes]
        self._bounds = list(itertools.accumulate(weights))

    def branches(self) -> frozenset[str]:
        return frozenset(name for rule in self.config.routes for name in rule.to)

    def check(self) -> Iterable[tuple[str, tuple[str | int, ...]]]:
        rules = self.config.routes
        if self.config.key is None and all(rule.when is not None for rule in rules):
            yield "no default rule: a record that matches no `when` skips every branch", (
                "routes", len(rules) - 1)
        for i, rule in enumerate(rules[:-1]):
            if self.config.key is None and rule.when is None:
                yield "rules after a rule without `when` are never reached", ("routes", i)

    async def run(self, ctx: StageContext) -> Branch:
        rule = self._weighted(ctx) if self.config.key is not None else self._first_true(ctx)
        if rule is None:
            return Branch({"to": []}, frozenset())
        if self.config.key is None:
            return Branch({"to": list(rule.to)}, frozenset(rule.to))
        ctx.note(variant=rule.variant)
        return Branch({"to": list(rule.to), "variant": rule.variant}, frozenset(rule.to))

    def _first_true(self, ctx: StageContext) -> Rule | None:
        for rule in self.config.routes:
            if rule.when is None or ctx.evaluate(rule.when):
                return rule
        return None

    def _weighted(self, ctx: StageContext) -> Rule:
        assert self.config.key is not None
        key = str(ctx.render(self.config.key))
        point = sticky_point(self.name, key) * self._bounds[-1]
        for rule, upper in zip(self.config.routes, self._bounds, strict=True):
            if point < upper:
                return rule
        return self.config.routes[-1]
