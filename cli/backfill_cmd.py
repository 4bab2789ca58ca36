"""`autobill backfill --from D1 --to D2 [--dry-run]`: the nightly job for a range of past dates.

Runs the backfill flow (flows/backfill.py) in this process: one child flow run per date, oldest
first. With `PREFECT_API_URL` pointing at a server where the nightly deployment exists, each child
runs on a worker; otherwise the children are subflows here. Exit 0 when every date completed,
2 when some did not (the summary names them), 1 on an error before any date ran.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import (
    ConfigOption,
    check_servers,
    fail,
    not_after_today,
    parse_day,
    settings_or_exit,
    tracebacks_to_log_file,
    usage,
)


def print_backfill(summary: dict[str, Any]) -> None:
    typer.echo(f"backfill {summary['start_date']} .. {summary['end_date']}"
               f"{' (dry run: nothing posted)' if summary['dry_run'] else ''}")
    cols = ("extracted", "billed", "charges_created", "charges_posted")
    typer.echo(f"  {'date':<12}{'state':<11}{'status':<11}" + "".join(f"{c:>16}" for c in cols) + "  amount posted  run")
    for r in summary["results"]:
        amount = ", ".join(f"{v} {k}" for k, v in (r["amount_posted"] or {}).items()) or "0"
        typer.echo(f"  {r['billing_date']:<12}{r['state']:<11}{r['status']:<11}" + "".join(f"{r[c]:>16}" for c in cols)
                   + f"  {amount:<13}  {r['flow_run_name'] or '-'}" + (f"  ({r['message']})" if r["message"] else ""))
    amount = ", ".join(f"{v} {k}" for k, v in summary["amount_posted"].items()) or "0"
    typer.echo(f"  {'total':<34}" + "".join(f"{summary[c]:>16}" for c in cols) + f"  {amount}")
    typer.echo(f"{summary['completed']} of {summary['dates']} date(s) completed")
    if summary["not_completed"]:
        typer.echo(f"not completed: {', '.join(summary['not_completed'])} (rerun them: they bill only what is missing)")
    if summary["uncertain"]:
        typer.echo(f"{summary['uncertain']} uncertain charge(s): run `autobill charges reconcile`")


def register(app: typer.Typer) -> None:
    @app.command("backfill")
    def backfill_cmd(
        start: Annotated[str, typer.Option("--from", help="First billing date, YYYY-MM-DD (inclusive).")],
        end: Annotated[str, typer.Option("--to", help="Last billing date, YYYY-MM-DD (inclusive).")],
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Preview every date; post nothing.")] = False,
        server: Annotated[list[str] | None, typer.Option("--server", help="Only this server (repeatable).")] = None,
        in_process: Annotated[bool, typer.Option(
            "--in-process", help="Run the children here even if the nightly deployment exists.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Bill a range of past dates, one child flow run per date, in order; a billed date posts nothing new."""
        settings = settings_or_exit(config)
        first, last = parse_day(start, "--from"), parse_day(end, "--to")
        if first > last:
            raise usage(f"--from {first} is after --to {last} (a reversed range)")
        not_after_today(last, "--to", settings)
        server = check_servers(settings, server)
        from flows.backfill import NIGHTLY_DEPLOYMENT, backfill, billing_dates

        try:
            billing_dates(first, last)
        except ValueError as exc:
            raise usage(str(exc)) from None
        config_path = str(Path(config or os.environ.get("AUTOBILL_CONFIG") or "autobill.yaml").absolute())
        tracebacks_to_log_file()  # a failed task's traceback: to the log file, not the terminal
        state = backfill(start_date=first, end_date=last, dry_run=dry_run, servers=server or None,
                         config_path=config_path, deployment="" if in_process else NIGHTLY_DEPLOYMENT,
                         return_state=True)
        summary = state.result(raise_on_failure=False)
        if not isinstance(summary, dict):
            raise fail(f"the backfill ended {state.type.value} without a summary: {state.message}")
        if as_json:
            typer.echo(json.dumps(summary, sort_keys=True, default=str))
        else:
            print_backfill(summary)
        raise typer.Exit(0 if not summary["not_completed"] else 2)
