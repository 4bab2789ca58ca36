"""The canonical row kept with an unrated CDR (`unrated_cdrs.row`), built by polars (`row_json`),
says what one `json.dumps` per row said (the simple reference below), and reads back as the
same canonical row (`unrated_rows`)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import polars as pl
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from autobill.cdr import CDR_SCHEMA, conform
from autobill.config import settings_from_dict
from autobill.ledger.db import session_scope
from autobill.ledger.unrated import row_json, unrated_rows, upsert_unrated

DAY = date(2026, 11, 18)
NOW = datetime(2026, 11, 19, 6, 0, tzinfo=UTC)


def reference_json(row: dict, columns: list[str]) -> str:
    """What the ledger stored before: one json.dumps per row, times by `isoformat()`."""
    return json.dumps({c: row[c].isoformat() if isinstance(row[c], datetime) else row[c] for c in columns})


texts = st.none() | st.text(max_size=12)  # any unicode: quotes, backslashes, control characters
moments = st.none() | st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC))
rows = st.fixed_dictionaries({
    **{c: texts for c, t in CDR_SCHEMA.items() if t == pl.String()},
    **{c: moments for c, t in CDR_SCHEMA.items() if isinstance(t, pl.Datetime)},
    "billsec": st.none() | st.integers(-(2**40), 2**40),
})


@hsettings(max_examples=60, deadline=None)
@given(st.lists(rows, max_size=8))
def test_property_row_json_says_what_json_dumps_said(data):
    frame = conform(pl.DataFrame(data, schema=CDR_SCHEMA)) if data else conform(pl.DataFrame(schema=CDR_SCHEMA))
    got = frame.select(row_json(frame))["row"].to_list()
    columns = [c for c in CDR_SCHEMA if c in frame.columns]
    want = [reference_json(r, columns) for r in frame.iter_rows(named=True)]
    assert [json.loads(g) for g in got] == [json.loads(w) for w in want]


def test_naive_times_keep_no_offset_and_a_subset_of_columns_is_kept_as_given():
    frame = pl.DataFrame({"cdr_key": ["pbx:1", "pbx:2"], "start_utc": [datetime(2026, 11, 18, 5, 0, 20),
                                                                         datetime(2026, 11, 18, 5, 0, 20, 5)]})
    got = [json.loads(x) for x in frame.select(row_json(frame))["row"]]
    assert got == [{"cdr_key": "pbx:1", "start_utc": "2026-11-18T05:00:20"},
                   {"cdr_key": "pbx:2", "start_utc": "2026-11-18T05:00:20.000005"}]


def test_unrated_rows_read_back_what_upsert_unrated_stored(ledger_url):
    start = datetime(2026, 11, 18, 15, 4, 5, 123456, tzinfo=UTC)
    given = {
        "cdr_key": ["pbx:é\"1", "pbx:2"], "server": ["pbx", "pbx"], "tenant": ["t\n1", None],
        "dst": ["+1 (416) 555-0100", "0044"], "rate_number": ["14165550100", None],
        "start_utc": [start, start.replace(microsecond=0)], "answer_utc": [None, start],
        "end_utc": [start + timedelta(seconds=61), start + timedelta(hours=1)], "billsec": [61, None],
        "source_row": ['{"a": "b"}', None],
    }
    frame = pl.DataFrame({c: given.get(c, [None, None]) for c in CDR_SCHEMA}, schema=CDR_SCHEMA)
    stored = frame.with_columns(pl.lit(DAY).alias("billing_date"), pl.lit("no_rate").alias("unrated_reason"))
    with session_scope(ledger_url) as session:
        upsert_unrated(session, stored, NOW)
    back = unrated_rows(settings_from_dict({"ledger_url": ledger_url}), DAY)
    assert back.sort("cdr_key").to_dicts() == frame.sort("cdr_key").to_dicts()
