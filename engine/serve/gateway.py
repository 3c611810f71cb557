"""The gateway: the pipelines one process serves, and what every request goes through before
and after its run — admission (key, limits, shedding), the run itself, and its observers.

HTTP details (headers, routes, bodies) are `engine.serve.app`'s; this class speaks in
identities, records and run results, so each step is testable on its own.

Run outcomes as HTTP statuses: an answer (ok, or finished early by a cache hit, a hand-off,
a guard's refusal) is 200; the pipeline's deadline passing, or every model call of the
failing stage timing out, is 504 (the upstream did not answer in time); any other failed run is
502 with the failing stage and error type — never its message, which can quote the input, a
provider's reply or a secret; the server log says the same under the run's trace id, and the
run store keeps the details (engine/observe/store.py drops the free text there too).

A served pipeline may have a candidate version (`--config`): a shadow, run after the response
(`engine.serve.shadow`), or a canary, answering a share of the users (`engine.serve.canary`).
A candidate is a served file or a `file:` loaded only for this (hidden: not callable, not
listed); it must take the same input schema. Every run of such a pipeline, whichever version
answered, is stored under its name with a `variant`.
"""

from __future__ import annotations

import gc
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.compile import CompiledPipeline, compile_file
from engine.errors import Diagnostic, SpecError
from engine.observe.metrics import Metrics
from engine.observe.store import RunStore
from engine.registry import Registry
from engine.resources import Resources
from engine.results import RunResult
from engine.runtime.batch import input_problem
from engine.runtime.context import RunHooks
from engine.serve.audit import Auditor, Request
from engine.serve.canary import Canary, CanaryMetrics
from engine.serve.config import PipelineSettings, ServeConfig
from engine.serve.feedback import FeedbackLog
from engine.serve.idempotency import Idempotency
from engine.serve.keys import ANONYMOUS, Identity, KeyRing
from engine.serve.limits import RateLimits, Shedder, client_ip
from engine.serve.mapping import ChatInput
from engine.serve.openai import ApiError
from engine.serve.shadow import Shadow, ShadowMetrics

__all__ = ["Gateway", "Served", "compile_all"]

_log = logging.getLogger(__name__)
@dataclass(frozen=True, slots=True)
class Served:
    """One pipeline as served: compiled, its chat mapping, and its version (the file's
    digest, recorded in the audit log so a record names the exact pipeline that answered).

    `hidden`: loaded only as a candidate. For one request to a pipeline with a candidate,
    `variant` says which version answers, and `asked` names the pipeline the client asked for
    when the candidate answers in its place (`home`: where its runs are stored)."""

    pipeline: CompiledPipeline
    chat: ChatInput
    version: str
    hidden: bool = False
    variant: str | None = None
    asked: str | None = None

    @property
    def name(self) -> str:
        return self.pipeline.name

    @property
    def home(self) -> str:
        return self.asked or self.name


def compile_all(config: ServeConfig, resources: Resources) -> dict[str, Served]:
    """Compile every file once, sharing `resources`; raise SpecError with every problem of
    every file (the same diagnostics as `engine validate`), for two files with one name, and
    for settings naming a pipeline not served or a candidate that does not fit."""
    registry = Registry.from_entry_points()
    served: dict[str, Served] = {}
    problems: list[Diagnostic] = []
    hidden = config.candidate_files()
    for file in (*config.files, *hidden):
        try:
            pipeline = compile_file(file, registry, resources=resources)
        except SpecError as exc:
            problems += exc.diagnostics
            continue
        if pipeline.name in served:
            other = served[pipeline.name].pipeline.loaded.file
            problems.append(Diagnostic(f"pipeline name '{pipeline.name}' is also used by "
                                       f"{other}; served names must be unique", str(file),
                                       path=("name",)))
            continue
        settings = config.pipelines.get(pipeline.name) or hidden.get(Path(file))
        chat = ChatInput.resolve(pipeline, settings)
        version = hashlib.sha256(Path(file).read_bytes()).hexdigest()[:12]
        served[pipeline.name] = Served(pipeline, chat, version, hidden=file in hidden)
    if not problems:
        problems += _settings_problems(config.pipelines, served)
    if problems:
        raise SpecError(problems)
    return served


