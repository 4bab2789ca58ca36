"""Bulk writes: COPY on PostgreSQL and executemany on SQLite store exactly what the ORM would."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from autobill.ledger.bulk import _copy_text, insert_rows, keys_present
from autobill.ledger.db import session_scope
from autobill.ledger.models import Charge, UnratedCDR

NOW = datetime(2026, 11, 20, 5, 30, 1, 123456, tzinfo=UTC)


def test_copy_text_escapes_the_four_special_characters_and_null():
    assert _copy_text(None) == "\\N"
    assert _copy_text("a\\b\tc\nd\re") == "a\\\\b\\tc\\nd\\re"
    assert _copy_text(Decimal("0.000001")) == "0.000001"
    assert _copy_text(date(2026, 3, 8)) == "2026-03-08"
    assert _copy_text(NOW) == "2026-11-20 05:30:01.123456+00:00"


def test_copy_text_refuses_floats_and_naive_times():
    with pytest.raises(TypeError, match="binary float"):
        _copy_text(0.1)
    with pytest.raises(ValueError, match="naive datetime"):
        _copy_text(datetime(2026, 1, 1))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(descriptions=st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                                              blacklist_characters="\x00"), max_size=30),
                             min_size=1, max_size=20))
def test_bulk_insert_round_trips_any_text_money_and_time(ledger_url: str, descriptions: list[str]):
    with session_scope(ledger_url) as s:
        s.execute(Charge.__table__.delete())
    cols = ("idempotency_key", "client_id", "service_id", "billing_date", "charge_class", "currency", "amount",
            "exact_amount", "billable_seconds", "cdr_count", "tariff_version", "description", "state", "attempts",
            "run_id", "created_at")
    rows = [(f"k{i}", 1, 10, date(2026, 11, 20), "outbound", "USD", Decimal("1.23"), Decimal(f"1.2{i % 10}0001"),
             60, 1, "v1", d, "pending", 0, None, NOW) for i, d in enumerate(descriptions)]
    with session_scope(ledger_url) as s:
        assert insert_rows(s, Charge.__table__, cols, rows) == len(rows)
    with session_scope(ledger_url) as s:
        got = {c.idempotency_key: c for c in s.scalars(select(Charge))}
    for key, *_, exact, _secs, _n, _v, desc, _st, _a, run, created in rows:
        c = got[key]
        assert (c.description, c.exact_amount, c.run_id, c.created_at) == (desc, exact, run, created)


def test_keys_present_finds_exactly_the_stored_keys(ledger_url: str):
    with session_scope(ledger_url) as s:
        insert_rows(s, UnratedCDR.__table__, ("cdr_key", "server", "billing_date", "reason", "attempts", "first_seen",
                                              "last_seen"),
                    [(f"pbx:{i}", "pbx", date(2026, 11, 20), "no_rate", 1, NOW, NOW) for i in range(0, 50, 2)])
    with session_scope(ledger_url) as s:
        probe = [f"pbx:{i}" for i in range(40)] + ["pbx:0", "other:1"]  # a duplicate and a stranger
        assert keys_present(s, UnratedCDR.__table__, "cdr_key", iter(probe)) == {f"pbx:{i}" for i in range(0, 40, 2)}
        # twice in one transaction (the billing transaction probes more than one table)
        assert keys_present(s, UnratedCDR.__table__, "cdr_key", iter(["pbx:48"])) == {"pbx:48"}
