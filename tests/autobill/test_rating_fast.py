"""The fast paths of `autobill rate` (fast.py, the byte-level start times, the direct prefix table,
the Int64 arithmetic, the DECIMAL parquet columns) against the simple rules they replace."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autobill.numbering import normalise
from autobill.rating import engine
from autobill.rating.engine import OUTPUT_COLUMNS, Numbering, rate_cdrs
from autobill.rating.fast import U64, duplicate_ids, e164_column, numbers
from autobill.rating.match import direct_index, match, match_direct
from autobill.rating.tariff import tariff_from_frame
from autobill.rating.timestamps import parse_instant, parse_starts
from tests.support.rating import MARKUPS, TARIFF_COLUMNS, as_text_rows, cdr_rows, tariff_rows, text_frame
from tests.support.reference_rater import ref_rate

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NUMBER_CHARS = "+0123456789 -_()*#x\t\u0661\u00a0"


@SETTINGS
@given(st.lists(st.text(alphabet=NUMBER_CHARS, max_size=24), min_size=1, max_size=40))
def test_polars_reads_exactly_plus_digits_as_unsigned(texts):
    """fast.numbers relies on this: the cast accepts `+?[0-9]+` below 2^64 and nothing else."""
    got = pl.Series(texts, dtype=pl.String).cast(U64, strict=False).to_list()
    for text, value in zip(texts, got, strict=True):
        expected = int(text) if re.fullmatch(r"\+?[0-9]+", text) and int(text) < 2**64 else None
        assert value == expected, text


@SETTINGS
@given(
    dst=st.lists(
        st.one_of(
            st.text(alphabet=NUMBER_CHARS, max_size=24),
            st.from_regex(r"\+?(011|00|0|1)?[0-9]{0,21}", fullmatch=True),
        ),
        min_size=1,
        max_size=40,
    ),
    numbering=st.sampled_from(
        [("1", None, None), ("44", None, None), ("33", "00", "0"), ("1", "9", ""), ("1", "", "1"), ("852", None, "00")]
    ),
)
def test_numbers_equal_the_scalar_rules(dst, numbering):
    cc, intl, trunk = numbering
    series = pl.Series("dst", dst + [None], dtype=pl.String)
    nums = numbers(series, cc, intl, trunk)
    got = e164_column(series, nums).to_list()
    expected = [normalise(d, cc, intl, trunk) for d in series.to_list()]
    assert got == expected
    values = [None if e is None else int(e) for e in expected]
    assert nums.get_column("_v").to_list() == values
    assert nums.get_column("_n").to_list() == [None if e is None else len(e) for e in expected]


@SETTINGS
@given(st.lists(st.one_of(st.none(), st.text(alphabet="ab \t\u00a0\u2003\x1c", max_size=3)), max_size=60))
def test_duplicate_ids_equal_a_seen_set(ids):
    dup, no_id = duplicate_ids(pl.Series("cdr_id", ids, dtype=pl.String))
    seen: set[str] = set()
    expected_dup, expected_blank = [], []
    for value in ids:
        # blank: missing, or nothing left once polars strips Unicode white space
        blank = value is None or pl.Series([value]).str.strip_chars()[0] == ""
        expected_blank.append(blank)
        expected_dup.append(not blank and value in seen)
        if not blank:
            seen.add(value)
    assert no_id.to_list() == expected_blank
    assert dup.to_list() == expected_dup


def test_duplicate_ids_of_typed_columns():
    dup, no_id = duplicate_ids(pl.Series([3, 1, 3, None, 1, 2], dtype=pl.Int64))
    assert dup.to_list() == [False, False, True, False, True, False]
    assert no_id.to_list() == [False, False, False, True, False, False]


LAYOUT_CHARS = "0123456789-:TZ+ .z/\x00\u00e9"


@SETTINGS
@given(
    moment=st.datetimes(min_value=datetime(1890, 1, 1), max_value=datetime(3010, 1, 1), timezones=st.just(UTC)),
    offset=st.integers(-23 * 60 - 59, 23 * 60 + 59),
    edits=st.lists(st.tuples(st.integers(0, 24), st.sampled_from(LAYOUT_CHARS)), max_size=3),
)
def test_byte_level_start_times_equal_fromisoformat(moment, offset, edits):
    """One-byte edits of the two fast layouts (Z and +hh:mm) land on both sides of every check."""
    local = moment.replace(microsecond=0).astimezone(timezone(timedelta(minutes=offset)))
    texts = [local.isoformat(), moment.replace(microsecond=0, tzinfo=None).isoformat() + "Z"]
    for i, ch in edits:
        texts += [t[:i] + ch + t[i + 1 :] for t in texts]
    got = parse_starts(pl.Series("start", texts, dtype=pl.String)).to_list()
    assert got == [parse_instant(t) for t in texts]


# Prefixes up to 10 digits, so the direct table (6 digits) has blocks of the second table (7-8
# digits) under it, and prefixes deeper still (9-10 digits) under those.
LONG_PREFIXES = [
    "4", "44", "442", "4420", "44207", "442071", "4420712", "44207123", "442071234", "4420712345",
    "4420719", "44207190", "1", "1613", "16135", "161355", "16135501", "0", "0000000", "99999999",
]


@st.composite
def long_tariff(draw) -> list[dict[str, str]]:
    out, seen = [], set()
    for _ in range(draw(st.integers(1, 14))):
        prefix = draw(st.sampled_from(LONG_PREFIXES))
        eff = draw(st.sampled_from(["", "", "2024-01-01", "2024-06-01T00:00:00Z", "2025-01-01"]))
        if (prefix, eff) in seen:
            continue
        seen.add((prefix, eff))
        out.append({"prefix": prefix, "rate": draw(st.sampled_from(["0.01", "1", "0.000001"])), "effective_from": eff})
    return out


@SETTINGS
@given(
    tariff=long_tariff(),
    calls=st.lists(
        st.tuples(
            st.sampled_from(LONG_PREFIXES),
            st.text(alphabet="0123456789", max_size=8),
            st.sampled_from([datetime(2023, 6, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC), datetime(2025, 6, 1, tzinfo=UTC), None]),
        ),
        max_size=40,
    ),
)
def test_direct_table_equals_the_per_length_join(tariff, calls):
    loaded = tariff_from_frame(text_frame(tariff, ["prefix", "rate", "effective_from"]))
    e164 = [(p + t)[:15] for p, t, _ in calls]
    frame = pl.DataFrame(
        {
            "_row": pl.Series(range(len(calls)), dtype=pl.UInt32),
            "_e164": pl.Series(e164, dtype=pl.String),
            "_start": pl.Series([s for _, _, s in calls], dtype=pl.Datetime("us", "UTC")),
        }
    ).with_columns(pl.col("_e164").cast(U64).alias("_v"), pl.col("_e164").str.len_bytes().cast(pl.Int32).alias("_n"))
    expected = match(frame.drop("_v", "_n"), loaded).sort("_row")
    got = match_direct(frame, loaded, direct_index(loaded)).sort("_row")
    assert got.rows() == expected.rows()


def test_second_table_and_its_fallbacks():
    """7-8 digit prefixes are answered by the second table; a 9-digit one below them, a number too
    short for its block and a prefix not yet in effect go to the per-length join: same answers."""
    tariff = [
        {"prefix": "44", "rate": "0.1", "effective_from": ""},
        {"prefix": "4420712", "rate": "0.2", "effective_from": ""},
        {"prefix": "44207123", "rate": "0.3", "effective_from": ""},
        {"prefix": "442071234", "rate": "0.4", "effective_from": ""},
        {"prefix": "16135501", "rate": "0.5", "effective_from": "2024-06-01"},
        {"prefix": "1613", "rate": "0.6", "effective_from": ""},
    ]
    loaded = tariff_from_frame(text_frame(tariff, ["prefix", "rate", "effective_from"]))
    index = direct_index(loaded)
    assert index.blocks.len() == 2 * 100  # one block under 442071, one under 161355
    numbers_ = {
        "4420712999": "4420712",  # second table, 7 digits
        "4420712399": "44207123",  # second table, 8 digits
        "44207123499": "442071234",  # deeper than the second table: the join
        "4420711999": "44",  # in a block, covered only by the short prefix
        "4420712": "4420712",  # too short for its block: the join
        "161355019": "16135501",  # in effect at the later start only; else 1613
    }
    calls = [(e, s) for e in numbers_ for s in (datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC))]
    frame = pl.DataFrame(
        {
            "_row": pl.Series(range(len(calls)), dtype=pl.UInt32),
            "_e164": [e for e, _ in calls],
            "_start": pl.Series([s for _, s in calls], dtype=pl.Datetime("us", "UTC")),
        }
    ).with_columns(pl.col("_e164").cast(U64).alias("_v"), pl.col("_e164").str.len_bytes().cast(pl.Int32).alias("_n"))
    got = match_direct(frame, loaded, index).sort("_row")
    prefix = loaded.rows.get_column("prefix")
    found = {calls[r]: prefix[t] for r, t in got.rows()}
    for (e164, start), want in zip(calls, [p for p in numbers_.values() for _ in (0, 1)], strict=True):
        if e164 == "161355019" and start.month == 1:
            want = "1613"
        assert found[(e164, start)] == want, (e164, start)
    assert got.rows() == match(frame.drop("_v", "_n"), loaded).sort("_row").rows()


CDR_COLUMNS = ("cdr_id", "start", "billsec", "dst", "note")


def _parquet_and_text(tariff, cdrs, markup) -> tuple[pl.DataFrame, pl.DataFrame]:
    loaded = tariff_from_frame(text_frame(tariff, TARIFF_COLUMNS))
    frame = text_frame(cdrs, CDR_COLUMNS)
    typed = engine._output(frame, loaded, Numbering(), Decimal(markup), "<cdrs>", parquet=True).whole()
    return typed.collect(), rate_cdrs(frame, loaded, markup=Decimal(markup))


@SETTINGS
@given(tariff=tariff_rows(), cdrs=cdr_rows(), markup=st.sampled_from(MARKUPS))
def test_parquet_columns_hold_the_same_values_as_the_text(tariff, cdrs, markup):
    """RATING.md: parquet may use DECIMAL(18,6) money and an integer billable_seconds, "the same
    values, exactly"; where a value does not fit, the columns stay text."""
    typed, text = _parquet_and_text(tariff, cdrs, markup)
    assert typed.columns == text.columns == [*CDR_COLUMNS, *OUTPUT_COLUMNS]
    as_text = typed.with_columns(
        [pl.col(c).cast(pl.String) for c in ("billable_seconds",)]
        + [
            pl.col(c).map_elements(lambda v: f"{v:.6f}", return_dtype=pl.String)
            if isinstance(typed.schema[c], pl.Decimal)
            else pl.col(c)
            for c in ("rate", "connect_fee", "cost")
        ]
    )
    assert as_text_rows(as_text) == as_text_rows(text)
    assert as_text_rows(text) == ref_rate(tariff, cdrs, markup=Decimal(markup))


