"""`engine estimate`: token counts, prices, the cache's effect and prompt rewrites, offline.

The test pipelines price their hosted tier with `price:` so litellm is never imported; only
the flagship test reads litellm's (bundled, offline) cost map.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import tiktoken

from engine.cli import main

ROOT = Path(__file__).resolve().parents[2]
FLAGSHIP = ROOT / "pipelines" / "support_triage.yaml"

PROMPT = """\
Answer the ticket politely, citing passages as [1].
{% for p in input.passages -%}
[{{ loop.index }}] {{ p }}
{% endfor %}
Ticket: {{ input.ticket }}"""
PROMPT_LITERAL = ("Answer the ticket politely, citing passages as [1].\n"
                  "[" "] " "\n" "\nTicket: ")
"""PROMPT's text without its markup, written out by hand (`-%}` eats the newline after it)."""

PIPELINE = """\
version: 1
name: priced
models:
  priced: {model: openai/gpt-4o-mini, price: {input: 1.5, output: 6.0}}
  local: {model: local/kb}
resources:
  answers: {type: cache, backend: memory}
stages:
  lookup:
    type: cache
    with: {resource: answers, key: "{{ input.ticket }}"}
  answer:
    type: generate
    needs: [lookup]
    with: {models: [priced, local], prompt: prompt.j2}
output: "{{ stages.answer.output.text }}"
"""


@pytest.fixture(scope="module")
def o200k() -> tiktoken.Encoding:
    """tiktoken's encoding, loaded here independently of engine (from litellm's wheel)."""
    spec = importlib.util.find_spec("litellm")
    assert spec is not None and spec.origin is not None
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.join(
        os.path.dirname(spec.origin), "litellm_core_utils", "tokenizers"))
    return tiktoken.get_encoding("o200k_base")


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    (tmp_path / "prompt.j2").write_text(PROMPT)
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE)
    return path


def estimate_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["estimate", *args, "--json"]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def call(result: dict[str, Any], stage: str, tier: str) -> dict[str, Any]:
    return next(c for c in result["calls"] if c["stage"] == stage and c["tier"] == tier)


def tier(result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in result["tiers"] if t["name"] == name)


def test_prompt_tokens_are_tiktokens_of_the_static_text(
        pipeline: Path, capsys: pytest.CaptureFixture[str], o200k: tiktoken.Encoding) -> None:
    answer = call(estimate_json(capsys, str(pipeline)), "answer", "priced")
    assert answer["encoding"] == "o200k_base" and answer["encoding_exact"]
    assert answer["prompt_tokens"] == len(o200k.encode(PROMPT_LITERAL))
    # one user message: 3 framing tokens + 3 priming the reply, + the assumed variables
    assert answer["input_tokens"] == answer["prompt_tokens"] + 6 + 200


def test_cost_per_request_of_a_priced_tier_is_the_hand_computation(
        pipeline: Path, capsys: pytest.CaptureFixture[str], o200k: tiktoken.Encoding) -> None:
    result = estimate_json(capsys, str(pipeline), "--input-tokens", "500",
                           "--output-tokens", "300", "--requests-per-day", "2000")
    tokens_in = len(o200k.encode(PROMPT_LITERAL)) + 6 + 500
    by_hand = (tokens_in * 1.5 + 300 * 6.0) / 1_000_000
    priced = tier(result, "priced")
    assert priced["rate"]["source"] == "price"
    assert priced["per_request"] == pytest.approx(by_hand)
    assert priced["per_day"] == pytest.approx(by_hand * 2000)
    assert priced["per_month"] == pytest.approx(by_hand * 2000 * 30)
    assert result["first_tiers"]["per_request"] == pytest.approx(by_hand)
    assert tier(result, "local")["per_request"] == 0


