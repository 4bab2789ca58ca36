"""How long the nightly run takes, and whether it is creeping toward the WHMCS cron.

Why this exists: the nightly run starts at 00:55 so that its billable items are in WHMCS before
the WHMCS daily automation turns them into invoices. A run that slowly grows (more clients, a
slower PBX) does not fail: it just finishes after WHMCS has invoiced, and the items wait a whole
cycle. The operator needs to see that coming: each run's duration against a budget (the minutes
between the nightly start and the WHMCS cron, `nightly_budget_minutes`), and the trend.

Pure functions over `tasks.runs.run_history` rows (newest first, as the ledger returns them);
`publish_artifact` renders the same report as Prefect artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

# A run's share of the budget from which the report warns (before it is actually late).
NEAR_FRACTION = 0.8
# Fewest finished runs for a trend (fewer make a slope meaningless).
TREND_MIN_RUNS = 5


@dataclass(frozen=True)
class RunDuration:
    run_id: int
    kind: str
    billing_date: Any
    status: str
    started_local: datetime
    finished_local: datetime | None
    minutes: float | None  # None: still running, or died without finishing


@dataclass
class DurationReport:
    budget_minutes: int
    runs: list[RunDuration]  # newest first
    warnings: list[str] = field(default_factory=list)
    trend_minutes_per_week: float | None = None
    days_to_budget: float | None = None

    @property
    def ok(self) -> bool:
        return not self.warnings

    def rows(self) -> list[dict[str, str]]:
        """Plain strings (table artifacts and JSON cannot take dates or Decimals)."""
        out = []
        for r in self.runs:
            share = "" if r.minutes is None else f"{100 * r.minutes / self.budget_minutes:.0f}%"
            out.append({
                "run": str(r.run_id), "kind": r.kind, "billing_date": str(r.billing_date or "-"),
                "status": r.status, "started": r.started_local.strftime("%Y-%m-%d %H:%M"),
                "finished": r.finished_local.strftime("%H:%M:%S") if r.finished_local else "-",
                "minutes": "-" if r.minutes is None else f"{r.minutes:.1f}", "budget_used": share,
            })
        return out

    def markdown(self) -> str:
        lines = [f"# Nightly run durations (budget {self.budget_minutes} min)", ""]
        if self.warnings:
            lines += [f"- **warning:** {w}" for w in self.warnings] + [""]
        else:
            lines += ["All recent nightly runs finished within the budget.", ""]
        if self.trend_minutes_per_week is not None:
            lines.append(f"Trend: {self.trend_minutes_per_week:+.2f} min/week over the last {len(self._finished())} runs"
                         + (f"; the budget is reached in about {self.days_to_budget:.0f} days at this rate."
                            if self.days_to_budget is not None else "."))
            lines.append("")
        lines += ["| billing date | status | started | finished | minutes | budget used |",
                  "|---|---|---|---|---|---|"]
        for row in self.rows():
            lines.append(f"| {row['billing_date']} | {row['status']} | {row['started']} | {row['finished']} "
                         f"| {row['minutes']} | {row['budget_used']} |")
        return "\n".join(lines) + "\n"

    def _finished(self) -> list[RunDuration]:
        return [r for r in self.runs if r.minutes is not None]


def analyse(history: list[dict[str, Any]], budget_minutes: int, tz: ZoneInfo, now: datetime | None = None,
            stale_factor: float = 2.0) -> DurationReport:
    """Durations, budget warnings and the trend of the nightly runs in `history` (newest first).

    Warnings: the latest finished run over the budget, or past NEAR_FRACTION of it; any other
    recent run over budget; a run still "running" after `stale_factor` x budget (it died: a
    killed worker never writes its finish); and a rising trend that reaches the budget within
    30 days. The trend is a least-squares slope of minutes against start time.
    """
    runs = []
    for h in history:
        if h.get("kind") != "nightly" or h.get("dry_run"):
            continue
        started = h["started_at"]
        finished = h.get("finished_at")
        minutes = None if finished is None else (finished - started).total_seconds() / 60
        runs.append(RunDuration(h["id"], h["kind"], h.get("billing_date"), h.get("status") or "?",
                                started.astimezone(tz), finished.astimezone(tz) if finished else None, minutes))
    report = DurationReport(budget_minutes, runs)
    finished = [r for r in runs if r.minutes is not None]
    if finished:
        last = finished[0]
        if last.minutes > budget_minutes:
            report.warnings.append(
                f"the latest nightly run (billing date {last.billing_date}) took {last.minutes:.1f} min, past the "
                f"{budget_minutes} min budget: its charges may have missed the WHMCS daily cron")
        elif last.minutes > NEAR_FRACTION * budget_minutes:
            report.warnings.append(
                f"the latest nightly run (billing date {last.billing_date}) took {last.minutes:.1f} min, "
                f"{100 * last.minutes / budget_minutes:.0f}% of the {budget_minutes} min budget")
        older = [r for r in finished[1:] if r.minutes > budget_minutes]
        if older:
            dates = ", ".join(str(r.billing_date) for r in older[:5])
            report.warnings.append(f"{len(older)} earlier run(s) also went past the budget ({dates})")
    now = now or datetime.now(tz)
    for r in runs:
        if r.minutes is None and (r.status == "interrupted"
                                  or (now - r.started_local).total_seconds() / 60 > stale_factor * budget_minutes):
            report.warnings.append(
                f"run {r.run_id} (billing date {r.billing_date}) started {r.started_local:%Y-%m-%d %H:%M} and never "
                "finished: its process died; rerun the date (it bills only what is missing)")
    _trend(report, finished, budget_minutes)
    return report


def _trend(report: DurationReport, finished: list[RunDuration], budget: int) -> None:
    if len(finished) < TREND_MIN_RUNS:
        return
    xs = [r.started_local.timestamp() / 86400 for r in finished]  # days
    ys = [r.minutes for r in finished]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var  # minutes per day
    report.trend_minutes_per_week = slope * 7
    latest = finished[0].minutes
    if slope > 0 and latest < budget:
        report.days_to_budget = (budget - latest) / slope
        if report.days_to_budget <= 30:
            report.warnings.append(
                f"nightly runs grow {slope * 7:.1f} min/week: at this rate they pass the {budget} min budget "
                f"in about {report.days_to_budget:.0f} days")


def publish_artifact(report: DurationReport) -> None:
    """The report as a markdown artifact (key `autobill-run-durations`, one version per call)."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(report.markdown(), key="autobill-run-durations",
                             description="Nightly run durations against the WHMCS cron budget")
