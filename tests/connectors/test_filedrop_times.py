"""The drop folder's fast paths against the plain expressions they stand in for (issue #15):
`parse_iso_series` (one direct format for the usual spelling, the rewrites for the rest) must
read every text exactly as `parse_iso` does, and `merge_problems` (the `_error` merged into the
few rows that have one) must give what `with_problem` over every row gives."""

from __future__ import annotations

from datetime import datetime

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.base import merge_problems, with_problem
from connectors.filedrop import parse_iso, parse_iso_series

two = st.integers(0, 99).map(lambda n: f"{n:02d}")
date_part = st.tuples(st.integers(1, 9999).map(lambda n: f"{n:04d}"), two, two).map("-".join)
time_part = st.tuples(two, two, two).map(":".join)
fraction = st.sampled_from(["", ".5", ".123456", ".1234567", "."])
offset = st.sampled_from(["", "Z", "z", "+00:00", "-05:00", "+0530", "-0800", "+14:00", "+24:00", "+05", " +01:00"])
separator = st.sampled_from(["T", " ", "t", "  ", "X"])
space = st.sampled_from(["", " ", "\t"])
iso_like = st.tuples(space, date_part, separator, time_part, fraction, offset, space).map("".join)
# The usual spelling with a real date and time (rare among `iso_like`'s random digits), any
# offset of two-digit hours and minutes (from -00:00 to +99:99), sometimes a leap second.
usual = st.tuples(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)), st.sampled_from("+-"),
    st.integers(0, 99), st.integers(0, 99), st.sampled_from(["", "", "", ":60"]),
).map(lambda p: f"{p[0]:%Y-%m-%dT%H:%M}{p[4] or f':{p[0]:%S}'}{p[1]}{p[2]:02d}:{p[3]:02d}")
texts = st.lists(st.one_of(usual, iso_like, st.none(), st.text(max_size=30)), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(texts)
def test_the_fast_parse_reads_every_text_as_the_rewrites_do(values):
    column = pl.Series("start", values, dtype=pl.String)
    expected = pl.select(parse_iso(pl.lit(column))).to_series()
    got = parse_iso_series(column)
    assert got.dtype == pl.Datetime("us", "UTC")
    assert got.to_list() == expected.to_list()


def test_the_usual_spelling_takes_the_direct_format():
    got = parse_iso_series(pl.Series(["2026-11-18T00:00:08-05:00", "2026-11-18 05:00:08Z", None, "18/11/2026"]))
    assert [v.isoformat() if v else None for v in got] == [
        "2026-11-18T05:00:08+00:00", "2026-11-18T05:00:08+00:00", None, None]


sources = st.one_of(st.none(), st.just("{}"), st.just('{"a": "1"}'), st.just("not json"), st.just(' {"b": 2} '))
problems = st.one_of(st.none(), st.sampled_from(["billsec x is not a whole number", 'start "y" bad']))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(sources, problems), min_size=1, max_size=30))
def test_merging_only_the_rows_with_a_problem_equals_merging_every_row(rows):
    frame = pl.DataFrame({"k": list(range(len(rows))), "source_row": [r[0] for r in rows],
                          "_problem": [r[1] for r in rows]}, schema={"k": pl.Int64, "source_row": pl.String,
                                                                     "_problem": pl.String})
    expected = frame.select("k", with_problem(pl.col("source_row"), pl.col("_problem")).alias("source_row"))
    got = merge_problems(frame, "_problem")
    assert got.columns == ["k", "source_row"]
    assert got.rows() == expected.rows()
