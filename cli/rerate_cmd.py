"""`autobill rerate --from D1 --to D2 --reason TEXT [--client C] [--tariff NAME@VERSION] [--dry-run]`.

Runs the rerate flow (flows/rerate.py) in this process. Exit 0 when every correction was posted
(or there was nothing to correct), 2 when some are uncertain or not posted yet, 1 on an error.
"""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import ConfigOption, fail, settings_or_exit, tracebacks_to_log_file


def _day(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise fail(f"{option}: not a date (YYYY-MM-DD): {value!r}") from None


def print_rerate(s: dict[str, Any]) -> None:
    dry = s.get("dry_run")
    typer.echo(f"re-rate {s['date_from']} .. {s['date_to']}"
               f"{' (dry run: nothing recorded or posted)' if dry else ''}  client {s['client_id'] or 'all'}")
    typer.echo(f"  reason: {s['reason']}  (by {s['requested_by']})")
    typer.echo(f"  tariffs: {', '.join(f'{k}@{v}' for k, v in s['tariff_versions'].items())}")
    typer.echo(f"  calls re-rated {s['rerated']}, changed {s['changed_calls']}, kept at their price {s['skipped']}")
    for why, n in s["skipped_reasons"].items():
        typer.echo(f"    not re-rated ({n}): {why}")
    typer.echo(f"  {'client':>8} {'currency':>8} {'billed':>12} {'re-rated':>12} {'difference':>12} {'calls':>7}")
    for c in s["clients"]:
        typer.echo(f"  {c['client_id']:>8} {c['currency']:>8} {c['old']:>12} {c['new']:>12} {c['difference']:>12}"
                   f" {c['calls']:>7}")
    if s["destinations"]:
        typer.echo("  destinations that changed most:")
        for d in s["destinations"]:
            typer.echo(f"    {d['destination'][:40]:<40} {d['calls']:>6} call(s) {d['difference']:>12} {d['currency']}")
    verb = "would post" if dry else "posts"
    for ln in s["lines"]:
        if ln["posts_as"] != "none":
            typer.echo(f"  {verb} {ln['posts_as']:<13} client {ln['client_id']:<6} {ln['billing_date']} "
                       f"{ln['class']:<13} was {ln['was']} now {ln['now']} ({ln['amount']} {ln['currency']})  {ln['key']}")
    typer.echo(f"{s['corrections']} correction line(s): {s['billable_items']} billable item(s), {s['credits']} "
               f"credit(s)" + ("" if dry else f"; posted {s['posted']}"))
    if s.get("uncertain"):
        typer.echo(f"{len(s['uncertain'])} uncertain charge(s): run `autobill charges reconcile`")
    if not dry:
        typer.echo(f"status {s['status']}")


def register(app: typer.Typer) -> None:
    @app.command("rerate")
    def rerate_cmd(
        start: Annotated[str, typer.Option("--from", help="First billing date, YYYY-MM-DD (inclusive).")],
        end: Annotated[str, typer.Option("--to", help="Last billing date, YYYY-MM-DD (inclusive).")],
        reason: Annotated[str, typer.Option("--reason", help="Why (required; kept with every correction).")],
        client: Annotated[int | None, typer.Option("--client", help="Only this WHMCS client id.")] = None,
        tariff: Annotated[list[str] | None, typer.Option(
            "--tariff", help="NAME@VERSION: rate with an archived tariff version (repeatable).")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Preview only: record and post nothing.")] = False,
        by: Annotated[str | None, typer.Option("--by", help="Who asks (default: user@host).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Re-rate calls already billed with today's tariffs (or a named version); post only the difference."""
        settings = settings_or_exit(config)
        first, last = _day(start, "--from"), _day(end, "--to")
        from autobill.rating.archive import TariffVersionError, load_version, parse_spec
        from flows.rerate import check_request, rerate

        try:
            check_request(first, last, reason)
            for spec in tariff or []:
                load_version(settings, *parse_spec(spec))
        except TariffVersionError as exc:
            raise fail(str(exc)) from None
        except ValueError as exc:
            raise fail(str(exc).replace("end_date", "--to").replace("start_date", "--from")
                       .replace("reason:", "--reason:")) from None
        if client is not None and client not in {s.client_id for s in settings.services}:
            raise fail(f"--client: no service of client {client} in the config")
        config_path = str(Path(config or os.environ.get("AUTOBILL_CONFIG") or "autobill.yaml").absolute())
        from autobill.ledger.db import upgrade
        from autobill.ledger.runs import run_summary

        upgrade(settings.ledger)
        tracebacks_to_log_file()  # a failed task's traceback: to the log file, not the terminal
        state = rerate(start_date=first, end_date=last, reason=reason, client_id=client, tariff=tariff or None,
                       dry_run=dry_run, requested_by=by, config_path=config_path, return_state=True)
        summary = run_summary(settings, str(state.state_details.flow_run_id))
        if summary is None:
            raise fail(f"the re-rate ended {state.type.value} before writing a summary: {state.message}")
        if as_json:
            typer.echo(json.dumps(summary, sort_keys=True, default=str))
        else:
            print_rerate(summary)
        raise typer.Exit(0 if summary["status"] == "completed" else 2)
