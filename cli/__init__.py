"""The `autobill` command line.

Each command group lives in its own module under `cli/` and registers itself on the
app. Heavy libraries (prefect, great_expectations, duckdb) are imported inside the commands,
and `autobill CMD ...` imports only CMD's module (`COMMANDS`), so a quick command such as
`autobill charges reconcile` starts fast. `cli.app` (tests, `--help`, an unknown command)
has every command registered.
"""

from __future__ import annotations

import importlib
import sys

import typer

from cli.common import OneLineGroup


def _new_app() -> typer.Typer:
    new = typer.Typer(
        cls=OneLineGroup,  # usage errors and crashes: one line on stderr, traceback to the log file
        name="autobill",
        help="Rate VoIP CDRs, post the charges to WHMCS exactly once, and suspend prepaid clients out of credit.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @new.callback()
    def _root() -> None:  # always a command group, even with one command module registered
        pass

    return new


# Top-level command name -> the module that registers it (each module defines `register(app)`).
COMMANDS = {
    "config": "cli.config_cmd",
    "db": "cli.db_cmd",
    "demo": "cli.demo_cmd",
    "rate": "cli.rate_cmd",
    "generate": "cli.generate_cmd",
    "quarantine": "cli.quarantine_cmd",
    "sandbox": "cli.sandbox_cmd",
    "suspend-check": "cli.suspend_cmd",
    "charges": "cli.charges_cmd",
    "run": "cli.run_cmd",
    "backfill": "cli.backfill_cmd",
    "runs": "cli.runs_cmd",
    "deploy": "cli.deploy_cmd",
    "statement": "cli.statement_cmd",
    "dispute": "cli.dispute_cmd",
    "fraud": "cli.fraud_cmd",
    "rerate": "cli.rerate_cmd",
    "services": "cli.services_cmd",
}
COMMAND_MODULES = list(dict.fromkeys(COMMANDS.values()))


def build_app(modules: list[str] = COMMAND_MODULES) -> typer.Typer:
    new = _new_app()
    for name in modules:
        importlib.import_module(name).register(new)
    return new


_full: typer.Typer | None = None


def __getattr__(name: str) -> typer.Typer:
    """`cli.app` / `from cli import app`: every command registered (built on first use)."""
    global _full
    if name != "app":
        raise AttributeError(f"module 'cli' has no attribute {name!r}")
    if _full is None:
        _full = build_app()
    return _full


def app_for(argv: list[str]) -> typer.Typer:
    """The app for this command line: only the invoked command's module, else every command."""
    first = next((a for a in argv if not a.startswith("-")), None)
    if first in COMMANDS and not any(a in ("--help", "-h") for a in argv[: argv.index(first)]):
        return build_app([COMMANDS[first]])
    return build_app()


def main() -> None:
    app_for(sys.argv[1:])()
