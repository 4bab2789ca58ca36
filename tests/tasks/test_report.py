from __future__ import annotations

from datetime import date
from decimal import Decimal

import polars as pl

from autobill.ledger.runs import finish_run, run_history, start_run
from tasks.report import (
    Attention,
    RunSummary,
    ServerLine,
    build_summary,
    client_name,
    client_totals,
    count_outcomes,
    markdown,
    unrated_destinations,
    unrated_table,
)


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
    assert "| a | ok |" in md and "connection refused" in md and "b not billed (failed)" in md


def test_unbalanced_summary_fails_the_run():
    line = ServerLine("a", extracted=5, billed=3)
    s = RunSummary(date(2026, 11, 20), False, [line])
    assert not line.balanced and s.status == "failed" and "**NOT BALANCED**" in markdown(s)


def test_unrated_destinations_grouped():
    rows = unrated_destinations(_rated())
    assert {(r["destination"], r["reason"], r["calls"]) for r in rows} == {("882123", "no_rate", 1),
                                                                         ("(none)", "invalid_number", 1)}
    assert {r["destination"]: r["description"] for r in rows}["882123"] == "International Networks (non-geographic)"
    table = unrated_table(rows)
    assert table[-1]["destination"] == "TOTAL" and table[-1]["calls"] == 2
    assert "no tariff row matches the number" in {r["reason"] for r in table}


def test_run_history(ledger_url):
    from autobill.config import settings_from_dict

    s = settings_from_dict({"ledger_url": ledger_url})
    rid = start_run(s, "nightly", date(2026, 11, 20))
    finish_run(s, rid, "completed", {"billed": 3})
    (h,) = run_history(s)
    assert h["status"] == "completed" and h["seconds"] >= 0 and h["billing_date"] == date(2026, 11, 20)


def _line(client, amount, exact=None, ccy="USD", calls=1):
    from autobill.ledger.charges import ChargeLine

    return ChargeLine(client, client * 10, date(2026, 11, 20), "outbound", ccy, "t", Decimal(exact or amount),
                      Decimal(amount), 60 * calls, calls, f"ab-{client}-{ccy}", "d")


class _Record:
    def __init__(self, lines):
        self.lines, self.already_final_keys = lines, []

    @property
    def amount_by_currency(self):
        out = {}
        for ln in self.lines:
            out[ln.currency] = out.get(ln.currency, Decimal(0)) + ln.amount
        return out


class _Posting:
    posted, amount_posted, uncertain, failed = 2, {"USD": Decimal("354.00")}, ["ab-k1"], []


def test_summary_totals_come_first_with_money_and_zero_reasons():
    rated = _rated().with_columns(pl.lit("nightly").alias("source"), pl.lit("k").alias("cdr_key"))
    record = _Record([_line(1, "350.00"), _line(2, "4.00"), _line(3, "0.00", "0"), _line(4, "0.00", "0.003")])
    s = build_summary(date(2026, 11, 20), False, {"a": ServerLine("a", extracted=6)}, rated, None, record,
                      _Posting(), [])
    assert s.charges_zero == {"free": 1, "under_minor_unit": 1}
    assert s.to_json()["charges_zero"] == {"free": 1, "under_minor_unit": 1}
    md = markdown(s, Attention(quarantine=[{"rule": "unknown_service", "server": "a", "rows": 3, "example": "x"}],
                               unrated=unrated_destinations(rated)))
    lines = md.splitlines()
    # The totals table is the first thing under the title; money reads "354.00 USD", never a repr.
    assert lines[0] == "# Nightly run 2026-11-20: partial"
    assert lines[4] == "| **Posted to WHMCS** | **354.00 USD** |"
    assert "| Charges | 4 created: 2 posted, **1 uncertain**, 2 zero-amount |" in md
    assert "never posted to WHMCS: 1 because every call was within included minutes or free; 1 because the " \
        "calls cost less than one cent" in md
    assert "| Calls read | 6 |" in md and "| Calls rated | 2 billed, 1 included, 1 zero-cost, 2 unrated |" in md
    # Table cells do not wrap in the Prefect UI: every totals cell stays short.
    assert all(len(ln) < 80 for ln in md.splitlines()[2:10] if ln.startswith("|")), md
    assert md.index("## Servers") < md.index("## Needs attention")
    assert "Decimal(" not in md and "{'" not in md
    assert "| unknown_service | a | 3 | x |" in md
    assert "| +882123 | International Networks (non-geographic) | no rate | 1 | a |" in md
    assert "1 uncertain charge(s)" in md and "`ab-k1`" in md


def test_server_table_has_a_total_row_and_stays_narrow():
    a = ServerLine("a", extracted=2, billed=2, amount={"USD": Decimal("1.5")})
    b = ServerLine("b", extracted=3, billed=3, amount={"USD": Decimal("2")})
    md = markdown(RunSummary(date(2026, 11, 20), False, [a, b]))
    total = next(ln for ln in md.splitlines() if ln.startswith("| **total**"))
    assert "**5**" in total and "**3.50** |" in total
    header = next(ln for ln in md.splitlines() if ln.startswith("| server |"))
    assert header.endswith("| USD |")  # one currency: named once, in the header
    assert header.count("|") <= 11  # rare columns (carried, deferred, earlier) only when used
    assert "Nothing: every server billed" in md


def test_client_totals_named_sorted_with_total_row():
    rows = client_totals([_line(1, "4.00"), _line(2, "350.00", calls=3), _line(2, "1.00"), _line(3, "9", ccy="CAD")],
                         {1: "Acme Ltd", 2: "Jane Roe"})
    assert [r["client"] for r in rows] == ["-", "TOTAL CAD (1 clients)", "Jane Roe", "Acme Ltd",
                                           "TOTAL USD (2 clients)"]
    usd_total = rows[-1]
    assert usd_total["amount"] == "355.00 USD" and usd_total["calls"] == 5 and usd_total["lines"] == 3
    assert rows[2]["amount"] == "351.00 USD"


def test_client_name_prefers_company():
    assert client_name({"id": 1, "companyname": "Acme", "firstname": "J", "lastname": "R"}) == "Acme"
    assert client_name({"id": 1, "companyname": "", "firstname": "Jane", "lastname": "Roe"}) == "Jane Roe"
    assert client_name({"id": 7}) == "client 7"
