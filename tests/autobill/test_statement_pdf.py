"""The statement PDF read back with pdftotext: names outside Latin-1 are shown exactly (bundled
Unicode font, plus `statements.fonts`), a character no font has is printed <U+XXXX> and reported
(never a silent '?'), and a statement of many pages loses no call."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autobill.statement import pdf, render
from autobill.statement.build import build_statement
from tests.support.fonts import tiny_font
from tests.support.statements import StatementWorld

D1 = date(2026, 11, 18)


@pytest.fixture(autouse=True)
def _poppler():
    if not shutil.which("pdftotext"):
        pytest.fail("poppler-utils (pdftotext) is needed: apt-get install poppler-utils")


def text_of(path: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True,
                          text=True).stdout


def doc(tmp_path: Path, name: str, **kw) -> pdf.PdfDoc:
    base = dict(path=str(tmp_path / "s.pdf"), title=f"Call statement for {name} (client 7), 2026-11-01 to 2026-11-30",
                footer="Statement of client 7 - page ", reseller="Maple VoIP Inc.", subtitle="Times are local.",
                totals=["currency calls", "USD 3"], lines_title="Charge lines", lines_head="reference",
                lines=["ST-AAAA 1.00"], rounding=["Rounding: once"], calls_title="Calls (2)", calls_head="line",
                calls=["ST-AAAA 2026-11-18 10:00:00-05:00 +15145550100 Montréal", "ST-AAAA 2026-11-18 11:00:00-05:00"])
    base.update(kw)
    return pdf.PdfDoc(**base)


@pytest.mark.parametrize("name", ["Zoë Łukasz", "Ærøskøbing ApS", "Ολυμπία Α.Ε.", "ООО «Ромашка»", "Zoë Brontë"])
def test_names_outside_the_core_fonts_read_back_exactly(tmp_path, name):
    d = doc(tmp_path, name)
    assert pdf.write_pdf(d) == []
    text = text_of(Path(d.path))
    assert f"Call statement for {name} (client 7)" in text
    assert "?" not in text


def test_latin1_text_embeds_no_font(tmp_path):
    d = doc(tmp_path, "Zoë Brontë et Fils")
    pdf.write_pdf(d)
    data = Path(d.path).read_bytes()
    assert b"/FontFile2" not in data  # core fonts only: the common case costs nothing
    assert "Zoë Brontë et Fils" in text_of(Path(d.path))
    d = doc(tmp_path, "Zoë Łukasz")
    pdf.write_pdf(d)
    assert b"/FontFile2" in Path(d.path).read_bytes()  # the bundled DejaVu Sans Mono, as a subset


def test_cjk_without_a_font_is_printed_as_code_points_and_reported(tmp_path):
    d = doc(tmp_path, "株式会社 Łukasz")
    assert pdf.write_pdf(d) == sorted("株式会社")
    text = text_of(Path(d.path))
    assert "<U+682A><U+5F0F><U+4F1A><U+793E> Łukasz" in text


def test_cjk_with_a_configured_font_reads_back(tmp_path):
    font = tiny_font(tmp_path / "cjk.ttf", "株式会社")
    d = doc(tmp_path, "株式会社 Łukasz", fonts=(str(font),))
    assert pdf.write_pdf(d) == []
    assert "株式会社 Łukasz" in text_of(Path(d.path))


def test_a_row_with_unicode_inside_the_calls_table_keeps_its_place(tmp_path):
    calls = [f"ST-AAAA row {i:03d} Kraków" for i in range(40)]
    calls[17] = "ST-AAAA row 017 Łódź"
    d = doc(tmp_path, "Acme", calls=calls)
    pdf.write_pdf(d)
    rows = [ln.strip() for ln in text_of(Path(d.path)).splitlines() if "ST-AAAA row" in ln]
    assert rows == calls


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(0, 400), lines=st.integers(0, 120))
def test_every_row_on_some_page_in_order(tmp_path, n, lines):
    calls = [f"call {i:05d} x" for i in range(n)]
    rows = [f"line {i:04d} y" for i in range(lines)]
    d = doc(tmp_path, "Acme", calls=calls, lines=rows, calls_head="HEAD-OF-CALLS")
    pdf.write_pdf(d)
    text = text_of(Path(d.path))
    assert re.findall(r"call \d{5} x", text) == calls
    assert re.findall(r"line \d{4} y", text) == rows
    pages = text.count("\f")
    if n:  # the calls' head is repeated on every page the calls use
        assert text.count("HEAD-OF-CALLS") >= 1 and text.count("HEAD-OF-CALLS") <= pages


def test_statement_with_unicode_client_and_destination(tmp_path, sandbox):
    w = StatementWorld(tmp_path, sandbox)
    w.bill(D1, w.calls(D1, D1, per_day=30))
    stmt = build_statement(w.settings, 1, D1, D1, client_name="Zoë Łukasz 株式会社")
    stmt.calls = stmt.calls.with_columns(pl.lit("Łódź mobile").alias("destination_name"))
    font = tiny_font(tmp_path / "cjk.ttf", "株式会社")
    d = render.pdf_doc(stmt, tmp_path / "st.pdf", fonts=(str(font),))
    assert pdf.write_pdf(d) == []
    text = text_of(tmp_path / "st.pdf")
    assert "Zoë Łukasz 株式会社" in text
    assert text.count("Łódź mobile") == stmt.calls.height
