"""`autobill dispute open|resolve|list`: a client's challenge of named calls, with who, when and why."""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import asdict
from typing import Annotated

import typer

from cli.common import ConfigOption, fail, settings_or_exit

dispute_app = typer.Typer(help="Calls a client disputes: held out of billing, credited or released.",
                          no_args_is_help=True)


def _who(by: str | None) -> str:
    if by:
        return by
    try:
        return os.environ.get("AUTOBILL_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def register(app: typer.Typer) -> None:
    @dispute_app.command("open")
    def open_(
        client: Annotated[int, typer.Option("--client", help="WHMCS client id.")],
        cdr: Annotated[list[str], typer.Option("--cdr", help="A disputed call's key (repeat, or comma-separate).")],
        reason: Annotated[str, typer.Option("--reason", help="Why the client disputes them.")],
        by: Annotated[str | None, typer.Option("--by", help="Who opens it (default: $AUTOBILL_USER or you).")] = None,
        config: ConfigOption = None,
    ) -> None:
        """Open a dispute. Billed calls wait for `resolve --credit|--reject`; calls not billed yet are
        held out of billing while it is open."""
        from autobill.ledger.db import upgrade
        from autobill.ledger.disputes import DisputeError, list_disputes, open_dispute

        settings = settings_or_exit(config)
        upgrade(settings.ledger)
        keys = [k for value in cdr for k in value.split(",")]
        try:
            dispute_id = open_dispute(settings, client, keys, reason, _who(by))
        except DisputeError as exc:
            raise fail(str(exc)) from None
        view = next(d for d in list_disputes(settings, client) if d.id == dispute_id)
        billed = sum(1 for i in view.items if i["state_at_open"] == "billed")
        typer.echo(f"dispute #{dispute_id} open for client {client}: {billed} billed call(s) to credit or reject, "
                   f"{len(view.items) - billed} call(s) held out of billing")

    @dispute_app.command("resolve")
    def resolve(
        dispute_id: Annotated[int, typer.Argument(help="The dispute's number.")],
        credit: Annotated[bool, typer.Option("--credit", help="Credit the calls (a correction line per charge).")]
        = False,
        reject: Annotated[bool, typer.Option("--reject", help="Reject: held calls are billed by the next run.")]
        = False,
        note: Annotated[str, typer.Option("--note", help="Why it was resolved this way.")] = "",
        by: Annotated[str | None, typer.Option("--by", help="Who resolves it (default: $AUTOBILL_USER or you).")]
        = None,
        config: ConfigOption = None,
    ) -> None:
        """Credit or reject an open dispute."""
        from autobill.ledger.charges import find_charge
        from autobill.ledger.db import upgrade
        from autobill.ledger.disputes import DisputeError, resolve_dispute

        if credit == reject:
            raise fail("resolve: give exactly one of --credit or --reject")
        settings = settings_or_exit(config)
        upgrade(settings.ledger)
        try:
            created = resolve_dispute(settings, dispute_id, credit, _who(by), note)
        except DisputeError as exc:
            raise fail(str(exc)) from None
        if not credit:
            typer.echo(f"dispute #{dispute_id} rejected: held calls are billed by the next run")
            return
        typer.echo(f"dispute #{dispute_id} credited: {len(created)} correction line(s)")
        for charge_id in created:
            c = find_charge(settings, str(charge_id))
            typer.echo(f"  {c.idempotency_key}  {c.currency} {c.amount}  {c.state}  (posted to WHMCS by the next run)")

    @dispute_app.command("list")
    def list_(
        client: Annotated[int | None, typer.Option("--client", help="Only this client.")] = None,
        status: Annotated[str | None, typer.Option(help="open | credited | rejected")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Disputes, newest first, with who opened and resolved them, when and why."""
        from autobill.ledger.db import upgrade
        from autobill.ledger.disputes import list_disputes

        settings = settings_or_exit(config)
        upgrade(settings.ledger)
        views = list_disputes(settings, client, status)
        if not views:
            typer.echo("no disputes")
        for v in views:
            if as_json:
                typer.echo(json.dumps(asdict(v)))
                continue
            resolved = f"; {v.resolution} by {v.resolved_by} at {v.resolved_at}" if v.resolved_at else ""
            typer.echo(f"#{v.id} client {v.client_id} {v.status}: {len(v.items)} call(s); opened by {v.opened_by} "
                       f"at {v.opened_at}: {v.reason}{resolved}" + (f" ({v.note})" if v.note else ""))
            for i in v.items:
                typer.echo(f"    {i['cdr_key']}  {i['state_at_open']} -> {i['status']}"
                           + (f"  cost {i['cost']}" if i["cost"] else ""))

    app.add_typer(dispute_app, name="dispute")
