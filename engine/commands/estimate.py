"""`engine estimate`: what a pipeline will cost per request, per day and per month, by tier.

Tables (or `--json`) on stdout; the numbers and every assumption are defined in
`engine.cost`. Prices come from each tier's `price`, else litellm's cost map (imported only
when a tier needs it). Exit codes: 0 estimated, 2 a bad pipeline (the diagnostics of
`engine validate`) or an unreadable `--compare` template.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from engine import cost
from engine.commands import EXIT_BAD_SPEC, EXIT_OK, compile_or_report, stderr, stdout
from engine.compile import CompiledPipeline
from engine.cost import (
    DAYS_PER_MONTH,
    Assumptions,
    Call,
    Estimate,
    Rate,
    RateLookup,
    Rewrite,
    Scenario,
)


class _Unusable(Exception):
    """A user mistake outside the pipeline file: one line on stderr, exit 2."""


def estimate(file: Path, assume: Assumptions, compare: tuple[Path, Path] | None,
             as_json: bool, lookup: RateLookup | None = None) -> int:
    """`lookup` defaults to litellm's cost map (tests pass their own)."""
    try:
        sources = _read_compare(compare) if compare is not None else None
        pipeline = compile_or_report(file)
        if pipeline is None:
            return EXIT_BAD_SPEC
        lookup = lookup or _litellm_rates()
        result = cost.estimate(pipeline, assume, lookup)
        change = (_rewrite(result, pipeline, compare, sources, lookup)
                  if compare is not None and sources is not None else None)
    except _Unusable as exc:
        stderr().print(f"error: {exc}", style="red", markup=False)
        return EXIT_BAD_SPEC
    if as_json:
        print(json.dumps({**result.to_json(),
                          "compare": change.to_json() if change else None}, indent=2))
    else:
        _print(_console(), result, change)
    return EXIT_OK


def _litellm_rates() -> RateLookup:
    from engine.providers.client import ModelClient

    return ModelClient().rates


def _read_compare(files: tuple[Path, Path]) -> tuple[str, str]:
    """Both templates' text, read before compiling: a typo in a path fails fast."""
    texts = []
    for path in files:
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise _Unusable(f"cannot read --compare template {path}: "
                            f"{exc.strerror or exc}") from None
    return texts[0], texts[1]


def _rewrite(result: Estimate, pipeline: CompiledPipeline, files: tuple[Path, Path],
             sources: tuple[str, str], lookup: RateLookup) -> Rewrite:
    try:
        return cost.rewrite(result, pipeline, files[0], files[1], sources, lookup)
    except ValueError as exc:  # a template syntax error in one of them
        raise _Unusable(f"--compare: {exc}") from None


# -- tables -----------------------------------------------------------------------------------
PIPED_WIDTH = 160
"""Piped or redirected output is read later, not in an 80-column terminal: keep the
tables' rows on one line each."""


def _console() -> Console:
    out = stdout()
    if not out.is_terminal:
        out.width = max(out.width, PIPED_WIDTH)
    return out


def _print(out: Console, result: Estimate, change: Rewrite | None) -> None:
    out.print(_headline(result), markup=False)
    out.print(_calls(result))
    out.print(_tiers(result))
    for line in _footnotes(result):
        out.print(line, style="dim", markup=False)
    for note in result.notes:
        out.print(f"note: {note}", style="yellow", markup=False)
    if change is not None:
        out.print(_compare(change))


def _headline(result: Estimate) -> str:
    a = result.assumptions
    at = ", ".join(result.cached_after)
    cache = (f"cache hit rate {a.cache_hit_rate:.0%} (a hit at {at} skips the stages after it)"
             if a.cache_hit_rate else f"cache at {at} not counted (--cache-hit-rate R)"
             ) if at else "no cache stage"
    return (f"{result.pipeline}: {a.requests_per_day:,} requests/day, {DAYS_PER_MONTH}-day "
            f"month; {cache}; per call {a.input_tokens} tokens assumed for rendered variables, "
            f"{a.output_tokens} output tokens; cascade classify asks a model for "
            f"{a.llm_share:.0%} of requests")


def _table(title: str, *columns: str, names: int) -> Table:
    """The first `names` columns hold names (left-aligned), the others numbers."""
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i < names else "right")
    return table


