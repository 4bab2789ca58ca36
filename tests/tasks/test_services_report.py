"""The services sync in the run summary: JSON and markdown, conflicts listed, a failed sync said."""

from __future__ import annotations

from datetime import date

from tasks.report import RunSummary, ServerLine, markdown
from tasks.services import SyncResult, conflict_rows


def _summary(services):
    return RunSummary(billing_date=date(2026, 11, 18), dry_run=False, servers=[ServerLine("s1")], services=services)


def test_conflicts_are_listed_and_do_not_fail_the_run():
    result = SyncResult(enabled=True, read=3, services=3, claims=4, changes=1, conflicts=[
        {"kind": "duplicate_claim", "service_ids": [5, 6], "detail": "services [5, 6] all claim DID 16135550100"}])
    s = _summary(result.to_json())
    assert s.status == "completed" and s.to_json()["services"]["conflicts"][0]["service_ids"] == [5, 6]
    text = markdown(s)
    assert "**Services from WHMCS:** 3 services, 4 claims, 1 change(s) since the last sync, 1 conflict(s)" in text
    assert "- duplicate_claim: services [5, 6] all claim DID 16135550100" in text
    assert conflict_rows(result) == [{"kind": "duplicate_claim", "services": "5, 6",
                                      "detail": "services [5, 6] all claim DID 16135550100"}]


def test_a_failed_sync_is_said_and_no_sync_is_silent():
    failed = _summary(SyncResult(enabled=True, ok=False, error="WHMCS GetClientsProducts: HTTP 503").to_json())
    assert "**Services sync failed** (WHMCS GetClientsProducts: HTTP 503)" in markdown(failed)
    none = _summary(None)
    assert "Services" not in markdown(none) and "services" not in none.to_json()
