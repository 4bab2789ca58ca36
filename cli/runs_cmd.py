"""`autobill runs`: recent runs and how long the nightly job takes against its budget.

The budget (`nightly_budget_minutes`) is the time between the nightly start (00:55) and the
WHMCS daily cron that invoices billable items; a nightly run finishing after it leaves its
charges for the next invoice cycle. `--check` exits 1 when there is a warning, for a monitoring
probe (cron, Nagios) that should page before the run is actually late.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cli.common import ConfigOption, check_choice, settings_or_exit
from cli.tables import AllOption, Column, LimitOption, print_listing, row_limit

RUN_KINDS = ("nightly", "autosuspend", "backfill", "manual")


def register(app: typer.Typer) -> None:
    @app.command("runs")
    def runs(
        kind: Annotated[str | None, typer.Option("--kind", help="Only runs of this kind (nightly, autosuspend).")] = None,
        limit: LimitOption = 30,
        show_all: AllOption = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
        check: Annotated[bool, typer.Option("--check", help="Exit 1 when the nightly runs need attention.")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Show recent runs with their durations; warn when the nightly run nears its budget."""
        from autobill.durations import analyse
        from autobill.ledger.db import upgrade
        from autobill.ledger.runs import run_history

        check_choice(kind, RUN_KINDS, "--kind")
        settings = settings_or_exit(config)
        upgrade(settings.ledger)
        history = run_history(settings, kind, row_limit(limit, show_all))
        nightly = history if kind == "nightly" else run_history(settings, "nightly", row_limit(limit, show_all))
        report = analyse(nightly, settings.nightly_budget_minutes, settings.tz)
        if as_json:
            doc = {
                "budget_minutes": settings.nightly_budget_minutes, "warnings": report.warnings,
                "trend_minutes_per_week": report.trend_minutes_per_week, "days_to_budget": report.days_to_budget,
                "runs": [{k: (str(v) if v is not None and not isinstance(v, int | float | bool) else v)
                          for k, v in h.items()} for h in history],
            }  # fmt: skip
            typer.echo(json.dumps(doc, sort_keys=True))
        else:
            _print(history, settings, report, kind)
        if check and report.warnings:
            raise typer.Exit(1)


def _print(history, settings, report, kind: str | None) -> None:
    from autobill.ledger.runs import count_runs

    tz, budget = settings.tz, settings.nightly_budget_minutes
    rows = []
    for h in history:
        seconds = h["seconds"]
        bar = ""
        if h["kind"] == "nightly" and seconds is not None:
            used = seconds / 60 / budget
            bar = "#" * min(20, round(used * 10)) + (" OVER" if used > 1 else f" {used:.0%}")
        rows.append({
            "id": h["id"], "kind": h["kind"], "billing_date": str(h["billing_date"] or "-"),
            "status": h["status"] + (" (dry)" if h["dry_run"] else ""),
            "started": h["started_at"].astimezone(tz).strftime("%Y-%m-%d %H:%M:%S"),
            "minutes": "" if seconds is None else f"{seconds / 60:.1f}", "budget": bar,
        })
    columns = (Column("id", "id", right=True), Column("kind", "kind"), Column("billing_date", "billing date"),
               Column("status", "status"), Column("started", f"started ({tz.key})"),
               Column("minutes", "minutes", right=True), Column("budget", f"of {budget} min budget"))
    notes = []
    if report.trend_minutes_per_week is not None:
        notes.append(f"nightly trend: {report.trend_minutes_per_week:+.2f} min/week")
    interrupted = sum(1 for h in history if h["status"] == "interrupted")
    if interrupted:
        notes.append(f"{interrupted} interrupted run(s): the process died before finishing; rerun the billing "
                     "date (it bills only what is missing)")
    print_listing(rows, columns, title="Runs", total=count_runs(settings, kind), notes=notes)
    for w in report.warnings:
        typer.echo(f"WARNING: {w}", err=True)
