"""The reconcile step against the WHMCS sandbox (and a MariaDB WHMCS database), on both ledgers."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from autobill.config import settings_from_dict
from autobill.ledger.db import session_scope, upgrade
from autobill.ledger.models import Charge, ChargeReconciliation
from connectors.whmcs import WhmcsClient, WhmcsError
from connectors.whmcs_db import WhmcsDatabase
from sandboxes.whmcs import WhmcsSandbox
from tasks.post import post_pending
from tasks.reconcile import last_daily_cron, reconcile_uncertain
from tests.support import closed_port
from tests.support.mariadb import whmcs_database

TZ = "America/Toronto"


def _settings(url: str, sb: WhmcsSandbox | None = None, **whmcs) -> object:
    cfg = {"ledger_url": url, "timezone": TZ}
    if sb is not None:
        cfg["whmcs"] = {"url": sb.url, "identifier": {"env": "RC_ID"}, "secret": {"env": "RC_SECRET"}, **whmcs}
    return settings_from_dict(cfg)


def _uncertain(url: str, keys: list[str], client_id: int = 1, at: datetime | None = None) -> None:
    at = at or datetime.now(UTC) - timedelta(minutes=1)
    with session_scope(url) as s:
        for k in keys:
            s.add(Charge(idempotency_key=k, client_id=client_id, service_id=10, billing_date=date(2026, 11, 19),
                         charge_class="outbound", currency="USD", amount=Decimal("2.50"), exact_amount=Decimal("2.5"),
                         tariff_version="v", description=f"VoIP outbound calls 2026-11-19 [{k}]", state="uncertain",
                         posting_started_at=at, uncertain_at=at))


def _states(url: str) -> dict[str, str]:
    with session_scope(url) as s:
        return {c.idempotency_key: c.state for c in s.scalars(select(Charge))}


@pytest.fixture
def whmcs_db():
    with whmcs_database() as db:
        yield db


@pytest.fixture
def sandbox(monkeypatch):
    monkeypatch.setenv("RC_ID", "demo")
    monkeypatch.setenv("RC_SECRET", "demo")
    with WhmcsSandbox(timezone=TZ) as sb:
        sb.add_client()
        sb.add_client()
        yield sb


def _client(sb: WhmcsSandbox) -> WhmcsClient:
    return WhmcsClient(sb.url, "demo", "demo", timeout=5, retries=1, backoff=0.01)


def test_found_on_an_invoice_is_posted_absent_is_pending_and_reposted_once(ledger_url, sandbox):
    settings = _settings(ledger_url, sandbox)
    _uncertain(ledger_url, ["ab-in", "ab-out"])
    other = _client(sandbox)
    billable = other.add_billable_item(1, "VoIP outbound calls 2026-11-19 [ab-in]", Decimal("2.50"), Decimal(1))
    other.add_billable_item(1, "VoIP outbound calls 2026-11-19 [ab-in2]", Decimal("1.00"), Decimal(1))  # a lookalike
    sandbox.run_daily_cron()
    with _client(sandbox) as client:
        report = reconcile_uncertain(settings, client)
    assert report.posted == ["ab-in"] and report.pending == ["ab-out"] and report.undecided == []
    assert _states(ledger_url) == {"ab-in": "posted", "ab-out": "pending"}
    (invoice,) = sandbox.store.rows("SELECT id FROM invoices")
    with session_scope(ledger_url) as s:
        assert s.scalars(select(Charge.whmcs_billable_id).where(Charge.idempotency_key == "ab-in")).one() == billable
        rows = {r.outcome: r for r in s.scalars(select(ChargeReconciliation))}
        assert rows["posted"].invoice_id == invoice["id"] and rows["posted"].billable_id == billable
        assert rows["pending"].invoices_scanned == f"[{invoice['id']}]" and "post again" in rows["pending"].reason
    # The pending one is posted by the post step, once; a second reconcile finds nothing to do.
    assert post_pending(settings, _client(sandbox)).posted == 1
    assert len([i for i in sandbox.billable_items() if "[ab-out]" in i["description"]]) == 1
    with _client(sandbox) as client:
        assert reconcile_uncertain(settings, client).checked == 0


def test_no_cron_since_leaves_it_uncertain_with_the_reason(sqlite_url, sandbox):
    upgrade(sqlite_url)
    settings = _settings(sqlite_url, sandbox)
    sandbox.run_daily_cron(datetime.now(UTC) - timedelta(hours=1))  # before the charge became uncertain
    _uncertain(sqlite_url, ["ab-late"])
    with _client(sandbox) as client:
        report = reconcile_uncertain(settings, client)
    assert report.undecided and "not after the charge became uncertain" in report.undecided[0][1]
    assert _states(sqlite_url) == {"ab-late": "uncertain"}
    assert sandbox.request_count("GetInvoice") == 0  # nothing worth reading yet


def test_whmcs_timezone_is_used_for_the_cron_time(sqlite_url, sandbox):
    """The sandbox writes Toronto wall-clock times; read as UTC they would look 5 h early."""
    upgrade(sqlite_url)
    now = datetime.now(UTC)
    sandbox.run_daily_cron(now - timedelta(minutes=30))
    at, how = last_daily_cron(_settings(sqlite_url, sandbox), _client(sandbox), now)
    assert abs(at - (now - timedelta(minutes=30))) < timedelta(seconds=2) and "America/Toronto" in how
    wrong, _ = last_daily_cron(_settings(sqlite_url, sandbox, timezone="UTC"), _client(sandbox), now)
    assert abs(wrong - at) >= timedelta(hours=4)


class NoAutomationLog:
    """A WHMCS whose API role may not call GetAutomationLog."""

    def __init__(self, real: WhmcsClient) -> None:
        self.real = real

    def get_automation_log(self) -> dict:
        raise WhmcsError("GetAutomationLog", "Invalid Permissions: API action \"getautomationlog\" is not allowed")

    def invoices_since(self, client_id, since):
        return self.real.invoices_since(client_id, since)

    def get_invoice(self, invoice_id):
        return self.real.get_invoice(invoice_id)


def test_without_the_automation_log_the_configured_cron_time_is_used(sqlite_url, sandbox):
    upgrade(sqlite_url)
    long_ago = datetime.now(UTC) - timedelta(days=2)
    _uncertain(sqlite_url, ["ab-x"], at=long_ago)
    sandbox.run_daily_cron()
    client = NoAutomationLog(_client(sandbox))
    unset = reconcile_uncertain(_settings(sqlite_url, sandbox), client)
    assert "set whmcs.cron_time" in unset.undecided[0][1] and _states(sqlite_url) == {"ab-x": "uncertain"}
    configured = reconcile_uncertain(_settings(sqlite_url, sandbox, cron_time="01:00", cron_margin_minutes=90), client)
    assert configured.pending == ["ab-x"] and "whmcs.cron_time 01:00" in configured.cron


def test_whmcs_database_settles_at_once_without_a_cron(ledger_url, sandbox, whmcs_db):
    url, add_item = whmcs_db
    settings = _settings(ledger_url, sandbox)
    _uncertain(ledger_url, ["ab-db-in", "ab-db-out"], client_id=2)
    item = add_item(2, "VoIP outbound calls 2026-11-19 [ab-db-in]")
    add_item(1, "VoIP outbound calls 2026-11-19 [ab-db-out]")  # another client's line: not ours
    add_item(2, "100% off [ab-db-out_]")  # LIKE wildcards in the key are taken literally
    with WhmcsDatabase(url) as db, _client(sandbox) as client:
        report = reconcile_uncertain(settings, client, db)
    assert report.posted == ["ab-db-in"] and report.pending == ["ab-db-out"]
    assert sandbox.request_count("GetAutomationLog") == 0  # no cron needed
    with session_scope(ledger_url) as s:
        assert s.scalars(select(Charge.whmcs_billable_id).where(Charge.idempotency_key == "ab-db-in")).one() == item
        assert {r.source for r in s.scalars(select(ChargeReconciliation))} == {"database"}


def test_whmcs_database_down_falls_back_to_the_invoices(sqlite_url, sandbox):
    upgrade(sqlite_url)
    settings = _settings(sqlite_url, sandbox)
    _uncertain(sqlite_url, ["ab-y"])
    sandbox.run_daily_cron()
    with WhmcsDatabase(f"mysql+pymysql://root@127.0.0.1:{closed_port()}/whmcs", timeout_seconds=2) as db, \
            _client(sandbox) as client:
        report = reconcile_uncertain(settings, client, db)
    assert report.pending == ["ab-y"]
    with session_scope(sqlite_url) as s:
        assert s.scalars(select(ChargeReconciliation.source)).all() == ["invoices"]


def test_operator_verdict_is_recorded_like_the_automatic_ones(sqlite_url):
    from autobill.ledger.charges import reconcile

    upgrade(sqlite_url)
    settings = settings_from_dict({"ledger_url": sqlite_url})
    _uncertain(sqlite_url, ["ab-op"])
    reconcile(settings, "ab-op", posted=True, billable_id=77, note="seen in WHMCS")
    with session_scope(sqlite_url) as s:
        (row,) = s.scalars(select(ChargeReconciliation)).all()
        assert (row.source, row.outcome, row.billable_id, row.actor) == ("operator", "posted", 77, "operator")


def _uncertain_credit(url: str, key: str, at: datetime, client_id: int = 1) -> None:
    """A correction that lowers a line, whose AddCredit answer was lost."""
    with session_scope(url) as s:
        s.add(Charge(idempotency_key=key, client_id=client_id, service_id=10, billing_date=date(2026, 11, 19),
                     charge_class="outbound", currency="USD", amount=Decimal("-1.25"), exact_amount=Decimal("-1.25"),
                     tariff_version="v", description=f"Correction for 2026-11-19 [{key}]", state="uncertain",
                     posting_started_at=at, uncertain_at=at, kind="correction"))


def test_credits_are_settled_from_the_credit_log_never_from_invoices_or_the_database(ledger_url, sandbox, whmcs_db):
    db_url, _ = whmcs_db
    settings = _settings(ledger_url, sandbox, credit_margin_seconds=60)
    now = datetime.now(UTC)
    _uncertain_credit(ledger_url, "rc-found", now - timedelta(minutes=5))
    _uncertain_credit(ledger_url, "rc-lost", now - timedelta(minutes=5))  # never stored
    _uncertain_credit(ledger_url, "rc-recent", now - timedelta(seconds=10))  # WHMCS may still be storing it
    _uncertain_credit(ledger_url, "rc-twice", now - timedelta(minutes=5), client_id=2)
    other = _client(sandbox)
    other.add_credit(1, "Correction for 2026-11-19 [rc-found]", Decimal("1.25"))
    other.add_credit(1, "Correction for 2026-11-19 [rc-lost2]", Decimal("1.25"))  # a lookalike
    other.add_credit(2, "x [rc-twice]", Decimal("1.25"))
    other.add_credit(2, "y [rc-twice]", Decimal("1.25"))
    found_id = int(next(c["id"] for c in other.get_credits(1) if "[rc-found]" in c["description"]))
    with WhmcsDatabase(db_url) as db, _client(sandbox) as client:  # the database holds no credit: not asked
        report = reconcile_uncertain(settings, client, db)
    assert report.posted == ["rc-found"] and report.pending == ["rc-lost"]
    assert [k for k, _ in report.undecided] == ["rc-recent", "rc-twice"]
    assert "read the credit log again later" in dict(report.undecided)["rc-recent"]
    assert "found 2 times" in dict(report.undecided)["rc-twice"]
    assert sandbox.request_count("GetCredits") == 1 + 2 and sandbox.request_count("GetInvoices") == 0  # mine + 1 per client
    assert _states(ledger_url) == {"rc-found": "posted", "rc-lost": "pending", "rc-recent": "uncertain",
                                   "rc-twice": "uncertain"}
    with session_scope(ledger_url) as s:
        rows = {r.outcome: r for r in s.scalars(select(ChargeReconciliation).where(ChargeReconciliation.source
                                                                                   == "credits"))}
        assert f"credit log entry {found_id}" in rows["posted"].reason and rows["posted"].billable_id is None
        assert rows["pending"].as_of is not None and "post again" in rows["pending"].reason
        posted = s.scalars(select(Charge).where(Charge.idempotency_key == "rc-found")).one()
        assert posted.whmcs_billable_id is None and f"credit log entry {found_id}" in posted.last_error
    # The pending credit is posted once by the post step; the found one is never credited again.
    assert post_pending(settings, _client(sandbox)).posted == 1
    log = sandbox.credits(1)
    assert [c["description"] for c in log].count("Correction for 2026-11-19 [rc-lost]") == 1
    assert len([c for c in log if "[rc-found]" in c["description"]]) == 1
    later = reconcile_uncertain(settings, _client(sandbox), now=now + timedelta(minutes=2))
    assert later.posted == [] and later.pending == ["rc-recent"]  # past the margin, still absent


def test_credit_log_unreadable_leaves_the_credit_uncertain(sqlite_url, sandbox):
    upgrade(sqlite_url)
    settings = _settings(sqlite_url, sandbox)
    _uncertain_credit(sqlite_url, "rc-x", datetime.now(UTC) - timedelta(hours=1))
    sandbox.set_faults(action="GetCredits", mode="500")
    with _client(sandbox) as client:
        report = reconcile_uncertain(settings, client)
    assert report.undecided and "could not read the client's credit log" in report.undecided[0][1]
    assert _states(sqlite_url) == {"rc-x": "uncertain"}
