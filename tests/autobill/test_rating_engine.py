"""The vectorised rater against the per-row reference (RATING.md), plus worked examples."""

from __future__ import annotations

from decimal import Decimal

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autobill.rating import engine
from autobill.rating.engine import OUTPUT_COLUMNS, Numbering, rate_cdrs
from autobill.rating.tariff import tariff_from_frame
from tests.support.rating import MARKUPS, TARIFF_COLUMNS, as_text_rows, cdr_rows, tariff_rows, text_frame
from tests.support.reference_rater import ref_rate

CDR_COLUMNS = ("cdr_id", "start", "billsec", "dst", "note")


def engine_rows(tariff: list[dict], cdrs: list[dict], markup="0", numbering=Numbering(), drop=()) -> list[dict]:
    columns = [c for c in TARIFF_COLUMNS if c not in drop]
    loaded = tariff_from_frame(text_frame(tariff, columns))
    out = rate_cdrs(text_frame(cdrs, CDR_COLUMNS), loaded, numbering=numbering, markup=Decimal(markup))
    assert out.columns == [*CDR_COLUMNS, *OUTPUT_COLUMNS]
    return as_text_rows(out)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tariff=tariff_rows(),
    cdrs=cdr_rows(),
    markup=st.sampled_from(MARKUPS),
    drop=st.sets(st.sampled_from(["description", "connect_fee", "first_increment", "next_increment", "effective_from"])),
)
def test_engine_equals_reference(tariff, cdrs, markup, drop):
    trimmed = [{k: v for k, v in row.items() if k not in drop} for row in tariff]
    if "effective_from" in drop:  # without the column every prefix may appear once only
        seen, unique = set(), []
        for row in trimmed:
            if row["prefix"] not in seen:
                seen.add(row["prefix"])
                unique.append(row)
        trimmed = unique
    expected = ref_rate(trimmed, cdrs, markup=Decimal(markup))
    assert engine_rows(trimmed, cdrs, markup, drop=drop) == expected


@settings(max_examples=40, deadline=None)
@given(
    tariff=tariff_rows(min_size=1),
    cdrs=cdr_rows(),
    numbering=st.sampled_from([("44", None, None), ("33", "00", "0"), ("1", "9", ""), ("1", "", "1"), ("86", None, None)]),
)
def test_engine_equals_reference_other_numbering(tariff, cdrs, numbering):
    cc, intl, trunk = numbering
    expected = ref_rate(tariff, cdrs, cc, intl, trunk)
    assert engine_rows(tariff, cdrs, numbering=Numbering(cc, intl, trunk)) == expected


TARIFF = [
    {"prefix": "1", "rate": "0.01", "description": "NANP", "first_increment": "60", "next_increment": "6"},
    {"prefix": "1613", "rate": "0.005", "description": "Ottawa", "connect_fee": "0.02"},
    {"prefix": "44", "rate": "0.03", "description": "UK", "effective_from": "2024-01-01"},
    {"prefix": "44", "rate": "0.02", "description": "UK new", "effective_from": "2024-06-01T02:00:00+02:00"},
    {"prefix": "4420", "rate": "0.04", "description": "London", "effective_from": "2030-01-01"},
]


def one(dst: str, billsec: str = "61", start: str = "2024-07-01T12:00:00Z", markup: str = "0", **kw) -> dict:
    rows = engine_rows(TARIFF, [{"cdr_id": "x", "start": start, "billsec": billsec, "dst": dst, "note": ""}], markup, **kw)
    return rows[0]


def test_worked_examples():
    # 61 s on 60/6 increments: 66 billable seconds at 0.01/min = 0.011
    got = one("2125550100")
    assert (got["status"], got["e164"], got["matched_prefix"], got["billable_seconds"], got["cost"]) == (
        "rated", "12125550100", "1", "66", "0.011000",
    )
    # connect fee + per-second, with a fractional markup: (0.02 + 0.005*61/60) * 1.125 = 0.02821875 -> half up
    got = one("6135550100", markup="12.5")
    assert (got["matched_prefix"], got["rate"], got["connect_fee"], got["cost"]) == ("1613", "0.005000", "0.020000", "0.028219")
    # the London prefix is not in effect yet: the UK row in effect on the call's date applies
    got = one("011442071234567", billsec="60")
    assert (got["matched_prefix"], got["description"], got["cost"]) == ("44", "UK new", "0.020000")
    # effective exactly at the start (2024-06-01T00:00:00Z written with +02:00) applies
    assert one("+442071234567", start="2024-06-01T00:00:00Z")["description"] == "UK new"
    assert one("+442071234567", start="2024-05-31T23:59:59Z")["description"] == "UK"
    # no UK row in effect before 2024: the prefix does not match and nothing shorter does
    got = one("+442071234567", start="2023-12-31T23:59:59Z")
    assert (got["status"], got["matched_prefix"], got["cost"], got["e164"]) == ("no_rate", "", "", "442071234567")


