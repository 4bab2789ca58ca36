"""`autobill demo`: the main job on the embedded default, from nothing but the package."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        workdir: Annotated[Path, typer.Option("--dir", help="Where the demo writes its config, lake and ledger.")] = Path(
            "demo"
        ),
        keep_ui: Annotated[bool, typer.Option("--keep-ui", help="Leave the Prefect UI running until Ctrl-C.")] = False,
        clients: Annotated[int, typer.Option("--clients", min=4, help="How many clients to generate.")] = 50,
        days: Annotated[int, typer.Option("--days", min=3, max=35, help="How many days of calls, ending yesterday.")] = 30,
        port: Annotated[int, typer.Option("--port", help="Prefect UI/API port (another one if busy).")] = 4200,
    ) -> None:
        """Generate CDRs, start the WHMCS sandbox and a Prefect server, run the nightly job, a backfill and
        autosuspend; print where to look."""
        from cli.demo import run_demo

        result = run_demo(workdir, keep_ui=keep_ui, clients=clients, days=days, port=port, echo=typer.echo)
        ok = (result.nightly or {}).get("status") == "completed" and result.billable_items > 0
        raise typer.Exit(0 if ok else 2)
