"""Spans from real runs against the chaos stub, caught by the SDK's in-memory exporter."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from resources_pool import opened

from engine.compile import CompiledPipeline, compile_pipeline
from engine.observe import tracing as tracing_module
from engine.observe.traceparent import parse_traceparent, root_span_id
from engine.observe.tracing import Tracing, traceparent_for
from engine.providers.stub import StubProvider
from engine.providers.stub_config import StubConfig
from engine.registry import Registry
from engine.results import RunResult, StageEvent
from engine.spec import parse_spec

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
async def stub() -> AsyncIterator[StubProvider]:
    async with StubProvider(StubConfig(seed=1)) as provider:
        yield provider


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Iterator[Tracing]:
    tracing = Tracing(exporter)
    yield tracing
    tracing.close()


def build(stub: StubProvider) -> CompiledPipeline:
    tiers = "\n".join(
        f'  {name}: {{model: openai/{name}, api_base: "{stub.base_url}", api_key: stub}}'
        for name in ("smart", "cheap"))
    text = f"""\
version: 1
name: traced
models:
{tiers}
defaults: {{timeout: 10s, retry: {{attempts: 1}}}}
resources:
  responses: {{type: cache}}
stages:
  lookup:
    type: cache
    with: {{resource: responses, key: "{{{{ input.q }}}}"}}
  answer:
    type: generate
    needs: [lookup]
    with:
      models: [smart, cheap]
      messages: [{{role: user, content: "{{{{ input.q }}}}"}}]
