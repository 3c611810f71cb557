"""Idempotency keys: single flight, TTL on a fake clock, failures not cached, bounded memory.
Also checks the `__all__` of every reliability module (sorted, and every name exists)."""

from __future__ import annotations

import asyncio
import importlib

import pytest

from engine.providers.idempotency import IdempotencyStore, MemoryIdempotency


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Factory:
    """Counts calls; each call waits for `gate` so callers can pile up while it is in flight."""

    def __init__(self, result: str = "answer") -> None:
        self.calls = 0
        self.result = result
        self.gate = asyncio.Event()
        self.fail_next = False

    async def __call__(self) -> str:
        self.calls += 1
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("provider down")
        return f"{self.result}-{self.calls}"


async def test_fifty_concurrent_callers_share_one_call() -> None:
    store, factory = MemoryIdempotency(60.0, clock=FakeClock()), Factory()
    tasks = [asyncio.create_task(store.run("k", factory)) for _ in range(50)]
    await asyncio.sleep(0)
    factory.gate.set()
    assert await asyncio.gather(*tasks) == ["answer-1"] * 50
    assert factory.calls == 1
    assert await store.run("k", factory) == "answer-1" and factory.calls == 1


async def test_different_keys_are_separate_calls() -> None:
    store, factory = MemoryIdempotency(60.0, clock=FakeClock()), Factory()
    factory.gate.set()
    results = await asyncio.gather(*(store.run(key, factory) for key in ("a", "b", "c", "a")))
    assert factory.calls == 3
    assert results[0] == results[3] and len(set(results)) == 3


async def test_expired_results_are_computed_again() -> None:
    clock = FakeClock()
    store, factory = MemoryIdempotency(10.0, clock=clock), Factory()
    factory.gate.set()
    assert await store.run("k", factory) == "answer-1"
    clock.now = 9.99
    assert await store.run("k", factory) == "answer-1"  # reading does not extend the TTL
    clock.now = 10.0
    assert await store.run("k", factory) == "answer-2"
    assert factory.calls == 2


async def test_a_failure_is_shared_but_not_cached() -> None:
    store, factory = MemoryIdempotency(60.0, clock=FakeClock()), Factory()
    factory.fail_next = True
    tasks = [asyncio.create_task(store.run("k", factory)) for _ in range(3)]
    await asyncio.sleep(0)
    factory.gate.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes) and factory.calls == 1
    assert await store.run("k", factory) == "answer-2"
    assert factory.calls == 2 and len(store) == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_call() -> None:
    store, factory = MemoryIdempotency(60.0, clock=FakeClock()), Factory()
    first = asyncio.create_task(store.run("k", factory))
    second = asyncio.create_task(store.run("k", factory))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    factory.gate.set()
    assert await second == "answer-1"
    assert first.cancelled() and factory.calls == 1


async def test_memory_is_bounded_least_recently_used_first() -> None:
    store, factory = MemoryIdempotency(60.0, max_entries=3, clock=FakeClock()), Factory()
    factory.gate.set()
    for key in ("a", "b", "c"):
        await store.run(key, factory)
    await store.run("a", factory)  # touch a: b is now the least recently used
    await store.run("d", factory)
    assert len(store) == 3 and factory.calls == 4
    await store.run("a", factory)
    assert factory.calls == 4
    await store.run("b", factory)
    assert factory.calls == 5


async def test_expired_entries_are_evicted() -> None:
    clock = FakeClock()
    store, factory = MemoryIdempotency(5.0, clock=clock), Factory()
    factory.gate.set()
    for key in ("a", "b", "c"):
        await store.run(key, factory)
    clock.now = 6.0
    await store.run("d", factory)
    assert len(store) == 1


def test_memory_store_meets_the_protocol() -> None:
    store: IdempotencyStore = MemoryIdempotency(1.0)
    assert store is not None
    with pytest.raises(ValueError):
        MemoryIdempotency(0)


@pytest.mark.parametrize("module", ["errors", "retry", "breaker", "idempotency"])
def test_public_names_sorted_and_present(module: str) -> None:
    loaded = importlib.import_module(f"engine.providers.{module}")
    assert loaded.__all__ == sorted(loaded.__all__)
    assert all(hasattr(loaded, name) for name in loaded.__all__)