def test_the_cache_hit_rate_scales_the_stages_after_the_cache(
        pipeline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cold = tier(estimate_json(capsys, str(pipeline)), "priced")
    warm = tier(estimate_json(capsys, str(pipeline), "--cache-hit-rate", "0.65"), "priced")
    assert warm["per_request"] == pytest.approx(cold["per_request"] * 0.35)
    assert warm["cache_saving_per_month"] == pytest.approx(cold["per_month"] * 0.65)
    assert cold["cache_saving_per_month"] == 0


def test_a_stage_before_the_cache_is_not_scaled(
        pipeline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = PIPELINE.replace("  lookup:\n    type: cache\n",
                            "  lookup:\n    type: cache\n    needs: [draft]\n")
    text = text.replace("stages:\n", "stages:\n  draft:\n    type: generate\n"
                        "    with: {models: [priced], messages: [{role: user, content: Hi}]}\n")
    pipeline.write_text(text)
    result = estimate_json(capsys, str(pipeline), "--cache-hit-rate", "0.5")
    assert call(result, "draft", "priced")["calls_per_request"] == 1
    assert call(result, "answer", "priced")["calls_per_request"] == 0.5


def test_compare_shows_the_difference_and_its_saving(
        pipeline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        o200k: tiktoken.Encoding) -> None:
    new = tmp_path / "short.j2"
    new.write_text("Answer politely. Ticket: {{ input.ticket }}")
    old = pipeline.parent / "prompt.j2"
    result = estimate_json(capsys, str(pipeline), "--compare", str(old), str(new),
                           "--requests-per-day", "1000")
    saved = len(o200k.encode(PROMPT_LITERAL)) - len(o200k.encode("Answer politely. Ticket: "))
    compare = result["compare"]
    assert compare["tier"] == "priced"  # the first tier of the stage whose prompt is OLD
    assert (compare["old_tokens"] - compare["new_tokens"], compare["saved_tokens"]) == (
        saved, saved)
    assert compare["saved_per_request"] == pytest.approx(saved * 1.5 / 1_000_000)
    assert compare["saved_per_month"] == pytest.approx(saved * 1.5 / 1_000_000 * 1000 * 30)

    assert main(["estimate", str(pipeline), "--compare", str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert "prompt rewrite at priced's input price" in out
    assert re.search(rf"saved \(old - new\) +│ +{saved} \(", out)


def test_a_missing_compare_file_is_one_line_and_exit_2(
        pipeline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.j2"
    assert main(["estimate", str(pipeline), "--compare", str(missing), str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"error: cannot read --compare template {missing}: "
                           "No such file or directory")


def test_a_bad_pipeline_gets_validates_diagnostics_and_exit_2(
        pipeline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline.write_text(PIPELINE.replace("models: [priced, local]", "models: [priced, nope]"))
    assert main(["validate", str(pipeline)]) == 2
    expected = capsys.readouterr().err.splitlines()[0]
    assert main(["estimate", str(pipeline)]) == 2
    err = capsys.readouterr().err
    assert expected in err.splitlines()
    assert f"{pipeline}:" in expected and "Traceback" not in err


def test_cascade_classify_is_priced_at_the_llm_share(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(PIPELINE.split("resources:")[0] + """\
stages:
  classify:
    type: classify
    with:
      text: "{{ input.ticket }}"
      engine: cascade
      models: [priced]
      labels: {urgency: {high: "Stopped now", low: "Can wait"}}
output: "{{ stages.classify.output.urgency }}"
""")
    result = estimate_json(capsys, str(path), "--llm-share", "0.25")
    classify = call(result, "classify", "priced")
    assert classify["kind"] == "cascade classify"
    assert classify["calls_per_request"] == 0.25
    assert classify["output_tokens"] < 30  # a small JSON answer, not --output-tokens
    assert tier(result, "priced")["per_request"] == pytest.approx(
        classify["cost_per_call"] * 0.25)


def test_validate_reasks_are_a_note_until_a_rate_is_given(
        pipeline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline.write_text(PIPELINE.replace('output: "{{ stages.answer.output.text }}"', """\
  check: {type: validate, needs: [answer], with: {reask: 1}}
output: "{{ stages.check.output.text }}"
"""))
    result = estimate_json(capsys, str(pipeline))
    assert not [c for c in result["calls"] if c["stage"] == "check"]
    assert any("check: re-asks not estimated" in note for note in result["notes"])
    result = estimate_json(capsys, str(pipeline), "--reask-rate", "0.1")
    reask = call(result, "check", "priced")
    answer = call(result, "answer", "priced")
    assert reask["calls_per_request"] == pytest.approx(0.1)
    assert reask["input_tokens"] > answer["input_tokens"] + answer["output_tokens"]


def test_the_flagship_estimates_offline(capsys: pytest.CaptureFixture[str]) -> None:
    result = estimate_json(capsys, str(FLAGSHIP), "--cache-hit-rate", "0.65")
    assert [t["name"] for t in result["tiers"]] == ["smart", "cheap", "local"]
    assert tier(result, "local")["per_month"] == 0
    assert tier(result, "local")["rate"]["source"] == "local"
    assert tier(result, "smart")["per_request"] > tier(result, "cheap")["per_request"] > 0
    assert result["first_tiers"]["stages"] == {"classify": "cheap", "reply": "smart"}

    assert main(["estimate", str(FLAGSHIP)]) == 0
    out = capsys.readouterr().out
    for name in ("smart", "cheap", "local", "first tiers", "$0 (local)"):
        assert name in out
