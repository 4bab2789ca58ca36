"""Property: the legs the sandbox logs for a call map back to that call (the leg mapping contract)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from autobill.config import VodiaServer
from autobill.numbering import normalise
from connectors.vodia import calls_from_legs
from sandboxes.vodia import legs_from_calls

CFG = VodiaServer(id="v9", kind="vodia", url="http://unused", username="u", password={"env": "UNUSED"})
digits = st.text("0123456789", min_size=3, max_size=15)
numbers = st.builds(lambda plus, d: plus + d, st.sampled_from(["", "+"]), digits)


@st.composite
def calls(draw) -> pl.DataFrame:
    n = draw(st.integers(1, 12))
    rows = []
    for i in range(n):
        start = draw(st.datetimes(datetime(2020, 1, 1), datetime(2030, 1, 1))).replace(tzinfo=UTC)
        billsec = draw(st.one_of(st.just(0), st.integers(1, 20_000)))
        ring = timedelta(microseconds=draw(st.integers(0, 60_000_000)))
        answer = start + ring if billsec else None
        rows.append(
            dict(
                cdr_key=f"x:call-{i}",
                tenant=draw(st.sampled_from(["a.example", "b.example"])),
                extension=str(draw(st.integers(100, 99999))),
                direction=draw(st.sampled_from(["inbound", "outbound", "local"])),
                src=draw(numbers),
                dst=draw(numbers),
                start_utc=start,
                answer_utc=answer,
                end_utc=(answer + timedelta(seconds=billsec)) if answer else start + ring,
                billsec=billsec,
            )
        )
    utc = pl.Datetime("us", "UTC")
    return pl.DataFrame(rows, schema_overrides={"start_utc": utc, "answer_utc": utc, "end_utc": utc})


@settings(max_examples=80, deadline=None)
@given(calls())
def test_legs_round_trip_to_one_row_per_call(frame: pl.DataFrame) -> None:
    legs = [(domain, leg) for domain, records in legs_from_calls(frame).items() for leg in records]
    assert len(legs) == 2 * frame.height
    out, merged = calls_from_legs(legs, CFG)
    assert merged == frame.height and out.height == frame.height
    got = {r["cdr_key"]: r for r in out.iter_rows(named=True)}
    for row in frame.iter_rows(named=True):
        back = got["v9:" + row["cdr_key"].split(":", 1)[1]]
        for col in ("tenant", "extension", "direction", "src", "dst", "start_utc", "answer_utc", "billsec"):
            assert back[col] == row[col], col
        assert back["rate_number"] == normalise(row["dst"])
        if row["billsec"]:
            assert back["end_utc"] == row["end_utc"]
