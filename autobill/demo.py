"""The embedded-default demo: everything on this machine, nothing to configure.

It writes a self-contained config under the demo directory (SQLite ledger, parquet lake),
migrates the ledger and runs what exists of the pipeline, printing a summary at the end.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import typer
import yaml

from autobill.config import load_settings


def write_demo_config(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    tariffs = workdir / "tariffs"
    tariffs.mkdir(exist_ok=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "examples" / "tariffs" / "retail.csv", tariffs / "retail.csv")
    config = {
        "timezone": "America/Toronto",
        "currency": "USD",
        "data_dir": "data",
        "ledger_url": "sqlite:///data/ledger.db",
        "servers": [{"id": "drop", "kind": "file", "path": "drop"}],
        "tariffs": [{"name": "retail", "path": "tariffs/retail.csv", "currency": "USD"}],
        "plans": [{"name": "basic", "tariff": "retail", "included_minutes": 0, "currency": "USD"}],
        "services": [],
    }
    path = workdir / "autobill.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_demo(workdir: Path, keep_ui: bool = False) -> None:
    from autobill.ledger.db import current_revision, upgrade

    config_path = write_demo_config(workdir)
    settings = load_settings(config_path)
    upgrade(settings.ledger)
    typer.echo("Autobill demo")
    typer.echo(f"  config   {config_path}")
    typer.echo(f"  ledger   {settings.ledger} (revision {current_revision(settings.ledger)})")
    typer.echo(f"  servers  {', '.join(s.id for s in settings.servers)}")
    typer.echo("demo finished")
