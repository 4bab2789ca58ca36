"""`autobill services sync|list`: the VoIP services read from WHMCS, and their conflicts.

`sync` reads every VoIP service (GetClientsProducts, page by page), builds the mapping and
records what changed in the ledger (the nightly and autosuspend runs do the same first thing).
`list` shows what the last sync read and from where (WHMCS fields or the YAML override);
`--conflicts` only the conflicts, whose calls stay unrated until fixed in WHMCS.
Exit codes: 0 fine, 1 error (sync failed, sync not enabled), 2 conflicts found (`sync`,
`list --conflicts`), so a monitoring probe can page on them.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cli.common import ConfigOption, fail, settings_or_exit


def register(app: typer.Typer) -> None:
    services = typer.Typer(help="Services read from WHMCS (service_sync) and their conflicts.", no_args_is_help=True)
    app.add_typer(services, name="services")

    @services.command("sync")
    def sync(
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Read every VoIP service from WHMCS now and record the mapping's changes."""
        from autobill.ledger.db import upgrade
        from tasks.services import sync_services

        settings = settings_or_exit(config)
        if not settings.service_sync.enabled:
            raise fail("service_sync.enabled is false: services come from the `services:` list of the config")
        upgrade(settings.ledger)
        result = sync_services(settings, origin="cli")
        if as_json:
            typer.echo(json.dumps(result.to_json(), sort_keys=True))
        elif result.ok:
            typer.echo(f"read {result.read} service(s) from WHMCS: {result.services} VoIP, {result.claims} claim(s), "
                       f"{result.changes} change(s), {len(result.conflicts)} conflict(s)")
            _print_conflicts(result.conflicts)
        if not result.ok:
            raise fail(f"services sync failed, nothing changed: {result.error}")
        if result.conflicts:
            raise typer.Exit(2)

    @services.command("list")
    def list_(
        conflicts: Annotated[bool, typer.Option("--conflicts", help="Only the conflicts of the last sync.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
        config: ConfigOption = None,
    ) -> None:
        """What the last sync read: each service, its server, tenant, extensions, DIDs, plan and source."""
        from autobill.ledger.db import upgrade
        from autobill.services.history import last_sync, service_rows

        settings = settings_or_exit(config)
        upgrade(settings.ledger)
        last = last_sync(settings.ledger)
        tried = last_sync(settings.ledger, ok_only=False)
        if last is None:
            raise fail("no successful services sync yet: run `autobill services sync`"
                       + (f" (last attempt failed: {tried.error})" if tried is not None else ""))
        found = json.loads(last.conflicts or "[]")
        rows = [] if conflicts else service_rows(settings.ledger)
        if as_json:
            doc = {"synced_at": last.at.isoformat(), "origin": last.origin, "conflicts": found}
            if not conflicts:
                doc["services"] = rows
            if tried is not None and not tried.ok:
                doc["last_attempt_error"] = tried.error
            typer.echo(json.dumps(doc, sort_keys=True, default=str))
        else:
            typer.echo(f"last sync {last.at.isoformat()} ({last.origin}): {last.services} service(s), "
                       f"{last.claims} claim(s), {len(found)} conflict(s)")
            if tried is not None and not tried.ok:
                typer.echo(f"WARNING: a later sync failed at {tried.at.isoformat()}: {tried.error}", err=True)
            for r in rows:
                where = f"{r['server'] or '?'}/{r['tenant'] or '?'}"
                owns = "" if r["owning"] else f" [{r['status']}: owns nothing]"
                typer.echo(f"{r['service_id']:>8}  client {r['client_id']:<7} {r['source']:<6} {where:<40} "
                           f"plan {r['plan'] or '-':<16} ext {','.join(r['extensions']) or '-'}  "
                           f"DIDs {','.join(r['dids']) or '-'}{owns}"
                           + (f"\n          problem: {r['problem']}" if r["problem"] else ""))
            _print_conflicts(found)
        if conflicts and found:
            raise typer.Exit(2)


def _print_conflicts(conflicts: list[dict]) -> None:
    for c in conflicts:
        typer.echo(f"CONFLICT {c['kind']}: {c['detail']}")
