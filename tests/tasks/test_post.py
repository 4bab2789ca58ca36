"""Posting state machine against the WHMCS sandbox: races, batches and odd failures."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import date
from decimal import Decimal

import pytest
from sqlalchemy import select

from autobill.config import settings_from_dict
from autobill.ledger.charges import reconcile, surface_interrupted
from autobill.ledger.db import session_scope
from autobill.ledger.models import Charge
from connectors.whmcs import WhmcsClient
from sandboxes.whmcs import WhmcsSandbox
from tasks.post import post_pending


def _charges(url: str, n: int) -> None:
    with session_scope(url) as s:
        for i in range(n):
            s.add(Charge(idempotency_key=f"ab-k{i}", client_id=1 + i % 3, service_id=10, billing_date=date(2026, 11, 20),
                         charge_class="outbound", currency="USD", amount=Decimal("1.25"), exact_amount=Decimal("1.25"),
                         tariff_version="v", description=f"calls [ab-k{i}]"))


@pytest.fixture
def sandbox():
    with WhmcsSandbox() as sb:
        for _ in range(3):
            sb.add_client()
        yield sb


def _client(sb: WhmcsSandbox) -> WhmcsClient:
    return WhmcsClient(sb.url, "demo", "demo", timeout=5, retries=2, backoff=0.01)


def test_two_posters_racing_post_each_charge_once(ledger_url, sandbox):
    settings = settings_from_dict({"ledger_url": ledger_url})
    _charges(ledger_url, 60)
    reports = []

    def run() -> None:
        reports.append(post_pending(settings, lambda: _client(sandbox), workers=3))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Each charge posted by exactly one of them (how many the other skipped depends on timing).
    assert sum(r.posted for r in reports) == 60
    items = sandbox.billable_items()
    assert len(items) == 60 and Counter(i["description"] for i in items).most_common(1)[0][1] == 1
    with session_scope(ledger_url) as s:
        assert {c.state for c in s.scalars(select(Charge))} == {"posted"}
        assert {c.whmcs_billable_id for c in s.scalars(select(Charge))} == {i["id"] for i in items}


def test_unexpected_client_error_is_uncertain_not_reposted(sqlite_url, sandbox):
    from autobill.ledger.db import upgrade

    upgrade(sqlite_url)
    settings = settings_from_dict({"ledger_url": sqlite_url})
    _charges(sqlite_url, 3)

    class Flaky:
        def __init__(self) -> None:
            self.real, self.calls = _client(sandbox), 0

        def add_billable_item(self, *args, **kwargs):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("bug after the request may have gone out")
            return self.real.add_billable_item(*args, **kwargs)

    report = post_pending(settings, Flaky())
    assert report.posted == 2 and report.uncertain == ["ab-k1"]
    assert post_pending(settings, _client(sandbox)).posted == 0  # nothing pending: not re-posted
    assert surface_interrupted(settings) == []
    reconcile(settings, "ab-k1", posted=False)
    assert post_pending(settings, _client(sandbox)).posted == 1
    assert len(sandbox.billable_items()) == 3
