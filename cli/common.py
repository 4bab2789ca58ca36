"""Helpers shared by the commands: loading config with a clear one-line failure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from autobill.config import ConfigError, Settings, load_settings

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: $AUTOBILL_CONFIG or ./autobill.yaml)."),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def settings_or_exit(path: Path | None) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        raise fail(str(exc)) from None
