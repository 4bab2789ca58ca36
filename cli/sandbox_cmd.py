"""`autobill sandbox serve`: run the WHMCS API sandbox by hand (issue #6).

A development tool: it serves the WHMCS External API on loopback with SQLite state, so the
nightly job and autosuspend can be pointed at it (`whmcs.url` = the printed URL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

sandbox_app = typer.Typer(help="The WHMCS API sandbox (a loopback development server, not a WHMCS).", no_args_is_help=True)


@sandbox_app.command("serve")
def serve(
    port: Annotated[int, typer.Option(help="TCP port (0: any free port).")] = 8081,
    host: Annotated[str, typer.Option(help="Address to bind; keep it on loopback.")] = "127.0.0.1",
    db: Annotated[Path | None, typer.Option(help="SQLite file for the state (default: a temporary file).")] = None,
    seed_clients: Annotated[int, typer.Option(help="Create this many clients (with a VoIP service) at start.")] = 0,
    identifier: Annotated[str, typer.Option(help="API identifier the sandbox accepts.")] = "demo",
    secret: Annotated[
        str, typer.Option(envvar="AUTOBILL_SANDBOX_SECRET", help="API secret it accepts (env AUTOBILL_SANDBOX_SECRET).")
    ] = "demo",
    timezone: Annotated[str, typer.Option(help="The simulated WHMCS server's timezone (its dates and times).")] = "UTC",
) -> None:
    """Serve until Ctrl-C; prints the API URL and the client custom field ids."""
    import signal

    from sandboxes.whmcs import WhmcsSandbox

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM cleans up (temporary state file) like Ctrl-C

    signal.signal(signal.SIGTERM, _stop)
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        typer.echo(f"error: --timezone: unknown IANA timezone {timezone!r}", err=True)
        raise typer.Exit(1) from None
    sandbox = WhmcsSandbox(db_path=db, identifier=identifier, secret=secret, host=host, port=port, timezone=timezone)
    try:
        if seed_clients:
            ids = sandbox.bulk_seed(seed_clients)
            typer.echo(f"seeded clients {ids[0]}..{ids[-1]}")
        sandbox.start()
        typer.echo(f"WHMCS sandbox at {sandbox.url}", err=False)
        typer.echo(f"  state      {sandbox.db_path}")
        typer.echo(f"  identifier {identifier} (secret not shown)")
        fields = ", ".join(f"{name!r}: {fid}" for name, fid in sandbox.custom_field_ids.items())
        typer.echo(f"  whmcs.custom_field_ids: {{{fields}}}")
        typer.echo(f"  faults     POST {sandbox.base_url}/_sandbox/faults  (JSON; loopback only)")
        typer.echo(f"  daily cron POST {sandbox.base_url}/_sandbox/cron    (nextcron items -> invoices; loopback only)")
        sandbox.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        sandbox.close()


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.add_typer(sandbox_app, name="sandbox")
