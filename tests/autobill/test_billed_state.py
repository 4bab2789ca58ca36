"""The billed state in lake manifests (issue #15) bills exactly what the old `billed_cdrs` table did.

Reference kept here: the old design's rule as a set — a rated row is billed when its key is not
final yet, final outcomes make it final, and the lines are those of the rows billed now. Random
nights with reruns, re-sent and late CDRs (earlier billing dates) and unrated rows go through the
real record path; after each call the outcome counts, the rows already final and the charge lines
must match the reference, and at the end the billed state holds each final key exactly once.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from autobill.config import settings_from_dict
from autobill.ledger.billed import billed_frame, billed_keys, billed_rows, lock_billed_state, write_manifests
from autobill.ledger.db import session_scope, upgrade
from autobill.ledger.models import BilledCDR, BilledManifest
from tasks.aggregate import charge_lines, record_billing
from tests.support import at_once

DAY = date(2026, 11, 20)
FINAL = ("billed", "included", "zero_cost")


_TEMPLATE: list[Path] = []


def _settings(tmp: Path):
    """A fresh migrated ledger: a copy of one migrated once (migrating costs ~1 s an example)."""
    if not _TEMPLATE:
        path = Path(tempfile.mkdtemp(prefix="autobill-test-template-")) / "ledger.db"
        upgrade(f"sqlite:///{path}")
        _TEMPLATE.append(path)
    shutil.copy(_TEMPLATE[0], tmp / "ledger.db")
    url = f"sqlite:///{tmp / 'ledger.db'}"
    return settings_from_dict({"ledger_url": url, "timezone": "America/Toronto", "data_dir": str(tmp / "data")})


def frame(rows: list[tuple[int, int, str, int]]) -> pl.DataFrame:
    """(key number, days back, outcome, cost in micro-units) -> rated rows."""
    if not rows:
        return frame([(0, 0, "billed", 0)]).clear()
    n = len(rows)
    days = [DAY - timedelta(days=back) for _, back, _, _ in rows]
    return pl.DataFrame({
        "cdr_key": [f"pbx{k % 3}:{k}" for k, _, _, _ in rows],
        "server": [f"pbx{k % 3}" for k, _, _, _ in rows],
        "tenant": ["a.example"] * n,
        "client_id": [1 + k % 2 for k, _, _, _ in rows],
        "service_id": [10 * (1 + k % 2) for k, _, _, _ in rows],
        "outcome": [o for _, _, o, _ in rows],
        "charge_class": ["outbound" if k % 5 else "international" for k, _, _, _ in rows],
        "cost": [None if o == "unrated" else str(Decimal(c if o == "billed" else 0) / 10**6) for _, _, o, c in rows],
        "currency": ["USD"] * n,
        "tariff_version": ["v1"] * n,
        "charged_seconds": [60] * n,
        "billable_seconds": [60] * n,
        "included_seconds": [60 if o == "included" else 0 for _, _, o, _ in rows],
        "billing_date": days,
        "start_utc": [datetime(d.year, d.month, d.day, 17, tzinfo=UTC) for d in days],
        "rate_number": ["442071234567"] * n,
        "unrated_reason": [("no_rate" if o == "unrated" else None) for _, _, o, _ in rows],
    }, schema_overrides={"cost": pl.String, "unrated_reason": pl.String})


# A key's billing date is its call's local date: the same call sent again has the same start, so
# the same date, give or take one day (a timezone changed between runs). Keys of older dates that
# show up in a later run are the late CDRs. The design relies on this (docs/billed-state.md).
row = st.tuples(st.integers(0, 40), st.integers(0, 1), st.sampled_from(("billed", "billed", "included", "zero_cost",
                                                                         "unrated")), st.integers(0, 2_000_000))
night = st.lists(row, max_size=25).map(  # one row per key; its date: 0-3 days back by key, +0/1 day
    lambda rs: [(k, k % 3 + shift, o, c) for k, shift, o, c in {r[0]: r for r in rs}.values()])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nights=st.lists(night, min_size=1, max_size=6), rerun=st.lists(st.integers(0, 5), max_size=3))
def test_manifests_bill_exactly_what_the_billed_table_did(nights, rerun):
    with tempfile.TemporaryDirectory() as tmp:
        s = _settings(Path(tmp))
        final: dict[str, str] = {}  # the reference: key -> outcome it became final with
        runs = [*nights, *[nights[i % len(nights)] for i in rerun]]  # reruns of earlier nights, late keys included
        for rows in runs:
            rated = frame(rows)
            record = record_billing(s, rated)
            new = rated.filter(~pl.col("cdr_key").is_in(list(final)))
            expected_counts = {o: 0 for o in (*FINAL, "unrated")}
            expected_counts.update(dict(new.group_by("outcome").len().iter_rows()))
            assert record.outcomes == expected_counts
            assert sorted(record.already_final_keys) == sorted(set(rated["cdr_key"]) & set(final))
            assert [ln.idempotency_key for ln in record.lines] == [
                ln.idempotency_key for ln in charge_lines(new.filter(pl.col("outcome") == "billed"))]
            for key, outcome in new.filter(pl.col("outcome").is_in(FINAL)).select("cdr_key", "outcome").iter_rows():
                final[key] = outcome
        got = billed_rows(s)
        assert {b.cdr_key: b.outcome for b in got} == final
        assert len(got) == len(final)  # each final key exactly once


def test_a_manifest_whose_transaction_rolled_back_does_not_count_and_is_swept(tmp_path):
    s = _settings(tmp_path)
    rated = frame([(1, 0, "billed", 1000), (2, 0, "billed", 2000)])
    rows = pl.DataFrame({
        "cdr_key": ["pbx1:1"], "server": ["pbx1"], "client_id": [2], "service_id": [20], "billing_date": [DAY],
        "outcome": ["billed"], "charge_id": [None], "cost": ["0.001000"], "billable_seconds": [60],
        "included_seconds": [0], "run_id": [None], "created_at": [datetime(2026, 11, 21, tzinfo=UTC)]})
    (orphan,) = write_manifests(s.data_path, rows)  # a crash between the file and the commit
    with session_scope(s.ledger) as session:
        assert billed_keys(session, ["pbx1:1"], [DAY]) == set()
    import os

    old = datetime.now(UTC).timestamp() - 7200
    os.utime(orphan.path, (old, old))
    record = record_billing(s, rated)
    assert record.outcomes["billed"] == 2 and record.already_final == 0
    assert not Path(orphan.path).exists()  # swept by the next writer of its partition, under the lock
    with session_scope(s.ledger) as session:
        paths = session.scalars(select(BilledManifest.path)).all()
    assert all(Path(p).exists() for p in paths) and len(paths) == 1


def test_legacy_billed_rows_are_still_final_and_readable(tmp_path):
    s = _settings(tmp_path)
    with session_scope(s.ledger) as session:
        session.add(BilledCDR(cdr_key="pbx1:1", server="pbx1", client_id=2, service_id=20, billing_date=DAY,
                              outcome="billed", cost=Decimal("0.001000"), created_at=datetime(2026, 1, 1, tzinfo=UTC)))
    record = record_billing(s, frame([(1, 0, "billed", 1000), (4, 0, "billed", 5000)]))
    assert record.already_final_keys == ["pbx1:1"] and record.outcomes["billed"] == 1
    both = billed_frame(s, days=[DAY]).sort("cdr_key")
    assert both["cdr_key"].to_list() == ["pbx1:1", "pbx1:4"] and both["cost"].to_list() == ["0.001000", "0.005000"]


def test_a_key_billed_under_a_neighbouring_date_is_still_found(tmp_path):
    """A timezone changed between two runs moves a call's billing date by a day: still billed once."""
    s = _settings(tmp_path)
    record_billing(s, frame([(7, 1, "billed", 1000)]))
    again = record_billing(s, frame([(7, 0, "billed", 1000)]))
    assert again.already_final == 1 and again.lines == []


