"""`engine report`: measures over stored runs, checked against each pipeline's `slo:`.

Tables (or `--json`) on stdout; `--html FILE` adds a self-contained page with charts.
`--by variant` shows an A/B analysis instead of the tables (`engine.quality.variants`); SLO
targets are checked either way.
Exit codes: 0 every SLO met (or none set), 1 some target breached, 2 nothing to report
(no such path, no stored records) or a file that cannot be written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from engine.commands import EXIT_BAD_SPEC, EXIT_OK, stderr, stdout
from engine.observe.report import Check, Report, Share, build_reports, format_measure
from engine.observe.store import StoredRun, read_runs
from engine.observe.summary import format_duration

if TYPE_CHECKING:
    from engine.quality.stats import Unit
    from engine.quality.variants import VariantReport

EXIT_BREACH = 1


def report(path: Path, pipeline: str | None, as_json: bool, html: Path | None,
           by: str | None = None) -> int:
    out, err = stdout(), stderr()
    if not path.exists():
        err.print(f"error: no such file or folder: {path}", style="red", markup=False)
        return EXIT_BAD_SPEC
    # streamed, unless --by variant reads the runs a second time
    runs = list(read_runs(path)) if by == "variant" else read_runs(path)
    reports = [r for r in build_reports(runs, pipeline) if r.records]
    if not reports:
        which = f" of pipeline {pipeline!r}" if pipeline else ""
        err.print(f"error: no stored records{which} under {path} (engine run stores them)",
                  style="red", markup=False)
        return EXIT_BAD_SPEC
    variants = _variants(list(runs), path, pipeline, err) if by == "variant" else None
    if by == "variant" and variants is None:
        return EXIT_BAD_SPEC
    if html is not None and not _write_html(reports, path, html, err):
        return EXIT_BAD_SPEC
    if as_json:
        data: dict[str, Any] = {"reports": [r.to_json() for r in reports]}
        if variants is not None:
            data["by_variant"] = [v.to_json() for v in variants]
        print(json.dumps(data, indent=2))
    else:
        for table in tables(reports) if variants is None else variant_tables(variants):
            out.print(table)
    if variants is not None:
        _print_verdicts(variants, err if as_json else out, err)
    _print_problems(reports, err if as_json else out, err)
    return EXIT_BREACH if any(r.breaches for r in reports) else EXIT_OK


def _variants(runs: list[StoredRun], path: Path, pipeline: str | None, err: Console
              ) -> list[VariantReport] | None:
    """The A/B analysis, feedback joined from `<path>/feedback/`; None (reported) when no
    record took a variant."""
    from engine.quality.variants import read_feedback, variant_reports

    feedback = read_feedback(path / "feedback") if path.is_dir() else {}
    found = variant_reports(runs, feedback, pipeline)
    if not found:
        err.print(f"error: no stored record under {path} took a variant: weighted routes "
                  "(`key:` and `weight:`, a `name:` per rule) record one, and `engine "
                  "compare` labels its two runs", style="red", markup=False)
    return found or None


def _print_verdicts(variants: list[VariantReport], console: Console, err: Console) -> None:
    for v in variants:
        for warning in v.warnings:
            err.print(f"warning: {warning}", style="yellow", markup=False)
        for line in v.verdicts():
            console.print(line, markup=False)


def _write_html(reports: list[Report], source: Path, target: Path, err: Console) -> bool:
    from engine.observe.html import render_html

    try:
        target.write_text(render_html(reports, str(source)), encoding="utf-8")
    except OSError as exc:
        err.print(f"error: cannot write --html {target}: {exc.strerror}", style="red",
                  markup=False)
        return False
    return True


def _print_problems(reports: list[Report], console: Console, err: Console) -> None:
    for r in reports:
        if r.skipped_lines:
            err.print(f"{r.pipeline}: {r.skipped_lines} unreadable line(s) skipped (a run cut "
                      "short by a crash?)", style="yellow", markup=False)
        for check in r.breaches:
            console.print(f"SLO breached: {r.pipeline} {_verdict(check)}", style="red",
                          markup=False)


def _verdict(check: Check) -> str:
    return (f"{check.measure} = {format_measure(check.measure, check.value)}, target "
            f"{check.direction} {format_measure(check.measure, check.target)}")


def tables(reports: list[Report]) -> list[Table]:
    """The report as rich tables, one row per pipeline (per model, per answerer...)."""
    built = [_measures(reports), _models(reports), _answered(reports)]
    if any(r.hops for r in reports):
        built.append(_hops(reports))
    if any(r.checks for r in reports):
        built.append(_slo(reports))
    return built


def _table(title: str, *columns: str, names: int = 1) -> Table:
    """The first `names` columns hold names (left-aligned), the others numbers."""
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i < names else "right")
    return table


def _row(table: Table, *cells: str, style: str | None = None) -> None:
    """Cells are data (model names, pipeline names): never parsed as rich markup."""
    table.add_row(*(Text(cell) for cell in cells), style=style)


def _measures(reports: list[Report]) -> Table:
    """Measures down, pipelines across: narrow enough for a terminal with one pipeline."""
    table = _table("report", "measure", *(r.pipeline for r in reports))
    rows: list[tuple[str, Callable[[Report], str]]] = [
        ("runs / records", lambda r: f"{r.runs} / {r.records}"),
        ("ok / finished / error",
         lambda r: " / ".join(str(r.statuses.get(s, 0)) for s in ("ok", "finished", "error"))),
        *((f"latency {q}", _latency(q)) for q in ("p50", "p95", "p99")),
        *((f"time to first token {q}", _ttft(q)) for q in ("p50", "p95")),
        ("tokens in / out per request",
         lambda r: f"{r.input_tokens:.1f} / {r.output_tokens:.1f}"),
        ("cost per request", lambda r: f"${r.cost_per_request:.6f}"),
        ("cost in total", lambda r: f"${r.cost_total:.6f}"),
        ("cache hit rate", lambda r: _share(r.cache_hits)),
        ("  exact / semantic", lambda r: f"{_rate(r.cache_exact)} / {_rate(r.cache_semantic)}"),
        ("fallback rate", lambda r: _share(r.fallbacks)),
        ("timeout rate", lambda r: _share(r.timeouts)),
        ("error rate", lambda r: _share(r.errors)),
        ("parse success", lambda r: _share(r.parse)),
        ("  repaired", lambda r: _share(r.repaired)),
    ]
    for label, cell in rows:
        _row(table, label, *(cell(r) for r in reports))
    return table


def _latency(q: str) -> Callable[[Report], str]:
    return lambda r: format_duration(r.latency[q])


def _ttft(q: str) -> Callable[[Report], str]:
    return lambda r: format_duration(r.ttft[q]) if r.ttft else "-"


def _rate(share: Share) -> str:
    return "-" if share.rate is None else f"{share.rate:.1%}"


def _share(share: Share) -> str:
    """`25.0% (1 of 4)`: the denominator says which records the rate is about."""
    return "-" if share.rate is None else f"{share.rate:.1%} ({share.hits} of {share.of})"


def _models(reports: list[Report]) -> Table:
    table = _table("cost by model", "pipeline", "model", "calls", "tokens in", "tokens out",
                   "cost", names=2)
    for r in reports:
        for model, u in r.models.items():
            _row(table, r.pipeline, model, str(u.calls), str(u.input_tokens),
                          str(u.output_tokens), f"${u.cost_usd:.6f}")
    return table


def _answered(reports: list[Report]) -> Table:
    table = _table("who answered", "pipeline", "answered by", "records", "share", names=2)
    for r in reports:
        for who, count in r.tiers.items():
            _row(table, r.pipeline, who, str(count), f"{count / r.records:.1%}")
    return table


def _hops(reports: list[Report]) -> Table:
    table = _table("fallback hops", "pipeline", "hop", "count", names=2)
    for r in reports:
        for hop, count in sorted(r.hops.items(), key=lambda item: -item[1]):
            _row(table, r.pipeline, hop, str(count))
    return table


def _slo(reports: list[Report]) -> Table:
    table = _table("SLO", "pipeline", "measure", "measured", "target", "", names=2)
    for r in reports:
        for check in r.checks:
            status = "BREACHED" if check.breached else "ok" if check.value is not None else (
                "no data")
            _row(table, r.pipeline, check.measure, format_measure(check.measure, check.value),
                          f"{check.direction} {format_measure(check.measure, check.target)}",
                          status, style="red" if check.breached else None)
    return table


def variant_tables(variants: list[VariantReport]) -> list[Table]:
    """Per pipeline: measures down, variants across; then each variant against the
    baseline, with its interval."""
    built = []
    for v in variants:
        table = _table(f"{v.pipeline} by variant", "measure", *(arm.name for arm in v.arms))
        shares = [arm.shares() for arm in v.arms]
        _row(table, "records", *(str(arm.records) for arm in v.arms))
        for name in shares[0]:
            _row(table, name, *(_share(share[name]) for share in shares))
        for q in ("p50", "p95"):
            _row(table, f"latency {q}", *(_amount(arm.statistic("durations", q), "s")
                                          for arm in v.arms))
        _row(table, "cost per request", *(_amount(arm.statistic("costs", "mean"), "usd")
                                          for arm in v.arms))
        built.append(table)
        versus = _table(f"{v.pipeline}: against {v.baseline}", "variant", "measure", "change",
                        "95% CI", "significant", names=2)
        for variant, measures in v.measures.items():
            for m in measures:
                significant = m.diff is not None and m.diff.significant
                _row(versus, variant, m.name, m.change(), m.interval(),
                     "yes" if significant else "no", style="bold" if significant else None)
        built.append(versus)
    return built


def _amount(value: float | None, unit: Unit) -> str:
    from engine.quality.stats import format_amount

    return format_amount(value, unit)
