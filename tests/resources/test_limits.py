"""Rate limits: token-bucket arithmetic on a fake clock, and the same contract on a real
redis-server (started by tests/redis_server.py), including two processes sharing one budget
and Redis's clock being the only one that counts."""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis

from engine.resources.limits import (
    Decision,
    Limit,
    MemoryRateLimiter,
    Rate,
    RateLimiter,
    RateLimitStoreError,
    RateStr,
    RedisRateLimiter,
    parse_rate,
)

PER_USER = parse_rate("20/min")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- parse_rate


@pytest.mark.parametrize(
    ("text", "count", "per"),
    [
        ("20/min", 20, 60.0),
        ("20/m", 20, 60.0),
        ("20/minute", 20, 60.0),
        ("100 / minutes", 100, 60.0),
        ("5/sec", 5, 1.0),
        ("5/s", 5, 1.0),
        ("5/second", 5, 1.0),
        ("5/1s", 5, 1.0),
        ("20/2s", 20, 2.0),
        ("1000/hour", 1000, 3600.0),
        ("1000/h", 1000, 3600.0),
        ("50/day", 50, 86400.0),
        ("50/d", 50, 86400.0),
        ("3/15min", 3, 900.0),
        ("7/MIN", 7, 60.0),
    ],
)
def test_parse_rate_accepts(text: str, count: int, per: float) -> None:
    assert parse_rate(text) == Rate(count, per)


@pytest.mark.parametrize(
    "text", ["", "20", "20/", "/min", "0/min", "-1/min", "20/week", "20 per min", "2.5/min",
             "20/0s", "twenty/min", 20, None],
)
def test_parse_rate_rejects_with_a_clear_message(text: object) -> None:
    with pytest.raises(ValueError, match="expected a rate such as 20/min"):
        parse_rate(text)


def test_rate_reads_back_and_works_in_pydantic() -> None:
    class Config(BaseModel):
        per_user: RateStr = Rate(20, 60.0)

    assert Config.model_validate({"per_user": "100/hour"}).per_user == Rate(100, 3600.0)
    assert Config().model_dump() == {"per_user": "20/min"}
    assert str(parse_rate("5/2s")) == "5/2s"
    assert parse_rate("20/min").interval == 3.0
    with pytest.raises(ValidationError, match="expected a rate such as 20/min"):
        Config.model_validate({"per_user": "lots"})


# ---------------------------------------------------------------- memory, fake clock


async def burst(limiter: RateLimiter, key: str, rate: Rate | str, n: int) -> list[Decision]:
    return [await limiter.acquire(key, rate) for _ in range(n)]


async def test_burst_of_21_lets_20_through_then_one_more_after_3_seconds() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock=clock)
    decisions = await burst(limiter, "user:a", "20/min", 21)
    assert [d.allowed for d in decisions] == [True] * 20 + [False]
    assert [d.remaining for d in decisions[:3]] == [19, 18, 17]
    assert decisions[19].remaining == 0
    last = decisions[20]
    assert (last.allowed, last.remaining, last.limit) == (False, 0, "user:a")
    assert last.retry_after == pytest.approx(3.0)

    clock.now += 2.9
    assert not (await limiter.acquire("user:a", PER_USER)).allowed
    clock.now += 0.1  # 3 s after the burst: exactly one token is back
    assert (await limiter.acquire("user:a", PER_USER)).allowed
    again = await limiter.acquire("user:a", PER_USER)
    assert not again.allowed
    assert again.retry_after == pytest.approx(3.0)

    clock.now += 60  # a full period idle: the whole burst again, no more
    assert sum(d.allowed for d in await burst(limiter, "user:a", PER_USER, 25)) == 20


async def test_users_do_not_affect_each_other() -> None:
    limiter = MemoryRateLimiter(clock=FakeClock())
    assert sum(d.allowed for d in await burst(limiter, "user:a", PER_USER, 30)) == 20
    assert sum(d.allowed for d in await burst(limiter, "user:b", PER_USER, 30)) == 20