def test_the_already_billed_check_of_some_servers_reads_their_rows_only(tmp_path):
    """Manifests hold their rows by server, then service: a check given the keys' servers finds
    every billed key of those servers; a null among the servers reads every row."""
    s = _settings(tmp_path)
    record_billing(s, frame([(k, 0, "billed", 1000) for k in range(30)]))
    with session_scope(s.ledger) as session:
        (path,) = session.scalars(select(BilledManifest.path)).all()
        on_disk = pl.read_parquet(path).select("server", "service_id")
        assert on_disk.equals(on_disk.sort("server", "service_id"))
        keys = [f"pbx{k % 3}:{k}" for k in range(30)] + ["pbx1:99"]
        assert billed_keys(session, keys, [DAY], servers=["pbx1"]) == {f"pbx1:{k}" for k in range(1, 30, 3)}
        assert billed_keys(session, keys, [DAY], servers=["pbx0", "pbx2", "pbx1"]) == set(keys[:30])
        assert billed_keys(session, keys, [DAY], servers=["pbx1", None]) == set(keys[:30])
        assert billed_keys(session, keys, [DAY]) == set(keys[:30])


def test_the_billed_state_lock_counts_its_writers(tmp_path):
    s = _settings(tmp_path)
    with session_scope(s.ledger) as session:
        first = lock_billed_state(session)
    with session_scope(s.ledger) as session:
        assert lock_billed_state(session) == first + 1


