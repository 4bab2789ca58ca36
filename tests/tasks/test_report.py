from __future__ import annotations

from datetime import date
from decimal import Decimal

import polars as pl

from autobill.ledger.runs import finish_run, run_history, start_run
from tasks.report import RunSummary, ServerLine, count_outcomes, markdown, unrated_destinations


def _rated():
    return pl.DataFrame({
        "server": ["a"] * 6,
        "outcome": ["billed", "billed", "included", "zero_cost", "unrated", "unrated"],
        "cost": ["0.100000", "0.200001", "0", "0", None, None],
        "currency": ["USD"] * 6,
        "rate_number": ["1", "1", "1", "1", "8821234567", None],
        "unrated_reason": [None, None, None, None, "no_rate", "invalid_number"],
    })


def test_summary_balances_and_reports_partial():
    a = ServerLine("a", extracted=7, quarantined=1)
    count_outcomes(a, _rated())
    assert (a.billed, a.included, a.zero_cost, a.unrated) == (2, 1, 1, 2)
    assert a.amount == {"USD": Decimal("0.300001")}
    assert a.balanced
    b = ServerLine("b", status="failed", error="connection refused")
    s = RunSummary(date(2026, 11, 20), False, [a, b])
    assert s.status == "partial" and s.failed_servers == ["b"]
    j = s.to_json()
    assert j["extracted"] == 7 and j["billed"] == 2 and j["balanced"] is True
    assert j["servers"]["a"]["amount"] == {"USD": "0.300001"}
    md = markdown(s)
    assert "| a | ok |" in md and "connection refused" in md and "Servers not billed" in md


def test_unbalanced_summary_fails_the_run():
    line = ServerLine("a", extracted=5, billed=3)
    s = RunSummary(date(2026, 11, 20), False, [line])
    assert not line.balanced and s.status == "failed" and "**NO**" in markdown(s)


def test_unrated_destinations_grouped():
    rows = unrated_destinations(_rated())
    assert {(r["destination"], r["reason"], r["calls"]) for r in rows} == {("882123", "no_rate", 1),
                                                                         ("(none)", "invalid_number", 1)}


def test_run_history(ledger_url):
    from autobill.config import settings_from_dict

    s = settings_from_dict({"ledger_url": ledger_url})
    rid = start_run(s, "nightly", date(2026, 11, 20))
    finish_run(s, rid, "completed", {"billed": 3})
    (h,) = run_history(s)
    assert h["status"] == "completed" and h["seconds"] >= 0 and h["billing_date"] == date(2026, 11, 20)
