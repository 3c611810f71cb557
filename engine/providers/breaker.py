"""Circuit breakers per model, with resilience4j's count-based semantics.

CLOSED: calls pass; the outcomes of the last `window` calls are kept, and once at least
`min(min_calls, window)` are in, a failure rate ≥ `failure_rate` opens the breaker.
OPEN: every call is refused at once (no waiting) until `cooldown` has passed.
HALF_OPEN: exactly `half_open_calls` trial calls are admitted, later callers are refused as
if open; when every trial has reported, their failure rate ≥ `failure_rate` re-opens the
breaker, otherwise it closes with an empty window.

A trial that never reports (a hung call) must not wedge the breaker in HALF_OPEN: each permit
carries an expiry (`acquire(timeout)` with the call's timeout), and an expired trial counts as
a failure the next time the breaker is observed. Permits are stamped with the breaker's
`generation` (bumped on every transition), so a late report from an earlier state is ignored.

State is a plain `BreakerState` behind an async `BreakerStore`, so a Redis store
(engine/providers/breaker_redis.py) can share it between replicas; such a store must then be
used with a shared wall clock (`clock=time.time`), and its `locked(name)` makes each
load-modify-save atomic across processes (the per-breaker asyncio lock covers one process).
Transition listeners are called after the state is saved, in order, with
`(name, old, new, at)`; a listener that raises is logged and does not break the call.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol

from engine.spec.models import Breaker

__all__ = ["BreakerState", "BreakerStore", "CircuitBreaker", "MemoryBreakerStore",
           "Permit", "State", "TransitionListener"]

State = Literal["closed", "open", "half_open"]
TransitionListener = Callable[[str, State, State, float], None]
_log = logging.getLogger(__name__)
_UNLOCKED: AbstractAsyncContextManager[None] = nullcontext()


@dataclass
class BreakerState:
    """Everything a breaker knows; JSON-friendly (`asdict` / `BreakerState(**data)`)."""

    state: State = "closed"
    generation: int = 0
    outcomes: list[bool] = field(default_factory=list)  # True = success, oldest first
    opened_at: float | None = None
    trials: dict[str, float] = field(default_factory=dict)  # permit id -> expiry
    trial_successes: int = 0
    trial_failures: int = 0

    def copy(self) -> BreakerState:
        return BreakerState(**asdict(self))


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to make one call; hand it back to `record`. `trial` marks a HALF_OPEN probe."""

    name: str
    id: str
    generation: int
    trial: bool
    expires_at: float


class BreakerStore(Protocol):
    async def load(self, name: str) -> BreakerState | None: ...

    async def save(self, name: str, state: BreakerState) -> None: ...

    def locked(self, name: str) -> AbstractAsyncContextManager[None]:
        """Held around each load-modify-save; a no-op for a store only one process uses."""
        ...


class MemoryBreakerStore:
    """One process. Keeps each breaker's own state object: only that breaker uses it, under
    its lock, and `snapshot()` hands out copies. (Copying on every load and save cost ~30 µs
    per model call, a fifth of the direct path's overhead in bench/generate.py.)"""

    def __init__(self) -> None:
        self._data: dict[str, BreakerState] = {}

    async def load(self, name: str) -> BreakerState | None:
        return self._data.get(name)

    async def save(self, name: str, state: BreakerState) -> None:
        self._data[name] = state

    def locked(self, name: str) -> AbstractAsyncContextManager[None]:
        return _UNLOCKED


@dataclass
class _Step:
    """One load-modify-save of a breaker's state, and the transitions it made."""

    state: BreakerState
    now: float
    moves: list[tuple[State, State, float]] = field(default_factory=list)
    dirty: bool = False


