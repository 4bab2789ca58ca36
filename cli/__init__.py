"""The `autobill` command line.

Each command group lives in its own module under `cli/` and registers itself on the
app. Heavy libraries (prefect, great_expectations, duckdb) are imported inside the commands,
so `autobill --help` and `autobill rate` start fast.
"""

from __future__ import annotations

import importlib

import typer

from cli.common import OneLineGroup

app = typer.Typer(
    cls=OneLineGroup,  # usage errors and crashes: one line on stderr, traceback to the log file
    name="autobill",
    help="Rate VoIP CDRs, post the charges to WHMCS exactly once, and suspend prepaid clients out of credit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Modules that add commands to `app` (each defines `register(app)`).
COMMAND_MODULES = [
    "cli.config_cmd",
    "cli.db_cmd",
    "cli.demo_cmd",
    "cli.rate_cmd",
    "cli.generate_cmd",
    "cli.quarantine_cmd",
    "cli.sandbox_cmd",
    "cli.suspend_cmd",
    "cli.charges_cmd",
    "cli.run_cmd",
    "cli.backfill_cmd",
    "cli.runs_cmd",
    "cli.deploy_cmd",
    "cli.statement_cmd",
    "cli.dispute_cmd",
    "cli.fraud_cmd",
    "cli.rerate_cmd",
    "cli.services_cmd",
]

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    app()
