"""Charge lines and the one billing transaction: exact sums, exactly once, late CDRs, races."""

from __future__ import annotations

import tempfile
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from autobill.billing_day import with_billing_date
from autobill.config import settings_from_dict
from autobill.ledger.billed import billed_rows
from autobill.ledger.charges import idempotency_key
from autobill.ledger.db import session_scope, upgrade
from autobill.ledger.models import BilledManifest, Charge, ExtractionBatch, ServerWatermark, UnratedCDR
from autobill.ledger.unrated import unrated_rows
from autobill.money import round_minor
from tasks.aggregate import charge_lines, lines_with_members, record_billing
from tests.support import at_once

DAY = date(2026, 11, 20)


def _settings(url: str):
    # the billed manifests go to the data directory: one of its own per ledger
    return settings_from_dict({"ledger_url": url, "timezone": "America/Toronto",
                               "data_dir": tempfile.mkdtemp(prefix="autobill-test-data-")})


def rated(n: int, start: int = 0, cost: str = "0.003333", outcome: str = "billed", client: int = 1,
          cls: str = "outbound", day: date = DAY) -> pl.DataFrame:
    t0 = datetime(day.year, day.month, day.day, 17, tzinfo=UTC)
    return pl.DataFrame({
        "cdr_key": [f"pbx1:{i}" for i in range(start, start + n)],
        "server": ["pbx1"] * n,
        "tenant": ["a.example"] * n,
        "client_id": [client] * n,
        "service_id": [client * 10] * n,
        "outcome": [outcome] * n,
        "charge_class": [cls] * n,
        "cost": [cost] * n,
        "currency": ["USD"] * n,
        "tariff_version": ["v1"] * n,
        "charged_seconds": [60] * n,
        "billable_seconds": [60] * n,
        "included_seconds": [0] * n,
        "billing_date": [day] * n,
        "start_utc": [t0 + timedelta(seconds=i) for i in range(n)],
        "rate_number": ["442071234567"] * n,
        "unrated_reason": pl.Series([None if outcome != "unrated" else "no_rate"] * n, dtype=pl.String),
    })


def test_lines_are_exact_sums_rounded_once():
    lines = charge_lines(pl.concat([rated(3), rated(2, start=10, client=2, cls="international", cost="1.000005")]))
    assert [(ln.client_id, ln.charge_class, ln.exact_amount, ln.amount, ln.cdr_count) for ln in lines] == [
        (1, "outbound", Decimal("0.009999"), Decimal("0.01"), 3),
        (2, "international", Decimal("2.000010"), Decimal("2.00"), 2),
    ]
    assert lines[0].idempotency_key in lines[0].description and "2026-11-20" in lines[0].description


@settings(max_examples=50, deadline=None)
@given(st.lists(st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False), min_size=1, max_size=30))
def test_line_total_equals_decimal_sum(costs):
    frame = rated(len(costs)).with_columns(pl.Series("cost", [f"{c:.6f}" for c in costs]))
    (line,) = charge_lines(frame)
    assert line.exact_amount == sum(costs, Decimal(0))
    assert line.amount == round_minor(sum(costs, Decimal(0)), "USD")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.sampled_from(["outbound", "international"]),
                          st.text(min_size=1, max_size=12)), min_size=1, max_size=40, unique_by=lambda t: t[2]))
def test_line_keys_digest_the_lines_cdr_keys_as_python_does(rows):
    """DuckDB's digest of each line's keys (sql/charge_lines.sql) is `idempotency_key` of the keys
    in Python (any text: binary order is code-point order), and every row is a member of its line."""
    frame = pl.concat([rated(1, client=c, cls=cls).with_columns(pl.lit(key).alias("cdr_key")) for c, cls, key in rows])
    lines, member = lines_with_members(frame)
    assert member.len() == frame.height
    for i, ln in enumerate(lines):
        keys = frame.filter(member == i)
        assert set(keys["client_id"]) == {ln.client_id} and set(keys["charge_class"]) == {ln.charge_class}
        assert ln.cdr_count == keys.height
        assert ln.idempotency_key == idempotency_key(ln.client_id, ln.service_id, DAY, ln.charge_class, "USD", "v1",
                                                     keys["cdr_key"].to_list())
    assert sum(ln.cdr_count for ln in lines) == frame.height


def test_key_depends_on_the_cdr_set_not_order():
    a = idempotency_key(1, 10, DAY, "outbound", "USD", "v1", ["x", "y"])
    assert a == idempotency_key(1, 10, DAY, "outbound", "USD", "v1", ["y", "x"])
    assert a != idempotency_key(1, 10, DAY, "outbound", "USD", "v1", ["x", "y", "z"])


def _count(url, model):
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(model))


