"""What a stage sees of the record it is running for."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from engine.template import Condition, render_value

__all__ = ["RunHooks", "StageContext"]


class RunHooks:
    """What stages ask of the end of a record's run (one per record, shared by its stages):
    `finalizers` transform the final output (the guard restores pseudonyms); `on_success`
    callbacks see the output of a run that ended well (the cache stores it); `degraded`
    says why an answer, though delivered, must not be reused (a static fallback).

    The caller of a run may pass its own hooks to say how the request wants to be served
    (`engine serve` maps HTTP onto them): `cache_control` overrides the cache stages'
    `control` (a `Cache-Control` header), `on_token` receives the text of generate stages
    that stream, as it arrives."""

    __slots__ = ("cache_control", "degraded", "finalizers", "on_success", "on_token",
                 "trace_id")

    def __init__(self, trace_id: str = "", *, cache_control: str | None = None,
                 on_token: Callable[[str], None] | None = None) -> None:
        self.finalizers: list[Callable[[Any], Any]] = []
        self.on_success: list[Callable[[Any], None]] = []
        self.degraded: list[str] = []
        self.trace_id = trace_id
        """The run's trace id (32 hex), known from its start: model calls carry it."""
        self.cache_control = cache_control
        self.on_token = on_token


class StageContext:
    """Per stage and record: the render scope, the deadline, and a place to leave notes.

    `scope` holds `input` (the record), `stages` (name → {"output", "skipped"} for the stages
    that have finished) and `env`. It is shared by the record's stages and only ever grows.
    """

    __slots__ = ("_notes", "deadline", "hooks", "name", "scope")

    def __init__(self, name: str, scope: Mapping[str, Any], deadline: float,
                 hooks: RunHooks | None = None) -> None:
        self.name = name
        self.scope = scope
        self.deadline = deadline
        self._notes: dict[str, Any] | None = None
        self.hooks = hooks if hooks is not None else RunHooks()

    @property
    def input(self) -> Any:
        return self.scope["input"]

    @property
    def stages(self) -> Mapping[str, Mapping[str, Any]]:
        return self.scope["stages"]  # type: ignore[no-any-return]

    def render(self, value: Any) -> Any:
        """Render a template (or data holding templates) against this record."""
        return render_value(value, self.scope)

    def evaluate(self, condition: Condition) -> bool:
        return condition.evaluate(self.scope)

    def remaining(self) -> float:
        """Seconds left before the request deadline (the budget every call must fit in)."""
        return self.deadline - time.monotonic()

    def note(self, **fields: Any) -> None:
        """Attach facts to this stage's trace event (tier used, tokens, cache age...)."""
        if self._notes is None:
            self._notes = {}
        self._notes.update(fields)

    def traceparent(self) -> dict[str, str]:
        """The W3C `traceparent` header naming this run's root span (in the caller's trace
        when the record carries one), for a model call: a provider's spans then join the
        run's trace. Empty when the run has no trace id."""
        if not self.hooks.trace_id:
            return {}
        from engine.observe.traceparent import header

        return {"traceparent": header(self.hooks.trace_id, self.input)}

    def note_call(self, call: dict[str, Any]) -> None:
        """Record one model call (`TierOutcome.call_note()`) in this stage's `llm` list: a
        stage may call several times (re-asks), and every call counts in tokens and cost."""
        if self._notes is None:
            self._notes = {}
        self._notes.setdefault("llm", []).append(call)

    @property
    def notes(self) -> dict[str, Any] | None:
        return self._notes

    def finalize(self, transform: Callable[[Any], Any]) -> None:
        """Apply `transform` to the run's final output (after `output:` is rendered)."""
        self.hooks.finalizers.append(transform)

    def on_success(self, callback: Callable[[Any], None]) -> None:
        """Call `callback(output)` if the run ends well: status ok, nothing degraded. It gets
        the output before finalizers (pseudonyms still in place); it must not block."""
        self.hooks.on_success.append(callback)

    def degrade(self, reason: str) -> None:
        """Mark this run's answer as a stand-in (a static response) that must not be reused."""
        self.hooks.degraded.append(reason)
