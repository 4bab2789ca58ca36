"""Commands of issue #6; this module registers nothing until they land."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
