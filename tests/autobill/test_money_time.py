from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autobill.money import MoneyError, format_cost, round_cost, round_minor, to_decimal
from autobill.timeutil import day_bounds_utc, period_bounds, yesterday

TORONTO = ZoneInfo("America/Toronto")


def test_round_cost_is_half_up_at_6_places():
    assert round_cost(Decimal("0.0000005")) == Decimal("0.000001")
    assert round_cost(Decimal("0.00000049999")) == Decimal("0.000000")
    assert round_cost(Decimal("2.5000005")) == Decimal("2.500001")
    assert format_cost(Decimal("1")) == "1.000000"
    assert format_cost(None) == ""


def test_round_minor_uses_the_currency_minor_unit():
    assert round_minor(Decimal("1.005"), "USD") == Decimal("1.01")
    assert round_minor(Decimal("1.5"), "JPY") == Decimal("2")
    assert round_minor(Decimal("1.0005"), "KWD") == Decimal("1.001")


def test_floats_and_junk_are_refused():
    with pytest.raises(MoneyError):
        to_decimal(0.1)
    with pytest.raises(MoneyError):
        to_decimal("abc")
    with pytest.raises(MoneyError):
        to_decimal("NaN")
    assert to_decimal("0.10") == Decimal("0.10")


def test_dst_days_are_23_and_25_hours():
    spring = day_bounds_utc(date(2026, 3, 8), TORONTO)
    fall = day_bounds_utc(date(2026, 11, 1), TORONTO)
    assert (spring[1] - spring[0]).total_seconds() == 23 * 3600
    assert (fall[1] - fall[0]).total_seconds() == 25 * 3600
    assert spring[0] == datetime(2026, 3, 8, 5, tzinfo=UTC)


def test_yesterday_is_local_not_utc():
    # 02:30 UTC on the 21st is still the 20th in Toronto: yesterday is the 19th.
    assert yesterday(TORONTO, datetime(2026, 11, 21, 2, 30, tzinfo=UTC)) == date(2026, 11, 19)
    assert yesterday(ZoneInfo("UTC"), datetime(2026, 11, 21, 2, 30, tzinfo=UTC)) == date(2026, 11, 20)


def test_period_bounds():
    assert period_bounds(date(2026, 11, 21), 1) == (date(2026, 11, 1), date(2026, 12, 1))
    assert period_bounds(date(2026, 12, 3), 15) == (date(2026, 11, 15), date(2026, 12, 15))
    assert period_bounds(date(2027, 1, 20), 15) == (date(2027, 1, 15), date(2027, 2, 15))


@given(st.decimals(min_value=-10**9, max_value=10**9, places=6, allow_nan=False, allow_infinity=False),
       st.sampled_from(["USD", "CAD", "JPY", "KWD"]))
def test_format_money_is_exact_and_shows_the_minor_unit(value, currency):
    from autobill.money import format_money, minor_units

    text = format_money(value, currency)
    number, code = text.split(" ")
    assert code == currency and Decimal(number) == value  # nothing rounded away for display
    decimals = len(number.split(".")[1]) if "." in number else 0
    assert decimals >= minor_units(currency)


def test_format_money_examples():
    from autobill.money import format_amounts, format_money

    assert format_money(Decimal("354"), "usd") == "354.00 USD"
    assert format_money(Decimal("0.300001"), "USD") == "0.300001 USD"
    assert format_amounts({"USD": Decimal("1"), "CAD": Decimal("2.5")}) == "2.50 CAD, 1.00 USD"
    assert format_amounts({}) == "nothing"


def test_local_run_name_reads_in_local_time_across_dst():
    from autobill.timeutil import local_run_name

    assert local_run_name("autosuspend", TORONTO, datetime(2026, 11, 20, 19, 5, tzinfo=UTC)) == \
        "autosuspend-2026-11-20-14:05-EST"
    assert local_run_name("autosuspend", TORONTO, datetime(2026, 7, 1, 4, 0, tzinfo=UTC)) == \
        "autosuspend-2026-07-01-00:00-EDT"
