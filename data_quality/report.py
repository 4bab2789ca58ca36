"""The validation report of one batch: markdown for people (Prefect artifact), JSON for tools.

Both are written under `<data>/reports/validation/` so the run links to a file that outlives
the Prefect database; the markdown is also what the task publishes as an artifact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from data_quality.policy import Decision
from data_quality.suites import BatchReport

SAMPLE_ROWS = 10


def report_dir(data_path: Path) -> Path:
    return Path(data_path) / "reports" / "validation"


def _cell(value: Any) -> str:
    text = json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")[:160]


def render_markdown(
    title: str,
    counts: dict[str, int],
    by_rule: dict[str, int],
    duplicates_by: dict[str, int],
    decision: Decision,
    report: BatchReport | None,
    samples: pl.DataFrame | None = None,
) -> str:
    verdict = "ACCEPTED" if decision.accepted else "REJECTED (not billed; watermark unchanged)"
    lines = [
        f"# Validation: {title}",
        "",
        f"**{verdict}**. Bad-row fraction {decision.bad_fraction:.2%} ({decision.bad_rows} of {decision.judged_rows}).",
        "",
        "| rows | good | quarantined | duplicates |",
        "|---:|---:|---:|---:|",
        f"| {counts['rows']} | {counts['good']} | {counts['quarantined']} | {counts['duplicates']} |",
        "",
    ]
    if decision.reasons:
        lines += ["## Why rejected", "", *[f"- {r}" for r in decision.reasons], ""]
    if decision.warnings:
        lines += ["## Warnings", "", *[f"- {w}" for w in decision.warnings], ""]
    if by_rule:
        lines += ["## Quarantined by rule", "", "| rule | rows |", "|---|---:|",
                  *[f"| {rule} | {n} |" for rule, n in by_rule.items()], ""]
    if duplicates_by:
        lines += ["## Duplicates (counted, not billed)", "", "| already | rows |", "|---|---:|",
                  *[f"| {k} | {n} |" for k, n in duplicates_by.items()], ""]
    if samples is not None and samples.height:
        lines += [f"## Sample of quarantined rows (first {min(SAMPLE_ROWS, samples.height)})", "",
                  "| cdr_key | rule | reason |", "|---|---|---|"]
        for r in samples.head(SAMPLE_ROWS).iter_rows(named=True):
            lines.append(f"| {_cell(r['cdr_key'])} | {r['rule']} | {_cell(r['reason'])} |")
        lines += ["", "Release after fixing the cause: `autobill quarantine release --rule RULE --server SERVER`.", ""]
    if report is not None:
        lines += ["## Batch checks (Great Expectations + volume)", "",
                  "| check | severity | result | observed |", "|---|---|---|---|"]
        for c in report.checks:
            result = "ERROR" if c.error else ("ok" if c.success else "FAILED")
            observed = c.error or c.observed
            lines.append(f"| {_cell(c.label)} | {c.severity} | {result} | {_cell(observed)} |")
        if report.volume is not None:
            lines += ["", f"Volume: {report.volume.status}: {report.volume.detail}"]
        lines.append("")
    return "\n".join(lines)


def write_report(data_path: Path, name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """(json path, markdown path) of `<data>/reports/validation/<name>.{json,md}`."""
    folder = report_dir(data_path)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=str, sort_keys=True), encoding="utf-8")
    md_path.write_text(markdown, encoding="utf-8")
    return json_path, md_path
