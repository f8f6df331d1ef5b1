"""RELIABILITY.md: every bad-input and fault case the test suite tries, with its outcome, and the totals.

Each case is a test marked `@pytest.mark.reliability` whose docstring reads "<bad input or fault> -> <what
happens>". This script runs exactly those tests and tabulates them, so the table can never claim a case that no
test checks:

    .venv/bin/python benchmarks/reliability.py            # writes RELIABILITY.md, exits 1 if any case fails
"""

from __future__ import annotations

import datetime
import platform
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    """A pytest plugin that keeps each reliability test's docstring and outcome."""

    def __init__(self) -> None:
        self.cases: dict[str, dict[str, str]] = {}

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:  # after -m deselection
            doc = " ".join((getattr(item, "obj", None).__doc__ or item.name).split())
            case, _, outcome = doc.partition("->")
            self.cases[item.nodeid] = {"case": case.strip(), "outcome": outcome.strip() or "-",
                                       "test": item.nodeid, "result": "not run"}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        case = self.cases.get(report.nodeid)
        if case is None:
            return
        if report.when == "call" or report.outcome != "passed":
            case["result"] = "skipped" if report.skipped else report.outcome


def grouped(cases: list[dict[str, str]]) -> list[dict[str, object]]:
    """One row per test function: its parametrized variants are counted, not repeated."""
    rows: dict[str, dict[str, object]] = {}
    for case in cases:
        base, _, variant = case["test"].partition("[")
        row = rows.setdefault(base, {**case, "test": base, "variants": [], "results": []})
        row["results"].append(case["result"])
        if variant:
            row["variants"].append(variant.rstrip("]"))
    return list(rows.values())


def markdown(cases: list[dict[str, str]]) -> str:
    """The table, one row per test function grouped by test file, and the totals."""
    totals = {r: sum(c["result"] == r for c in cases) for r in ("passed", "failed", "skipped")}
    rows = grouped(cases)
    lines = [
        "# Reliability: bad input and faults", "",
        "Every case below is a test marked `reliability`; this file is written by `python benchmarks/reliability.py`, "
        "which runs exactly those tests. \"passed\" means the outcome column holds now; a row with variants counts "
        "the parametrized inputs it tries.", "",
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"Python {platform.python_version()}: **{len(rows)} cases ({len(cases)} with their variants): "
        f"{totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped.**", "",
    ]
    current = None
    for number, row in enumerate(rows, 1):
        file, _, name = str(row["test"]).partition("::")
        if file != current:
            current = file
            lines += ["", f"## {Path(file).stem.removeprefix('test_').replace('_', ' ')} (`{file}`)", "",
                      "| # | bad input or fault | what happens | result | test |", "|---:|---|---|---|---|"]
        results = row["results"]
        result = results[0] if len(results) == 1 else \
            f"{sum(r == 'passed' for r in results)}/{len(results)} passed"
        variants = f" ({len(row['variants'])} variants)" if row["variants"] else ""
        cells = [str(number), str(row["case"]), str(row["outcome"]), result, f"`{name}`{variants}"]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    recorder = Recorder()
    code = pytest.main(["-m", "reliability", "-q", "-p", "no:cacheprovider", str(ROOT / "tests"), *argv],
                       plugins=[recorder])
    cases = sorted(recorder.cases.values(), key=lambda c: c["test"])
    (ROOT / "RELIABILITY.md").write_text(markdown(cases))
    print(f"RELIABILITY.md: {len(cases)} cases")
    return int(code != 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