def _row(table: Table, *cells: str, style: str | None = None) -> None:
    """Cells are data (stage and model names): never parsed as rich markup."""
    table.add_row(*(Text(cell) for cell in cells), style=style)


def _calls(result: Estimate) -> Table:
    table = _table("model calls per stage and tier (tokens per call)", "stage", "tier",
                   "tokenizer", "prompt", "in", "out", "calls/req", "$/call", "$/request",
                   names=3)
    for call in result.calls:
        if call.first and call is not result.calls[0]:
            table.add_section()
        _row(table, f"{call.stage} ({call.kind})" if call.first else "", call.tier,
             call.encoding + ("" if call.exact else "*"), str(call.prompt_tokens),
             str(call.input_tokens), _output(call), f"{call.calls_per_request:.3f}",
             usd(call.cost_per_call), usd(call.cost_per_request),
             style=None if call.first else "dim")
    return table


def _output(call: Call) -> str:
    limit = call.max_output_tokens
    return str(call.output_tokens) + (f" (≤{limit})" if limit is not None else "")


def _tiers(result: Estimate) -> Table:
    cached = bool(result.cached_after) and result.assumptions.cache_hit_rate > 0
    capped = any(call.max_output_tokens is not None for call in result.calls)
    columns = ["tier", "model", "price in / out per 1M", "stages", "$/request", "$/day",
               "$/month", *(["cache saves/month"] if cached else []),
               *(["$/month at max_tokens"] if capped else [])]
    table = _table("cost by tier (if it answered every call of the stages listing it)",
                   *columns, names=4)
    for scenario in [*result.tiers, result.first_tiers]:
        first = scenario is result.first_tiers
        _row(table, *_scenario_cells(scenario, cached, capped), style="bold" if first else None)
    return table


def _scenario_cells(s: Scenario, cached: bool, capped: bool) -> list[str]:
    first = s.rate is None
    stages = (", ".join(f"{c.stage}: {c.tier}" for c in s.calls) if first
              else ", ".join(s.stages))
    cells = [s.name, s.model or "-", _price(s.rate) if s.rate else "-", stages,
             usd(s.per_request), money(s.per_request * s.requests_per_day),
             money(s.per_month(s.per_request))]
    if cached:
        cells.append(money(s.per_month(s.per_request_uncached - s.per_request)))
    if capped:
        cells.append(money(s.per_month(s.max_per_request)))
    return cells


def _price(rate: Rate) -> str:
    if rate.source in ("local", "no price"):
        return rate.source if rate.source == "no price" else "$0 (local)"
    return f"${rate.input * 1e6:.2f} / ${rate.output * 1e6:.2f} ({rate.source})"


def _footnotes(result: Estimate) -> list[str]:
    lines = ["prompt: static template text counted with the tokenizer; in: prompt + chat "
             f"framing + {result.assumptions.input_tokens} assumed (--input-tokens); "
             "calls/req: share of requests making the call (cascade, re-ask) after the cache; "
             "dim rows: fallback tiers, priced as if they answered; route branches assumed "
             "taken (an upper bound)"]
    if any(not call.exact for call in result.calls):
        lines.append("* tiktoken does not know this model: its encoding stands in")
    return lines


def _compare(change: Rewrite) -> Table:
    rate = change.rate
    title = (f"prompt rewrite at {change.tier}'s input price (${rate.input * 1e6:.2f} per 1M, "
             f"{rate.source}; {change.encoding}; {change.calls_per_request:.3f} calls/request)")
    table = _table(title, "template", "tokens", "$/request", "$/day", "$/month", names=1)
    share = change.saved_tokens / change.old_tokens if change.old_tokens else 0.0
    rows: Sequence[tuple[str, int, str]] = [
        (change.old, change.old_tokens, str(change.old_tokens)),
        (change.new, change.new_tokens, str(change.new_tokens)),
        ("saved (old - new)", change.saved_tokens, f"{change.saved_tokens} ({share:.0%})")]
    for i, (label, tokens, shown) in enumerate(rows):
        per_request = change.per_request(tokens)
        _row(table, label, shown, usd(per_request),
             money(per_request * change.requests_per_day),
             money(per_request * change.requests_per_day * DAYS_PER_MONTH),
             style="bold" if i == len(rows) - 1 else None)
    return table


def usd(value: float) -> str:
    """A per-request amount: small, so six decimals."""
    return f"${value:.6f}"


def money(value: float) -> str:
    return f"${value:,.2f}"
