"""Exact arithmetic and timestamp parsing: the vectorised paths equal plain Python, at any size."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from autobill.rating import exact
from autobill.rating.timestamps import parse_instant, parse_starts

magnitudes = st.one_of(st.integers(0, 10**6), st.integers(0, 10**15), st.integers(0, 10**31))


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(st.tuples(magnitudes, magnitudes, magnitudes), min_size=1, max_size=20),
    markup=st.one_of(
        st.decimals(min_value=-100, max_value=10**6, places=4, allow_nan=False, allow_infinity=False),
        st.sampled_from([Decimal("12.5"), Decimal("0.0000000001"), Decimal(0)]),
    ),
    fx=st.sampled_from([Decimal(1), Decimal("1.0837"), Decimal(1) / Decimal("0.92")]),
)
def test_cost_text_is_exact_on_both_paths(rows, markup, fx):
    """Rows near and far beyond the Int128 bound: the text equals the exact fraction, rounded half up."""
    a, d = exact.cost_fraction(markup, fx)
    df = pl.DataFrame(
        {"s": [r[0] for r in rows], "rate": [r[1] for r in rows], "fee": [r[2] for r in rows]},
        schema={"s": pl.Int128, "rate": pl.Int128, "fee": pl.Int128},
    )
    got = exact.cost_text(df, seconds="s", rate="rate", connect="fee", factors=[(a, d)]).to_list()
    for (s, rate, fee), text in zip(rows, got, strict=True):
        cost = (Fraction(fee, 10**6) + Fraction(rate, 10**6) * s / 60) * (1 + Fraction(markup) / 100) * Fraction(fx)
        micro = math.floor(cost * 10**6 + Fraction(1, 2))
        assert text == f"{micro // 10**6}.{micro % 10**6:06d}"


def test_cost_text_per_row_factors_and_nulls():
    df = pl.DataFrame(
        {"s": [60, None, 10**29, 60, 60], "rate": [10_000, 1, 10**25, 10_000, 10_000], "fee": [0, 0, 5, 0, 0],
         "f": [0, 0, 1, 2, None]},
        schema={"s": pl.Int128, "rate": pl.Int128, "fee": pl.Int128, "f": pl.UInt32},
    )
    huge = exact.cost_fraction(Decimal("12.5"), Decimal(1) / Decimal(3) * Decimal("1e-40"))  # terms > 2^100
    factors = [(1, 60), (3, 7), huge]
    got = exact.cost_text(df, seconds="s", rate="rate", connect="fee", factors=factors, factor="f").to_list()
    expected_huge = exact.py_cost_micro(0, 10_000, 60, *huge)
    assert got == ["0.010000", None, exact.micro_text(exact.py_cost_micro(5, 10**25, 10**29, 3, 7)),
                   exact.micro_text(expected_huge), None]


@settings(max_examples=150, deadline=None)
@given(
    s=st.one_of(st.integers(0, 200), st.integers(0, 10**25)),
    first=st.integers(1, 120),
    nxt=st.integers(1, 120),
)
def test_billable_seconds(s, first, nxt):
    expected = 0 if s == 0 else first if s <= first else first + math.ceil(Fraction(s - first, nxt)) * nxt
    got = pl.DataFrame({"s": [s], "f": [first], "n": [nxt]}, schema={"s": pl.Int128, "f": pl.Int64, "n": pl.Int64})
    assert got.select(exact.billable_expr(pl.col("s"), pl.col("f"), pl.col("n"))).item() == expected
    assert exact.py_billable(s, first, nxt) == expected


def _layouts(moment: datetime, offset_minutes: int) -> list[str]:
    local = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    return [
        local.isoformat(),
        local.isoformat(sep=" "),
        local.strftime("%Y-%m-%dT%H:%M:%S%z"),
        local.replace(tzinfo=None).isoformat() + "Z" if offset_minutes == 0 else local.isoformat(timespec="seconds"),
        local.isoformat(timespec="milliseconds"),
        local.replace(tzinfo=None).isoformat(),  # no offset: unparsable
        local.strftime("%Y%m%dT%H%M%S%z"),
    ]


@settings(max_examples=200, deadline=None)
@given(
    moment=st.datetimes(min_value=datetime(1850, 1, 1), max_value=datetime(3100, 1, 1), timezones=st.just(UTC)),
    offset=st.integers(-23 * 60 - 59, 23 * 60 + 59),
    junk=st.lists(st.text(alphabet="0123456789-:TZ+. ", max_size=26), max_size=5),
)
def test_parse_starts_equals_fromisoformat(moment, offset, junk):
    texts = _layouts(moment, offset) + junk + [None]
    got = parse_starts(pl.Series("start", texts, dtype=pl.String)).to_list()
    assert got == [parse_instant(t) for t in texts]


def test_typed_start_columns():
    aware = pl.Series([datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))]).dt.convert_time_zone("Europe/Paris")
    assert parse_starts(aware).to_list() == [datetime(2024, 1, 1, 10, tzinfo=UTC)]
    naive = pl.Series([datetime(2024, 1, 1, 12)])
    assert parse_starts(naive).to_list() == [None]
