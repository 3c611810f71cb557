"""`engine report --html`: one self-contained page — inline SVG and CSS, no JavaScript, no CDN —
so it opens offline, attaches to a ticket and passes a strict Content-Security-Policy.

Per pipeline: the key numbers, the SLO checks, a latency histogram (p50/p95/p99 marked), cost
by model, and who answered over time (stacked bars per time bucket).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from html import escape

from engine.observe.report import Report, format_measure
from engine.observe.summary import format_duration

__all__ = ["render_html"]

_WIDTH, _HEIGHT, _PAD = 640, 200, 30
_PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
            "#ff9da7", "#9c755f", "#bab0ac")
_BUCKETS = (1, 5, 10, 30, 60, 300, 900, 1800, 3600, 6 * 3600, 86400, 7 * 86400)
"""Bucket widths (s) for tier usage over time: the first giving at most 24 buckets."""
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:760px}
table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{padding:.2rem .6rem;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
.breach{color:#c62828;font-weight:600}.ok{color:#2e7d32}svg{display:block;margin:.5rem 0 1.5rem}
svg text{font-size:11px;fill:#444}
"""


def render_html(reports: Sequence[Report], source: str) -> str:
    """The whole page for `reports` read from `source` (a path, shown in the title)."""
    title = f"engine report — {escape(source)}"
    sections = "\n".join(_section(report) for report in reports)
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title><style>{_STYLE}</style></head>\n<body><h1>{title}</h1>\n"
            f"{sections}\n</body></html>\n")


def _section(report: Report) -> str:
    return "\n".join([
        f"<section><h2>{escape(report.pipeline)}</h2>", _numbers(report), _slo(report),
        "<h3>Latency</h3>", _histogram(report),
        "<h3>Cost by model</h3>", _costs(report),
        "<h3>Who answered, over time</h3>", _tiers_over_time(report), "</section>"])


def _rate(value: float | None) -> str:
    return "no data" if value is None else f"{value:.1%}"


def _numbers(report: Report) -> str:
    lat = report.latency
    rows = [
        ("records", f"{report.records} in {report.runs} run(s)"),
        ("ok / finished / error", " / ".join(str(report.statuses.get(s, 0))
                                             for s in ("ok", "finished", "error"))),
        ("latency p50 / p95 / p99", " / ".join(format_duration(lat[k])
                                               for k in ("p50", "p95", "p99"))),
        ("time to first token p50 / p95", " / ".join(
            format_duration(v) for v in report.ttft.values()) if report.ttft else "no data"),
        ("tokens in / out per request",
         f"{report.input_tokens:.1f} / {report.output_tokens:.1f}"),
        ("cost per request", f"${report.cost_per_request:.6f}"),
        ("cache hits (exact / semantic)", f"{_rate(report.cache_hits.rate)} "
         f"({_rate(report.cache_exact.rate)} / {_rate(report.cache_semantic.rate)})"),
        ("fallback / timeout / error rate", " / ".join(_rate(s.rate) for s in (
            report.fallbacks, report.timeouts, report.errors))),
        ("parse success", _rate(report.parse.rate)),
    ]
    body = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _slo(report: Report) -> str:
    if not report.checks:
        return "<p>No <code>slo:</code> targets in this pipeline.</p>"
    rows = []
    for check in report.checks:
        css, verdict = ("breach", "BREACHED") if check.breached else ("ok", "ok")
        rows.append(f"<tr class=\"{css}\"><td>{escape(check.measure)}</td>"
                    f"<td>{format_measure(check.measure, check.value)}</td>"
                    f"<td>{escape(check.direction)} "
                    f"{format_measure(check.measure, check.target)}</td><td>{verdict}</td></tr>")
    head = "<tr><th>SLO</th><th>measured</th><th>target</th><th></th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _svg(height: int, body: list[str], label: str) -> str:
    return (f"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{_WIDTH}\" height=\"{height}\" "
            f"role=\"img\" aria-label=\"{escape(label)}\">{''.join(body)}</svg>")


def _text(x: float, y: float, content: str, anchor: str = "start") -> str:
    return (f"<text x=\"{x:.1f}\" y=\"{y:.1f}\" text-anchor=\"{anchor}\">"
            f"{escape(content)}</text>")


