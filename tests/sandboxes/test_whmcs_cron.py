"""The sandbox's daily cron: nextcron billable items become invoice lines, as real WHMCS does,
read back through the real client (GetInvoices, GetInvoice, GetAutomationLog) over loopback HTTP."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pytest
import requests

from connectors.whmcs import WhmcsApiError
from tests.support.whmcs import make_client, new_sandbox


@pytest.fixture
def sandbox():
    with new_sandbox(timezone="America/Toronto") as sb:
        yield sb


def test_cron_turns_nextcron_items_into_one_invoice_per_client(sandbox):
    a, b = sandbox.add_client(), sandbox.add_client()
    with make_client(sandbox) as client:
        i1 = client.add_billable_item(a, "calls [ab-1]", Decimal("1.25"), Decimal(1))
        i2 = client.add_billable_item(a, "calls [ab-2]", Decimal("2.50"), Decimal(1))
        i3 = client.add_billable_item(b, "calls [ab-3]", Decimal("4.00"), Decimal(1))
        client.add_billable_item(b, "not yet [ab-4]", Decimal("9.00"), Decimal(1), invoice_action="noinvoice")
        assert client.get_automation_log()["lastDailyCronInvocationTime"] == ""
        ran = sandbox.run_daily_cron(datetime(2026, 11, 20, 1, 0, 5))
        assert ran == {"started": "2026-11-20 01:00:05", "invoices": 2, "items": 3}
        invoices = client.invoices_since(a, date(2026, 11, 20))
        assert len(invoices) == 1 and invoices[0]["date"] == "2026-11-20"
        full = client.get_invoice(int(invoices[0]["id"]))
        assert [(it["type"], int(it["relid"]), it["description"], it["amount"]) for it in full["items"]] == [
            ("Item", i1, "calls [ab-1]", "1.25"), ("Item", i2, "calls [ab-2]", "2.50")]
        assert full["total"] == "3.75" and full["status"] == "Unpaid"
        (inv_b,) = client.invoices_since(b, date(2026, 11, 20))
        assert [int(it["relid"]) for it in client.get_invoice(int(inv_b["id"]))["items"]] == [i3]
        # A second cron invoices nothing twice; the log says when the last one ran (WHMCS local time).
        assert sandbox.run_daily_cron(datetime(2026, 11, 21, 1, 0, 0))["items"] == 0
        log = client.get_automation_log(date(2026, 11, 20), date(2026, 11, 21))
        assert log["lastDailyCronInvocationTime"] == "2026-11-21 01:00:00"
        assert log["statistics"]["2026-11-20"]["CreateInvoices"]["item.invoiced"] == 3
        with pytest.raises(WhmcsApiError, match="Invoice ID Not Found"):
            client.get_invoice(9999)


def test_invoices_since_filters_by_the_whmcs_local_date_and_pages(sandbox):
    cid = sandbox.add_client()
    for day in (1, 5, 19, 20, 20, 21):
        sandbox.add_invoice(cid, "1.00", date_=date(2026, 11, day))
    with make_client(sandbox, page_size=2) as client:
        got = client.invoices_since(cid, date(2026, 11, 20))
        assert [g["date"] for g in got] == ["2026-11-21", "2026-11-20", "2026-11-20"]


def test_cron_over_http_admin_endpoint_is_loopback_only(sandbox):
    cid = sandbox.add_client()
    with make_client(sandbox) as client:
        client.add_billable_item(cid, "x [ab-9]", Decimal("1.00"), Decimal(1))
    resp = requests.post(sandbox.base_url + "/_sandbox/cron", json={"at": "2026-11-20 01:00:00"}, timeout=5)
    assert resp.json() == {"result": "success", "started": "2026-11-20 01:00:00", "invoices": 1, "items": 1}
    assert requests.post(sandbox.base_url + "/_sandbox/cron", json={"at": "tomorrow"}, timeout=5).status_code == 400
    assert len(sandbox.invoice_items(cid)) == 1
