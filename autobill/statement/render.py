"""Statements as CSV (for spreadsheets), HTML and PDF (fpdf2: a file a reseller can send as it is).

Layout of the PDF and HTML: header (reseller, client, period, timezone), totals first, then the
charge lines with their statement reference, subtotal and WHMCS amount, corrections as their own
lines, the rounding rule, then every call. The CSV has one row per call (the columns of
`build.CALL_COLUMNS`) followed by one `line` row per charge line, so a spreadsheet can check the
subtotals; amounts are decimal text, never floats.

The PDF is laid out by `autobill/statement/pdf.py` from a `PdfDoc` (text only): core fonts for
Latin-1 text, a bundled Unicode font (plus `statements.fonts`) for the rest, and the calls as
fixed-width rows, one PDF text object per page. `pdf_row_expr` builds those rows with polars, for
one client or, in the nightly writer, for a thousand clients at once.
"""

from __future__ import annotations

import csv
import html
import io
from decimal import Decimal
from pathlib import Path

import polars as pl

from autobill.money import minor_units
from autobill.statement import pdf
from autobill.statement.build import CALL_COLUMNS, CORRECTION, ROUNDING_RULE, Statement, StatementLine

LINE_COLUMNS = ("ref", "billing_date", "service_id", "class", "kind", "calls", "minutes", "included_minutes",
                "subtotal_exact", "subtotal", "whmcs_amount", "currency", "state", "whmcs_item", "tied_out", "note")


def _minutes(seconds: int) -> str:
    return str((Decimal(seconds) / 60).quantize(Decimal("0.1")))


def _money(value: Decimal, currency: str) -> str:
    return f"{value:.{minor_units(currency)}f}"


def line_row(line: StatementLine) -> tuple:
    return (line.ref, line.billing_date.isoformat(), line.service_id, line.charge_class, line.kind, line.calls,
            _minutes(line.charged_seconds), _minutes(line.included_seconds), f"{line.subtotal_exact:.6f}",
            _money(line.subtotal, line.currency), _money(line.amount, line.currency), line.currency, line.state,
            "" if line.whmcs_billable_id is None else line.whmcs_billable_id, "yes" if line.tied_out else "NO",
            line.note)


def title(st: Statement) -> str:
    who = st.client_name or f"Client #{st.client_id}"
    return f"Call statement for {who} (client {st.client_id}), {st.first:%Y-%m-%d} to {st.last:%Y-%m-%d}"


CSV_ROW = "_csv_row"  # the column a bulk writer may precompute for many clients at once (csv_row_expr)


def csv_row_expr() -> pl.Expr:
    """Every call as its CSV record (`call,` then CALL_COLUMNS), vectorised: the same text as polars'
    write_csv (a field is quoted when it holds a comma, a quote or a line break, quotes doubled; an
    empty string is `""`, null is nothing)."""
    fields = [pl.lit("call")]
    for c in CALL_COLUMNS:
        v = pl.col(c).cast(pl.String)
        fields.append(pl.when(v.is_null()).then(pl.lit("")).when(v == "").then(pl.lit('""'))
                      .when(v.str.contains('[,"\r\n]'))
                      .then(pl.lit('"') + v.str.replace_all('"', '""', literal=True) + pl.lit('"')).otherwise(v))
    return pl.concat_str(fields, separator=",").alias(CSV_ROW)


