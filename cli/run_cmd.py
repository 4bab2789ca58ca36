"""`autobill run --date D [--dry-run] [--json]`: run the nightly flow for one billing date."""

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
)


def print_summary(summary: dict[str, Any]) -> None:
    typer.echo(f"billing date {summary['billing_date']}{' (dry run: nothing posted)' if summary['dry_run'] else ''}")
    cols = ("extracted", "carried_in", "quarantined", "duplicates", "deferred", "unrated", "included",
            "zero_cost", "billed")
    typer.echo(f"  {'server':<28}" + "".join(f"{c:>12}" for c in cols) + "  status")
    for name, s in summary["servers"].items():
        typer.echo(f"  {name:<28}" + "".join(f"{s[c]:>12}" for c in cols)
                   + f"  {s['status']}{' - ' + s['error'] if s.get('error') else ''}")
    typer.echo(f"  {'total':<28}" + "".join(f"{summary[c]:>12}" for c in cols)
               + f"  {'balanced' if summary['balanced'] else 'DOES NOT BALANCE'}")
    billed = ", ".join(f"{v} {k}" for k, v in summary["amount_billed"].items()) or "0"
    posted = ", ".join(f"{v} {k}" for k, v in summary["amount_posted"].items()) or "0"
    typer.echo(f"charges created {summary['charges_created']} ({billed}); posted {summary['charges_posted']} ({posted})")
    for line in summary.get("preview", []):
        typer.echo(f"  would post: client {line['client_id']} {line['amount']} {line['currency']}  {line['description']}")
    if summary["uncertain"]:
        typer.echo(f"{len(summary['uncertain'])} uncertain charge(s): run `autobill charges reconcile`")
    typer.echo(f"status {summary['status']}")


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        on: Annotated[str | None, typer.Option("--date", help="Billing date YYYY-MM-DD (default: yesterday).")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Compute and preview; post nothing.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
        server: Annotated[list[str] | None, typer.Option("--server", help="Only this server (repeatable).")] = None,
        config: ConfigOption = None,
    ) -> None:
        """Run the nightly autobill flow for one billing date; exit 0 completed, 2 partial, 1 error."""
        settings = settings_or_exit(config)
        # Every argument is checked before a flow run exists (bad usage: one line, exit 2).
        day = not_after_today(parse_day(on, "--date"), "--date", settings) if on is not None else None
        server = check_servers(settings, server)
        config_path = str(Path(config or os.environ.get("AUTOBILL_CONFIG") or "autobill.yaml").absolute())
        from autobill.ledger.runs import run_summary
        from flows.autobill import nightly
        tracebacks_to_log_file()  # a failed task's traceback: to the log file, not the terminal
        state = nightly(billing_date=day, servers=server or None, dry_run=dry_run, config_path=config_path,
                        return_state=True)
        summary = run_summary(settings, str(state.state_details.flow_run_id))
        if summary is None:
            raise fail(f"the run ended {state.type.value} before writing a summary: {state.message}")
        if summary.get("error"):  # stopped before any ledger change (preflight): nothing was claimed
            if as_json:
                typer.echo(json.dumps(summary, sort_keys=True))
            raise fail(summary["error"])
        if as_json:
            typer.echo(json.dumps(summary, sort_keys=True))
        else:
            print_summary(summary)
        raise typer.Exit(0 if summary["status"] == "completed" else 2)