def test_rerun_bills_nothing_twice_and_late_cdrs_get_a_new_line(ledger_url):
    s = _settings(ledger_url)
    first = record_billing(s, rated(5), run_id=None)
    assert first.outcomes["billed"] == 5 and len(first.lines) == 1
    again = record_billing(s, rated(5))
    assert again.already_final == 5 and again.lines == [] and again.outcomes["billed"] == 0
    late = record_billing(s, pl.concat([rated(5), rated(2, start=100)]))
    assert late.already_final == 5 and len(late.lines) == 1 and late.lines[0].cdr_count == 2
    with session_scope(ledger_url) as sess:
        charges = sess.scalars(select(Charge).order_by(Charge.id)).all()
        assert [c.cdr_count for c in charges] == [5, 2]
        assert len({c.idempotency_key for c in charges}) == 2
        assert all(c.billing_date == DAY and c.state == "pending" for c in charges)
    billed = billed_rows(s)
    assert len(billed) == 7 and len({b.cdr_key for b in billed}) == 7
    assert {b.charge_id for b in billed} == {c.id for c in charges}


def test_outcomes_unrated_then_fixed_and_zero_amount(ledger_url):
    s = _settings(ledger_url)
    batch = pl.concat([
        rated(2, cost="0.000000", outcome="zero_cost"),
        rated(1, start=10, cost="0", outcome="included"),
        rated(3, start=20, cost="0.001", outcome="billed"),  # 0.003 -> rounds to 0.00: a zero line
        rated(2, start=30, outcome="unrated").with_columns(pl.lit(None, pl.String).alias("cost")),
    ])
    rec = record_billing(s, batch)
    assert rec.outcomes == {"billed": 3, "included": 1, "zero_cost": 2, "unrated": 2}
    with session_scope(ledger_url) as sess:
        (charge,) = sess.scalars(select(Charge)).all()
        assert charge.state == "zero" and charge.amount == Decimal("0.00")
        assert charge.exact_amount == Decimal("0.003")
    again = unrated_rows(s, DAY)
    assert sorted(again["cdr_key"].to_list()) == ["pbx1:30", "pbx1:31"]
    assert again["start_utc"].dtype == pl.Datetime("us", "UTC")
    # A tariff fix: the same CDRs are now rated and billed; the unrated rows are resolved.
    fixed = rated(2, start=30, cost="0.5")
    rec2 = record_billing(s, fixed)
    assert rec2.outcomes["billed"] == 2 and rec2.lines[0].amount == Decimal("1.00")
    assert unrated_rows(s, DAY).height == 0
    with session_scope(ledger_url) as sess:
        assert all(u.resolved_at is not None for u in sess.scalars(select(UnratedCDR)))


def test_unrated_seen_again_counts_attempts(sqlite_url):
    upgrade(sqlite_url)
    s = _settings(sqlite_url)
    for _ in range(3):
        record_billing(s, rated(1, outcome="unrated").with_columns(pl.lit(None, pl.String).alias("cost")))
    with session_scope(sqlite_url) as sess:
        (u,) = sess.scalars(select(UnratedCDR)).all()
        assert u.attempts == 3 and u.reason == "no_rate"


def test_dry_run_writes_nothing(sqlite_url):
    upgrade(sqlite_url)
    s = _settings(sqlite_url)
    rec = record_billing(s, rated(4), dry_run=True)
    assert rec.dry_run and rec.lines[0].cdr_count == 4
    assert _count(sqlite_url, Charge) == 0 and _count(sqlite_url, BilledManifest) == 0
    assert billed_rows(s) == [] and not (s.data_path / "billed").exists()


def test_watermark_moves_in_the_same_transaction(ledger_url):
    s = _settings(ledger_url)
    mark = datetime(2026, 11, 21, 5, tzinfo=UTC)
    with session_scope(ledger_url) as sess:
        b = ExtractionBatch(server="pbx1", rows=5, proposed_watermark=mark, proposed_cursor='{"etag": "x"}')
        sess.add(b)
        sess.flush()
        batch_id = b.id
    bad = rated(2).with_columns(pl.lit("bogus").alias("outcome"))
    with pytest.raises(ValueError, match="unknown outcome"):
        record_billing(s, bad, batch_ids=[batch_id])
    with session_scope(ledger_url) as sess:
        assert sess.get(ServerWatermark, "pbx1") is None
    record_billing(s, rated(2), batch_ids=[batch_id])
    with session_scope(ledger_url) as sess:
        wm = sess.get(ServerWatermark, "pbx1")
        assert wm.watermark_utc == mark and wm.cursor == '{"etag": "x"}'
        assert sess.get(ExtractionBatch, batch_id).status == "committed"


def test_billing_date_is_local():
    frame = pl.DataFrame({"start_utc": [datetime(2026, 11, 21, 3, 30, tzinfo=UTC)]})
    assert with_billing_date(frame, "America/Toronto")["billing_date"].item() == date(2026, 11, 20)
    assert with_billing_date(frame, "UTC")["billing_date"].item() == date(2026, 11, 21)


@pytest.mark.postgres
def test_two_concurrent_runs_on_postgres_bill_each_cdr_once(pg_url):
    upgrade(pg_url)
    s = _settings(pg_url)
    overlapping = [rated(400, start=0), rated(400, start=200)]  # 200 keys in common
    _, errors = at_once(lambda f: record_billing(s, f), overlapping)
    assert errors == []
    with session_scope(pg_url) as sess:
        assert sess.scalar(select(func.sum(Charge.cdr_count))) == 600
    billed_keys = [b.cdr_key for b in billed_rows(s)]
    assert len(billed_keys) == 600 and len(set(billed_keys)) == 600
