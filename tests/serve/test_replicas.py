"""Three `engine serve` processes sharing one real `redis-server` behave as one server
(issue 9): the per-key rate and the guard's per-user limit hold exactly across them, an
answer cached through one is a hit through the others, a breaker opened by failures one saw
is open in all, and an idempotency key used on one replays on another.

Real parts only: each replica is its own `python -m engine serve` process on a free
127.0.0.1 port, the model is the chaos stub (serving from a thread of this process, so the
test can script its faults and count its requests), and nothing is shared but Redis. The
contrast at the end runs two replicas without `--redis` and sees each keep its own limits
and cache:
what the shared tests prove is the sharing, not the limit itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis_server import RedisServer
from serve_helpers import free_port

from engine.providers.stub import StubProvider
from engine.providers.stub_config import StubConfig, content_text
from engine.serve.keys import hash_key

KEYS = {  # who → (API key, its own `rate` or None): one user per test, so tests stay apart
    "metered": ("sk-metered-0123456789", "6/min"),
    "guarded": ("sk-guarded-0123456789", None),
    "cached": ("sk-cached-0123456789", None),
    "breaker": ("sk-breaker-0123456789", None),
    "idem": ("sk-idem-0123456789", None),
}
LIMIT = 6
"""The per-key rate of `metered` and the guard's per-user limit, per minute."""
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


def shared_pipeline(stub: StubProvider) -> str:
    """A guard with a per-user limit, then an exact cache on a `memory` resource (moved to
    Redis by `--redis`), then one model."""
    return textwrap.dedent(f"""\
        version: 1
        name: shared
        models:
          main: {{model: openai/main, api_base: "{stub.base_url}", api_key: stub, timeout: 2s}}
        defaults: {{timeout: 5s, retry: {{attempts: 1}}}}
        resources:
          responses: {{type: cache, backend: memory}}
        input:
          schema:
            type: object
            required: [question]
            properties:
              question: {{type: string, minLength: 1}}
              user_id: {{type: string}}
        stages:
          guard:
            type: guard
            with:
              text: "{{{{ input.question }}}}"
              user: "{{{{ input.user_id }}}}"
              rate_limit: {{per_user: {LIMIT}/min, per_ip: null}}
          lookup:
            type: cache
            needs: [guard]
            with: {{resource: responses, key: "{{{{ stages.guard.output.text }}}}"}}
          answer:
            type: generate
            needs: [lookup]
            with:
              models: [main]
              messages: [{{role: user, content: "{{{{ stages.guard.output.text }}}}"}}]
        output:
          reply: "{{{{ stages.answer.output.text }}}}"
        """)


def breaker_pipeline(stub: StubProvider) -> str:
    """`flaky` first, `main` as its fallback; a breaker that two failures in a row open."""
    models = "".join(f'\n  {tier}: {{model: openai/{tier}, api_base: "{stub.base_url}", '
                     f'api_key: stub, timeout: 2s}}' for tier in ("flaky", "main"))
    return textwrap.dedent("""\
        version: 1
        name: breaker
        models:{models}
        defaults:
          timeout: 5s
          retry: {{attempts: 1}}
          breaker: {{window: 2, min_calls: 2, failure_rate: 0.5, cooldown: 600s,
                     half_open_calls: 1}}
        input:
          schema: {{type: object, required: [question], properties: {{question: {{type: string}}}}}}
        stages:
          answer:
            type: generate
            with:
              models: [flaky, main]
              messages: [{{role: user, content: "{{{{ input.question }}}}"}}]
        output:
          reply: "{{{{ stages.answer.output.text }}}}"
        """).format(models=models)