async def test_cost_and_retry_after_for_several_tokens() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock=clock)
    assert await limiter.acquire("k", "10/10s", cost=8) == Decision(True, 2, 0.0)
    refused = await limiter.acquire("k", "10/10s", cost=5)
    assert (refused.allowed, refused.remaining, refused.limit) == (False, 2, "k")
    assert refused.retry_after == pytest.approx(3.0)  # 3 tokens short at 1 per s
    clock.now += 3
    assert (await limiter.acquire("k", "10/10s", cost=5)).allowed
    with pytest.raises(ValueError, match="between 1 and the bucket size"):
        await limiter.acquire("k", "10/10s", cost=11)


async def test_idle_full_buckets_are_evicted() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock=clock, min_sweep=8)
    for i in range(8):
        await limiter.acquire(f"user:{i}", "2/sec")
    clock.now += 1.0  # all of them are full again
    await limiter.acquire("user:new", "2/sec")
    assert len(limiter) == 1
    for i in range(20):  # busy buckets are kept: forgetting them would hand out free tokens
        await limiter.acquire(f"busy:{i}", "2/sec")
    assert len(limiter) == 21


# ---------------------------------------------------------------- both stores


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        yield MemoryRateLimiter(clock=FakeClock())
        return
    url = request.getfixturevalue("redis_url")
    redis_limiter = RedisRateLimiter(url)
    yield redis_limiter
    await redis_limiter.aclose()


def user_and_ip(user: str, ip: str) -> list[Limit]:
    return [Limit(f"user:{user}", parse_rate("20/hour"), name="per_user"),
            Limit(f"ip:{ip}", parse_rate("2/hour"), name="per_ip")]


async def test_multi_bucket_rejects_on_empty_ip_without_spending_the_user(
    limiter: RateLimiter,
) -> None:
    assert (await limiter.acquire_all(user_and_ip("u", "1.2.3.4"))).remaining == 1
    assert (await limiter.acquire_all(user_and_ip("u", "1.2.3.4"))).allowed
    rejected = await limiter.acquire_all(user_and_ip("u", "1.2.3.4"))
    assert (rejected.allowed, rejected.limit) == (False, "per_ip")
    assert rejected.retry_after == pytest.approx(1800.0, abs=0.01)  # 2/hour: one per 30 min
    # the user spent 2 tokens, not 3: the rejected request took nothing from it
    alone = await limiter.acquire("user:u", "20/hour")
    assert (alone.allowed, alone.remaining) == (True, 17)


async def test_multi_bucket_rejects_on_empty_user_without_spending_the_ip(
    limiter: RateLimiter,
) -> None:
    for _ in range(20):
        await limiter.acquire("user:heavy", "20/hour")
    rejected = await limiter.acquire_all(user_and_ip("heavy", "5.6.7.8"))
    assert (rejected.allowed, rejected.limit) == (False, "per_user")
    assert rejected.retry_after == pytest.approx(180.0, abs=0.01)
    assert (await limiter.acquire_all(user_and_ip("light", "5.6.7.8"))).remaining == 1


async def test_both_empty_reports_the_longer_wait(limiter: RateLimiter) -> None:
    limits = [Limit("a", parse_rate("1/min"), name="short"),
              Limit("b", parse_rate("1/hour"), name="long")]
    assert (await limiter.acquire_all(limits)).allowed
    rejected = await limiter.acquire_all(limits)
    assert rejected.limit == "long"
    assert rejected.retry_after == pytest.approx(3600, abs=0.01)


async def test_a_concurrent_burst_lets_exactly_the_limit_through(limiter: RateLimiter) -> None:
    decisions = await asyncio.gather(*(limiter.acquire("user:c", "20/hour") for _ in range(50)))
    assert sum(d.allowed for d in decisions) == 20
    assert {d.limit for d in decisions if not d.allowed} == {"user:c"}


async def test_bad_calls_are_refused(limiter: RateLimiter) -> None:
    with pytest.raises(ValueError, match="at least one"):
        await limiter.acquire_all([])
    with pytest.raises(ValueError, match="its own key"):
        await limiter.acquire_all([Limit("x", PER_USER), Limit("x", PER_USER)])


# ---------------------------------------------------------------- redis only


async def test_redis_refills_on_its_own_schedule(redis_url: str) -> None:
    limiter = RedisRateLimiter(redis_url)
    try:
        decisions = await burst(limiter, "user:r", "5/2s", 6)  # one token per 0.4 s
        assert [d.allowed for d in decisions] == [True] * 5 + [False]
        wait = decisions[5].retry_after
        assert 0.3 < wait <= 0.4
        await asyncio.sleep(wait + 0.05)
        assert (await limiter.acquire("user:r", "5/2s")).allowed
        assert not (await limiter.acquire("user:r", "5/2s")).allowed
    finally:
        await limiter.aclose()


