"""`autobill generate`: synthetic CDR sources + a matching autobill.yaml and tariff, in one folder.

polars/numpy/psycopg2 are imported inside the command so `autobill --help` stays fast.
"""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from cli.common import fail


def _day(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise fail(f"{option}: not a date (YYYY-MM-DD): {value!r}") from None


def generate(
    clients: Annotated[int, typer.Option("--clients", min=1, help="Number of clients (one service each).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the sources, autobill.yaml and the tariff.")],
    from_: Annotated[str, typer.Option("--from", help="First local day (YYYY-MM-DD).")],
    to: Annotated[str, typer.Option("--to", help="Last local day, inclusive (YYYY-MM-DD).")],
    servers_per_kind: Annotated[int, typer.Option("--servers-per-kind", min=1, help="Servers of each kind.")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same calls.")] = 0,
    kinds: Annotated[
        str | None,
        typer.Option("--kinds", help="Comma list of fusionpbx, vodia, lesnet, file (default: file,lesnet, "
                     "plus fusionpbx when --fusionpbx-url is given)."),
    ] = None,  # fmt: skip
    fusionpbx_url: Annotated[
        str | None, typer.Option("--fusionpbx-url", help="PostgreSQL URL to write FusionPBX v_xml_cdr table(s) into.")
    ] = None,
    fusionpbx_table: Annotated[str, typer.Option("--fusionpbx-table", help="Table name (schema.table allowed).")] = (
        "v_xml_cdr"
    ),
    calls_per_day: Annotated[
        float, typer.Option("--calls-per-day", min=0.0, help="Mean calls per client per weekday.")
    ] = 20.0,
    timezone: Annotated[str, typer.Option("--timezone", help="IANA zone of the clients' days.")] = "America/Toronto",
    lesnet_base_url: Annotated[
        str, typer.Option("--lesnet-base-url", help="Where the LesNet files will be served (written into the config).")
    ] = "http://127.0.0.1:8765",
) -> None:
    """Generate realistic calls for N clients on M servers of each kind and write them where each
    connector reads them, with an autobill.yaml and a tariff that match."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    first, last = _day(from_, "--from"), _day(to, "--to")
    if last < first:
        raise fail(f"--to {last} is before --from {first}")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise fail(f"--timezone: unknown IANA zone {timezone!r}") from None
    if kinds is None:
        chosen = ["file", "lesnet"] + (["fusionpbx"] if fusionpbx_url else [])
    else:
        chosen = [k.strip() for k in kinds.split(",") if k.strip()]
    if "fusionpbx" in chosen and not fusionpbx_url:
        raise fail("--kinds includes fusionpbx: give --fusionpbx-url (a PostgreSQL URL to write v_xml_cdr into)")

    from sandboxes import generate as gen

    started = time.perf_counter()
    try:
        world = gen.make_world(clients, servers_per_kind, chosen, seed, timezone)
        calls = gen.generate_calls(world, first, last, calls_per_day)
        generated = time.perf_counter() - started
        summary = gen.write_outputs(out, world, calls, fusionpbx_url, fusionpbx_table, lesnet_base_url)
    except ValueError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - one line for operators, never a traceback
        raise fail(f"generate failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None
    total = time.perf_counter() - started
    typer.echo(f"generated {summary['calls']} calls for {clients} client(s), {first} .. {last} ({timezone}), "
               f"seed {seed}, in {generated:.2f} s ({total:.2f} s with writing)")  # fmt: skip
    for sid, n in summary["by_server"].items():
        typer.echo(f"  {sid:<16} {n:>9} calls -> {summary['written'].get(sid, '')}")
    typer.echo("  mix: " + ", ".join(f"{k} {v}" for k, v in summary["by_category"].items()))
    typer.echo(f"  config {summary['config']}")
    typer.echo(f"  tariff {summary['tariff']} (destinations 998, 880 and 263 deliberately missing: unrated)")
    if any(k == "lesnet" for k in chosen):
        typer.echo(f"  LesNet files are expected at {lesnet_base_url}/lesnet/<server>.txt, e.g. "
                   f"python -m http.server 8765 --directory {out}")  # fmt: skip
    if fusionpbx_url and "password" in gen.fusionpbx_server_fields(fusionpbx_url, fusionpbx_table):
        typer.echo("  set AUTOBILL_FUSIONPBX_PASSWORD before extracting (the config holds a reference, not the password)")


def register(app: typer.Typer) -> None:
    """Add `autobill generate` to `app`."""
    app.command("generate")(generate)
