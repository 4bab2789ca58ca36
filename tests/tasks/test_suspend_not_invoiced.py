"""Autosuspend's "not invoiced" term from what WHMCS says (#18): GetAutomationLog read once per
cycle, reconciliation's invoice lines, the configured cron time when the log cannot be read.
The WHMCS sandbox over real HTTP; the ledger on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal as D

import pytest

from autobill.ledger.db import session_scope, upgrade
from autobill.ledger.models import Charge
from connectors.whmcs import WhmcsClient
from flows.autosuspend import run_cycle
from sandboxes.whmcs import WhmcsSandbox
from tasks.post import post_pending
from tasks.reconcile import reconcile_uncertain
from tests.support.suspend import WHMCS_IDENT, WHMCS_SECRET, set_whmcs_secrets, settings_for


@pytest.fixture(autouse=True)
def _secrets(monkeypatch) -> None:
    set_whmcs_secrets(monkeypatch)


def _charge(key: str, cid: int, sid: int, amount: str, state: str = "pending", at: datetime | None = None) -> Charge:
    return Charge(idempotency_key=key, client_id=cid, service_id=sid, billing_date=date(2026, 11, 19),
                  charge_class="outbound", currency="USD", amount=D(amount), exact_amount=D(amount),
                  tariff_version="v", description=f"VoIP outbound calls 2026-11-19 [{key}]", state=state,
                  posting_started_at=at, uncertain_at=at if state == "uncertain" else None)


def _terms(settings):
    (d,) = run_cycle(settings, dry_run=True, workers=1).decisions
    return d.not_invoiced, d.available


def test_not_invoiced_ends_with_the_whmcs_daily_cron_that_invoiced_it(ledger_url):
    with WhmcsSandbox(identifier=WHMCS_IDENT, secret=WHMCS_SECRET, timezone="America/Toronto") as sb:
        cid = sb.add_client(credit="20.00", custom_fields={"Has VoIP Service": "on"})
        sid = sb.add_product(cid)
        upgrade(ledger_url)
        settings = settings_for(ledger_url, sb.url, [{"client_id": cid, "service_id": sid, "suspend_mode": "module"}],
                                extra={"whmcs": {**_whmcs(sb), "cron_time": "01:00", "cron_margin_minutes": 90}})
        with session_scope(ledger_url) as s:
            s.add_all([_charge("ab-1", cid, sid, "4.00"), _charge("ab-2", cid, sid, "3.50")])
        with WhmcsClient(sb.url, WHMCS_IDENT, WHMCS_SECRET, timeout=5, retries=1, backoff=0.01) as client:
            assert post_pending(settings, client).posted == 2
        assert _terms(settings) == (D("7.50"), D("12.50"))  # no cron has run in this WHMCS

        sb.run_daily_cron()  # WHMCS invoices both items (Unpaid, not overdue yet)
        assert _terms(settings) == (D("0"), D("20.00"))

        # A charge whose AddBillableItem answer was lost: uncertain, then found on the next cron's invoice by
        # reconciliation (posted_at = the reconciliation's time, after that cron): it is invoiced, not counted.
        lost_at = datetime.now(UTC) - timedelta(seconds=5)
        with session_scope(ledger_url) as s:
            s.add(_charge("ab-3", cid, sid, "2.00", "uncertain", lost_at))
        with WhmcsClient(sb.url, WHMCS_IDENT, WHMCS_SECRET, timeout=5, retries=1, backoff=0.01) as client:
            client.add_billable_item(cid, "VoIP outbound calls 2026-11-19 [ab-3]", D("2.00"), D(1))
            assert _terms(settings) == (D("2.00"), D("18.00"))  # uncertain: counts
            sb.run_daily_cron()
            assert reconcile_uncertain(settings, client).posted == ["ab-3"]
        assert _terms(settings) == (D("0"), D("20.00"))

        # A charge posted after the last cron counts until the next one.
        with session_scope(ledger_url) as s:
            s.add(_charge("ab-4", cid, sid, "1.25"))
        with WhmcsClient(sb.url, WHMCS_IDENT, WHMCS_SECRET, timeout=5, retries=1, backoff=0.01) as client:
            assert post_pending(settings, client).posted == 1
        assert _terms(settings) == (D("1.25"), D("18.75"))

        # GetAutomationLog unreadable: the configured cron (01:00 + 90 min, the latest one finished) decides;
        # everything was posted in the last minute, after any configured cron: all of it counts, except the
    # charge reconciliation found on an invoice line.
        sb.fail_next(10, "500", "GetAutomationLog")
        report = run_cycle(settings, dry_run=True, workers=1)
        assert (report.decisions[0].not_invoiced, report.decisions[0].available) == (D("8.75"), D("11.25"))
        assert "whmcs.cron_time 01:00" in report.usage["not_invoiced_since"]
        sb.clear_faults()
        assert "GetAutomationLog: last daily cron" in run_cycle(settings, dry_run=True, workers=1).usage["not_invoiced_since"]


def _whmcs(sb: WhmcsSandbox) -> dict:
    from sandboxes.whmcs.store import CUSTOM_FIELDS

    return {"url": sb.url, "identifier": {"env": "AUTOBILL_TEST_WHMCS_ID"},
            "secret": {"env": "AUTOBILL_TEST_WHMCS_SECRET"}, "retries": 1, "timeout_seconds": 5,
            "custom_field_ids": dict(CUSTOM_FIELDS)}