async def test_redis_keys_expire_when_the_bucket_is_full_again(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    limiter = RedisRateLimiter(client, prefix="rl:")
    try:
        await limiter.acquire("one", "5/2s")
        assert 300 < await client.pttl("rl:one") <= 400
        await burst(limiter, "five", "5/2s", 5)
        assert 1900 < await client.pttl("rl:five") <= 2000
        await limiter.acquire("five", "5/2s")  # rejected: no write, the expiry is unchanged
        assert await client.pttl("rl:five") <= 2000
    finally:
        await limiter.aclose()  # not owned: the client stays open
        assert await client.ping()
        await client.aclose()


async def test_redis_survives_a_script_flush(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    limiter = RedisRateLimiter(client)
    try:
        assert (await limiter.acquire("k", "3/hour")).remaining == 2
        await client.script_flush()  # as after a Redis restart: EVALSHA says NOSCRIPT
        assert (await limiter.acquire("k", "3/hour")).remaining == 1
        assert (await limiter.acquire("k", "3/hour")).remaining == 0
    finally:
        await client.aclose()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port nobody listens on: bound, so nothing else takes it, but never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


async def test_redis_errors_surface_as_store_errors(closed_port: int) -> None:
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{closed_port}/0", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(RateLimitStoreError, match="rate-limit store unavailable"):
        await limiter.acquire("k", PER_USER)
    assert time.monotonic() - started < 2  # fails fast: it sits in the request path
    await limiter.aclose()


WORKER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    url, n, offset, together = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    real_time, real_monotonic = time.time, time.monotonic
    time.time = lambda: real_time() + offset          # this process's clock is wildly off
    time.monotonic = lambda: real_monotonic() + offset
    from redis.asyncio import Redis
    from engine.resources.limits import RedisRateLimiter

    async def main():
        client = Redis.from_url(url)
        limiter = RedisRateLimiter(client)
        if together == "1":
            await client.incr("ready")
            await client.blpop(["go"], timeout=10)   # both processes start together
        decisions = await asyncio.gather(*(limiter.acquire("shared", "20/hour")
                                           for _ in range(n)))
        print(json.dumps(sum(d.allowed for d in decisions)))
        await client.aclose()

    asyncio.run(main())
    """
)
YEAR = 365 * 86400.0


def spawn(url: str, n: int, offset: float, together: bool) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, url, str(n), str(offset), "1" if together else "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


async def allowed_by(worker: subprocess.Popen[str]) -> int:
    try:
        out, err = await asyncio.to_thread(worker.communicate, timeout=20)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, err
    return int(json.loads(out))


async def test_two_processes_share_the_budget_exactly(redis_url: str) -> None:
    """Two workers fire 30 requests each at the same moment: the script is atomic, so
    exactly the limit passes between them."""
    workers = [spawn(redis_url, 30, offset, together=True) for offset in (YEAR, -YEAR)]
    client = Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 10
        while int(await client.get("ready") or 0) < 2:
            assert time.monotonic() < deadline, "workers did not start"
            await asyncio.sleep(0.02)
        await client.rpush("go", 1, 1)
        assert sum([await allowed_by(w) for w in workers]) == 20
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
        await client.aclose()


@pytest.mark.parametrize("offsets", [(YEAR, -YEAR), (-YEAR, YEAR)])
async def test_only_redis_clock_counts(redis_url: str, offsets: tuple[float, float]) -> None:
    """One worker takes 10 tokens, then another whose clock is two years away asks for 30.
    On the clients' clocks the second would see a bucket two years overdrawn (0 allowed) or
    long since full (20 allowed); on Redis's clock it gets exactly the 10 that are left."""
    first, second = offsets
    assert await allowed_by(spawn(redis_url, 10, first, together=False)) == 10
    assert await allowed_by(spawn(redis_url, 30, second, together=False)) == 10


def test_redis_limiter_has_no_client_clock() -> None:
    """Redis's TIME is the only clock: there is nothing a client could set wrong."""
    assert "clock" not in inspect.signature(RedisRateLimiter).parameters
    assert "clock" in inspect.signature(MemoryRateLimiter).parameters