def test_parquet_columns_are_typed_when_everything_fits():
    tariff = [{"prefix": "1", "rate": "0.01", "connect_fee": "0.5"}]
    cdrs = [{"cdr_id": "a", "start": "2024-07-01T00:00:00Z", "billsec": "61", "dst": "+12125550100", "note": ""}]
    typed, _ = _parquet_and_text(tariff, cdrs, "0")
    decimal = pl.Decimal(18, 6)
    assert typed.schema["billable_seconds"] == pl.Int64
    assert [typed.schema[c] for c in ("rate", "connect_fee", "cost")] == [decimal] * 3
    assert typed.row(0, named=True)["cost"] == Decimal("0.510167")  # 0.5 + 0.01 * 61 / 60, half up
    # a rate of 10^12 or more does not fit DECIMAL(18,6): every money column stays text
    typed, _ = _parquet_and_text([{"prefix": "1", "rate": "1000000000000"}], cdrs, "0")
    assert typed.schema["rate"] == pl.String and typed["cost"][0] == "1016666666666.666667"


@pytest.mark.parametrize("markup", ["0", "12.5", "-100", "33.333333"])
def test_narrow_and_wide_arithmetic_agree(monkeypatch, markup):
    """The Int64 path is only a faster way to the Int128 numbers: force the wide one and compare."""
    tariff = [
        {"prefix": "1", "rate": "7.333333", "connect_fee": "1.000001", "first_increment": "30", "next_increment": "6"},
        {"prefix": "44", "rate": "0.000001"},
    ]
    billsecs = ["0", "1", "29", "30", "31", "3599", "604800", "604801", str(10**17), str(10**18), str(10**25)]
    cdrs = [
        {"cdr_id": str(i), "start": "2024-07-01T00:00:00Z", "billsec": s, "dst": d, "note": ""}
        for i, (s, d) in enumerate((s, d) for s in billsecs for d in ("+12125550100", "+442071234567", "+999"))
    ]
    narrow = as_text_rows(rate_cdrs(text_frame(cdrs, CDR_COLUMNS), tariff_from_frame(text_frame(tariff, TARIFF_COLUMNS)), markup=Decimal(markup)))
    monkeypatch.setattr(engine, "narrow_ok", lambda *a: False)
    wide = as_text_rows(rate_cdrs(text_frame(cdrs, CDR_COLUMNS), tariff_from_frame(text_frame(tariff, TARIFF_COLUMNS)), markup=Decimal(markup)))
    assert narrow == wide == ref_rate(tariff, cdrs, markup=Decimal(markup))