def test_status_precedence():
    cdrs = [
        {"cdr_id": "a", "start": "junk", "billsec": "0", "dst": "junk"},  # invalid beats invalid_number
        {"cdr_id": "a", "start": "2024-07-01T00:00:00Z", "billsec": "5", "dst": "2125550100"},  # duplicate
        {"cdr_id": "b", "start": "2024-07-01T00:00:00Z", "billsec": "0", "dst": "junk"},  # invalid_number
        {"cdr_id": "c", "start": "2024-07-01T00:00:00Z", "billsec": "0", "dst": "+861234"},  # unanswered beats no_rate
        {"cdr_id": "d", "start": "2024-07-01T00:00:00Z", "billsec": "-1", "dst": "2125550100"},
        {"cdr_id": "e", "start": "2024-07-01T00:00:00", "billsec": "1", "dst": "2125550100"},  # no offset
        {"cdr_id": "f", "start": "2024-07-01T00:00:00Z", "billsec": "12.5", "dst": "2125550100"},
        {"cdr_id": "g", "start": "2024-07-01T00:00:00Z", "billsec": "", "dst": "2125550100"},
    ]
    rows = engine_rows(TARIFF, [{**c, "note": ""} for c in cdrs])
    assert [r["status"] for r in rows] == [
        "invalid", "duplicate", "invalid_number", "unanswered", "invalid", "invalid", "invalid", "invalid",
    ]
    assert [r["cost"] for r in rows] == ["", "", "", "0.000000", "", "", "", ""]
    assert rows[3]["billable_seconds"] == "0" and rows[3]["matched_prefix"] == ""


def test_first_increment_boundaries():
    # 1: F=60, N=6
    for s, b in [(1, 60), (59, 60), (60, 60), (61, 66), (66, 66), (67, 72)]:
        assert one("2125550100", billsec=str(s))["billable_seconds"] == str(b)


