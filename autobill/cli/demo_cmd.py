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
        keep_ui: Annotated[bool, typer.Option("--keep-ui", help="Leave the Prefect UI running at the end.")] = False,
    ) -> None:
        """Generate CDRs, start the WHMCS sandbox, run the nightly job and autosuspend; print where to look."""
        from autobill.demo import run_demo

        run_demo(workdir, keep_ui=keep_ui)
