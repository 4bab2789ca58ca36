"""`autobill fraud list|clear`: the toll-fraud guard's holds (#18) and the operator's override."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from autobill.ledger.db import upgrade
from autobill.ledger.intraday import clear_hold, list_holds
from autobill.timeutil import utc_now
from cli.common import ConfigOption, fail, settings_or_exit

fraud_app = typer.Typer(help="Toll-fraud holds: services the spend-velocity guard suspended.", no_args_is_help=True)


def _row(h) -> dict:
    return {
        "hold": h.id, "service_id": h.service_id, "client_id": h.client_id, "opened_at": h.opened_at.isoformat(),
        "reason": h.reason, "calls": len(json.loads(h.evidence or "[]")),
        "cleared_at": h.cleared_at.isoformat() if h.cleared_at else None, "cleared_by": h.cleared_by,
    }  # fmt: skip


def register(app: typer.Typer) -> None:
    @fraud_app.command("list")
    def list_(
        config: ConfigOption = None,
        all_: Annotated[bool, typer.Option("--all", help="Cleared holds too.")] = False,
        evidence: Annotated[bool, typer.Option("--evidence", help="Print the calls behind each hold.")] = False,
    ) -> None:
        """Open holds (the services stay suspended until cleared)."""
        settings = settings_or_exit(config)
        upgrade(settings.ledger)
        holds = list_holds(settings, include_cleared=all_)
        if not holds:
            typer.echo("no toll-fraud holds" + ("" if all_ else " open"))
        for h in holds:
            r = _row(h)
            state = f"cleared by {r['cleared_by']} at {r['cleared_at']}" if r["cleared_at"] else "OPEN"
            typer.echo(f"hold {r['hold']}: service {r['service_id']} (client {r['client_id']}) since {r['opened_at']} "
                       f"[{state}]: {r['reason']}")  # fmt: skip
            if evidence:
                for c in json.loads(h.evidence or "[]"):
                    typer.echo(f"    {c['start_utc']} +{c.get('number')} {c.get('class')} {c.get('billsec')}s "
                               f"{c.get('cost')} [{c['cdr_key']}]")  # fmt: skip

    @fraud_app.command("clear")
    def clear(
        service_id: Annotated[int, typer.Argument(help="WHMCS service id of the held service.")],
        by: Annotated[str, typer.Option("--by", help="Who clears it (recorded).")],
        reason: Annotated[str, typer.Option("--reason", help="Why (recorded).")] = "cleared by the operator",
        config: ConfigOption = None,
    ) -> None:
        """Clear a service's hold: the next autosuspend cycle decides on its balance again (and lifts
        the suspension when the balance allows); calls before now never trip the guard again."""
        settings = settings_or_exit(config)
        upgrade(settings.ledger)
        hold = clear_hold(settings, service_id, by, reason, utc_now())
        if hold is None:
            raise fail(f"service {service_id}: no open toll-fraud hold")
        typer.echo(f"hold {hold.id} of service {service_id} cleared by {by}; the next autosuspend cycle decides again")

    app.add_typer(fraud_app, name="fraud")