def to_csv(st: Statement) -> str:
    """Calls first (one row each, `record` = call), then the charge lines (`record` = line)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(("record", *CALL_COLUMNS))
    if st.calls.height:
        if CSV_ROW in st.calls.columns:
            out.write("\n".join(st.calls[CSV_ROW].to_list()))
            out.write("\n")
        else:
            calls = st.calls.select(pl.lit("call").alias("record"), *[pl.col(c).cast(pl.String) for c in CALL_COLUMNS])
            out.write(calls.write_csv(include_header=False))
    w.writerow(("record", *LINE_COLUMNS))
    for line in st.lines:
        w.writerow(("line", *line_row(line)))
    return out.getvalue()


def to_html(st: Statement) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title(st))}</title></head><body>",
             f"<h1>{e(st.reseller_name)}</h1>" if st.reseller_name else "",
             f"<h2>{e(title(st))}</h2><p>Times are local ({e(st.timezone)}).</p><h3>Totals</h3><table border=1>",
             "<tr><th>currency</th><th>calls</th><th>minutes</th><th>included minutes used</th><th>usage</th>"
             "<th>corrections</th><th>total</th></tr>"]
    for ccy, t in sorted(st.totals().items()):
        parts.append(f"<tr><td>{ccy}</td><td>{t['calls']}</td><td>{_minutes(t['charged_seconds'])}</td>"
                     f"<td>{_minutes(t['included_seconds'])}</td><td>{_money(t['usage'], ccy)}</td>"
                     f"<td>{_money(t['corrections'], ccy)}</td><td><b>{_money(t['total'], ccy)}</b></td></tr>")
    parts.append("</table><h3>Charge lines</h3><table border=1><tr>"
                 + "".join(f"<th>{c}</th>" for c in LINE_COLUMNS) + "</tr>")
    for line in st.lines:
        parts.append("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in line_row(line)) + "</tr>")
    parts.append(f"</table><p>{e(ROUNDING_RULE)}</p><h3>Calls</h3><table border=1><tr>"
                 + "".join(f"<th>{c}</th>" for c in CALL_COLUMNS) + "</tr>")
    for row in st.calls.select(CALL_COLUMNS).iter_rows():
        parts.append("<tr>" + "".join(f"<td>{e('' if v is None else str(v))}</td>" for v in row) + "</tr>")
    parts.append("</table></body></html>")
    return "".join(parts)


# The calls section: fixed-width columns (name, width), Courier (or the Unicode font, same widths).
_PDF_CALLS = (("line_ref", 12), ("local_time", 26), ("number", 16), ("destination", 18), ("destination_name", 24),
              ("matched_prefix", 9), ("tariff_version", 14), ("billsec", 8), ("billable_seconds", 8),
              ("included_seconds", 8), ("rate", 11), ("connect_fee", 10), ("cost", 12), ("currency", 4))
_HEAD = {"line_ref": "line", "local_time": "local time", "destination_name": "dest. name", "matched_prefix": "prefix",
         "tariff_version": "tariff", "billable_seconds": "bill s", "included_seconds": "incl s",
         "connect_fee": "conn fee", "billsec": "billsec", "currency": "ccy"}
_FREE_TEXT = {"number", "destination", "destination_name", "matched_prefix", "tariff_version", "currency"}
PDF_ROW = "_pdf_row"  # the column a bulk writer may precompute for many clients at once (pdf_row_expr)


def _fixed(values: list[str]) -> str:
    cells = []
    for (_, width), v in zip(_PDF_CALLS, values, strict=True):
        v = v if len(v) < width else v[: width - 2] + "~"
        cells.append(v.ljust(width))
    return "".join(cells)


def pdf_row_expr() -> pl.Expr:
    """Every call as one fixed-width text row of the PDF's calls table (vectorised)."""
    cells = []
    for name, width in _PDF_CALLS:
        v = pl.col(name).cast(pl.String).fill_null("")
        if name in _FREE_TEXT:  # the rest are numbers, times and our own references
            v = v.str.replace_all(r"[\x00-\x1f\x7f-\x9f]", " ")
        cells.append(pl.when(v.str.len_chars() >= width).then(v.str.slice(0, width - 2) + "~")
                     .otherwise(v).str.pad_end(width))
    return pl.concat_str(cells).alias(PDF_ROW)


def _call_rows(calls: pl.DataFrame) -> list[str]:
    if PDF_ROW in calls.columns:
        return calls[PDF_ROW].to_list()
    return calls.select(pdf_row_expr())[PDF_ROW].to_list()


def pdf_doc(st: Statement, path: Path | str = "", fonts: tuple[str, ...] = ()) -> pdf.PdfDoc:
    """The statement's PDF as text (autobill/statement/pdf.py lays it out)."""
    totals = ["currency  calls     minutes  included min        usage  corrections        TOTAL"]
    for ccy, t in sorted(st.totals().items()):
        totals.append(f"{ccy:<8}{t['calls']:>7}{_minutes(t['charged_seconds']):>12}{_minutes(t['included_seconds']):>14}"
                      f"{_money(t['usage'], ccy):>13}{_money(t['corrections'], ccy):>13}{_money(t['total'], ccy):>13}")
    head = (f"{'reference':<12}{'date':<11}{'service':>8}  {'class':<14}{'calls':>6}{'minutes':>10}"
            f"{'incl min':>10}{'calls sum (6 dp)':>19}{'subtotal':>11}{'invoiced':>11} ccy state")
    rows = []
    for line in st.lines:
        cls = line.charge_class if line.kind != CORRECTION else "CORRECTION"
        rows.append(f"{line.ref:<12}{line.billing_date:%Y-%m-%d} {line.service_id:>8}  {cls[:13]:<14}{line.calls:>6}"
                    f"{_minutes(line.charged_seconds):>10}{_minutes(line.included_seconds):>10}"
                    f"{line.subtotal_exact:>19.6f}{_money(line.subtotal, line.currency):>11}"
                    f"{_money(line.amount, line.currency):>11} {line.currency} {line.state}"
                    + ("" if line.tied_out else "  DOES NOT TIE OUT"))
        if line.note:
            rows.append(f"{'':<12}{line.note}")
    return pdf.PdfDoc(
        path=str(path), title=title(st), footer=f"Statement of client {st.client_id}, {st.first:%Y-%m-%d} to "
        f"{st.last:%Y-%m-%d} - page ", reseller=st.reseller_name,
        subtitle=f"Times are local ({st.timezone}). Generated {st.generated_at:%Y-%m-%d %H:%M} UTC.",
        totals=totals, lines_title="Charge lines (each is one item on your invoice; quote its reference)",
        lines_head=head, lines=rows, rounding=("Rounding: " + ROUNDING_RULE).split("; "),
        calls_title=f"Calls ({st.calls.height})", calls_head=_fixed([_HEAD.get(c, c) for c, _ in _PDF_CALLS]),
        calls=_call_rows(st.calls), fonts=tuple(fonts))


def to_pdf(st: Statement, fonts: tuple[str, ...] = ()) -> bytes:
    return pdf.render_pdf(pdf_doc(st, fonts=fonts))[0]


def write(st: Statement, fmt: str, path: Path, fonts: tuple[str, ...] = ()) -> Path:
    """Write one format to `path` (atomically: a reader sees the whole file or the old one)."""
    data = {"pdf": lambda s: to_pdf(s, fonts), "csv": lambda s: to_csv(s).encode(),
            "html": lambda s: to_html(s).encode()}[fmt](st)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path
