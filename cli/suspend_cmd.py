"""`autobill suspend-check`: run one autosuspend cycle by hand and print the decisions (issue #7).

The same plain functions as the 5-minute flow (flows.autosuspend.run_cycle), without Prefect or a
Prefect server. `--dry-run` reads and decides only: nothing is changed on the PBX or in WHMCS,
no email is sent, nothing is written to the ledger. The log rows it writes otherwise carry the
actor `suspend-check`. Exit status 1 when the cycle could not read WHMCS at all.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cli.common import ConfigOption, fail, settings_or_exit


def _fmt(value) -> str:
    return "-" if value is None else str(value)


def register(app: typer.Typer) -> None:
    @app.command("suspend-check")
    def suspend_check(
        config: ConfigOption = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide only; change nothing, send nothing.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the cycle as one JSON document.")] = False,
        show_all: Annotated[bool, typer.Option("--all", help="Also list services where nothing changes.")] = False,
    ) -> None:
        """Run one autosuspend cycle now: suspend, unsuspend, alert; print what was decided."""
        from autobill.ledger.db import upgrade
        from autobill.ledger.runs import RunBusy
        from autobill.secrets import SecretError
        from connectors.whmcs import WhmcsError
        from flows.autosuspend import run_cycle
        from tasks.preflight import check_secrets

        settings = settings_or_exit(config)
        if settings.whmcs is None:
            raise fail("no `whmcs` section in the configuration: autosuspend reads credit from WHMCS")
        problems = check_secrets(settings, [], dry_run=False)  # before any run is recorded
        if problems:
            raise fail(problems[0])
        upgrade(settings.ledger)
        try:
            report = run_cycle(settings, dry_run, actor="suspend-check")
        except (WhmcsError, RunBusy, SecretError) as exc:
            raise fail(str(exc)) from None
        if as_json:
            doc = report.to_json()
            if show_all:
                doc["decisions_all"] = [
                    {"client": d.client_id, "service": d.service_id, "action": str(d.action), "reason": d.reason}
                    for d in report.decisions
                ]
            typer.echo(json.dumps(doc, default=str, indent=2))
        else:
            done = {id(o.decision): o for o in report.outcomes}
            shown = [d for d in report.decisions if show_all or d.changes]
            if shown:
                typer.echo(f"{'client':>7} {'service':>7}  {'action':<18} {'mode':<9} {'credit':>10} {'unpaid':>10}  "
                           f"{'status':<8} reason")  # fmt: skip
            for d in shown:
                o = done.get(id(d))
                status = "dry-run" if dry_run and d.changes else (o.status if o else "-")
                typer.echo(f"{d.client_id:>7} {d.service_id:>7}  {str(d.action):<18} {_fmt(o.mode if o else d.mode):<9} "
                           f"{_fmt(d.credit):>10} {_fmt(d.unpaid):>10}  {status:<8} {d.reason}"
                           + (f"  [{o.message}]" if o and o.message else ""))  # fmt: skip
            for o in report.outcomes:
                if id(o.decision) not in {id(d) for d in report.decisions}:  # completed interrupted changes
                    typer.echo(f"{o.decision.client_id:>7} {o.decision.service_id:>7}  {str(o.decision.action):<18} "
                               f"{_fmt(o.mode):<9} {'':>10} {'':>10}  {o.status:<8} {o.decision.reason}  [{o.message}]")  # fmt: skip
            s = report.summary()
            decided = ", ".join(f"{k} {v}" for k, v in s["decisions"].items()) or "nothing to check"
            typer.echo(
                f"{'dry run: ' if dry_run else ''}{s['services']} services, {s['unreadable_clients']} unreadable clients; "
                f"{decided}; applied {s['applied']}, failed {s['failed']} ({s['seconds']} s, status {s['status']})"
            )
            for err in s["errors"]:
                typer.echo(f"read error: {err}", err=True)
        if report.status == "failed":
            raise typer.Exit(1)
