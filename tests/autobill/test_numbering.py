from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autobill.numbering import normalise, normalise_expr

CASES = [
    # (number, cc, intl, trunk, expected)
    ("+1 (613) 555-0100", "1", None, None, "16135550100"),
    ("  +447911123456", "1", None, None, "447911123456"),
    ("011442071234567", "1", None, None, "442071234567"),
    ("6135550100", "1", None, None, "16135550100"),
    ("16135550100", "1", None, None, "16135550100"),
    ("1135550100", "1", None, None, "1135550100"),  # 10 digits starting 1: unchanged
    ("02071234567", "44", None, None, "442071234567"),
    ("00331234", "44", None, None, "331234"),
    ("2071234567", "44", None, None, "2071234567"),
    ("9*0#1", "1", None, None, "901"),
    ("abc", "1", None, None, None),
    ("", "1", None, None, None),
    ("+", "1", None, None, None),
    ("1234567890123456", "1", None, None, None),  # 16 digits
    ("011", "1", None, None, None),  # nothing left after the prefix
    ("9016135550100", "1", "9", None, "016135550100"),
    ("06135550100", "1", None, "0", "16135550100"),
    ("6135550100", "1", "", "", "16135550100"),
]


@pytest.mark.parametrize(("number", "cc", "intl", "trunk", "expected"), CASES)
def test_normalise_cases(number, cc, intl, trunk, expected):
    assert normalise(number, cc, intl, trunk) == expected
    got = pl.DataFrame({"n": [number]}).select(normalise_expr(pl.col("n"), cc, intl, trunk)).item()
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(
    numbers=st.lists(st.text(alphabet="+0123456789 -()*#x", max_size=20), min_size=1, max_size=40),
    cc=st.sampled_from(["1", "44", "33", "7", "852"]),
    intl=st.sampled_from([None, "", "00", "011", "9"]),
    trunk=st.sampled_from([None, "", "0", "1"]),
)
def test_vectorised_equals_scalar(numbers, cc, intl, trunk):
    got = pl.DataFrame({"n": numbers}).select(normalise_expr(pl.col("n"), cc, intl, trunk)).to_series().to_list()
    assert got == [normalise(n, cc, intl, trunk) for n in numbers]