class CircuitBreaker:
    """One model's breaker (contract in the module docstring). `acquire` returns None when the
    call is refused; `state` is the last state observed by this process."""

    def __init__(self, name: str, spec: Breaker, *, store: BreakerStore | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.spec = spec
        self._store = store if store is not None else MemoryBreakerStore()
        self._clock = clock
        self._lock = asyncio.Lock()
        self._listeners: list[TransitionListener] = []
        self._state: State = "closed"

    @property
    def state(self) -> State:
        return self._state

    def on_transition(self, listener: TransitionListener) -> Callable[[], None]:
        """Subscribe; returns a function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def acquire(self, timeout: float) -> Permit | None:
        async with self._step() as step:
            st, trial = step.state, step.state.state == "half_open"
            if st.state == "open" or (trial and self._issued(st) >= self.spec.half_open_calls):
                return None
            permit = Permit(self.name, secrets.token_hex(8), st.generation, trial,
                            step.now + timeout)
            if trial:
                st.trials[permit.id] = permit.expires_at
                step.dirty = True
            return permit

    async def record(self, permit: Permit, success: bool) -> None:
        async with self._step() as step:
            st = step.state
            if permit.generation != st.generation:
                return  # reported from an earlier state: stale
            if permit.trial and st.trials.pop(permit.id, None) is not None:
                self._count_trial(step, success, step.now)
            elif not permit.trial and st.state == "closed":
                self._count_closed(step, success)

    async def snapshot(self) -> BreakerState:
        """The current state, after applying expiries and the end of a cooldown."""
        async with self._step() as step:
            return step.state.copy()

    @asynccontextmanager
    async def _step(self) -> AsyncIterator[_Step]:
        """Load, apply what time alone changes (expired trials count as failures at their
        expiry; an elapsed cooldown moves OPEN to HALF_OPEN), let the caller act, save if
        anything changed, then tell the listeners, outside the lock."""
        async with self._lock, self._store.locked(self.name):
            step = _Step(await self._store.load(self.name) or BreakerState(), self._clock())
            self._end_cooldown(step)
            for pid, expiry in sorted(step.state.trials.items(), key=lambda item: item[1]):
                if expiry <= step.now and step.state.trials.pop(pid, None) is not None:
                    self._count_trial(step, False, expiry)
                    self._end_cooldown(step)
            try:
                yield step
            finally:
                self._state = step.state.state
                if step.dirty or step.moves:
                    await self._store.save(self.name, step.state)
        self._emit(step.moves)

    def _end_cooldown(self, step: _Step) -> None:
        st = step.state
        if st.state == "open" and step.now >= (st.opened_at or 0.0) + self.spec.cooldown:
            self._move(step, "half_open", (st.opened_at or 0.0) + self.spec.cooldown)

    @staticmethod
    def _issued(st: BreakerState) -> int:
        return len(st.trials) + st.trial_successes + st.trial_failures

    def _count_trial(self, step: _Step, success: bool, at: float) -> None:
        st, step.dirty = step.state, True
        if success:
            st.trial_successes += 1
        else:
            st.trial_failures += 1
        done = st.trial_successes + st.trial_failures
        if done >= self.spec.half_open_calls:
            failing = st.trial_failures / done >= self.spec.failure_rate
            self._move(step, "open" if failing else "closed", at)

    def _count_closed(self, step: _Step, success: bool) -> None:
        st, step.dirty = step.state, True
        st.outcomes.append(success)
        del st.outcomes[: max(0, len(st.outcomes) - self.spec.window)]
        calls = len(st.outcomes)
        judged = calls >= min(self.spec.min_calls, self.spec.window)
        if judged and st.outcomes.count(False) / calls >= self.spec.failure_rate:
            self._move(step, "open", step.now)

    def _move(self, step: _Step, new: State, at: float) -> None:
        st = step.state
        step.moves.append((st.state, new, at))
        st.state, st.generation = new, st.generation + 1
        st.outcomes, st.trials, st.trial_successes, st.trial_failures = [], {}, 0, 0
        st.opened_at = at if new == "open" else None
        self._state = new

    def _emit(self, moves: list[tuple[State, State, float]]) -> None:
        for old, new, at in moves:
            _notify(self._listeners, self.name, old, new, at)


def _notify(listeners: list[TransitionListener], name: str, old: State, new: State,
            at: float) -> None:
    for listener in list(listeners):
        try:
            listener(name, old, new, at)
        except Exception:
            _log.exception("breaker %s: transition listener failed", name)
