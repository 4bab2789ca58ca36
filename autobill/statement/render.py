"""Statements as CSV (for spreadsheets), HTML and PDF (fpdf2: a file a reseller can send as it is).

Layout of the PDF and HTML: header (reseller, client, period, timezone), totals first, then the
charge lines with their statement reference, subtotal and WHMCS amount, corrections as their own
lines, the rounding rule, then every call. The CSV has one row per call (the columns of
`build.CALL_COLUMNS`) followed by one `line` row per charge line, so a spreadsheet can check the
subtotals; amounts are decimal text, never floats.

The PDF uses the PDF core fonts (Helvetica, Courier): text outside Latin-1 is shown with `?`.
Calls are printed as fixed-width Courier rows, one text operation each, which keeps a statement
of thousands of calls fast to write.
"""

from __future__ import annotations

import csv
import html
import io
from decimal import Decimal
from pathlib import Path

import polars as pl
from fpdf import FPDF

from autobill.money import minor_units
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


def to_csv(st: Statement) -> str:
    """Calls first (one row each, `record` = call), then the charge lines (`record` = line)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(("record", *CALL_COLUMNS))
    if st.calls.height:
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


def _latin1(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1")


# The calls section: fixed-width columns (name, width) in Courier.
_PDF_CALLS = (("line_ref", 12), ("local_time", 26), ("number", 16), ("destination", 18), ("destination_name", 24),
              ("matched_prefix", 9), ("tariff_version", 14), ("billsec", 8), ("billable_seconds", 8),
              ("included_seconds", 8), ("rate", 11), ("connect_fee", 10), ("cost", 12), ("currency", 4))
_HEAD = {"line_ref": "line", "local_time": "local time", "destination_name": "dest. name", "matched_prefix": "prefix",
         "tariff_version": "tariff", "billable_seconds": "bill s", "included_seconds": "incl s",
         "connect_fee": "conn fee", "billsec": "billsec", "currency": "ccy"}


def _fixed(values: list[str]) -> str:
    cells = []
    for (_, width), v in zip(_PDF_CALLS, values, strict=True):
        v = v if len(v) < width else v[: width - 2] + "~"
        cells.append(v.ljust(width))
    return "".join(cells)


class _Doc(FPDF):
    def __init__(self, st: Statement) -> None:
        super().__init__(orientation="L", unit="mm", format="A4")
        self.st = st
        self.set_auto_page_break(False)
        self.set_title(_latin1(title(st)))
        self.set_author(_latin1(st.reseller_name or "autobill"))
        self.set_creator("autobill")
        self.set_compression(True)
        self._foot = _latin1(f"{title(st)} - page ")

    def footer(self) -> None:
        self.set_font("Helvetica", size=7)
        self.text(self.l_margin, self.h - 7, self._foot + str(self.page_no()))


def to_pdf(st: Statement) -> bytes:
    pdf = _Doc(st)
    pdf.add_page()
    if st.reseller_name:
        pdf.set_font("Helvetica", "B", 16)
        pdf.cell(0, 8, _latin1(st.reseller_name), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "B", 12)
    pdf.cell(0, 7, _latin1(title(st)), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=9)
    pdf.cell(0, 5, _latin1(f"Times are local ({st.timezone}). Generated {st.generated_at:%Y-%m-%d %H:%M} UTC."),
             new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 6, "Totals", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Courier", size=9)
    pdf.cell(0, 5, "currency  calls     minutes  included min        usage  corrections        TOTAL",
             new_x="LMARGIN", new_y="NEXT")
    for ccy, t in sorted(st.totals().items()):
        pdf.cell(0, 5, f"{ccy:<8}{t['calls']:>7}{_minutes(t['charged_seconds']):>12}{_minutes(t['included_seconds']):>14}"
                       f"{_money(t['usage'], ccy):>13}{_money(t['corrections'], ccy):>13}"
                       f"{_money(t['total'], ccy):>13}", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 6, "Charge lines (each is one item on your invoice; quote its reference)", new_x="LMARGIN",
             new_y="NEXT")
    pdf.set_font("Courier", size=8)
    header = (f"{'reference':<12}{'date':<11}{'service':>8}  {'class':<14}{'calls':>6}{'minutes':>10}"
              f"{'incl min':>10}{'calls sum (6 dp)':>19}{'subtotal':>11}{'invoiced':>11} ccy state")
    rows = [header]
    for line in st.lines:
        cls = line.charge_class if line.kind != CORRECTION else "CORRECTION"
        rows.append(f"{line.ref:<12}{line.billing_date:%Y-%m-%d} {line.service_id:>8}  {cls[:13]:<14}{line.calls:>6}"
                    f"{_minutes(line.charged_seconds):>10}{_minutes(line.included_seconds):>10}"
                    f"{line.subtotal_exact:>19.6f}{_money(line.subtotal, line.currency):>11}"
                    f"{_money(line.amount, line.currency):>11} {line.currency} {line.state}"
                    + ("" if line.tied_out else "  DOES NOT TIE OUT"))
        if line.note:
            rows.append(f"{'':<12}{line.note}")
    for text in rows:
        if pdf.get_y() > pdf.h - 18:
            pdf.add_page()
        pdf.cell(0, 4, _latin1(text), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)
    pdf.set_font("Helvetica", "I", 8)
    for sentence in ("Rounding: " + ROUNDING_RULE).split("; "):
        pdf.cell(0, 4, _latin1(sentence), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 6, f"Calls ({st.calls.height})", new_x="LMARGIN", new_y="NEXT")
    _calls(pdf, st)
    return bytes(pdf.output())


def _fixed_rows(calls: pl.DataFrame) -> list[str]:
    """Every call as one fixed-width, Latin-1, PDF-escaped line, built column-wise by polars."""
    cells = []
    for name, width in _PDF_CALLS:
        v = pl.col(name).cast(pl.String).fill_null("")
        cells.append(pl.when(v.str.len_chars() >= width).then(v.str.slice(0, width - 2) + "~")
                     .otherwise(v).str.pad_end(width))
    text = pl.concat_str(cells).str.replace_all("\\", "\\\\", literal=True) \
        .str.replace_all("(", "\\(", literal=True).str.replace_all(")", "\\)", literal=True)
    return [_latin1(r) for r in calls.select(text.alias("r"))["r"].to_list()]


def _calls(pdf: _Doc, st: Statement) -> None:
    """The calls, a page at a time: one PDF text object per page (`BT ... T* ... ET`) instead of one
    per row, which is what makes a month of calls fast. The head row of each page goes through
    fpdf2's `text()`, which also selects the font on the page; the block after it is written with
    fpdf2's content-stream writer (`_out`) in the font it selected (fpdf2 is pinned; the tests read
    the text back with pdftotext)."""
    size, step = 6.5, 2.8
    head = _latin1(_fixed([_HEAD.get(c, c) for c, _ in _PDF_CALLS]))
    rows = _fixed_rows(st.calls)
    y = pdf.get_y() + step
    i = 0
    while True:
        pdf.set_font("Courier", size=size)
        pdf.text(pdf.l_margin, y, head)
        fit = max(0, int((pdf.h - 14 - y) // step))
        page = rows[i : i + fit]
        if page:
            k = pdf.k
            body = " T* ".join(f"({r}) Tj" for r in page)
            pdf._out(f"BT {pdf.l_margin * k:.2f} {(pdf.h - y - step) * k:.2f} Td {step * k:.2f} TL {body} ET")
        i += len(page)
        if i >= len(rows):
            return
        pdf.add_page()
        y = pdf.t_margin + step


def write(st: Statement, fmt: str, path: Path) -> Path:
    """Write one format to `path` (atomically: a reader sees the whole file or the old one)."""
    data = {"pdf": to_pdf, "csv": lambda s: to_csv(s).encode(), "html": lambda s: to_html(s).encode()}[fmt](st)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path