def test_billsec_above_a_week_is_invalid_and_a_week_is_rated():
    """RATING.md: billsec above 604800 (7 days) is `invalid`, whatever its size."""
    for s in (604_801, 10**9, 10**40 + 1):
        got = one("2125550100", billsec=str(s))
        assert (got["status"], got["cost"]) == ("invalid", ""), s
    week = one("2125550100", billsec="604800")
    b = 60 + -(-(604_800 - 60) // 6) * 6
    micro = (b * 10_000 + 30) // 60  # 0.01/min = 10_000 micro; half up
    assert (week["status"], week["cost"]) == ("rated", f"{micro // 10**6}.{micro % 10**6:06d}")


def test_an_empty_cdr_id_is_invalid_never_a_duplicate():
    cdrs = pl.DataFrame({"cdr_id": ["", "", " ", None, "a", "a"], "start": ["2024-07-01T00:00:00Z"] * 6,
                         "billsec": ["30"] * 6, "dst": ["2125550100"] * 6})
    out = rate_cdrs(cdrs, tariff_from_frame(text_frame(TARIFF, TARIFF_COLUMNS)))
    assert out["status"].to_list() == ["invalid", "invalid", "invalid", "invalid", "rated", "duplicate"]


def test_input_columns_are_kept_verbatim_and_in_order():
    cdrs = pl.DataFrame(
        {"zz": [" 0012 "], "dst": ["2125550100"], "billsec": ["007"], "start": ["2024-07-01T00:00:00Z"], "cdr_id": ["1.50"]}
    )
    out = rate_cdrs(cdrs, tariff_from_frame(text_frame(TARIFF, TARIFF_COLUMNS)))
    assert out.columns == ["zz", "dst", "billsec", "start", "cdr_id", *OUTPUT_COLUMNS]
    assert out.row(0)[:5] == (" 0012 ", "2125550100", "007", "2024-07-01T00:00:00Z", "1.50")
    assert out["billable_seconds"][0] == "60"


@pytest.mark.parametrize("extra", ["_code", "_tid", "_row", "_cost_txt"])
@pytest.mark.parametrize("parquet", [False, True])
def test_input_columns_named_like_working_columns(extra, parquet):
    """The output is one projection of the input and the working columns; an input column with a
    working column's name takes the other path (two frames side by side) and is kept verbatim."""
    cdrs = pl.DataFrame(
        {extra: ["x", "y"], "dst": ["2125550100", "+442071234567"], "billsec": ["61", "0"],
         "start": ["2024-07-01T00:00:00Z"] * 2, "cdr_id": ["1", "2"]}
    )
    tariff = tariff_from_frame(text_frame(TARIFF, TARIFF_COLUMNS))
    plain = cdrs.rename({extra: "note"})
    got = engine._output(cdrs, tariff, Numbering(), Decimal(0), "<cdrs>", parquet=parquet).whole()
    want = engine._output(plain, tariff, Numbering(), Decimal(0), "<cdrs>", parquet=parquet).whole()
    got, want = got.collect(), want.collect()
    assert got.columns == [extra, "dst", "billsec", "start", "cdr_id", *OUTPUT_COLUMNS]
    assert got[extra].to_list() == ["x", "y"]
    assert got.drop(extra).equals(want.drop("note"))


def test_rows_keep_input_order_on_a_larger_file():
    n = 5000
    cdrs = pl.DataFrame(
        {
            "cdr_id": [str(i) for i in range(n)],
            "start": ["2024-07-01T00:00:00Z"] * n,
            "billsec": [str(i % 100) for i in range(n)],
            "dst": [("+44" if i % 3 else "+1212") + str(1000000 + i) for i in range(n)],
        }
    )
    out = rate_cdrs(cdrs, tariff_from_frame(text_frame(TARIFF, TARIFF_COLUMNS)))
    assert out["cdr_id"].to_list() == [str(i) for i in range(n)]
    ref = ref_rate(TARIFF, cdrs.to_dicts())
    assert as_text_rows(out) == ref


def test_typed_parquet_columns():
    from datetime import UTC, datetime

    cdrs = pl.DataFrame(
        {
            "cdr_id": [1, 2, 2, 3, 4],
            "start": [datetime(2024, 7, 1, tzinfo=UTC)] * 5,
            "billsec": [61, 0, 5, -3, None],
            "dst": [2125550100, 2125550100, 2125550100, 2125550100, 2125550100],
        }
    )
    out = rate_cdrs(cdrs, tariff_from_frame(text_frame(TARIFF, TARIFF_COLUMNS)))
    assert out["status"].to_list() == ["rated", "unanswered", "duplicate", "invalid", "invalid"]
    assert out["cost"][0] == "0.011000"
    naive = cdrs.with_columns(pl.col("start").dt.replace_time_zone(None))
    assert set(rate_cdrs(naive, tariff_from_frame(text_frame(TARIFF, TARIFF_COLUMNS)))["status"]) == {"invalid", "duplicate"}
    floats = cdrs.with_columns(pl.Series("billsec", [61.0, 0.0, 5.0, 12.5, None]))
    got = rate_cdrs(floats, tariff_from_frame(text_frame(TARIFF, TARIFF_COLUMNS)))["status"].to_list()
    assert got == ["rated", "unanswered", "duplicate", "invalid", "invalid"]


def test_empty_inputs():
    empty_cdrs = text_frame([], CDR_COLUMNS)
    out = rate_cdrs(empty_cdrs, tariff_from_frame(text_frame(TARIFF, TARIFF_COLUMNS)))
    assert out.height == 0 and out.columns == [*CDR_COLUMNS, *OUTPUT_COLUMNS]
    rows = engine_rows([], [{"cdr_id": "a", "start": "2024-07-01T00:00:00Z", "billsec": "5", "dst": "+1212", "note": ""}])
    assert rows[0]["status"] == "no_rate"


@pytest.mark.parametrize("markup", ["0", "12.5", "-100"])
def test_exact_rounding_half_up(markup):
    # 0.000001/min for 30 s = 0.0000005 -> half up to 0.000001 (a float would not get this right)
    tariff = [{"prefix": "9", "rate": "0.000001"}]
    cdr = [{"cdr_id": "a", "start": "2024-07-01T00:00:00Z", "billsec": "30", "dst": "+91", "note": ""}]
    got = engine_rows(tariff, cdr, markup)[0]["cost"]
    assert got == {"0": "0.000001", "12.5": "0.000001", "-100": "0.000000"}[markup]


def test_markup_with_many_decimals_takes_the_exact_python_path():
    """A factor too large for Int128 (here 40 decimals) is still exact: every row goes to Python."""
    markup = "12.5000000000000000000000000000000000000001"
    cdrs = [{"cdr_id": str(i), "start": "2024-07-01T00:00:00Z", "billsec": str(s), "dst": "+12125550100", "note": ""}
            for i, s in enumerate([1, 61, 3599, 10**20])]
    assert engine_rows(TARIFF, cdrs, markup) == ref_rate(TARIFF, cdrs, markup=Decimal(markup))