output: "{{{{ stages.answer.output.text }}}}"
"""
    return compile_pipeline(parse_spec(text), Registry.from_entry_points(), resources=opened())


async def run(pipeline: CompiledPipeline, tracing: Tracing, record: dict[str, str]
              ) -> RunResult:
    result = await pipeline.run(record)
    await pipeline.resources.settle()  # the cache stores in the background
    tracing.observe(pipeline.name, record, result)
    tracing.flush()
    return result


def by_name(spans: Sequence[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name.startswith(prefix)]


def ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


async def test_a_run_is_a_tree_of_run_stage_and_chat_spans(
        stub: StubProvider, tracing: Tracing, exporter: InMemorySpanExporter) -> None:
    pipeline = build(stub)
    stub.plan("smart", ["500"])
    result = await run(pipeline, tracing, {"q": "where is my parcel"})
    assert result.status == "ok", result.error
    spans = exporter.get_finished_spans()
    [root] = by_name(spans, "run ")
    assert root.name == "run traced" and root.parent is None
    assert root.attributes is not None and root.attributes["engine.status"] == "ok"
    trace_id, root_id = ids(root)
    assert f"{trace_id:032x}" == result.trace_id
    assert root_id == root_span_id(result.trace_id)
    assert root.start_time == round(result.started_at * 1e9)

    stages = {span.name: span for span in by_name(spans, "stage ")}
    assert set(stages) == {"stage lookup", "stage answer"}
    for span in stages.values():
        assert span.parent is not None and span.parent.span_id == root_id
        assert ids(span)[0] == trace_id
    lookup = stages["stage lookup"].attributes
    assert lookup is not None and lookup["engine.cache.outcome"] == "miss"

    [chat] = by_name(spans, "chat ")
    answer = stages["stage answer"]
    assert chat.parent is not None and chat.parent.span_id == ids(answer)[1]
    assert (chat.start_time, chat.end_time) == (answer.start_time, answer.end_time)
    attrs = chat.attributes
    assert attrs is not None
    assert chat.name == "chat openai/cheap"
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == attrs["gen_ai.response.model"] == "openai/cheap"
    # The stub counts whitespace-separated words: the prompt, then "echo: " + the prompt.
    assert attrs["gen_ai.usage.input_tokens"] == 4
    assert attrs["gen_ai.usage.output_tokens"] == 5
    assert attrs["engine.tier"] == "cheap"
    assert attrs["engine.attempts"] == "smart:server,cheap:ok"
    assert isinstance(attrs["engine.cost_usd"], float)


async def test_a_cache_hit_is_one_root_and_one_stage(
        stub: StubProvider, tracing: Tracing, exporter: InMemorySpanExporter) -> None:
    pipeline = build(stub)
    first = await run(pipeline, tracing, {"q": "hello"})
    second = await run(pipeline, tracing, {"q": "hello"})
    assert second.finished_by == "lookup"
    spans = exporter.get_finished_spans()
    roots = by_name(spans, "run ")
    assert [f"{ids(root)[0]:032x}" for root in roots] == [first.trace_id, second.trace_id]
    late = [span for span in spans if ids(span)[0] == ids(roots[1])[0]]
    assert sorted(span.name for span in late) == ["run traced", "stage lookup"]
    hit = by_name(late, "stage ")[0].attributes
    assert hit is not None and hit["engine.cache.outcome"] == "exact"
    assert roots[1].attributes is not None
    assert roots[1].attributes["engine.finished_by"] == "lookup"


async def test_a_traceparent_makes_the_run_its_child(
        stub: StubProvider, tracing: Tracing, exporter: InMemorySpanExporter) -> None:
    pipeline = build(stub)
    record = {"q": "a question", "traceparent": PARENT}
    result = await run(pipeline, tracing, record)
    [root] = by_name(exporter.get_finished_spans(), "run ")
    assert root.parent is not None
    assert f"{root.parent.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert root.parent.span_id == 0xB7AD6B7169203331 and root.parent.is_remote
    assert ids(root)[0] == root.parent.trace_id != int(result.trace_id, 16)
    assert root.attributes is not None
    assert root.attributes["engine.result.trace_id"] == result.trace_id
    # the header a server would return names this root span, in the caller's trace
    header = traceparent_for(result, record)
    parsed = parse_traceparent(header)
    assert parsed is not None
    assert (int(parsed.trace_id, 16), int(parsed.span_id, 16)) == ids(root)
    assert parsed.flags == 1


def test_an_unsampled_traceparent_records_nothing(tracing: Tracing,
                                                  exporter: InMemorySpanExporter) -> None:
    result = RunResult(0, None, "ok", trace_id="ab" * 16)
    record = {"traceparent": PARENT[:-2] + "00"}
    tracing.observe("p", record, result)
    tracing.flush()
    assert exporter.get_finished_spans() == ()
    assert traceparent_for(result, record).endswith("-00")  # the decision travels on


@pytest.mark.parametrize("bad", [
    "0af7651916cd43dd8448eb211c80319c",                                # no fields
    "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",         # upper case
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",         # zero trace id
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",         # zero span id
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",         # version ff
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",   # v00 has 4 fields
])
async def test_a_malformed_traceparent_is_ignored(
        stub: StubProvider, tracing: Tracing, exporter: InMemorySpanExporter, bad: str) -> None:
    assert parse_traceparent(bad) is None
    result = await run(build(stub), tracing, {"q": "hi", "traceparent": bad})
    [root] = by_name(exporter.get_finished_spans(), "run ")
    assert root.parent is None
    assert f"{ids(root)[0]:032x}" == result.trace_id


def test_traceparent_for_round_trips() -> None:
    result = RunResult(0, None, "ok", trace_id="4bf92f3577b34da6a3ce929d0e0e4736")
    header = traceparent_for(result)
    parsed = parse_traceparent(header)
    assert parsed is not None
    assert parsed.trace_id == result.trace_id
    assert int(parsed.span_id, 16) == root_span_id(result.trace_id)
    assert traceparent_for(result) == header  # stable: computable before or after export
    assert parse_traceparent("01-" + header[3:] + "-future") is not None  # later versions


def test_an_errored_run_marks_its_spans(tracing: Tracing,
                                        exporter: InMemorySpanExporter) -> None:
    result = RunResult(
        3, None, "error", error={"stage": "greet", "type": "UndefinedError",
                                 "message": "jane@example.com is not a key"},
        duration=0.01, started_at=1_700_000_000.0, trace_id="ab" * 16,
        events=[StageEvent("greet", 0.001, 0.002, "error", "UndefinedError: jane@..."),
                StageEvent("after", 0.0, 0.0, "skipped")])
    tracing.observe("p", {"user_id": "u1"}, result)
    tracing.flush()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"run p", "stage greet"}
    root, stage = spans["run p"], spans["stage greet"]
    assert root.status.is_ok is False and root.status.description == "UndefinedError"
    assert root.attributes is not None and root.attributes["error.type"] == "UndefinedError"
    assert stage.status.is_ok is False
    assert stage.start_time == 1_700_000_000_001_000_000  # the run start + the offset
    text = repr([(s.attributes, s.status.description) for s in spans.values()])
    assert "jane" not in text  # messages and details stay out of spans


def test_observe_never_raises(tracing: Tracing, exporter: InMemorySpanExporter) -> None:
    broken = RunResult(0, None, "ok", trace_id="cd" * 16,
                       events=[StageEvent("x", 0.0, 0.1, "ok", notes={"llm": [{"attempts": 5}]})])
    tracing.observe("p", None, broken)  # a malformed note: logged, not raised
    tracing.observe("p", None, RunResult(1, None, "ok", trace_id="ef" * 16))
    tracing.flush()
    assert [span.name for span in exporter.get_finished_spans()] == ["run p"]


def test_no_endpoint_no_exporter_means_off(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    tracing = Tracing()
    assert not tracing.enabled
    tracing.observe("p", None, RunResult(0, None, "ok", trace_id="ab" * 16))
    tracing.close()


@pytest.mark.parametrize(("given", "env", "expected"), [
    ("http://collector:4318", None, "http://collector:4318/v1/traces"),
    ("http://collector:4318/v1/traces", None, "http://collector:4318/v1/traces"),
    (None, "http://127.0.0.1:4318", None),  # the exporter reads the variable itself
])
def test_an_endpoint_turns_on_otlp_export(monkeypatch: pytest.MonkeyPatch, given: str | None,
                                          env: str | None, expected: str | None) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    if env is None:
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    else:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", env)
    tracing = Tracing(otlp_endpoint=given)
    assert tracing.enabled and tracing.endpoint == expected
    tracing.close()  # nothing was recorded: nothing is sent


def test_a_given_exporter_wins_over_the_env_and_stays_open(
        monkeypatch: pytest.MonkeyPatch, exporter: InMemorySpanExporter) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    tracing = Tracing(exporter)
    assert tracing.endpoint is None
    tracing.observe("p", None, RunResult(0, None, "ok", trace_id="ab" * 16))
    tracing.close()  # flushes what was waiting
    assert [span.name for span in exporter.get_finished_spans()] == ["run p"]
    tracing.observe("p", None, RunResult(1, None, "ok", trace_id="cd" * 16))  # closed: ignored
    # the exporter is the caller's: not shut down
    assert exporter.export([exporter.get_finished_spans()[0]]).name == "SUCCESS"
    with pytest.raises(ValueError, match="not both"):
        Tracing(exporter, otlp_endpoint="http://collector:4318")


def test_sdk_disabled_means_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not Tracing().enabled


def test_the_worker_exports_without_a_flush(exporter: InMemorySpanExporter) -> None:
    tracing = Tracing(exporter)
    for index in range(tracing_module.BATCH):  # a full batch wakes the worker
        tracing.observe("p", None, RunResult(index, None, "ok", trace_id=f"{index + 1:032x}"))
    deadline = time.monotonic() + 10
    while len(exporter.get_finished_spans()) < tracing_module.BATCH:
        assert time.monotonic() < deadline, "the worker exported nothing"
        time.sleep(0.01)
    tracing.close()
    indexes = [span.attributes["engine.record_index"] for span in exporter.get_finished_spans()
               if span.attributes is not None]
    assert indexes == list(range(tracing_module.BATCH))


def test_a_stalled_exporter_drops_the_oldest_runs(monkeypatch: pytest.MonkeyPatch,
                                                  exporter: InMemorySpanExporter,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(tracing_module, "MAX_WAITING", 2)
    monkeypatch.setattr(tracing_module, "DELAY_S", 60.0)  # the worker stays asleep
    tracing = Tracing(exporter)
    for index in range(5):
        tracing.observe("p", None, RunResult(index, None, "ok", trace_id=f"{index + 1:032x}"))
    with caplog.at_level(logging.WARNING, "engine.observe"):
        tracing.close()
    kept = [span.attributes and span.attributes["engine.record_index"]
            for span in exporter.get_finished_spans()]
    assert kept == [3, 4]
    assert "3 runs' spans dropped" in caplog.text


async def test_model_calls_carry_the_runs_traceparent(stub: StubProvider,
                                                      tracing: Tracing,
                                                      exporter: InMemorySpanExporter) -> None:
    """Propagation: a provider's spans are children of the run's root span."""
    pipeline = build(stub)
    own = await pipeline.run({"q": "one"})
    joined_record = {"q": "two", "traceparent": PARENT}
    joined = await pipeline.run(joined_record)
    sent = [request.headers["traceparent"] for request in stub.requests]
    assert sent[0] == traceparent_for(own)
    assert sent[-1] == traceparent_for(joined, joined_record)
    assert sent[-1].split("-")[1] == PARENT.split("-")[1]  # the caller's trace
    tracing.observe("traced", None, own)
    tracing.flush()
    [root] = [span for span in exporter.get_finished_spans() if span.parent is None]
    assert root.context is not None
    assert sent[0] == f"00-{root.context.trace_id:032x}-{root.context.span_id:016x}-01"


async def test_a_sampled_out_run_leaves_no_span_at_all(stub: StubProvider,
                                                       exporter: InMemorySpanExporter) -> None:
    tracing = Tracing(exporter, sample=0.0)
    tracing.observe("traced", None, await build(stub).run({"q": "one"}))
    sampled_in = {"q": "two", "traceparent": PARENT}  # the caller sampled it: it is traced
    tracing.observe("traced", sampled_in, await build(stub).run(sampled_in))
    tracing.close()
    roots = [span for span in exporter.get_finished_spans() if span.name == "run traced"]
    assert len(roots) == 1 and roots[0].context is not None
    assert f"{roots[0].context.trace_id:032x}" == PARENT.split("-")[1]


def test_sample_keeps_the_runs_whose_trace_id_is_below_its_share(
        exporter: InMemorySpanExporter) -> None:
    tracing = Tracing(exporter, sample=0.5)
    low, high = "f" * 16 + "7" + "f" * 15, "0" * 16 + "8" + "0" * 15  # low 64 bits decide
    tracing.observe("p", None, RunResult(0, None, "ok", trace_id=low))
    tracing.observe("p", None, RunResult(1, None, "ok", trace_id=high))
    tracing.close()
    assert [span.attributes and span.attributes["engine.record_index"]
            for span in exporter.get_finished_spans()] == [0]


def test_a_failing_exporter_is_logged_and_survived(exporter: InMemorySpanExporter,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(InMemorySpanExporter):
        fail = True

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            if self.fail:
                raise ConnectionError("collector down")
            return super().export(spans)

    flaky = Flaky()
    tracing = Tracing(flaky)
    with caplog.at_level(logging.WARNING, "engine.observe"):
        tracing.observe("p", None, RunResult(0, None, "ok", trace_id="ab" * 16))
        tracing.flush()
    assert "export failed" in caplog.text
    flaky.fail = False
    tracing.observe("p", None, RunResult(1, None, "ok", trace_id="cd" * 16))
    tracing.close()
    assert [span.name for span in flaky.get_finished_spans()] == ["run p"]
    with pytest.raises(ValueError, match="share of runs"):
        Tracing(exporter, sample=1.5)


def test_the_resource_is_hashed_once_and_equal_to_the_sdks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.resources import Resource

    monkeypatch.setenv("OTEL_SERVICE_NAME", "triage")
    resource = tracing_module._resource()
    plain = Resource.create()
    assert resource.attributes["service.name"] == "triage"
    assert resource == plain and hash(resource) == hash(plain)  # the encoder groups by it
