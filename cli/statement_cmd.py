"""`autobill statement`: one client's calls for a period, tying out to the WHMCS lines to the cent."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from cli.common import ConfigOption, fail, settings_or_exit

FORMATS = ("pdf", "csv", "html")


def parse_day(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise fail(f"{option}: not a date (YYYY-MM-DD): {value!r}") from None


def register(app: typer.Typer) -> None:
    @app.command("statement")
    def statement(
        client: Annotated[int, typer.Option("--client", help="WHMCS client id.")],
        first: Annotated[str, typer.Option("--from", help="First billing date, YYYY-MM-DD.")],
        last: Annotated[str | None, typer.Option("--to", help="Last billing date (default: --from).")] = None,
        fmt: Annotated[str, typer.Option("--format", help="pdf, csv or html.")] = "pdf",
        out: Annotated[Path | None, typer.Option("--out", help="File to write (default: under the "
                                                 "statements directory; '-' prints csv/html).")] = None,
        name: Annotated[str | None, typer.Option(help="Client name on the header (default: from WHMCS).")] = None,
        config: ConfigOption = None,
    ) -> None:
        """Write a client's call statement: totals, charge lines (each the amount of one WHMCS item,
        with the reference the client can quote), corrections, then every call in local time."""
        from autobill.ledger.db import upgrade
        from autobill.statement import pdf, render
        from autobill.statement.build import build_statement
        from autobill.statement.store import StatementDataError
        from tasks.statements import StatementsError, client_names, fonts, statement_paths

        if fmt not in FORMATS:
            raise fail(f"--format: must be one of {', '.join(FORMATS)}, not {fmt!r}")
        d1 = parse_day(first, "--from")
        d2 = parse_day(last, "--to") if last else d1
        if d2 < d1:
            raise fail(f"--to: {d2} is before --from {d1}")
        if client < 1:
            raise fail(f"--client: a WHMCS client id is a positive integer, not {client}")
        settings = settings_or_exit(config)
        upgrade(settings.ledger)
        if name is None:
            name = client_names(settings, [client], workers=1).get(client, "")
        try:
            st = build_statement(settings, client, d1, d2, client_name=name)
        except StatementDataError as exc:
            raise fail(str(exc)) from None
        if not st.lines and st.calls.is_empty():
            typer.echo(f"client {client} has no charges and no billed calls from {d1} to {d2}", err=True)
        if out is not None and str(out) == "-":
            if fmt == "pdf":
                raise fail("--out -: a PDF cannot be printed; give a file name")
            typer.echo(render.to_csv(st) if fmt == "csv" else render.to_html(st), nl=False)
        else:
            path = out or statement_paths(settings, client, d1, d2, fmt)
            if fmt == "pdf":
                try:
                    extra = fonts(settings)
                except StatementsError as exc:
                    raise fail(str(exc)) from None
                missing = pdf.write_pdf(render.pdf_doc(st, path, extra))
                if missing:
                    typer.echo(f"warning: no font shows {''.join(missing)!r} (printed as <U+…>): add one that "
                               "does to statements.fonts", err=True)
            else:
                render.write(st, fmt, path)
            totals = ", ".join(f"{ccy} {t['total']}" for ccy, t in sorted(st.totals().items())) or "nothing billed"
            typer.echo(f"{path}: {len(st.lines)} charge line(s), {st.calls.height} call(s), total {totals}")
        if not st.tied_out:
            bad = [ln.ref for ln in st.lines if not ln.tied_out]
            typer.echo(f"warning: line(s) whose calls do not add up to the charged amount: {', '.join(bad)}",
                       err=True)
            raise typer.Exit(2)
