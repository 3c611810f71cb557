"""What does `flag('name')` cost in a condition? Prints figures, asserts nothing.

Each figure is a median of interleaved rounds against a baseline measured in the same process,
a condition that reads the input (`input.plan == 'pro'`):

(a) the first `flag()` of a record: the evaluation context is rendered (targeting key and one
    attribute) and the OpenFeature client asks engine's file provider (one rule to try);
(b) a second `flag()` of the same record: served from the record's memo;
(c) a whole record through a 2-stage pipeline whose `if:` reads a flag vs the same pipeline
    with the baseline condition.

Run: `.venv/bin/python bench/flags.py`.
"""

import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.compile import CompiledPipeline, compile_pipeline
from engine.flags.functions import FLAGS
from engine.registry import Registry
from engine.spec import parse_spec
from engine.template import Condition

ROUNDS, N = 15, 2000
FLAGS_FILE = "flags: {summarize: {rules: [{tenants: [acme], variant: on}, {rollout: {on: 50}}]}}\n"
PIPELINE = """\
version: 1
name: bench
flags: {path: flags.yaml, targeting_key: "{{ input.user }}",
        attributes: {tenant: "{{ input.tenant }}"}}
stages:
  a: {type: template, if: "CONDITION", with: {output: 1}}
  b: {type: template, needs: [a], with: {output: 2}}
output: "{{ stages.b.output }}"
"""


def compiled(folder: Path, condition: str) -> CompiledPipeline:
    text = PIPELINE.replace("CONDITION", condition)
    loaded = parse_spec(text, str(folder / "p.yaml"), env={}, base_dir=folder)
    return compile_pipeline(loaded, Registry.from_entry_points(builtin_only=True), env={})


def per_call(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    for _ in range(N):
        fn()
    return (time.perf_counter() - start) / N * 1e6


def median_pair(a: Callable[[], float], b: Callable[[], float]) -> tuple[float, float]:
    pairs = [(a(), b()) for _ in range(ROUNDS)]
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "flags.yaml").write_text(FLAGS_FILE)
        flagged = compiled(folder, "flag('summarize')")
        plain = compiled(folder, "input.plan == 'pro'")
        assert flagged.flags is not None
        record = {"user": "u1", "tenant": "globex", "plan": "pro"}
        baseline = Condition("input.plan == 'pro'")
        with_flag = Condition("flag('summarize')")
        scope: dict[str, Any] = {"input": record, "stages": {}, "env": {}}

        def first() -> None:
            scope[FLAGS] = flagged.flags.bind(record)  # type: ignore[union-attr]
            with_flag.evaluate(scope)

        def again() -> None:
            with_flag.evaluate(scope)

        def base() -> None:
            baseline.evaluate(scope)

        (a, b0) = median_pair(lambda: per_call(first), lambda: per_call(base))
        (b, b1) = median_pair(lambda: per_call(again), lambda: per_call(base))

        def run(pipeline: CompiledPipeline) -> float:
            async def go() -> float:
                start = time.perf_counter()
                for _ in range(N):
                    await pipeline.run(record)
                return (time.perf_counter() - start) / N * 1e6
            return asyncio.run(go())

        (c, c0) = median_pair(lambda: run(flagged), lambda: run(plain))
    print(f"(a) first flag() of a record   {a:6.2f} µs   baseline condition {b0:5.2f} µs"
          f"   extra {a - b0:5.2f} µs")
    print(f"(b) same flag again (memo)     {b:6.2f} µs   baseline condition {b1:5.2f} µs"
          f"   extra {b - b1:5.2f} µs")
    print(f"(c) a record, flag in `if:`    {c:6.2f} µs   baseline pipeline  {c0:5.2f} µs"
          f"   ratio {c / c0:4.2f}")


if __name__ == "__main__":
    main()