def _settings_problems(settings: dict[str, PipelineSettings], served: dict[str, Served]
                       ) -> list[Diagnostic]:
    """`--config` entries for pipelines not served; candidates not loaded, or not taking the
    same input records as the pipeline they stand in for."""
    listed = ", ".join(sorted(name for name, s in served.items() if not s.hidden))
    unknown = sorted(set(settings) - set(served))
    if unknown:
        return [Diagnostic(f"--config has settings for pipeline(s) not served: "
                           f"{', '.join(unknown)}; served: {listed}", "--config")]
    problems = []
    for name, entry in settings.items():
        for key, candidate, _ in entry.candidates():
            path = ("pipelines", name, *key.split("."))
            found = served.get(candidate)
            if found is None:
                problems.append(Diagnostic(
                    f"no pipeline named '{candidate}' is loaded (served: {listed})", "--config",
                    path=path, hint="serve the candidate's file too, or give its `file:`"))
            elif candidate == name:
                problems.append(Diagnostic("a pipeline cannot be its own candidate",
                                           "--config", path=path))
            elif (found.pipeline.loaded.spec.input.schema_
                  != served[name].pipeline.loaded.spec.input.schema_):
                problems.append(Diagnostic(
                    f"candidate '{candidate}' has another input schema than '{name}': it "
                    "must take the same records", "--config", path=path,
                    hint=f"compare `input.schema` in {found.pipeline.loaded.file} and "
                         f"{served[name].pipeline.loaded.file}"))
    return problems


def _timed_out(result: RunResult, stage: Any) -> bool:
    """Did the failed stage's model calls all run out of time (its tiers' calls are cut to
    the deadline, so a deadline reached inside one reads as "every tier failed: timeout")?"""
    for event in result.events:
        calls = (event.notes or {}).get("llm") if event.stage == stage else None
        if isinstance(calls, list) and calls:
            attempts = [a for call in calls if isinstance(call, dict)
                        for a in call.get("attempts") or ()]
            return bool(attempts) and all(outcome == "timeout" for _, outcome in attempts)
    return False


