"""The flagship's golden set, `tests/golden/support.yaml`, through `engine test` offline, as
CI runs it: the pass rate it reaches today, and no failures outside its known misroutes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main
from engine.quality.golden import load_dataset

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "support.yaml"
MIN_PASS_RATE = 0.85
"""52 of 59 pass today; the 7 failures are the misroutes in KNOWN."""
KNOWN = {
    "misroute-t0001-cancel-escalated", "misroute-t0011-downgrade-escalated",
    "misroute-t0012-layout-escalated", "misroute-t0017-proration-escalated",
    "misroute-t0272-privacy-incident-queued", "misroute-t0015-enterprise-category",
    "misroute-t0006-paypal-not-found",
}


def test_the_golden_set_covers_every_route_with_50_cases() -> None:
    dataset = load_dataset(GOLDEN)
    assert len(dataset.cases) >= 50
    finishing = {a.expected for case in dataset.cases for a in case.expect
                 if a.parts == ("finished_by",)}
    assert finishing >= {"refuse", "lookup", "escalate", "withheld", "queue"}
    actions = {(case.name.split("-")[0], a.expected) for case in dataset.cases
               for a in case.expect if a.path == "output.action"}
    assert {("answer", "answered"), ("uncited", "queued")} <= actions  # ran to the end


def test_the_flagship_passes_its_golden_set_offline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    report = tmp_path / "golden.json"
    code = main(["test", "-d", str(GOLDEN), "--no-store", "--json", str(report),
                 "--min-pass-rate", str(MIN_PASS_RATE)])
    results = json.loads(report.read_text())
    failed = {case["name"] for case in results["cases"] if not case["passed"]}
    assert failed <= KNOWN, f"new failures: {failed - KNOWN}"
    assert results["pass_rate"] >= MIN_PASS_RATE and code == 0
