"""A tiny TrueType font built on the fly (fontTools, fpdf2's own dependency) that has glyphs for
some characters only: a stand-in for a CJK font in `statements.fonts` without shipping 20 MB."""

from __future__ import annotations

from pathlib import Path


def tiny_font(path: Path, chars: str, family: str = "AutobillTestCJK") -> Path:
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    def box(width: int):
        pen = TTGlyphPen(None)
        pen.moveTo((100, 0))
        pen.lineTo((100, 700))
        pen.lineTo((width - 100, 700))
        pen.lineTo((width - 100, 0))
        pen.closePath()
        return pen.glyph()

    names = [".notdef", "space"] + [f"uni{ord(c):04X}" for c in chars]
    fb = FontBuilder(1000, isTTF=True)
    fb.setupGlyphOrder(names)
    fb.setupCharacterMap({32: "space", **{ord(c): f"uni{ord(c):04X}" for c in chars}})
    fb.setupGlyf({n: box(1000) if n != "space" else TTGlyphPen(None).glyph() for n in names})
    fb.setupHorizontalMetrics({n: (1000, 0) for n in names})
    fb.setupHorizontalHeader(ascent=800, descent=-200)
    fb.setupNameTable({"familyName": family, "styleName": "Regular"})
    fb.setupOS2(sTypoAscender=800, sTypoDescender=-200, usWinAscent=800, usWinDescent=200)
    fb.setupPost()
    fb.save(str(path))
    return path
