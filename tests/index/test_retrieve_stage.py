"""The retrieve stage in a compiled pipeline: it finds the document a paraphrased question is
about, says so when nothing is close enough, and a wrong index fails compilation with the
resource named."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from index_kb import write_kb
from resources_pool import opened

from engine.compile import CompiledPipeline, compile_pipeline
from engine.errors import SpecError
from engine.registry import Registry
from engine.spec import parse_spec

PROMPT = ('"{% for p in stages.kb.output.passages %}[{{ p.rank }}] {{ p.title }}: {{ p.text }}'
          '\\n{% endfor %}"')
"""How a prompt lists the passages (YAML double quotes: `\\n` is a newline)."""
RESOURCE = '{type: index, documents: ["kb/*.md", "kb/*.jsonl"], chunk_size: 600}'


def build(base: Path, *, threshold: float = 0.4, top_k: int = 2, resource: str = RESOURCE
          ) -> CompiledPipeline:
    text = f"""\
version: 1
name: kb-answer
resources:
  kb: {resource}
  responses: {{type: cache}}
stages:
  kb:
    type: retrieve
    with:
      resource: kb
      query: "{{{{ input.question }}}}"
      top_k: {top_k}
      threshold: {threshold}
  prompt:
    type: template
    needs: [kb]
    with:
      output: {PROMPT}
output:
  kb: "{{{{ stages.kb.output }}}}"
  prompt: "{{{{ stages.prompt.output }}}}"
"""
    loaded = parse_spec(text, file="kb.yaml", base_dir=base)
    return compile_pipeline(loaded, Registry.from_entry_points(), resources=opened())


async def ask(pipeline: CompiledPipeline, question: str) -> tuple[dict[str, Any], str, Any]:
    result = await pipeline.run({"question": question})
    assert result.status == "ok", result.error
    return result.output["kb"], result.output["prompt"], result.events[0].notes


async def test_a_paraphrased_question_finds_the_right_document(tmp_path: Path) -> None:
    write_kb(tmp_path)
    pipeline = build(tmp_path)
    await pipeline.warm_up()
    kb, prompt, notes = await ask(pipeline, "How can I get my money back for an order?")
    assert kb["found"] is True
    best = kb["passages"][0]
    assert (best["rank"], best["id"], best["source"], best["title"]) == (
        1, "refunds#1", "refunds", "Refund policy")
    assert best["text"].startswith("You can get your money back within 30 days")
    assert best["score"] == kb["best_score"] and best["score"] >= 0.4
    assert prompt.startswith("[1] Refund policy: You can get your money back")
    assert notes == {"retrieved": len(kb["passages"]), "best_score": kb["best_score"]}


async def test_passages_are_best_first_at_most_top_k_and_above_the_threshold(
        tmp_path: Path) -> None:
    write_kb(tmp_path)
    kb, prompt, _ = await ask(build(tmp_path, threshold=0.0, top_k=3),
                              "I forgot my password, how do I reset it?")
    scores = [p["score"] for p in kb["passages"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert [p["rank"] for p in kb["passages"]] == [1, 2, 3]
    assert kb["passages"][0]["source"] == "password"
    assert re.findall(r"^\[(\d)\] (.+?):", prompt, re.MULTILINE) == [
        (str(p["rank"]), p["title"]) for p in kb["passages"]]
    strict = await ask(build(tmp_path, threshold=scores[1], top_k=3),
                       "I forgot my password, how do I reset it?")
    assert [p["score"] for p in strict[0]["passages"]] == scores[:2]  # the cut is >=


async def test_nothing_close_enough_is_found_false(tmp_path: Path) -> None:
    write_kb(tmp_path)
    pipeline = build(tmp_path, threshold=0.95)
    kb, prompt, notes = await ask(pipeline, "How can I get my money back for an order?")
    assert kb["found"] is False and kb["passages"] == [] and prompt == ""
    assert isinstance(kb["best_score"], float) and 0.3 < kb["best_score"] < 0.95
    assert notes == {"retrieved": 0, "best_score": kb["best_score"]}
    blank = await ask(pipeline, "   ")
    assert blank[0] == {"found": False, "passages": [], "best_score": None}


async def test_a_bad_document_fails_each_record_but_not_the_warm_up(tmp_path: Path) -> None:
    kb = write_kb(tmp_path)
    (kb / "faq.jsonl").write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": 3}\n')
    pipeline = build(tmp_path)
    await pipeline.warm_up()
    for _ in range(2):
        result = await pipeline.run({"question": "refund?"})
        assert result.status == "error" and result.error is not None
        assert result.error["stage"] == "kb"
        assert result.error["message"] == "kb/faq.jsonl:2: `text` must be a string"


@pytest.mark.parametrize(("resource", "message"), [
    ('{type: index, documents: ["kb/*.md", "docs/*.md"]}',
     "resource 'kb': documents: 'docs/*.md' matches no file in "),
    ('{type: index, documents: "kb/*.md", chunk_size: 500, chunk_overlap: 300}',
     "resource 'kb': chunk_overlap (300) must be at most half of chunk_size (500)"),
    ('{type: index, documents: "kb/*.md", chunk_sise: 500}',
     "resource 'kb': chunk_sise: unknown key; did you mean 'chunk_size'?"),
    ("{type: index}", "resource 'kb': documents: missing required key"),
    ("{type: cache}", "resource 'kb' is a cache, not an index"),
])
def test_a_wrong_index_fails_compilation_at_the_stage_s_resource(
        tmp_path: Path, resource: str, message: str) -> None:
    write_kb(tmp_path)
    with pytest.raises(SpecError) as caught:
        build(tmp_path, resource=resource)
    [problem] = caught.value.diagnostics
    assert problem.path == ("stages", "kb", "with", "resource")
    assert problem.line == 10 and problem.file == "kb.yaml"
    assert message in problem.message


def test_an_unknown_resource_name_is_reported_with_a_guess(tmp_path: Path) -> None:
    write_kb(tmp_path)
    text = f"""\
version: 1
name: kb-answer
resources:
  kb: {RESOURCE}
stages:
  kb:
    type: retrieve
    with: {{resource: kbb, query: "{{{{ input.question }}}}"}}
"""
    with pytest.raises(SpecError) as caught:
        compile_pipeline(parse_spec(text, base_dir=tmp_path), Registry.from_entry_points(),
                         resources=opened())
    assert [d.message for d in caught.value.diagnostics] == [
        "unknown resource 'kbb'; did you mean 'kb'?"]


async def test_compiling_does_not_embed_or_write_anything(tmp_path: Path) -> None:
    write_kb(tmp_path)
    pipeline = build(tmp_path)
    index = next(iter(pipeline.resources._indexes.values()))
    assert (index.embedded_chunks, index.chunks()) == (0, [])
    assert not (tmp_path / ".engine").exists()
    assert pipeline.resources._embedder is not None
    assert pipeline.resources._embedder.forward_passes == 0
