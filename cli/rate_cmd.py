"""`autobill rate`: rate a CDR file against a tariff, exactly as /work/shared/RATING.md says.

polars is imported inside the command so that `autobill --help` stays fast. Exit 0 when OUT was
written; otherwise exit 1 with one line on stderr (no traceback), because operators script this.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from cli.common import fail


def rate(
    tariff: Annotated[Path, typer.Option("--tariff", help="Tariff file, .csv or .parquet.")],
    cdrs: Annotated[Path, typer.Option("--cdrs", help="CDR file, .csv or .parquet.")],
    out: Annotated[Path, typer.Option("--out", help="Output file, .csv or .parquet.")],
    country_code: Annotated[str, typer.Option("--country-code", help="Country code of the PBX's numbers.")] = "1",
    intl_prefix: Annotated[
        str | None, typer.Option("--intl-prefix", help="International prefix (default 011 for +1, else 00).")
    ] = None,
    trunk_prefix: Annotated[
        str | None, typer.Option("--trunk-prefix", help="Trunk prefix (default empty for +1, else 0).")
    ] = None,
    markup: Annotated[str, typer.Option("--markup", help="Markup percent added to every cost, e.g. 12.5.")] = "0",
) -> None:
    """Rate CDRS against TARIFF and write one row per CDR to OUT (status, e164, prefix, cost ...)."""
    if not re.fullmatch(r"[1-9][0-9]{0,2}", country_code):
        raise fail(f"--country-code: 1-3 digits, not starting with 0: {country_code!r}")
    for option, value in (("--intl-prefix", intl_prefix), ("--trunk-prefix", trunk_prefix)):
        if value is not None and not re.fullmatch(r"[0-9]*", value):
            raise fail(f"{option}: digits only: {value!r}")
    try:
        from autobill.rating.engine import Numbering, parse_markup, rate_files
        from autobill.rating.io import InputError

        pct = parse_markup(markup)
    except ValueError as exc:
        raise fail(str(exc)) from None
    try:
        counts = rate_files(
            tariff,
            cdrs,
            out,
            numbering=Numbering(country_code, intl_prefix, trunk_prefix),
            markup=pct,
        )
    except InputError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - the contract is one line, never a traceback
        detail = " ".join(str(exc).split())[:300]
        raise fail(f"rating failed: {type(exc).__name__}: {detail}") from None
    total = sum(counts.values())
    parts = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
    typer.echo(f"{out}: {total} rows ({parts or 'none'})")


def register(app: typer.Typer) -> None:
    """Add `autobill rate` to `app`."""
    app.command("rate")(rate)
