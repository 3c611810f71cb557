"""Run one record through a compiled pipeline: a ready set over the DAG, on asyncio.

A stage starts as soon as all its `needs` are settled. When exactly one stage is ready and
nothing else runs, it is awaited inline (no task): linear chains, the common case, then cost
no scheduling at all. Otherwise every ready stage becomes a task and the loop waits for the
first to settle.

Settling a stage releases its dependents. A dependent is *skipped* when a route did not
select it, when its `if:` is false, or when all its needs were skipped; skips propagate the
same way. A `Finish` ends the run, cancelling whatever still runs. A failure follows the
stage's `on_error`: `fail` ends the run with an error, `continue` settles the stage with no
output, and a stage name runs that handler in its place. The request deadline bounds the
whole record; a stage's own `timeout` bounds that stage.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from engine.errors import StageError, StageTimeout
from engine.flags.functions import FLAGS
from engine.results import Outcome, RunResult, StageEvent
from engine.runtime.context import RunHooks, StageContext
from engine.stages.base import Branch, Finish, Handoff
from engine.template import render_value

_TRACE_PREFIX = f"{random.getrandbits(64):016x}"
_TRACE_OFFSET = random.getrandbits(64)
_TRACE_COUNTER = itertools.count(1)
_GOLDEN = 0x9E3779B97F4A7C15
_LOW64 = (1 << 64) - 1


def _trace_id() -> str:
    """A record's trace id: this process's random 64 bits, then a golden-ratio Weyl sequence
    over a counter — a bijection, so unique within the process, and spread evenly over the
    low 64 bits, which is what ratio samplers read (W3C asks for randomness there). Cheaper
    per record than 128 fresh random bits; the executor's overhead is counted in µs."""
    return f"{_TRACE_PREFIX}{(next(_TRACE_COUNTER) * _GOLDEN + _TRACE_OFFSET) & _LOW64:016x}"

if TYPE_CHECKING:
    from engine.compile.pipeline import CompiledPipeline, CompiledStage

__all__ = ["run_record"]

_SKIPPED = object()
"""What `step` returns for a stage that did not run (or whose failure ended the run)."""
_SKIPPED_STATE: dict[str, Any] = {"output": None, "skipped": True}


@dataclass(frozen=True, slots=True)
class _Continued:
    """A failed stage whose `on_error: continue` lets the run go on without its output."""

    detail: str


async def run_record(
    pipeline: CompiledPipeline, record: Any, index: int = 0, record_id: Any = None,
    hooks: RunHooks | None = None,
) -> RunResult:
    """Run one record; the request deadline cancels it, and it still yields one result.
    `hooks` carry the caller's wishes for this run (see `RunHooks`); a fresh set otherwise.

    The deadline is a bare `call_at` timer rather than `asyncio.timeout`: it is armed and
    disarmed once per record, and the context manager costs several times as much.
    """
    run = _RecordRun(pipeline, record, hooks or RunHooks())
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    timer = loop.call_at(loop.time() + pipeline.deadline, run.expire, task)
    try:
        await run.drive()
    except asyncio.CancelledError:
        if not run.expired or task is None:
            raise
        task.uncancel()
        run.fail_deadline()
    finally:
        timer.cancel()
    return run.result(index, record_id)


