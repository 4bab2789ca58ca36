"""Migrations on ledgers that hold data: 0011 (the charges indexes lead with the billing date) on
charges other tables point to, on SQLite (a table rebuild) and on the real PostgreSQL; a SQLite
upgrade is one transaction with foreign keys checked before it commits."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from autobill.ledger import db
from autobill.ledger.db import current_revision, engine_for, upgrade

NOW = datetime(2026, 10, 2, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def url_0010(request, tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    upgrade(url, "0010")
    return url


def _charge(conn, key: str, client: int, day: date) -> int:
    return conn.execute(text(
        "INSERT INTO charges (idempotency_key, client_id, service_id, billing_date, charge_class, currency, amount,"
        " exact_amount, billable_seconds, cdr_count, tariff_version, description, state, attempts, created_at, kind)"
        " VALUES (:k, :c, :s, :d, 'outbound', 'USD', 1.25, 1.25, 60, 1, 'v1', 'calls', 'posted', 1, :now, 'charge')"
        " RETURNING id"), {"k": key, "c": client, "s": client * 10, "d": day, "now": NOW}).scalar_one()


def _reconciliation(conn, charge_id: int) -> None:
    conn.execute(text(
        "INSERT INTO charge_reconciliations (charge_id, decided_at, source, outcome, reason, actor)"
        " VALUES (:c, :now, 'whmcs', 'posted', 'found on invoice', 'test')"), {"c": charge_id, "now": NOW})


def _reopen(url: str) -> None:
    for u in [u for u in db._engines if u == url]:
        db._engines.pop(u).dispose()


def test_0011_keeps_every_charge_and_reference_and_swaps_the_indexes(url_0010):
    with engine_for(url_0010).begin() as conn:
        first = _charge(conn, "ab-7-70-20261001-outbound-USD-v1-aaaa", 7, date(2026, 10, 1))
        second = _charge(conn, "ab-3-30-20261002-outbound-USD-v1-bbbb", 3, date(2026, 10, 2))
        correction = conn.execute(text(
            "INSERT INTO charges (idempotency_key, client_id, service_id, billing_date, charge_class, currency,"
            " amount, exact_amount, billable_seconds, cdr_count, tariff_version, description, state, attempts,"
            " created_at, kind, corrects_charge_id) VALUES ('ab-cr-1-1-cccc', 7, 70, '2026-10-02', 'correction',"
            " 'USD', -0.50, -0.50, 0, 1, 'v1', 'credit', 'pending', 0, :now, 'correction', :c) RETURNING id"),
            {"now": NOW, "c": first}).scalar_one()
        _reconciliation(conn, first)
        _reconciliation(conn, second)
    _reopen(url_0010)
    upgrade(url_0010)
    _reopen(url_0010)
    assert current_revision(url_0010) == "0013"

    engine = engine_for(url_0010)
    with engine.begin() as conn:
        rows = conn.execute(text("SELECT id, idempotency_key, client_id, billing_date, amount, corrects_charge_id"
                                 " FROM charges ORDER BY id")).all()
        assert [(r[0], r[1], r[2], r[5]) for r in rows] == [
            (first, "ab-7-70-20261001-outbound-USD-v1-aaaa", 7, None),
            (second, "ab-3-30-20261002-outbound-USD-v1-bbbb", 3, None),
            (correction, "ab-cr-1-1-cccc", 7, first),
        ]
        assert conn.execute(text("SELECT charge_id FROM charge_reconciliations ORDER BY charge_id")).scalars().all() \
            == sorted([first, second])
        if engine.dialect.name == "sqlite":
            assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1  # back on for every new connection

    found = inspect(engine)
    indexes = {ix["name"]: (ix["column_names"], bool(ix["unique"])) for ix in found.get_indexes("charges")}
    assert indexes["ux_charges_date_key"] == (["billing_date", "idempotency_key"], True)
    assert indexes["ix_charges_date_client"] == (["billing_date", "client_id"], False)
    assert "ix_charges_client_date" not in indexes
    assert [uc for uc in found.get_unique_constraints("charges") if uc["column_names"] == ["idempotency_key"]] == []

    # the guard still holds: the same key on the same date cannot be inserted twice
    with pytest.raises(IntegrityError):
        with engine.begin() as conn:
            _charge(conn, "ab-7-70-20261001-outbound-USD-v1-aaaa", 7, date(2026, 10, 1))
    # and references are still enforced after the rebuild
    with pytest.raises(IntegrityError):
        with engine.begin() as conn:
            _reconciliation(conn, 999_999)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM charges")).scalar() == 3


def test_0011_downgrades_to_the_key_alone(url_0010):
    from alembic import command

    upgrade(url_0010)
    _reopen(url_0010)
    with engine_for(url_0010).begin() as conn:
        kept = _charge(conn, "ab-1-10-20261001-outbound-USD-v1-dddd", 1, date(2026, 10, 1))
        _reconciliation(conn, kept)
    _reopen(url_0010)
    command.downgrade(db.alembic_config(url_0010), "0010")
    _reopen(url_0010)
    assert current_revision(url_0010) == "0010"
    engine = engine_for(url_0010)
    with pytest.raises(IntegrityError):  # the key alone is unique again, whatever the date
        with engine.begin() as conn:
            _charge(conn, "ab-1-10-20261001-outbound-USD-v1-dddd", 1, date(2026, 10, 5))
    with engine.begin() as conn:
        assert conn.execute(text("SELECT id FROM charges")).scalars().all() == [kept]
        assert conn.execute(text("SELECT charge_id FROM charge_reconciliations")).scalars().all() == [kept]


def test_a_sqlite_migration_that_would_leave_a_broken_reference_is_rolled_back(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(url, "0010")
    _reopen(url)
    with engine_for(url).connect() as conn:  # an orphan written with the checks off (a damaged ledger)
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.commit()
        _reconciliation(conn, 424_242)
        conn.commit()
    _reopen(url)
    with pytest.raises(RuntimeError, match="broken foreign key"):
        upgrade(url)
    _reopen(url)
    assert current_revision(url) == "0010"
    with engine_for(url).begin() as conn:
        names = {ix["name"] for ix in inspect(conn).get_indexes("charges")}
        assert "ix_charges_client_date" in names and "ux_charges_date_key" not in names


def test_a_sqlite_ledger_with_billed_cdrs_upgrades_through_every_charges_rebuild(tmp_path):
    """0007 and 0011 rebuild `charges` on SQLite. With foreign keys on, dropping the old table failed
    ("FOREIGN KEY constraint failed") as soon as a `billed_cdrs` row pointed at a charge: a real
    ledger from before 0007 could not be upgraded."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(url, "0006")
    with engine_for(url).begin() as conn:
        conn.execute(text(
            "INSERT INTO charges (idempotency_key, client_id, service_id, billing_date, charge_class, currency, amount,"
            " exact_amount, billable_seconds, cdr_count, tariff_version, description, state, attempts, created_at)"
            " VALUES ('ab-1-10-20261001-outbound-USD-v1-eeee', 1, 10, '2026-10-01', 'outbound', 'USD', '1.00',"
            " '1.000000', 60, 1, 'v1', 'calls', 'posted', 1, '2026-10-02 00:00:00')"))
        conn.execute(text(
            "INSERT INTO billed_cdrs (cdr_key, server, client_id, service_id, billing_date, outcome, charge_id, cost,"
            " billable_seconds, included_seconds, created_at) VALUES ('pbx:1', 'pbx', 1, 10, '2026-10-01', 'billed',"
            " 1, '1.000000', 60, 0, '2026-10-02 00:00:00')"))
    _reopen(url)
    upgrade(url)
    _reopen(url)
    assert current_revision(url) == "0013"
    with engine_for(url).begin() as conn:
        assert conn.execute(text("SELECT b.cdr_key, c.idempotency_key FROM billed_cdrs b JOIN charges c"
                                 " ON c.id = b.charge_id")).all() == [("pbx:1", "ab-1-10-20261001-outbound-USD-v1-eeee")]
        assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
