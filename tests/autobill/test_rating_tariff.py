"""Tariff loading: every unusable value stops the load with one line naming file, row and column."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autobill.rating.tariff import TariffError, load_tariff, tariff_from_frame


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


GOOD = "prefix,rate,description,connect_fee,first_increment,next_increment,effective_from\n"


@pytest.mark.parametrize(
    ("body", "row", "column", "needle"),
    [
        ("1,0.01,a,,,,\n12a,0.01,b,,,,\n", 2, "prefix", "12a"),
        ("1234567890123456,0.01,a,,,,\n", 1, "prefix", "1-15 digits"),
        (",0.01,a,,,,\n", 1, "prefix", "empty"),
        ("1,,a,,,,\n", 1, "rate", "empty"),
        ("1,-0.5,a,,,,\n", 1, "rate", ">= 0"),
        ("1,0.1234567,a,,,,\n", 1, "rate", "6 decimals"),
        ("1,1e-3,a,,,,\n", 1, "rate", "1e-3"),
        ("1,abc,a,,,,\n", 1, "rate", "abc"),
        ("1,0.1,a,x,,,\n", 1, "connect_fee", "x"),
        ("1,0.1,a,,0,,\n", 1, "first_increment", ">= 1"),
        ("1,0.1,a,,6.5,,\n", 1, "first_increment", "6.5"),
        ("1,0.1,a,,6,-1,\n", 1, "next_increment", "-1"),
        ("1,0.1,a,,,,2024-13-01\n", 1, "effective_from", "2024-13-01"),
        ("1,0.1,a,,,,soon\n", 1, "effective_from", "soon"),
        ("1,0.1,a,,,,2024-01-01\n2,0.1,a,,,,\n1,0.2,b,,,,2024-01-01T00:00:00Z\n", 3, "effective_from", "same effective_from"),
        ("1,0.1,a,,,,\n1,0.2,b,,,,\n", 2, "effective_from", "same effective_from"),
        ("1,0.1,a,,,,2024-01-01T02:00:00+02:00\n1,0.2,b,,,,2024-01-01\n", 2, "effective_from", "same"),
    ],
)
def test_bad_rows_name_file_row_and_column(tmp_path, body, row, column, needle):
    path = write_csv(tmp_path / "deck.csv", GOOD + body)
    with pytest.raises(TariffError) as err:
        load_tariff(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: row {row} (line {row + 1}), column {column!r}: ")
    assert needle in message


def test_first_bad_row_in_file_order_wins(tmp_path):
    path = write_csv(tmp_path / "t.csv", GOOD + "1,0.1,a,,,,bad-date\n2,-1,a,,,,\n")
    with pytest.raises(TariffError, match=r"row 1 \(line 2\), column 'effective_from'"):
        load_tariff(path)


@pytest.mark.parametrize("missing", ["prefix", "rate"])
def test_missing_required_column(tmp_path, missing):
    cols = [c for c in ("prefix", "rate", "description") if c != missing]
    path = write_csv(tmp_path / "t.csv", ",".join(cols) + "\n" + ",".join("1" for _ in cols) + "\n")
    with pytest.raises(TariffError) as err:
        load_tariff(path)
    assert str(err.value).startswith(f"{path}: header (line 1), column {missing!r}: missing required column")


def test_unreadable_files(tmp_path):
    with pytest.raises(TariffError, match="file not found"):
        load_tariff(tmp_path / "nope.csv")
    with pytest.raises(TariffError, match="unsupported file type"):
        load_tariff(write_csv(tmp_path / "t.txt", GOOD))
    with pytest.raises(TariffError, match="empty"):
        load_tariff(write_csv(tmp_path / "e.csv", ""))
    with pytest.raises(TariffError, match="cannot read parquet"):
        load_tariff(write_csv(tmp_path / "p.parquet", "not parquet"))


def test_defaults_and_normalised_text(tmp_path):
    path = write_csv(
        tmp_path / "t.csv",
        "rate,prefix,extra,first_increment,next_increment,connect_fee\n"
        " 0.0100 , 44 ,x,,,\n.5,1,y,30,,1.\n7,2,z,30,6,0.000001\n",
    )
    t = load_tariff(path)
    rows = t.rows.select("prefix", "rate", "connect_fee", "first_increment", "next_increment").rows()
    assert rows == [
        ("44", "0.010000", "0.000000", 1, 1),
        ("1", "0.500000", "1.000000", 30, 30),
        ("2", "7.000000", "0.000001", 30, 6),
    ]
    assert t.lengths == (2, 1)
    assert t.rows["rate_micro"].to_list() == [10_000, 500_000, 7_000_000]


def test_effective_from_forms(tmp_path):
    path = write_csv(
        tmp_path / "t.csv",
        "prefix,rate,effective_from\n1,1,2024-03-01\n1,2,2024-03-01 12:00:00\n1,3,2024-03-01T12:00:00+02:00\n1,4,\n",
    )
    got = load_tariff(path).rows["effective_from"].to_list()
    assert got == [
        datetime(2024, 3, 1, tzinfo=UTC),
        datetime(2024, 3, 1, 12, tzinfo=UTC),
        datetime(2024, 3, 1, 10, tzinfo=UTC),
        None,
    ]


def test_empty_tariff_is_valid(tmp_path):
    t = load_tariff(write_csv(tmp_path / "t.csv", "prefix,rate\n"))
    assert t.rows.height == 0 and t.lengths == ()


def test_parquet_typed_columns_and_same_version_as_csv(tmp_path):
    csv = write_csv(tmp_path / "t.csv", "prefix,rate,first_increment,effective_from\n44,0.01,60,2024-01-01\n1,0.5,1,\n")
    typed = pl.DataFrame(
        {
            "prefix": [44, 1],
            "rate": pl.Series([Decimal("0.0100"), Decimal("0.5")], dtype=pl.Decimal(10, 4)),
            "first_increment": [60, 1],
            "effective_from": [date(2024, 1, 1), None],
        }
    )
    typed.write_parquet(tmp_path / "t.parquet")
    a, b = load_tariff(csv), load_tariff(tmp_path / "t.parquet")
    assert a.version == b.version
    assert a.rows.drop("_tid").equals(b.rows.drop("_tid"))
    changed = write_csv(tmp_path / "u.csv", "prefix,rate,first_increment,effective_from\n44,0.01,60,2024-01-01\n1,0.51,1,\n")
    assert load_tariff(changed).version != a.version


def test_float_rates_use_their_shortest_text(tmp_path):
    pl.DataFrame({"prefix": ["1", "2"], "rate": [0.1, 0.000001]}).write_parquet(tmp_path / "f.parquet")
    assert load_tariff(tmp_path / "f.parquet").rows["rate"].to_list() == ["0.100000", "0.000001"]
    pl.DataFrame({"prefix": ["1"], "rate": [1e-7]}).write_parquet(tmp_path / "g.parquet")
    with pytest.raises(TariffError, match="row 1, column 'rate'"):
        load_tariff(tmp_path / "g.parquet")


@settings(max_examples=100, deadline=None)
@given(
    whole=st.integers(0, 10**12),
    frac=st.text(alphabet="0123456789", max_size=6),
)
def test_decimal_micro_units_are_exact(whole, frac):
    text = f"{whole}.{frac}" if frac else str(whole)
    t = tariff_from_frame(pl.DataFrame({"prefix": ["1"], "rate": [text]}))
    assert t.rows["rate_micro"][0] == int(Decimal(text) * 10**6)


def test_bands_are_ignored_unless_asked(tmp_path):
    path = write_csv(tmp_path / "t.csv", "prefix,rate,days,hours\n1,0.1,mon-fri,08:00-18:00\n1,0.2,sat,\n")
    with pytest.raises(TariffError, match="same effective_from"):
        load_tariff(path)  # RATING.md: extra columns ignored, so these two rows collide
    t = load_tariff(path, with_bands=True)
    assert t.has_bands and t.rows["_band"].to_list() == [0, 1]


@pytest.mark.parametrize(
    ("body", "column", "needle"),
    [
        ("1,0.1,mon-fry,\n", "days", "unknown day"),
        ("1,0.1,,8-18\n", "hours", "HH:MM"),
        ("1,0.1,,08:00-08:00\n", "hours", "00:00-24:00"),
        ("1,0.1,mon-fri,08:00-18:00\n1,0.2,fri,17:00-19:00\n", "hours", "overlap"),
        ("1,0.1,,\n1,0.2,,\n", "prefix", "same effective_from"),
    ],
)
def test_band_errors(tmp_path, body, column, needle):
    path = write_csv(tmp_path / "t.csv", "prefix,rate,days,hours\n" + body)
    with pytest.raises(TariffError) as err:
        load_tariff(path, with_bands=True)
    assert f"column {column!r}" in str(err.value) and needle in str(err.value)