class _RecordRun:
    """The state of one record's run. Lives for one `run_record` call."""

    def __init__(self, pipeline: CompiledPipeline, record: Any, hooks: RunHooks) -> None:
        self.pipeline = pipeline
        self.stages = pipeline.stages
        self.started = time.perf_counter()
        self.started_at = time.time()
        self.deadline = time.monotonic() + pipeline.deadline
        self.states: dict[str, dict[str, Any]] = {}
        self.scope = {"input": record, "stages": self.states, "env": pipeline.env}
        if pipeline.flags is not None:
            self.scope[FLAGS] = pipeline.flags.bind(record)
        self.events: list[StageEvent] = []
        self.waiting = dict(pipeline.need_counts)
        self.deselected: set[str] = set()
        self.skips = 0
        """How many stages were skipped so far: while 0, no skip check is needed."""
        self.ready = list(pipeline.roots)
        self.running: dict[asyncio.Task[Any], str] = {}
        self.active: dict[str, float] = {}
        """Stages whose `run` is under way (inline, in a task, or a handler) → start time."""
        self.interrupted: list[str] = []
        self.finish: Finish | None = None
        self.finished_by: str | None = None
        self.error: dict[str, Any] | None = None
        self.output: Any = None
        self.expired = False
        self.hooks = hooks
        hooks.trace_id = hooks.trace_id or _trace_id()

    def expire(self, task: asyncio.Task[Any] | None) -> None:
        """The request deadline passed: cancel the record's task (see `run_record`)."""
        self.expired = True
        if task is not None:
            task.cancel()

    async def drive(self) -> None:
        if self.pipeline.chain:
            return await self.drive_chain(self.pipeline.chain)
        ready, running, stages = self.ready, self.running, self.stages
        try:
            while self.finish is None and self.error is None:
                if not running and len(ready) == 1:
                    name = ready.pop()
                    self.settle(name, await self.step(stages[name]))
                    continue
                for name in ready:
                    running[asyncio.create_task(self.step(stages[name]))] = name
                ready.clear()
                if not running:
                    return
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    self.settle(running.pop(task), task.result())
        finally:
            if running or self.active:
                await self.cancel_running()

    async def drive_chain(self, chain: tuple[CompiledStage, ...]) -> None:
        """A linear chain needs no ready set: each stage in turn, skips flow straight down."""
        try:
            for stage in chain:
                if self.skips:
                    self.skip(stage.name, "all needs skipped")
                    continue
                self.record(stage.name, await self.step(stage))
                if self.finish is not None or self.error is not None:
                    return
        finally:
            if self.active:
                await self.cancel_running()

    async def cancel_running(self) -> None:
        """Cancel the tasks still running; every stage cut short gets a `cancelled` event.

        `active`, not `running`, names them: a stage awaited inline has no task, and a handler
        runs inside the task of the stage it stands in for.
        """
        for task in self.running:
            task.cancel()
        if self.running:
            await asyncio.gather(*self.running, return_exceptions=True)
        self.running.clear()
        now = self.now()
        for name, start in self.active.items():
            self.events.append(StageEvent(name, start, now - start, "cancelled"))
        self.interrupted = list(self.active)
        self.active.clear()

    def now(self) -> float:
        return time.perf_counter() - self.started

    async def step(self, stage: CompiledStage) -> Any:
        """Run one stage; returns its result, `_SKIPPED`, or a handled failure's result."""
        deadline = self.deadline
        if stage.timeout is not None:
            deadline = min(deadline, time.monotonic() + stage.timeout)
        ctx = StageContext(stage.name, self.scope, deadline, self.hooks)
        start = time.perf_counter() - self.started
        if stage.condition is not None:
            try:
                wanted = stage.condition.evaluate(self.scope)
            except Exception as exc:  # a broken `if:` is this stage's failure, not a crash
                error = StageError(stage.name, f"evaluating `if:` failed: "
                                               f"{type(exc).__name__}: {exc}")
                return await self.failed(stage, ctx, start, error)
            if not wanted:
                self.events.append(StageEvent(stage.name, start, 0.0, "skipped", "if: false"))
                return _SKIPPED
        self.active[stage.name] = start
        try:
            if stage.timeout is None:
                result = await stage.stage.run(ctx)
            else:
                result = await self._timed(stage, ctx)
        except Exception as exc:
            self.active.pop(stage.name, None)
            return await self.failed(stage, ctx, start, exc)
        self.active.pop(stage.name, None)  # pop: one handler may stand in for two stages
        kind = result.__class__
        outcome: Outcome = "finished" if kind is Finish else "handoff" if kind is Handoff else "ok"
        end = time.perf_counter() - self.started
        detail = f"to {result.to}" if kind is Handoff else None
        self.events.append(StageEvent(stage.name, start, end - start, outcome, detail, ctx.notes))
        if kind is Handoff:
            self.states[stage.name] = {"output": result.output, "skipped": False}
            return await self.stand_in(result.to)
        return result

    @staticmethod
    async def _timed(stage: CompiledStage, ctx: StageContext) -> Any:
        assert stage.timeout is not None
        scope = asyncio.timeout(stage.timeout)
        try:
            async with scope:
                return await stage.stage.run(ctx)
        except TimeoutError:
            if scope.expired():
                raise StageTimeout(
                    stage.name, f"stage '{stage.name}' exceeded its {stage.timeout:g}s timeout"
                ) from None
            raise

    async def failed(self, stage: CompiledStage, ctx: StageContext, start: float,
                     exc: Exception) -> Any:
        """Apply `on_error` to a stage failure; a handler's result stands in for the stage."""
        outcome: Outcome = "timeout" if isinstance(exc, StageTimeout | TimeoutError) else "error"
        detail = f"{type(exc).__name__}: {exc}"
        if stage.on_error not in ("fail", "continue"):
            outcome = "recovered"
        self.events.append(StageEvent(stage.name, start, self.now() - start, outcome, detail,
                                      ctx.notes))
        if stage.on_error == "fail":
            self.error = {"stage": stage.name, "type": type(exc).__name__, "message": str(exc)}
            return _SKIPPED
        if stage.on_error == "continue":
            return _Continued(detail)
        return await self.stand_in(stage.on_error)

    async def stand_in(self, name: str) -> Any:
        """Run handler `name` in another stage's place; its result becomes that stage's."""
        result = await self.step(self.stages[name])
        if isinstance(result, Finish) and self.finish is None and self.error is None:
            # The handler ended the run, so it is the one `finished_by` names.
            self.finish, self.finished_by = result, name
        return result

    def settle(self, name: str, result: Any) -> None:
        """Record a stage's result and release its dependents."""
        if self.finish is not None or self.error is not None:
            return
        if self.record(name, result):
            self.release(name)

    def record(self, name: str, result: Any) -> bool:
        """Store a stage's result in the scope; False when it finished the run."""
        kind = result.__class__
        if kind is Finish:
            self.states[name] = {"output": result.output, "skipped": False}
            self.finish, self.finished_by = result, name
            return False
        if kind is Branch:
            self.states[name] = {"output": result.output, "skipped": False}
            self.deselected.update(self.stages[name].branches - result.to)
        elif result is _SKIPPED:
            self.states[name] = _SKIPPED_STATE
            self.skips += 1
        elif kind is _Continued:
            self.states[name] = {"output": None, "skipped": False, "error": result.detail}
            self.deselected.update(self.stages[name].branches)  # it selected nothing
        else:
            self.states[name] = {"output": result, "skipped": False}
        return True

    def release(self, name: str) -> None:
        waiting = self.waiting
        for dependent in self.stages[name].dependents:
            waiting[dependent] -= 1
            if waiting[dependent]:
                continue
            reason = self.skip_reason(dependent) if self.skips or self.deselected else None
            if reason is None:
                self.ready.append(dependent)
            else:
                self.skip(dependent, reason)
                self.release(dependent)

    def skip(self, name: str, reason: str) -> None:
        """Settle a stage that will not run: its event, and `skipped` in the scope."""
        self.events.append(StageEvent(name, self.now(), 0.0, "skipped", reason))
        self.states[name] = _SKIPPED_STATE
        self.skips += 1

    def skip_reason(self, name: str) -> str | None:
        if name in self.deselected:
            return "not selected by the route"
        for need in self.stages[name].needs:
            if not self.states[need]["skipped"]:
                return None
        return "all needs skipped"

    def fail_deadline(self) -> None:
        running = ", ".join(self.interrupted) or "none"
        self.error = {
            "stage": None,
            "type": "DeadlineExceeded",
            "message": f"the request deadline of {self.pipeline.deadline:g}s passed "
                       f"(stages still running: {running})",
        }

    def result(self, index: int, record_id: Any) -> RunResult:
        duration = time.perf_counter() - self.started
        hooks = self.hooks
        if self.error is None and self.finish is None:
            self.render_output()
            if self.error is None and not hooks.degraded:
                for callback in hooks.on_success:
                    callback(self.output)
        if hooks.finalizers and self.error is None:
            self.apply_finalizers()
        if self.error is not None:
            return RunResult(index, record_id, "error", None, self.error, None, False,
                             duration, self.events, hooks.degraded, self.started_at,
                             hooks.trace_id)
        if self.finish is not None:
            return RunResult(index, record_id, "finished", self.finish.output, None,
                             self.finished_by, self.finish.handed_off, duration, self.events,
                             hooks.degraded, self.started_at, hooks.trace_id)
        return RunResult(index, record_id, "ok", self.output, None, None, False, duration,
                         self.events, hooks.degraded, self.started_at, hooks.trace_id)

    def apply_finalizers(self) -> None:
        try:
            for finalize in self.hooks.finalizers:
                if self.finish is not None:
                    self.finish = replace(self.finish, output=finalize(self.finish.output))
                else:
                    self.output = finalize(self.output)
        except Exception as exc:
            self.error = {"stage": None, "type": type(exc).__name__,
                          "message": f"finalizing the output failed: {exc}"}

    def render_output(self) -> None:
        pipeline = self.pipeline
        try:
            if pipeline.output is not None:
                self.output = render_value(pipeline.output, self.scope)
                return
            ran = {n: self.states[n]["output"] for n in pipeline.sinks
                   if not self.states.get(n, _SKIPPED_STATE)["skipped"]}
            self.output = next(iter(ran.values())) if len(ran) == 1 else ran
        except Exception as exc:
            self.error = {"stage": None, "type": type(exc).__name__,
                          "message": f"rendering `output` failed: {exc}"}
