"""The cache stage in a pipeline: hits finish the run, only good answers are stored, and
nothing crosses a scope, a prompt change or a near miss."""

from __future__ import annotations

from pathlib import Path

from resources_pool import opened

from engine.compile import CompiledPipeline, compile_pipeline
from engine.registry import Registry
from engine.resources import Resources
from engine.runtime.context import RunHooks
from engine.spec import parse_spec


class Wall:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def resources(wall: Wall | None = None) -> Resources:
    return opened(wall=wall) if wall else opened()


def build(res: Resources, *, mode: str = "exact", backend: str = "memory",
          answer: str = "answer to {{ input.q }}", extra: str = "", base_dir: Path | None = None,
          max_entries: int = 1000) -> CompiledPipeline:
    text = f"""\
version: 1
name: cached
resources:
  responses: {{type: cache, backend: "{backend}", max_entries: {max_entries}}}
stages:
  lookup:
    type: cache
    with:
      resource: responses
      key: "{{{{ input.q }}}}"
      scope: ["{{{{ input.tenant }}}}"]
      mode: {mode}
      ttl: 1h
      control: "{{{{ input.get('cache_control') }}}}"
{extra}
  answer:
    type: template
    needs: [lookup]
    with: {{output: "{answer}"}}
output: "{{{{ stages.answer.output }}}}"
"""
    return compile_pipeline(parse_spec(text, base_dir=base_dir), Registry.from_entry_points(),
                            resources=res)


async def ask(pipeline: CompiledPipeline, q: str, tenant: str = "acme", **extra: str
              ) -> tuple[str, str | None, dict[str, object] | None]:
    result = await pipeline.run({"q": q, "tenant": tenant, **extra})
    await pipeline.resources.settle()  # stores happen in the background
    return result.output, result.finished_by, result.events[0].notes


async def test_an_exact_hit_after_a_miss_finishes_the_run() -> None:
    pipeline = build(resources())
    first = await ask(pipeline, "Where is my invoice?")
    assert first[0] == "answer to Where is my invoice?" and first[1] is None
    again = await ask(pipeline, "  where is my INVOICE? ")
    assert again[0] == "answer to Where is my invoice?"
    assert again[1] == "lookup"
    assert again[2] is not None and again[2]["cache"] == "exact"


async def test_tenants_never_see_each_other_s_answers() -> None:
    pipeline = build(resources())
    await ask(pipeline, "What is my plan?", tenant="acme")
    other = await ask(pipeline, "What is my plan?", tenant="globex")
    assert other[1] is None


async def test_a_changed_prompt_file_or_parameter_misses(tmp_path: Path) -> None:
    shared = resources()
    prompt = tmp_path / "prompt.j2"
    prompt.write_text("v1")
    extra = "      # names a file, so its content is part of the fingerprint\n"
    one = build(shared, base_dir=tmp_path, extra=extra + "  side:\n    type: template\n"
                "    with: {output: prompt.j2}\n")
    await ask(one, "hello")
    assert (await ask(one, "hello"))[1] == "lookup"
    prompt.write_text("v2")
    two = build(shared, base_dir=tmp_path, extra=extra + "  side:\n    type: template\n"
                "    with: {output: prompt.j2}\n")
    assert (await ask(two, "hello"))[1] is None
    three = build(shared, base_dir=tmp_path, answer="reworded {{ input.q }}")
    assert (await ask(three, "hello"))[1] is None


async def test_ttl_and_max_age_bound_what_is_served() -> None:
    wall = Wall()
    pipeline = build(resources(wall))
    await ask(pipeline, "q")
    wall.now += 1800
    assert (await ask(pipeline, "q", cache_control="max-age=600"))[1] is None  # (re-stored)
    assert (await ask(pipeline, "q"))[1] == "lookup"
    wall.now += 3601
    assert (await ask(pipeline, "q"))[1] is None  # the hour is over


async def test_no_cache_and_no_store() -> None:
    pipeline = build(resources())
    await ask(pipeline, "q", cache_control="no-store")
    assert (await ask(pipeline, "q"))[1] is None  # nothing was stored
    assert (await ask(pipeline, "q", cache_control="no-cache"))[1] is None
    assert (await ask(pipeline, "q"))[1] == "lookup"


async def test_the_caller_s_cache_control_wins_over_the_stage_s() -> None:
    pipeline = build(resources())
    await ask(pipeline, "q")
    fresh = await pipeline.run({"q": "q", "tenant": "acme"}, hooks=RunHooks(
        cache_control="no-cache"))
    assert fresh.finished_by is None  # the header asked for a fresh answer
    cached = await pipeline.run({"q": "q", "tenant": "acme", "cache_control": "no-cache"},
                                hooks=RunHooks(cache_control="max-age=60"))
    assert cached.finished_by == "lookup"


async def test_eviction_at_the_bound() -> None:
    pipeline = build(resources(), max_entries=2)
    for q in ("a", "b", "c"):
        await ask(pipeline, q)
    assert (await ask(pipeline, "a"))[1] is None  # the least recently used went first
    assert (await ask(pipeline, "c"))[1] == "lookup"


async def test_errors_and_degraded_answers_are_never_stored() -> None:
    pipeline = build(resources(), answer="{{ 1 // input.n }}")
    failed = await pipeline.run({"q": "boom", "tenant": "t", "n": 0})
    await pipeline.resources.settle()
    assert failed.status == "error"
    assert (await pipeline.run({"q": "boom", "tenant": "t", "n": 1})).finished_by is None


async def test_a_paraphrase_is_a_semantic_hit_and_a_near_miss_is_not() -> None:
    pipeline = build(resources(), mode="both")
    await ask(pipeline, "How do I reset my password?")
    hit = await ask(pipeline, "how can I reset my password")
    assert hit[1] == "lookup" and hit[2] is not None and hit[2]["cache"] == "semantic"
    assert hit[0] == "answer to How do I reset my password?"
    await ask(pipeline, "Please cancel order 1234")
    near = await ask(pipeline, "Please cancel order 1243")
    assert near[1] is None


async def test_two_replicas_share_the_cache_through_redis(redis_url: str) -> None:
    first = build(resources(), backend=redis_url)
    second = build(resources(), backend=redis_url)
    await ask(first, "shared question")
    assert (await ask(second, "shared question"))[1] == "lookup"


async def test_a_dead_redis_is_a_miss_not_a_failed_request() -> None:
    pipeline = build(resources(), backend="redis://127.0.0.1:1/0")
    output, finished_by, _ = await ask(pipeline, "still answered?")
    assert (output, finished_by) == ("answer to still answered?", None)
