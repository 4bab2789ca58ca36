"""Drop-folder CSV with quoted fields: read on the fast (polars) path exactly as the csv module
reads it (the reference here), and a file whose rows do not all have the header's width still
goes the row-by-row way."""

from __future__ import annotations

import csv
import io

from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.filedrop import _csv_frame

HEADER = ["call_id", "dst", "tenant"]
field = st.text(alphabet=st.sampled_from(list('ab1 ,"')), max_size=6)


def _text(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(rows)
    return buf.getvalue()


def _reference(text: str) -> list[tuple]:
    records = [r for r in csv.reader(io.StringIO(text, newline="")) if any(f.strip() for f in r)]
    return [tuple(f or None for f in r) + (None,) for r in records[1:]]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), field, field).map(list),
                min_size=1, max_size=20))
def test_quoted_fields_read_as_the_csv_module_reads_them(rows):
    text = _text(rows)
    got = _csv_frame("f.csv", text)
    assert got.columns == [*HEADER, "_error"]
    assert got.rows() == _reference(text)


def test_a_row_with_a_missing_field_is_flagged_also_when_fields_are_quoted():
    text = 'call_id,dst,tenant\n1,"",t\n2,"5,5"\n'
    got = _csv_frame("f.csv", text)
    assert got.rows() == [("1", None, "t", None), ("2", "5,5", None, "row has 2 field(s), the header has 3")]
