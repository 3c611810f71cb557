"""`guard`: what may reach a model, and in what form.

```yaml
guard:
  type: guard
  with:
    text: "{{ input.ticket }}"
    user: "{{ input.user_id }}"
    ip: "{{ input.ip }}"
    consent: "{{ input.ai_consent }}"                          # false → the non-AI path
    rate_limit: {per_user: 20/min, per_ip: 100/min, store: memory}   # or a redis resource
    max_tokens: {limit: 2000, model: cheap, action: block}     # or truncate
    pii: {action: pseudonymize, entities: [EMAIL, PHONE, CREDIT_CARD, IBAN, US_SSN, IP_ADDRESS]}
    injection: {action: block, threshold: 0.8}
    fallback: human                                            # where stopped requests go
```

Checks run cheapest and most decisive first: consent, rate limits, token limit, PII, then
injection (on the text with PII already replaced, so findings quote no personal data). The
output is the sanitized `text` plus `findings`; downstream stages read the sanitized text, so
the raw text never reaches a provider. A stopped request (no consent, rate limited, too long,
an injection or PII with `block`) goes to `fallback` — a stage run in the guard's place, the
non-AI path — or, without one, finishes the run with `refusal`. Pseudonyms (`<EMAIL_1>`) are
put back into the run's final output only, never into stage outputs or traces.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from jinja2.exceptions import UndefinedError
from pydantic import Field

from engine.guard.tokens import TokenCounter
from engine.resources.limits import Limit, RateLimitStoreError, RateStr
from engine.runtime.context import StageContext
from engine.spec.types import ModelRefStr, ResourceRefStr, StageName
from engine.stages.base import Finish, Handoff, Setup, SetupError, Stage, StageConfig
from engine.template import Template, TemplateStr, TemplateValue

if TYPE_CHECKING:
    from engine.guard.injection import InjectionDetector
    from engine.guard.pii import PiiScanner

__all__ = ["GuardConfig", "GuardStage"]

Entity = Literal["EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "US_SSN", "IP_ADDRESS", "PERSON"]
STRUCTURED_ENTITIES: tuple[Entity, ...] = (
    "EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "US_SSN", "IP_ADDRESS")
_REFUSED = {"false", "no", "0", "off", "none", "", "n"}


class TokenLimit(StageConfig):
    limit: int = Field(gt=0)
    model: ModelRefStr | None = Field(None, description="count with this tier's tokenizer")
    action: Literal["block", "truncate"] = "block"


class InjectionCheck(StageConfig):
    action: Literal["block", "flag"] = "block"
    threshold: float = Field(0.8, gt=0, le=1)
    embeddings: bool = Field(True, description="similarity to known attacks, when rules hesitate")


class PiiCheck(StageConfig):
    action: Literal["pseudonymize", "redact", "mask", "block"] = "pseudonymize"
    entities: list[Entity] = Field(default_factory=lambda: list(STRUCTURED_ENTITIES))


class RateLimitCheck(StageConfig):
    per_user: RateStr | None = Field("20/min", validate_default=True)
    per_ip: RateStr | None = Field("100/min", validate_default=True)
    store: Literal["memory"] | ResourceRefStr = Field(
        "memory", description="memory, or a resource {type: redis, url: redis://...}")


class GuardConfig(StageConfig):
    text: TemplateStr
    user: TemplateStr | None = None
    ip: TemplateStr | None = None
    consent: TemplateStr | None = Field(None, description="false/no/0 → the non-AI path")
    rate_limit: RateLimitCheck | None = None
    max_tokens: TokenLimit | None = None
    pii: PiiCheck | None = None
    injection: InjectionCheck | None = None
    fallback: StageName | None = Field(None, description="the stage stopped requests go to")
    refusal: TemplateValue = "Sorry, we cannot process this request."


class _Stop(Exception):
    """A check stopped the request: why, and what to say about it."""

    def __init__(self, reason: str, **details: Any) -> None:
        self.reason = reason
        self.details = details
        super().__init__(reason)


class GuardStage(Stage[GuardConfig]):
    Config = GuardConfig

    def __init__(self, setup: Setup[GuardConfig]) -> None:
        super().__init__(setup)
        config = self.config
        self.resources = setup.resources
        self.redis_url = _redis_url(setup, config.rate_limit)
        tier = config.max_tokens.model if config.max_tokens else None
        models = setup.pipeline.models
        self.tokens = TokenCounter(models[tier].model if tier in models else "gpt-4o")
        self._pii: PiiScanner | None = None
        self._injection: InjectionDetector | None = None

    def handoffs(self) -> frozenset[str]:
        return frozenset({self.config.fallback}) if self.config.fallback else frozenset()

    def check(self) -> Iterable[tuple[str, tuple[str | int, ...]]]:
        pii = self.config.pii
        if pii and "PERSON" in pii.entities:
            yield ("PERSON needs the spaCy NER model (install engine[local]); it costs far more "
                   "per KB than the pattern entities", ("pii", "entities"))

    async def warm_up(self) -> None:
        """Build the PII analyzer and load the embedding model before the first record."""
        self.pii_scanner()
        detector = self.injection_detector()
        if detector is not None:
            await detector.warm_up()

    def pii_scanner(self) -> PiiScanner | None:
        if self.config.pii is not None and self._pii is None:
            from engine.guard.pii import PiiScanner

            entities = list(self.config.pii.entities)
            self._pii = PiiScanner(entities, ner="PERSON" in entities)
        return self._pii

    def injection_detector(self) -> InjectionDetector | None:
        check = self.config.injection
        if check is not None and self._injection is None:
            from engine.guard.injection import InjectionDetector

            embedder = self.resources.embedder() if check.embeddings else None
            self._injection = InjectionDetector(threshold=check.threshold, embedder=embedder)
        return self._injection

    async def run(self, ctx: StageContext) -> Any:
        findings: dict[str, Any] = {}
        try:
            self.consent(ctx)
            await self.rate_limit(ctx, findings)
            text, tokens, truncated = self.token_limit(str(ctx.render(self.config.text)))
            text = self.personal_data(ctx, text, findings)
            await self.injection(text, findings)
        except _Stop as stop:
            return self.stopped(ctx, stop, findings)
        ctx.note(**{k: v for k, v in findings.items() if v})
        return {"text": text, "blocked": False, "tokens": tokens, "truncated": truncated,
                "findings": findings}

    def consent(self, ctx: StageContext) -> None:
        if self.config.consent is None:
            return
        given = ctx.render(self.config.consent)
        if given is False or str(given).strip().lower() in _REFUSED:
            raise _Stop("no_consent")

    async def rate_limit(self, ctx: StageContext, findings: dict[str, Any]) -> None:
        check = self.config.rate_limit
        if check is None:
            return
        limits = []
        for rule, who, rate in (("per_user", self.config.user, check.per_user),
                                ("per_ip", self.config.ip, check.per_ip)):
            key = _identity(ctx, who) if rate is not None else None
            if key is not None and rate is not None:
                limits.append(Limit(f"{self.name}:{rule}:{key}", rate, name=rule))
        if not limits:
            return
        try:
            decision = await self.resources.rate_limiter(self.redis_url).acquire_all(limits)
        except RateLimitStoreError:
            # The shared store is down: fail open to this process's buckets, same rates.
            ctx.note(rate_limit_store="unavailable; local buckets used")
            decision = await self.resources.rate_limiter(None).acquire_all(limits)
        findings["rate_limit"] = {"remaining": decision.remaining}
        if not decision.allowed:
            raise _Stop("rate_limited", limit=decision.limit,
                        retry_after=round(decision.retry_after, 3))

    def token_limit(self, text: str) -> tuple[str, int | None, bool]:
        check = self.config.max_tokens
        if check is None:
            return text, None, False  # counting costs a full encode: only when limited
        count = self.tokens.count(text)
        if count <= check.limit:
            return text, count, False
        if check.action == "block":
            raise _Stop("too_long", tokens=count, limit=check.limit)
        return self.tokens.truncate(text, check.limit), check.limit, True

    def personal_data(self, ctx: StageContext, text: str, findings: dict[str, Any]) -> str:
        scanner = self.pii_scanner()
        if scanner is None or self.config.pii is None:
            return text
        found = scanner.find(text)
        findings["pii"] = [{"entity": f.entity, "start": f.start, "end": f.end,
                            "score": round(f.score, 3)} for f in found]
        if not found:
            return text
        action = self.config.pii.action
        if action == "block":
            raise _Stop("personal_data", entities=sorted({f.entity for f in found}))
        sanitized = scanner.apply(text, found, action)
        if sanitized.mapping:
            mapping = dict(sanitized.mapping)
            ctx.finalize(lambda output: _restore(output, mapping))
        return str(sanitized.text)

    async def injection(self, text: str, findings: dict[str, Any]) -> None:
        detector = self.injection_detector()
        if detector is None or self.config.injection is None:
            return
        result = await detector.scan(text)
        findings["injection"] = {**result.to_json(), "score": round(result.score, 3)}
        if result.blocked and self.config.injection.action == "block":
            raise _Stop("injection", score=round(result.score, 3), signal=result.signal)

    def stopped(self, ctx: StageContext, stop: _Stop, findings: dict[str, Any]) -> Any:
        output = {"blocked": True, "reason": stop.reason, **stop.details,
                  "message": ctx.render(self.config.refusal), "findings": findings}
        ctx.note(blocked=stop.reason)
        if self.config.fallback is not None:
            return Handoff(self.config.fallback, output)
        return Finish(output)


def _redis_url(setup: Setup[GuardConfig], check: RateLimitCheck | None) -> str | None:
    """Where the buckets live: a `redis` resource the guard names, else this process —
    unless the process shares its state (`--redis`), like the caches left on memory."""
    if check is None:
        return None
    if check.store == "memory":
        return setup.resources.redis_url
    resource = setup.pipeline.resources.get(check.store)
    url = getattr(resource, "url", None) if resource is not None else None
    if resource is None or resource.type != "redis" or not isinstance(url, str):
        raise SetupError(f"resource '{check.store}' must be {{type: redis, url: redis://...}}",
                         ("rate_limit", "store"))
    return url


def _identity(ctx: StageContext, template: Template | None) -> str | None:
    """Who a request is from, or None when the record does not say (no limit applies)."""
    if template is None:
        return None
    try:
        key = ctx.render(template)
    except UndefinedError:
        return None
    return None if key is None or str(key) in ("", "None") else str(key)


def _restore(value: Any, mapping: dict[str, str]) -> Any:
    """Put the original values back wherever a placeholder appears in the final output."""
    from engine.guard.pii import restore

    if isinstance(value, str):
        return restore(value, mapping)
    if isinstance(value, dict):
        return {key: _restore(item, mapping) for key, item in value.items()}
    if isinstance(value, list):
        return [_restore(item, mapping) for item in value]
    return value
