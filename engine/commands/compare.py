"""`engine compare A.yaml B.yaml --input FILE`: a shadow run offline — the same records through
two versions of a pipeline, side by side (`engine.quality.compare` does the comparing).

Both runs go to the run store, each record labelled with its side's variant (the file's stem,
or A and B when the stems are the same), so `engine report --by variant` can read them later.
Exit codes: 0 done (a comparison informs, it does not judge), 1 an output field agrees less
than `--min-agreement`, 2 a broken pipeline, input file or command line.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from engine.commands import EXIT_BAD_SPEC, EXIT_OK, compile_or_report, stderr, stdout
from engine.compile import CompiledPipeline
from engine.observe.store import RunStore
from engine.quality.compare import (
    Comparison,
    compare_pairs,
    fields_of,
    format_value,
    pair_lines,
)
from engine.quality.stats import MIN_RECORDS, format_amount
from engine.results import RunResult
from engine.runtime.batch import InputRecord, read_jsonl, run_batch

EXIT_BELOW_AGREEMENT = 1


@dataclass(frozen=True, slots=True)
class CompareOptions:
    concurrency: int = 8
    """Records in flight per side."""
    fields: Sequence[str] = ()
    """Output fields to compare (default: every top-level key)."""
    json_out: Path | None = None
    min_agreement: float | None = None
    store: Path | None = None
    show: int = 20
    """Disagreeing cases printed (all of them go to --json)."""


def compare(a_file: Path, b_file: Path, input_path: str, options: CompareOptions) -> int:
    err = stderr()
    a, b = compile_or_report(a_file), compile_or_report(b_file)
    items = _read_input(input_path, err)
    if a is None or b is None or items is None:
        return EXIT_BAD_SPEC
    labels = _labels(a_file, b_file)
    err.print(f"A = {labels[0]} ({a_file}), B = {labels[1]} ({b_file}): {len(items)} records",
              markup=False)
    stores = [_store(options.store, a, labels[0], a.name), _store(options.store, b, labels[1],
                                                                  a.name)]
    try:
        results = asyncio.run(_run_both(a, b, items, options.concurrency, stores))
    finally:
        for store in stores:
            if store is not None:
                store.close()
    a_lines, b_lines = ([r.to_json() for r in sorted(side, key=lambda r: r.index)]
                        for side in results)
    pairs = pair_lines(a_lines, b_lines)[0]
    unknown = [f for f in options.fields if f not in fields_of(pairs)]
    if unknown:  # a typo would otherwise agree 100 %: missing equals missing
        err.print(f"error: --fields: no output has {', '.join(unknown)}", style="red",
                  markup=False)
        return EXIT_BAD_SPEC
    comparison = compare_pairs(pairs, options.fields or None, labels)
    _print(stdout(), comparison, options.show)
    if comparison.pairs < MIN_RECORDS:
        err.print(f"warning: only {comparison.pairs} records: below {MIN_RECORDS} the "
                  "intervals (a p95 above all) mean little", style="yellow", markup=False)
    if options.json_out is not None and not _write_json(options.json_out, comparison, err):
        return EXIT_BAD_SPEC
    if options.store is not None:
        err.print(f"stored both runs: engine report {options.store} --by variant",
                  markup=False)
    return _judge(comparison, options.min_agreement, err)


def _labels(a_file: Path, b_file: Path) -> tuple[str, str]:
    """The variants' names: A and B with the files' stems, so that `engine report --by
    variant`, which takes the first name as its baseline, compares B against A too."""
    if a_file.stem == b_file.stem:
        return "A", "B"
    return f"A:{a_file.stem}", f"B:{b_file.stem}"


def _read_input(path: str, err: Console) -> list[InputRecord] | None:
    """Every record, read up front: both sides need them, and the rows join by index."""
    if path == "-":
        return list(read_jsonl(sys.stdin.buffer, "<stdin>"))
    try:
        with Path(path).open("rb") as handle:
            return list(read_jsonl(handle, path))
    except OSError as exc:
        err.print(f"error: cannot read --input {path}: {exc.strerror}", style="red",
                  markup=False)
        return None


def _store(folder: Path | None, pipeline: CompiledPipeline, label: str, name: str
           ) -> _LabelledStore | None:
    """One side's run file, stored under `name` (A's pipeline name for both sides, so the
    report finds the two variants of one pipeline even when B renamed itself)."""
    if folder is None:
        return None
    store = RunStore(folder)
    store.open_run(name, file=pipeline.loaded.file, slo=pipeline.loaded.spec.slo,
                   stages={stage: s.type for stage, s in pipeline.stages.items()})
    return _LabelledStore(store, name, label)


@dataclass(frozen=True, slots=True)
class _LabelledStore:
    """One side's run file; its lines carry the side's variant."""

    store: RunStore
    pipeline: str
    variant: str

    def observe(self, result: RunResult) -> None:
        self.store.observe(self.pipeline, None, result, extra={"variant": self.variant})

    def close(self) -> None:
        self.store.close()


async def _run_both(a: CompiledPipeline, b: CompiledPipeline, items: list[InputRecord],
                    concurrency: int, stores: list[_LabelledStore | None]
                    ) -> tuple[list[RunResult], list[RunResult]]:
    """Both sides at once, each with at most `concurrency` records in flight."""
    results: tuple[list[RunResult], list[RunResult]] = ([], [])
    try:
        await asyncio.gather(*(
            run_batch(pipeline, items, _sink(results[side], stores[side]), concurrency)
            for side, pipeline in enumerate((a, b))))
    finally:
        await asyncio.gather(a.resources.aclose(), b.resources.aclose())
    return results


def _sink(results: list[RunResult], store: _LabelledStore | None
          ) -> Callable[[RunResult], None]:
    def sink(result: RunResult) -> None:
        results.append(result)
        if store is not None:
            store.observe(result)
    return sink


def _print(out: Console, comparison: Comparison, show: int) -> None:
    a, b = comparison.labels
    agreement = Table(title=Text(f"agreement of {b} with {a} ({comparison.pairs} records; "
                                 f"errors: {a} {comparison.errors[0]}, {b} "
                                 f"{comparison.errors[1]})"))
    agreement.add_column("field")
    agreement.add_column("agree", justify="right")
    agreement.add_column("rate", justify="right")
    for f in comparison.fields:
        agreement.add_row(Text(f.field), f"{f.agree} of {f.of}", format_amount(f.rate, "share"))
    out.print(agreement)
    if comparison.disagreements:
        out.print(_cases(comparison, show))
    deltas = Table(title=Text(f"{b} against {a}, per record"))
    deltas.add_column("measure")
    for column in (a, b, "change", "95% CI"):
        deltas.add_column(Text(column), justify="right")
    deltas.add_column("significant")
    for m in comparison.measures:
        significant = m.diff is not None and m.diff.significant
        deltas.add_row(m.name, format_amount(m.a, m.unit), format_amount(m.b, m.unit),
                       m.change(), m.interval(), "yes" if significant else "no",
                       style="bold" if significant else None)
    out.print(deltas)
    out.print(comparison.verdict(), markup=False)


def _cases(comparison: Comparison, show: int) -> Table:
    a, b = comparison.labels
    shown = comparison.disagreements[:show]
    more = len(comparison.disagreements) - len(shown)
    table = Table(title=f"disagreements ({len(comparison.disagreements)}"
                  + (f", first {len(shown)} shown; all in --json" if more else "") + ")")
    for column in ("record", "field", a, b):
        table.add_column(Text(column))
    for case in shown:
        record = f"{case.key}" + (f" ({case.id})" if case.id is not None else "")
        table.add_row(Text(record), Text(case.field), Text(format_value(case.a)),
                      Text(format_value(case.b)))
    return table


def _write_json(path: Path, comparison: Comparison, err: Console) -> bool:
    data: dict[str, Any] = comparison.to_json()
    try:
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n",
                        encoding="utf-8")
    except OSError as exc:
        err.print(f"error: cannot write --json {path}: {exc.strerror}", style="red",
                  markup=False)
        return False
    return True


def _judge(comparison: Comparison, minimum: float | None, err: Console) -> int:
    if minimum is None:
        return EXIT_OK
    below = [f for f in comparison.fields if f.rate is not None and f.rate < minimum]
    for f in below:
        err.print(f"agreement below {minimum:.1%}: {f.field} {f.rate:.1%}", style="red",
                  markup=False)
    return EXIT_BELOW_AGREEMENT if below else EXIT_OK
