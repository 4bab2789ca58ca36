"""`autobill deploy`: register prefect.yaml's deployments with the Prefect server, safely.

The same as `prefect --no-prompt deploy --all` run from the project root, after two checks
that `prefect deploy` cannot make: the schedules' timezone in prefect.yaml is the billing
timezone of autobill.yaml (else the nightly run would fire at 00:55 in the wrong zone), and the
work pool exists (created if missing). It refuses to run without `PREFECT_API_URL`: deploying to
a temporary server that vanishes at exit is never what an operator meant.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.common import ConfigOption, fail, settings_or_exit


def register(app: typer.Typer) -> None:
    @app.command("deploy")
    def deploy(
        config: ConfigOption = None,
        check_only: Annotated[bool, typer.Option("--check", help="Only check prefect.yaml against the config.")] = False,
    ) -> None:
        """Create the work pool and deploy the nightly, autosuspend and backfill flows (prefect.yaml)."""
        from deployments.spec import PREFECT_YAML, PROJECT_ROOT, check_timezone, load_specs, work_pool_names

        settings = settings_or_exit(config)
        specs = load_specs(PREFECT_YAML)
        problems = check_timezone(specs, settings.timezone)
        for p in problems:
            typer.echo(f"prefect.yaml: {p}", err=True)
        if problems:
            raise typer.Exit(1)
        typer.echo(f"prefect.yaml: {len(specs)} deployment(s), schedules in {settings.timezone}")
        if check_only:
            return
        if not os.environ.get("PREFECT_API_URL"):
            raise fail("PREFECT_API_URL is not set: point it at your Prefect server (e.g. http://127.0.0.1:4200/api)")
        from deployments.work_pool import ensure_work_pool

        for pool in work_pool_names(specs):
            created = ensure_work_pool(pool)
            typer.echo(f"work pool {pool}: {'created' if created else 'exists'}")
        prefect = Path(sys.executable).with_name("prefect")
        cmd = [str(prefect) if prefect.exists() else "prefect", "--no-prompt", "deploy", "--all",
               "--prefect-file", str(PREFECT_YAML)]
        code = subprocess.call(cmd, cwd=PROJECT_ROOT)
        if code:
            raise fail(f"`prefect deploy --all` failed (exit {code})", code)
        typer.echo("start a worker on each machine: prefect worker start --pool " + " / ".join(work_pool_names(specs)))
