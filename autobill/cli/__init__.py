"""The `autobill` command line.

Each command group lives in its own module under `autobill/cli/` and registers itself on the
app. Heavy libraries (prefect, great_expectations, duckdb) are imported inside the commands,
so `autobill --help` and `autobill rate` start fast.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="autobill",
    help="Rate VoIP CDRs, post the charges to WHMCS exactly once, and suspend prepaid clients out of credit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Modules that add commands to `app` (each defines `register(app)`).
COMMAND_MODULES = [
    "autobill.cli.config_cmd",
    "autobill.cli.db_cmd",
    "autobill.cli.demo_cmd",
    "autobill.cli.rate_cmd",
    "autobill.cli.generate_cmd",
    "autobill.cli.quarantine_cmd",
    "autobill.cli.sandbox_cmd",
    "autobill.cli.suspend_cmd",
    "autobill.cli.charges_cmd",
    "autobill.cli.run_cmd",
    "autobill.cli.backfill_cmd",
    "autobill.cli.runs_cmd",
    "autobill.cli.deploy_cmd",
]

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    app()