def write_keys(path: Path) -> Path:
    lines = ["keys:"]
    for who, (key, rate) in KEYS.items():
        lines += [f"  - sha256: {hash_key(key)}", f"    user: {who}"]
        lines += [f"    rate: {rate}"] if rate else []
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Replica:
    """One `engine serve` process, its URL, its run store and its log."""

    process: subprocess.Popen[bytes]
    url: str
    store: Path
    log: Path

    def post(self, who: str, path: str, body: Any, **headers: str) -> httpx.Response:
        headers["Authorization"] = f"Bearer {KEYS[who][0]}"
        return httpx.post(self.url + path, json=body, headers=headers, timeout=10)

    def ask(self, who: str, question: str, pipeline: str = "shared", **headers: str
            ) -> httpx.Response:
        return self.post(who, f"/v1/pipelines/{pipeline}/runs", {"question": question},
                         **headers)

    def stored(self, trace_id: str) -> dict[str, Any]:
        """The run store's line for one run (written before the response is sent)."""
        for file in self.store.rglob("*.jsonl"):
            for line in file.read_text().splitlines():
                record = json.loads(line)
                if record.get("trace_id") == trace_id:
                    return dict(record)
        raise AssertionError(f"run {trace_id} is not in {self.store}")

    def stop(self) -> None:
        """This process only, by its handle: SIGTERM (uvicorn's graceful exit), then kill."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)


def _spawn(folder: Path, keys: Path, redis_url: str | None, index: int) -> Replica:
    port, store, log = free_port(), folder / f"runs-{index}", folder / f"replica-{index}.log"
    command = [sys.executable, "-m", "engine", "serve", str(folder / "pipelines"),
               "--host", "127.0.0.1", "--port", str(port), "--keys", str(keys),
               "--store", str(store)]
    command += ["--redis", redis_url] if redis_url else []
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return Replica(process, f"http://127.0.0.1:{port}", store, log)


def _wait_ready(replica: Replica, deadline: float) -> None:
    while time.monotonic() < deadline:
        if replica.process.poll() is not None:
            break
        try:
            if httpx.get(replica.url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    replica.stop()
    raise RuntimeError(f"replica {replica.url} not ready (exit {replica.process.returncode}):"
                       f"\n{replica.log.read_text()[-3000:]}")


@contextmanager
def replicas(folder: Path, count: int, redis_url: str | None) -> Iterator[list[Replica]]:
    """`count` replicas serving `folder/pipelines`, started together (their imports overlap),
    each stopped on the way out whatever happens."""
    keys = write_keys(folder / "keys.yaml")
    with ExitStack() as stack:
        started = []
        for index in range(count):
            replica = _spawn(folder, keys, redis_url, index)
            stack.callback(replica.stop)
            started.append(replica)
        deadline = time.monotonic() + START_TIMEOUT
        for replica in started:
            _wait_ready(replica, deadline)
        yield started


@pytest.fixture(scope="module")
def stub() -> Iterator[StubProvider]:
    with StubProvider(StubConfig(seed=1)) as provider:
        yield provider


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, stub: StubProvider) -> Path:
    folder = tmp_path_factory.mktemp("replicas")
    (folder / "pipelines").mkdir()
    (folder / "pipelines" / "shared.yaml").write_text(shared_pipeline(stub))
    (folder / "pipelines" / "breaker.yaml").write_text(breaker_pipeline(stub))
    return folder


@pytest.fixture(scope="module")
def shared(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """The replicas' Redis, emptied once before they start (the tests keep apart by user)."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="module")
def three(folder: Path, shared: redis.Redis, redis_server: RedisServer
          ) -> Iterator[list[Replica]]:
    with replicas(folder, 3, redis_server.url) as started:
        yield started


def asked(stub: StubProvider, model: str, question: str) -> int:
    """How many requests for `question` reached `model` at the stub."""
    return sum(1 for request in stub.requests_for(model)
               if question in (content_text(m) for m in request.messages))


def _event(replica: Replica, body: dict[str, Any], stage: str) -> dict[str, Any]:
    """One stage's trace event of the run that produced `body`, from the replica's store."""
    (event,) = [e for e in replica.stored(body["trace_id"])["trace"] if e["stage"] == stage]
    return dict(event)