class Gateway:
    def __init__(self, config: ServeConfig, served: dict[str, Served], resources: Resources,
                 keys: KeyRing, *, serving: bool = True) -> None:
        self.config = config
        self.served = served
        self.resources = resources
        self.keys = keys
        self.trusted = config.networks()
        self.limits = RateLimits(resources, config.rate_per_key, config.rate_per_ip)
        self.shedder = Shedder(config.max_inflight)
        self.idempotency = Idempotency(resources.idempotency)
        self.metrics = Metrics()
        self.metrics.watch_breakers(resources)
        self.store = RunStore(config.store) if config.store is not None else None
        self.feedback = FeedbackLog(config.store) if config.store is not None else None
        self.auditor = (Auditor(config.audit_dir, content=config.audit_content,
                                opt_out=config.opt_out, claim=serving)
                        if config.audit_dir is not None else None)
        self.shadows = {name: Shadow(name, served[entry.shadow.pipeline].pipeline, entry.shadow,
                                     resources.spawn, self.store)
                        for name, entry in config.pipelines.items() if entry.shadow}
        self.canaries = {name: Canary(name, entry.canary.candidate, entry.canary,
                                      served[name].pipeline.loaded.spec.alerts.webhook,
                                      resources.spawn)
                         for name, entry in config.pipelines.items() if entry.canary}
        self.metrics.registry.register(ShadowMetrics(self.shadows.values()))
        self.metrics.registry.register(CanaryMetrics(self.canaries.values()))
        self.ready = False

    @classmethod
    def build(cls, config: ServeConfig, *, serving: bool = True) -> Gateway:
        """`serving=False`: a check of the settings that will serve nothing (the parent of
        `--workers`): no audit chain is claimed for it."""
        resources = Resources(redis_url=config.redis)
        return cls(config, compile_all(config, resources), resources, KeyRing.load(config.keys),
                   serving=serving)

    async def start(self) -> None:
        """Warm every stage up, then say ready: the first request pays no model load."""
        for served in self.served.values():
            await served.pipeline.warm_up()
            if self.store is not None and not served.hidden:
                self.store.open_pipeline(served.pipeline)
        gc.collect()
        gc.freeze()  # see engine.runtime.batch.run_batch: long pauses otherwise
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        await self.resources.aclose()
        for closer in (self.store, self.feedback, self.auditor, self.metrics):
            if closer is not None:
                closer.close()

    # -- admission -------------------------------------------------------------------------
    async def admit(self, authorization: str | None, peer: str, forwarded: str | None
                    ) -> tuple[Identity, str]:
        """Who is calling and from where, after the rate limits; 401 / 429 otherwise. A
        failed key spends the address's budget too, so guessing keys is rate limited."""
        ip = client_ip(peer, forwarded, self.trusted)
        if not self.keys:
            identity = ANONYMOUS
        else:
            found = self.keys.authenticate(authorization)
            if found is None:
                await self.limits.check(None, ip)
                raise ApiError(401, "missing or invalid API key: send `Authorization: Bearer "
                               "<key>`", code="invalid_api_key",
                               headers={"WWW-Authenticate": "Bearer"})
            identity = found
        await self.limits.check(identity, ip)
        return identity, ip

    def pipeline(self, name: str, identity: Identity) -> Served:
        """The pipeline `name` for this caller: 404 if not served, 403 if the key may not."""
        served = self.served.get(name)
        if served is None or served.hidden:
            raise ApiError(404, f"no pipeline named '{name}'; GET /v1/pipelines lists them",
                           code="model_not_found", param="model")
        if not identity.may_use(name):
            raise ApiError(403, f"this API key may not use pipeline '{name}'",
                           "permission_error", "pipeline_not_allowed", param="model")
        return served

    def visible(self, identity: Identity) -> Iterable[Served]:
        return (s for name, s in sorted(self.served.items())
                if not s.hidden and identity.may_use(name))

    def choose(self, served: Served, identity: Identity, ip: str) -> Served:
        """The version that answers this request: the canary's candidate for its users, else
        `served`, labelled when it has a candidate (see the module docstring)."""
        if served.name not in self.canaries and served.name not in self.shadows:
            return served
        canary = self.canaries.get(served.name)
        user = identity.user if identity is not ANONYMOUS else ip
        if canary is not None and canary.takes(user):
            return replace(self.served[canary.candidate], variant="candidate",
                           asked=served.name)
        return replace(served, variant="baseline")

    def status(self, served: Served, kind: str) -> dict[str, Any]:
        """The shadow's comparison or the canary's state; 404 when there is none."""
        if kind == "shadow" and served.name in self.shadows:
            return self.shadows[served.name].summary()
        if kind == "canary" and served.name in self.canaries:
            return {"object": "pipeline.canary", **self.canaries[served.name].status()}
        raise ApiError(404, f"pipeline '{served.name}' has no {kind}; give it one in the "
                       "--config file", code=f"no_{kind}")

    def audit_request(self, served: Served, identity: Identity, request_id: str) -> Request:
        """The audit record of a request that named a pipeline; 403 for an opted-out user,
        before any AI processing."""
        request = Request(request_id, served.name, served.version, identity.user,
                          identity.tenant)
        if self.auditor is not None and self.auditor.opted_out(identity.user):
            self.auditor.record(request, "403")
            raise ApiError(403, "this user has opted out of AI processing; no request is "
                           "processed for them", "permission_error", "opted_out")
        return request

    def audit(self, request: Request, outcome: str) -> None:
        if self.auditor is not None:
            self.auditor.record(request, outcome)

    # -- the run ---------------------------------------------------------------------------
    def check_input(self, served: Served, record: Any) -> None:
        """400 for a record that does not match `input.schema` (before a stream starts)."""
        problem = input_problem(served.pipeline, record)
        if problem is not None:
            raise ApiError(400, problem, code="invalid_input")

    async def run(self, served: Served, record: Any, hooks: RunHooks,
                  tenant: str | None) -> RunResult:
        """Run a checked record and feed the observers. The stored run names its tenant, so
        feedback is only ever joined to runs of the tenant that sent it."""
        result = await served.pipeline.run(record, hooks=hooks)
        self.metrics.observe(served.name, record, result)
        if self.store is not None:
            extra = {"variant": served.variant} if served.variant else {}
            if tenant is not None:
                extra["tenant"] = tenant
            self.store.observe(served.home, record, result, extra=extra or None)
        canary = self.canaries.get(served.home)
        if canary is not None and served.variant is not None:
            canary.observe(served.variant, result)
        return result

    async def answered(self, served: Served, record: Any, request: Request) -> None:
        """The response is sent (a background task of it): offer the request to the shadow
        when the served version ran and answered it."""
        shadow = self.shadows.get(served.name)
        result = request.result
        if (shadow is not None and served.variant == "baseline" and result is not None
                and result.ok):
            shadow.offer(record, result, self.shedder.saturated)

    def check(self, served: Served, result: RunResult) -> None:
        """Raise the HTTP error for a failed run (see the module docstring)."""
        if result.ok:
            return
        error = result.error or {}
        kind, stage = str(error.get("type") or "Error"), error.get("stage")
        _log.warning("pipeline %s, trace %s failed at stage %s: %s", served.name,
                     result.trace_id, stage, kind)
        where = f" at stage '{stage}'" if stage else ""
        message = f"the pipeline failed{where} ({kind}); trace id {result.trace_id}"
        if result.timed_out() or _timed_out(result, stage):
            raise ApiError(504, f"the pipeline's deadline passed{where}; trace id "
                           f"{result.trace_id}", "timeout_error",
                           "deadline_exceeded", stage=stage, trace_id=result.trace_id)
        raise ApiError(502, message, "pipeline_error", kind, stage=stage,
                       trace_id=result.trace_id)
