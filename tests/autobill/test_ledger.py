"""The ledger migrates and round-trips on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from autobill.ledger.db import current_revision, engine_for, session_scope, upgrade
from autobill.ledger.models import Base, BilledCDR, Charge, Notification, QuarantinedRow, Run, SuspensionState

ROOT = Path(__file__).resolve().parents[2]


def test_migration_creates_every_model_table(ledger_url):
    tables = set(inspect(engine_for(ledger_url)).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert current_revision(ledger_url) is not None
    upgrade(ledger_url)  # idempotent


def test_round_trip_keeps_exact_money_and_utc(ledger_url):
    est = timezone(timedelta(hours=-5))
    started = datetime(2026, 3, 8, 1, 59, 59, 123456, tzinfo=est)
    amount = Decimal("12345678901234.1234")
    exact = Decimal("123456789012345678.123457")
    with session_scope(ledger_url) as s:
        run = Run(kind="nightly", billing_date=date(2026, 3, 7), started_at=started)
        s.add(run)
        s.flush()
        charge = Charge(
            idempotency_key="k1", client_id=1, service_id=10, billing_date=date(2026, 3, 7),
            charge_class="outbound", currency="USD", amount=amount, exact_amount=exact,
            tariff_version="v1", description="calls", run_id=run.id,
        )
        s.add(charge)
        s.flush()
        s.add(BilledCDR(cdr_key="pbx1:abc", server="pbx1", billing_date=date(2026, 3, 7), outcome="billed",
                        charge_id=charge.id, cost=Decimal("0.000001")))
    with session_scope(ledger_url) as s:
        got = s.scalars(select(Charge)).one()
        assert got.amount == amount and isinstance(got.amount, Decimal)
        assert got.exact_amount == exact
        r = s.scalars(select(Run)).one()
        assert r.started_at == started.astimezone(UTC)
        assert r.started_at.tzinfo is not None and r.started_at.utcoffset() == timedelta(0)
        assert s.get(BilledCDR, "pbx1:abc").cost == Decimal("0.000001")


def test_unique_keys_stop_double_billing(ledger_url):
    def charge(key):
        return Charge(idempotency_key=key, client_id=1, service_id=10, billing_date=date(2026, 1, 1),
                      charge_class="outbound", currency="USD", amount=Decimal(1), exact_amount=Decimal(1),
                      tariff_version="v", description="d")

    with session_scope(ledger_url) as s:
        s.add(charge("same"))
    with pytest.raises(IntegrityError):
        with session_scope(ledger_url) as s:
            s.add(charge("same"))
    with pytest.raises(IntegrityError):
        with session_scope(ledger_url) as s:
            for _ in range(2):
                s.add(BilledCDR(cdr_key="pbx1:dup", server="pbx1", billing_date=date(2026, 1, 1), outcome="billed"))
                s.flush()
    with pytest.raises(IntegrityError):
        with session_scope(ledger_url) as s:
            for _ in range(2):
                s.add(Notification(dedup_key="low:1:1", client_id=1, template="Low Balance Alert", reason="r"))
                s.flush()
    with session_scope(ledger_url) as s:
        assert s.scalar(select(Charge).where(Charge.idempotency_key == "same")) is not None
        assert s.get(BilledCDR, "pbx1:dup") is None  # the failed transaction left nothing behind


def test_failed_transaction_rolls_back_everything(ledger_url):
    with pytest.raises(RuntimeError):
        with session_scope(ledger_url) as s:
            s.add(QuarantinedRow(server="pbx1", rule="r", reason="x", row="{}"))
            s.add(SuspensionState(service_id=1, client_id=1, suspended=True, mode="gateway"))
            s.flush()
            raise RuntimeError("crash mid-transaction")
    with session_scope(ledger_url) as s:
        assert s.scalars(select(QuarantinedRow)).all() == []
        assert s.get(SuspensionState, 1) is None


def test_float_money_is_refused(sqlite_url):
    upgrade(sqlite_url)
    with pytest.raises(Exception, match="binary float"):
        with session_scope(sqlite_url) as s:
            s.add(SuspensionState(service_id=1, client_id=1, last_credit=0.1))


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_alembic_cli_upgrade_head(db, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'cli.db'}" if db == "sqlite" else request.getfixturevalue("pg_url")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "alembic"), "-x", f"url={url}", "upgrade", "head"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert current_revision(url) is not None
