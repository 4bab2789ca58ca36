"""The PDF of a statement (fpdf2), laid out from plain text: a `PdfDoc` holds only strings, so a
worker process renders it without polars and without the ledger (tasks/statements.py hands
`PdfDoc`s to a process pool).

Fonts. Text that the PDF core fonts can show (printable Latin-1: English, French, German, Spanish,
"Zoë", …) is written in Helvetica and Courier, which cost nothing to embed. Any other text
("Zoë Łukasz", "株式会社") is written in DejaVu Sans Mono, a free Unicode font shipped in
`autobill/statement/fonts/` with its licence, embedded as a subset; characters it lacks are looked
up in `statements.fonts` (extra TTF/OTF files, e.g. a CJK font such as Noto Sans CJK). A character
that no font has is never dropped or turned into '?' silently: it is printed as `<U+682A>` and
returned by `write_pdf`, so the statement step warns with the client and the characters (the CSV
and HTML statements carry the exact text).

Speed. Long tables (the calls, the charge lines) are written as fixed-width rows, one PDF text
object per page (`BT … (row) Tj T* (row) Tj … ET`) through fpdf2's content-stream writer, which is
what makes a month of calls fast; rows that need the Unicode font go through fpdf2's `cell`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

from fpdf import FPDF

FONTS_DIR = Path(__file__).with_name("fonts")
BUNDLED_FONT = FONTS_DIR / "DejaVuSansMono.ttf"
# Printable Latin-1 (no C0/C1 controls): the core fonts' WinAnsi encoding shows exactly these.
_CORE_SAFE = re.compile("[\x20-\x7e\xa0-\xff\n]*")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_MARGIN_BOTTOM = 14.0  # mm kept free for the footer


@dataclass
class PdfDoc:
    """Everything on one statement's PDF, as text."""

    path: str
    title: str  # "Call statement for … (client N), D1 to D2"
    footer: str  # printed with the page number on every page
    reseller: str = ""
    subtitle: str = ""
    totals: list[str] = field(default_factory=list)  # fixed-width rows, the first is the head
    lines_title: str = ""
    lines_head: str = ""
    lines: list[str] = field(default_factory=list)
    rounding: list[str] = field(default_factory=list)
    calls_title: str = ""
    calls_head: str = ""
    calls: list[str] = field(default_factory=list)
    fonts: tuple[str, ...] = ()  # extra font files, tried in order after the bundled one


@functools.lru_cache(maxsize=16)
def _coverage(path: str) -> frozenset[int]:
    from fontTools.ttLib import TTFont  # fpdf2's own dependency; loaded only for non-Latin-1 text

    with TTFont(path, lazy=True, fontNumber=0) as font:
        return frozenset(font.getBestCmap())


def core_safe(text: str) -> bool:
    return _CORE_SAFE.fullmatch(text) is not None


