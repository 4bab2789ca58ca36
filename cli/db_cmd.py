"""`autobill db upgrade|current`: migrate the ledger named by the config (or --url)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import ConfigOption, settings_or_exit

db_app = typer.Typer(help="Ledger database migrations (Alembic).", no_args_is_help=True)
UrlOption = Annotated[str | None, typer.Option("--url", help="Ledger URL (default: the config's ledger_url).")]


def _url(config, url: str | None) -> str:
    return url or settings_or_exit(config).ledger


def register(app: typer.Typer) -> None:
    @db_app.command("upgrade")
    def upgrade(config: ConfigOption = None, url: UrlOption = None, revision: str = "head") -> None:
        """Apply the ledger migrations up to REVISION (default head)."""
        from autobill.ledger.db import current_revision
        from autobill.ledger.db import upgrade as do_upgrade

        target = _url(config, url)
        do_upgrade(target, revision)
        typer.echo(f"ledger at revision {current_revision(target)}")

    @db_app.command("current")
    def current(config: ConfigOption = None, url: UrlOption = None) -> None:
        """Print the ledger's current migration revision."""
        from autobill.ledger.db import current_revision

        typer.echo(current_revision(_url(config, url)) or "(empty: run `autobill db upgrade`)")

    app.add_typer(db_app, name="db")