def _histogram(report: Report) -> str:
    """Latencies in √n equal bins from 0 to the slowest, with percentile markers."""
    values = report.durations
    if not values:
        return "<p>No records.</p>"
    top = max(values) or 1e-9
    bins = max(1, min(40, math.ceil(math.sqrt(len(values)))))
    counts = Counter(min(bins - 1, int(v / top * bins)) for v in values)
    tallest = max(counts.values())
    plot_w, plot_h = _WIDTH - 2 * _PAD, _HEIGHT - 2 * _PAD
    bar_w = plot_w / bins
    body = []
    for i in range(bins):
        h = counts[i] / tallest * plot_h
        body.append(f"<rect x=\"{_PAD + i * bar_w:.1f}\" y=\"{_PAD + plot_h - h:.1f}\" "
                    f"width=\"{max(bar_w - 1, 1):.1f}\" height=\"{h:.1f}\" fill=\"#4e79a7\">"
                    f"<title>{counts[i]} record(s)</title></rect>")
    for row, (name, value) in enumerate(report.latency.items()):
        x = _PAD + value / top * plot_w
        body.append(f"<line x1=\"{x:.1f}\" x2=\"{x:.1f}\" y1=\"{_PAD - 8}\" "
                    f"y2=\"{_PAD + plot_h}\" stroke=\"#c62828\" stroke-dasharray=\"3 2\"/>")
        body.append(_text(x + 2, _PAD - 10 + 10 * row, f"{name} {format_duration(value)}"))
    body += [_text(_PAD, _HEIGHT - 8, "0"), _text(_WIDTH - _PAD, _HEIGHT - 8,
                                                   format_duration(top), "end"),
             _text(4, _PAD + 4, str(tallest))]
    return _svg(_HEIGHT, body, "latency histogram")


def _costs(report: Report) -> str:
    """One bar per model, length by cost (by calls when every call was free)."""
    if not report.models:
        return "<p>No model calls.</p>"
    free = all(u.cost_usd == 0 for u in report.models.values())
    scale = max((u.calls if free else u.cost_usd) for u in report.models.values()) or 1
    row_h, label_w = 22, 220
    body = []
    for i, (model, usage) in enumerate(report.models.items()):
        size = (usage.calls if free else usage.cost_usd) / scale * (_WIDTH - label_w - 140)
        y = 6 + i * row_h
        body += [_text(0, y + 13, model[:34]),
                 f"<rect x=\"{label_w}\" y=\"{y}\" width=\"{size:.1f}\" height=\"16\" "
                 f"fill=\"{_PALETTE[i % len(_PALETTE)]}\"/>",
                 _text(label_w + size + 6, y + 13,
                       f"${usage.cost_usd:.4f} · {usage.calls} call(s)")]
    return _svg(12 + row_h * len(report.models), body, "cost by model")


def _tiers_over_time(report: Report) -> str:
    """Records per time bucket, stacked by who answered them (same order in every bar)."""
    if not report.answered:
        return "<p>No records.</p>"
    start = report.answered[0][0]
    span = report.answered[-1][0] - start
    width = next((w for w in _BUCKETS if span / w < 24), _BUCKETS[-1])
    buckets: dict[int, Counter[str]] = {}
    for when, who in report.answered:
        buckets.setdefault(int((when - start) // width), Counter())[who] += 1
    colour = {label: _PALETTE[i % len(_PALETTE)] for i, label in enumerate(report.tiers)}
    body = _stacks(buckets, colour)
    body += _legend(colour)
    body += [_text(_PAD, _HEIGHT - 8, _clock(start)),
             _text(_WIDTH - _PAD, _HEIGHT - 8, f"one bar = {_span(width)}", "end")]
    return _svg(_HEIGHT, body, "who answered over time")


def _legend(colour: dict[str, str]) -> list[str]:
    body = []
    for i, (label, fill) in enumerate(list(colour.items())[:6]):
        x = _PAD + i * 100
        body += [f"<rect x=\"{x}\" y=\"4\" width=\"10\" height=\"10\" fill=\"{fill}\"/>",
                 _text(x + 14, 13, label[:14])]
    return body


def _stacks(buckets: dict[int, Counter[str]], colour: dict[str, str]) -> list[str]:
    n = max(buckets) + 1
    tallest = max(sum(c.values()) for c in buckets.values())
    plot_w, plot_h = _WIDTH - 2 * _PAD, _HEIGHT - 2 * _PAD
    bar_w, body = plot_w / n, [_text(4, _PAD + 4, str(tallest))]
    for index, counts in buckets.items():
        y = float(_PAD + plot_h)
        for label in colour:
            if not counts[label]:
                continue
            h = counts[label] / tallest * plot_h
            y -= h
            body.append(f"<rect x=\"{_PAD + index * bar_w:.1f}\" y=\"{y:.1f}\" "
                        f"width=\"{max(bar_w - 1, 1):.1f}\" height=\"{h:.1f}\" "
                        f"fill=\"{colour[label]}\"><title>{escape(label)}: {counts[label]}"
                        f"</title></rect>")
    return body


def _span(seconds: int) -> str:
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _clock(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch)) if epoch else "start"