class _Writer(FPDF):
    def __init__(self, doc: PdfDoc) -> None:
        super().__init__(orientation="L", unit="mm", format="A4")
        self.doc = doc
        self.missing: set[str] = set()
        self._unicode: str | None = None
        self.set_auto_page_break(False)
        self.set_title(doc.title)
        self.set_author(doc.reseller or "autobill")
        self.set_creator("autobill")
        self.set_compression(True)

    def footer(self) -> None:
        self.set_font("Helvetica", size=7)
        self.text(self.l_margin, self.h - 7, _ascii(f"{self.doc.footer}{self.page_no()}"))

    # -- Unicode text --------------------------------------------------------------------------
    def _unicode_font(self) -> str:
        if self._unicode is None:
            fonts = [str(BUNDLED_FONT), *self.doc.fonts]
            for i, path in enumerate(fonts):
                self.add_font(f"u{i}", fname=path)
            if len(fonts) > 1:
                self.set_fallback_fonts([f"u{i}" for i in range(1, len(fonts))], exact_match=False)
            self._unicode = "u0"
        return self._unicode

    def _shown(self, text: str) -> str:
        """`text` with every character that no font has replaced by <U+XXXX> (and remembered)."""
        covered = [_coverage(str(BUNDLED_FONT)), *(_coverage(p) for p in self.doc.fonts)]
        out = []
        for ch in _CONTROL.sub(" ", text):
            if ch.isspace() or any(ord(ch) in c for c in covered):
                out.append(ch)
            else:
                self.missing.add(ch)
                out.append(f"<U+{ord(ch):04X}>")
        return "".join(out)

    def line(self, text: str, size: float, height: float, style: str = "", family: str = "Helvetica") -> None:
        """One line of text at the cursor, then the cursor moves to the next line."""
        text = _CONTROL.sub(" ", text)
        if core_safe(text):
            self.set_font(family, style, size)
        else:
            self.set_font(self._unicode_font(), "", size)
            text = self._shown(text)
        self.cell(0, height, text, new_x="LMARGIN", new_y="NEXT")

    # -- fixed-width tables ----------------------------------------------------------------------
    def _core_rows(self, rows: list[str], baseline: float, size: float, step: float) -> None:
        self.set_font("Courier", size=size)
        assert self.current_font is not None
        select = self._set_font_for_page(self.current_font, self.font_size_pt, wrap_in_text_object=False)
        text = "\n".join(rows).replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        body = "(" + text.replace("\n", ") Tj T* (") + ") Tj"
        k = self.k
        self._out(f"BT {select} {self.l_margin * k:.2f} {(self.h - baseline) * k:.2f} Td {step * k:.2f} TL {body} ET")

    def _unicode_row(self, row: str, top: float, size: float, step: float) -> None:
        self.set_font(self._unicode_font(), "", size)
        self.set_xy(self.l_margin - self.c_margin, top)  # cell() indents its text by c_margin
        self.cell(0, step, self._shown(row))

    def rows(self, rows: list[str], size: float, step: float) -> None:
        """Rows from the cursor down, each `step` mm high (the caller keeps them on the page)."""
        top = self.get_y()
        if core_safe("\n".join(rows)):
            if rows:
                self._core_rows(rows, top + 0.75 * step, size, step)
        else:
            run: list[str] = []
            start = top
            for i, row in enumerate(rows):
                row = _CONTROL.sub(" ", row)
                if core_safe(row):
                    if not run:
                        start = top + i * step
                    run.append(row)
                    continue
                if run:
                    self._core_rows(run, start + 0.75 * step, size, step)
                    run = []
                self._unicode_row(row, top + i * step, size, step)
            if run:
                self._core_rows(run, start + 0.75 * step, size, step)
        self.set_xy(self.l_margin, top + len(rows) * step)

    def table(self, head: str | None, rows: list[str], size: float, step: float) -> None:
        """A fixed-width table: as many rows per page as fit, the head repeated on every page."""
        i = 0
        while True:
            if head is not None:
                self.rows([head], size, step)
            fit = max(1, int((self.h - _MARGIN_BOTTOM - self.get_y()) // step))
            page = rows[i : i + fit]
            self.rows(page, size, step)
            i += len(page)
            if i >= len(rows):
                return
            self.add_page()


def _ascii(text: str) -> str:
    return text.encode("ascii", "backslashreplace").decode("ascii")


def render_pdf(doc: PdfDoc) -> tuple[bytes, list[str]]:
    """The PDF's bytes and the characters no font could show (sorted)."""
    pdf = _Writer(doc)
    pdf.add_page()
    if doc.reseller:
        pdf.line(doc.reseller, 16, 8, "B")
    pdf.line(doc.title, 12, 7, "B")
    pdf.line(doc.subtitle, 9, 5)
    pdf.ln(2)
    pdf.line("Totals", 11, 6, "B")
    pdf.table(None, doc.totals, 9, 4.2)
    pdf.ln(3)
    pdf.line(doc.lines_title, 11, 6, "B")
    pdf.table(doc.lines_head, doc.lines, 8, 3.6)
    pdf.ln(2)
    for sentence in doc.rounding:
        pdf.line(sentence, 8, 4, "I")
    pdf.ln(2)
    if pdf.get_y() > pdf.h - _MARGIN_BOTTOM - 20:
        pdf.add_page()
    pdf.line(doc.calls_title, 11, 6, "B")
    pdf.table(doc.calls_head, doc.calls, 6.5, 2.8)
    return bytes(pdf.output()), sorted(pdf.missing)


def write_pdf(doc: PdfDoc) -> list[str]:
    """Write `doc.path` atomically (a reader sees the whole file or the old one); returns the
    characters no font could show."""
    data, missing = render_pdf(doc)
    path = Path(doc.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return missing
