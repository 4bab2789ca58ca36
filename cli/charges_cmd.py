"""`autobill charges list|reconcile`: see charge lines and settle the uncertain ones."""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated

import typer

from cli.common import ConfigOption, fail, settings_or_exit

charges_app = typer.Typer(help="Charge lines posted (or to post) to WHMCS.", no_args_is_help=True)

RECONCILE_HELP = """\
An uncertain charge may or may not be in WHMCS (the answer to AddBillableItem was lost).
For each one: in WHMCS open Billing > Billable Items (or the client's Billable Items tab) and
search the description for the charge's key (ab-...). Then:
  found      autobill charges reconcile KEY --posted --billable-id N
  not found  autobill charges reconcile KEY --not-posted      (posted by the next run)
"""


def _row(c) -> dict:
    return {
        "id": c.id, "key": c.idempotency_key, "state": c.state, "client_id": c.client_id,
        "service_id": c.service_id, "billing_date": c.billing_date.isoformat(), "class": c.charge_class,
        "currency": c.currency, "amount": str(c.amount), "cdrs": c.cdr_count,
        "whmcs_billable_id": c.whmcs_billable_id, "last_error": c.last_error,
    }


def register(app: typer.Typer) -> None:
    @charges_app.command("list")
    def list_(
        config: ConfigOption = None,
        state: Annotated[str | None, typer.Option(help="pending|posting|posted|uncertain|zero")] = None,
        on: Annotated[str | None, typer.Option("--date", help="Billing date YYYY-MM-DD.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    ) -> None:
        """List charge lines, newest first."""
        from sqlalchemy import select

        from autobill.ledger.db import session_scope, upgrade
        from autobill.ledger.models import Charge

        settings = settings_or_exit(config)
        upgrade(settings.ledger)
        query = select(Charge).order_by(Charge.id.desc())
        if state:
            query = query.where(Charge.state == state)
        if on:
            query = query.where(Charge.billing_date == date.fromisoformat(on))
        with session_scope(settings.ledger) as session:
            rows = [_row(c) for c in session.scalars(query)]
        for r in rows:
            if as_json:
                typer.echo(json.dumps(r))
            else:
                typer.echo(
                    f"{r['id']:>6} {r['state']:<9} {r['billing_date']} client {r['client_id']:<6} "
                    f"svc {r['service_id']:<6} {r['class']:<13} {r['amount']:>12} {r['currency']}  {r['key']}"
                )
        if not as_json:
            typer.echo(f"{len(rows)} charge(s)")

    @charges_app.command("reconcile")
    def reconcile_(
        ref: Annotated[str | None, typer.Argument(help="Charge id or idempotency key; omit to list uncertain ones.")] = None,
        posted: Annotated[bool | None, typer.Option("--posted/--not-posted", help="Your finding in WHMCS.")] = None,
        billable_id: Annotated[int | None, typer.Option(help="The WHMCS billable item id, with --posted.")] = None,
        note: Annotated[str, typer.Option(help="Free text kept with the charge.")] = "",
        config: ConfigOption = None,
    ) -> None:
        """Settle charges whose WHMCS call may or may not have happened."""
        from autobill.ledger.charges import ReconcileError, reconcile
        from autobill.ledger.db import session_scope, upgrade
        from autobill.ledger.models import Charge

        settings = settings_or_exit(config)
        upgrade(settings.ledger)
        if ref is None:
            from sqlalchemy import select

            with session_scope(settings.ledger) as session:
                rows = [_row(c) for c in session.scalars(select(Charge).where(Charge.state == "uncertain"))]
            for r in rows:
                typer.echo(f"{r['key']}  client {r['client_id']}  {r['amount']} {r['currency']}  ({r['last_error']})")
            typer.echo(f"{len(rows)} uncertain charge(s)")
            if rows:
                typer.echo(RECONCILE_HELP)
            return
        if posted is None:
            raise fail("say what you found in WHMCS: --posted (with --billable-id) or --not-posted")
        if posted and billable_id is None:
            raise fail("--posted needs --billable-id N (the WHMCS billable item you found)")
        try:
            charge = reconcile(settings, ref, posted=posted, billable_id=billable_id, note=note)
        except ReconcileError as exc:
            raise fail(str(exc)) from None
        typer.echo(f"{charge.idempotency_key}: {charge.state}")

    app.add_typer(charges_app, name="charges")