def test_a_cost_finer_than_six_decimals_is_refused(tmp_path):
    s = _settings(tmp_path)
    bad = frame([(1, 0, "billed", 1000)]).with_columns(pl.lit("0.0000001").alias("cost"))
    with pytest.raises(ValueError, match="more than 6 decimals"):
        record_billing(s, bad)


def test_two_concurrent_runs_on_sqlite_bill_each_cdr_once(tmp_path):
    """The billed-state lock serialises writers on SQLite too (the PostgreSQL twin is in
    tests/tasks/test_aggregate.py): overlapping frames, each key billed once."""
    s = _settings(tmp_path)
    frames = [frame([(k, 0, "billed", 1000) for k in range(0, 30)]),
              frame([(k, 0, "billed", 1000) for k in range(20, 40)])]
    records, errors = at_once(lambda f: record_billing(s, f), frames)
    assert errors == []
    assert sum(r.outcomes["billed"] for r in records) == 40 and sum(r.already_final for r in records) == 10
    keys = [b.cdr_key for b in billed_rows(s)]
    assert len(keys) == 40 and len(set(keys)) == 40


def _usage(key: str) -> dict:
    return {"cdr_key": key, "server": "pbx1", "client_id": 2, "service_id": 20,
            "start_utc": datetime(2026, 11, 20, 17, tzinfo=UTC), "billing_date": DAY, "period_start": None,
            "charge_class": "outbound", "rate_number": "442071234567", "billsec": 60, "included_seconds": 0,
            "cost": Decimal("0.001000"), "currency": "USD"}


def test_intraday_usage_is_unbilled_until_the_nightly_bills_it_and_a_billed_call_is_not_stored(tmp_path):
    from autobill.ledger.intraday import store_usage, unbilled_by_service

    s = _settings(tmp_path)
    assert store_usage(s, "pbx1", [_usage("pbx1:1")], None, None) == 1
    assert unbilled_by_service(s) == {20: (2, Decimal("0.001000"))}
    record_billing(s, frame([(1, 0, "billed", 1000), (4, 0, "billed", 1000)]))
    assert unbilled_by_service(s) == {}  # billed_at set in the billing transaction
    assert store_usage(s, "pbx1", [_usage("pbx1:4")], None, None) == 0  # already billed: never unbilled usage
    assert unbilled_by_service(s) == {}
