"""The closing table every benchmark prints: measure, value, target, pass/fail.

Pass/fail is information for the reader: a benchmark never fails on a figure (the machine is
noisy; figures are ratios against baselines measured in the same run).
"""

from __future__ import annotations

Row = tuple[str, str, str, bool | None]
"""measure, value, target, whether it passed (None: informational only)."""


def print_table(rows: list[Row]) -> None:
    width = max(len(r[0]) for r in rows)
    value_width = max(len("value"), *(len(r[1]) for r in rows))
    target_width = max(len("target"), *(len(r[2]) for r in rows))
    print(f"\n{'measure':<{width}}  {'value':>{value_width}}  {'target':>{target_width}}  result")
    for name, value, target, ok in rows:
        result = "-" if ok is None else "pass" if ok else "FAIL"
        print(f"{name:<{width}}  {value:>{value_width}}  {target:>{target_width}}  {result}")
    print("(pass/fail is informational: this script never fails on a figure)")