def unique(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------- rate limits


def test_the_per_key_rate_holds_exactly_across_replicas(three: list[Replica]) -> None:
    responses = [three[i % 3].ask("metered", unique(f"rate {i}")) for i in range(2 * LIMIT)]
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == LIMIT, statuses
    refused = [r for r in responses if r.status_code == 429]
    assert len(refused) == LIMIT
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
    assert {r.json()["error"]["code"] for r in refused} == {"rate_limit_exceeded"}


def test_the_guards_per_user_limit_holds_exactly_across_replicas(three: list[Replica]
                                                                 ) -> None:
    bodies = [three[i % 3].ask("guarded", unique(f"guard {i}")).json()
              for i in range(2 * LIMIT)]
    answered = [b for b in bodies if b["finished_by"] is None]
    blocked = [b["output"] for b in bodies if b["finished_by"] == "guard"]
    assert len(answered) == LIMIT, [b["output"] for b in bodies]
    assert [o["reason"] for o in blocked] == ["rate_limited"] * LIMIT
    assert all(o["retry_after"] > 0 for o in blocked)


# ------------------------------------------------------------------------------- cache


def _await_cache_entry(shared: redis.Redis, question: str) -> None:
    """Entries are stored off the request's path: wait (bounded) for this question's."""
    deadline = time.monotonic() + 5
    while not any(question in (shared.hget(key, "m") or b"").decode()
                  for key in shared.scan_iter("engine:cache:e:*")):
        assert time.monotonic() < deadline, "the answer was never stored in Redis"
        time.sleep(0.02)


def test_an_answer_cached_through_one_replica_is_a_hit_through_the_others(
        three: list[Replica], stub: StubProvider, shared: redis.Redis) -> None:
    question = unique("what is shared")
    first = three[0].ask("cached", question).json()
    assert first["finished_by"] is None and asked(stub, "main", question) == 1
    _await_cache_entry(shared, question)
    for replica in three[1:]:
        again = replica.ask("cached", question).json()
        assert again["finished_by"] == "lookup"
        assert again["output"] == first["output"]
        assert _event(replica, again, "lookup")["notes"]["cache"] == "exact"
    assert asked(stub, "main", question) == 1


# ----------------------------------------------------------------------------- breaker


def _attempts(replica: Replica, body: dict[str, Any]) -> list[list[str]]:
    return list(_event(replica, body, "answer")["notes"]["llm"][0]["attempts"])


def test_a_breaker_opened_through_one_replica_is_open_in_the_others(
        three: list[Replica], stub: StubProvider) -> None:
    stub.plan("flaky", ["500", "500"])
    for _ in range(2):
        body = three[0].ask("breaker", unique("flaky"), "breaker").json()
        assert _attempts(three[0], body) == [["flaky", "server"], ["main", "ok"]]
    seen = len(stub.requests_for("flaky"))
    assert seen == 2
    for replica in three[1:]:
        body = replica.ask("breaker", unique("after"), "breaker").json()
        assert body["status"] == "ok"
        assert _attempts(replica, body) == [["flaky", "breaker_open"], ["main", "ok"]]
    assert len(stub.requests_for("flaky")) == seen


# ------------------------------------------------------------------------- idempotency


def test_an_idempotency_key_used_on_one_replica_replays_on_another(
        three: list[Replica], stub: StubProvider) -> None:
    question, key = unique("charge me once"), unique("key")
    first = three[0].ask("idem", question, **{"Idempotency-Key": key})
    assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
    replay = three[1].ask("idem", question, **{"Idempotency-Key": key})
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == first.json()  # the same run id: nothing ran again
    assert asked(stub, "main", question) == 1
    reused = three[2].ask("idem", unique("another body"), **{"Idempotency-Key": key})
    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"


# ---------------------------------------------------------------------------- contrast


def test_without_redis_each_replica_keeps_its_own_limits_and_cache(
        folder: Path, stub: StubProvider, tmp_path: Path) -> None:
    (tmp_path / "pipelines").symlink_to(folder / "pipelines")
    question = unique("not shared")
    with replicas(tmp_path, 2, None) as two:
        responses = [two[i % 2].ask("metered", unique(f"alone {i}")) for i in range(2 * LIMIT)]
        cached = [replica.ask("cached", question).json()["finished_by"] for replica in two]
    assert [r.status_code for r in responses] == [200] * (2 * LIMIT)
    assert all(r.json()["finished_by"] is None for r in responses)  # nor did the guard block
    assert cached == [None, None] and asked(stub, "main", question) == 2
