"""Correction arithmetic (autobill/corrections.py) and re-rating (autobill/rerating.py).

The property: for random CDRs and random tariffs T1, T2, T3,
billed(T1) + corrections(T1 -> T2) + corrections(T2 -> T3) == billed(T3), to the cent, per client
and class. `billed` is the reference kept here: the nightly engine run night by night (the
allowance of included minutes carried from one night to the next, as tasks/rate.py does), one
line per client / service / date / class, each rounded once.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autobill.config import settings_from_dict
from autobill.corrections import Booked, LineId, Price, apply, corrections, preview, top_destinations
from autobill.ledger.corrections import LedgerPrice
from autobill.money import round_minor
from autobill.rating.billing import rate_for_billing
from autobill.rating.tariff import tariff_from_frame
from autobill.rerating import rerate

SETTINGS = settings_from_dict({
    "timezone": "America/Toronto",
    "servers": [{"id": "pbx1", "kind": "file", "path": "/tmp"}],
    "tariffs": [{"name": "main", "path": "main.csv"}],
    "plans": [{"name": "A", "tariff": "main", "included_minutes": 5, "markup_percent": "12.5"},
              {"name": "B", "tariff": "main", "bill_inbound": True}],
    "services": [{"client_id": 1, "service_id": 10, "server": "pbx1", "tenant": "t1", "plan": "A"},
                 {"client_id": 2, "service_id": 20, "server": "pbx1", "tenant": "t2", "plan": "B"}],
})
PREFIXES = ["1", "1876", "2", "3", "33", "4", "44", "4420", "5", "6", "7", "8", "9"]  # every number has a rate
NIGHTS = [date(2026, 3, 7), date(2026, 3, 8)]  # a DST change in Toronto on the 8th
GROUP = {d: datetime(2026, 3, 9 + i, 6, tzinfo=UTC) for i, d in enumerate(NIGHTS)}


@st.composite
def tariffs(draw):
    rows = [{"prefix": p, "rate": draw(st.sampled_from(["0", "0.01", "0.013", "0.2", "0.123456", "1.5"])),
             "connect_fee": draw(st.sampled_from(["0", "0", "0.05"])),
             "first_increment": draw(st.sampled_from(["1", "6", "30", "60"])),
             "class": draw(st.sampled_from(["", "", "premium"])), "description": f"dest {p}"} for p in PREFIXES]
    frame = pl.DataFrame(rows, schema={c: pl.String for c in rows[0]})
    return tariff_from_frame(frame, name="main", with_bands=True)


@st.composite
def cdrs(draw):
    n = draw(st.integers(1, 30))
    out = []
    for i in range(n):
        day = draw(st.sampled_from(NIGHTS))
        start = datetime(day.year, day.month, day.day, 8, tzinfo=UTC) + timedelta(minutes=draw(st.integers(0, 900)))
        service = draw(st.sampled_from([10, 20]))
        out.append({"cdr_key": f"pbx1:{i}", "server": "pbx1", "client_id": service // 10, "service_id": service,
                    "plan": "A" if service == 10 else "B", "direction": draw(st.sampled_from(["outbound", "inbound"])),
                    "rate_number": draw(st.sampled_from(PREFIXES)) + draw(st.text("0123456789", min_size=4, max_size=8)),
                    "start_utc": start, "billsec": draw(st.sampled_from([0, 1, 7, 59, 60, 61, 125, 400])),
                    "billing_date": day})
    return pl.DataFrame(out).with_columns(pl.col("start_utc").cast(pl.Datetime("us", "UTC")))


def nightly(calls: pl.DataFrame, tariff) -> dict[str, Price]:
    """The reference nightly: one run per night, each given the allowance the earlier ones used."""
    used: dict[tuple[int, date], int] = defaultdict(int)
    out = {}
    for night in NIGHTS:
        part = calls.filter(pl.col("billing_date") == night)
        if part.height == 0:
            continue
        rated = rate_for_billing(part, SETTINGS, {"main": tariff}, dict(used))
        for r in rated.iter_rows(named=True):
            used[(r["service_id"], r["period_start"])] += r["included_seconds"] or 0
            out[r["cdr_key"]] = Price(r["cdr_key"], r["client_id"], r["service_id"], night, r["outcome"],
                                      r["charge_class"], r["currency"], Decimal(r["cost"]), r["included_seconds"],
                                      r["billable_seconds"], tariff_version=r["tariff_version"],
                                      destination=r["description"])
    return out


def billed(prices: dict[str, Price]) -> dict[LineId, Booked]:
    exact: dict[LineId, Decimal] = defaultdict(Decimal)
    for p in prices.values():
        if p.line:
            exact[p.line] += p.cost
    return {ln: Booked(round_minor(v, ln.currency), v, first_charge_id=i) for i, (ln, v) in enumerate(exact.items())}


def per_client_class(book: dict[LineId, Booked]) -> dict[tuple[int, str], Decimal]:
    out: dict[tuple[int, str], Decimal] = defaultdict(Decimal)
    for ln, b in book.items():
        out[(ln.client_id, ln.charge_class)] += b.amount
    return {k: v for k, v in out.items() if v}


def rerated(calls: pl.DataFrame, current: dict[str, Price], tariff) -> dict[str, Price]:
    """The re-rate path (autobill/rerating.py) over the CDRs billed on both nights."""
    ledger = [LedgerPrice(p, "pbx1", GROUP[p.billing_date]) for p in current.values()]
    return rerate(SETTINGS, ledger, calls, {"main": tariff}, set(current)).new


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=cdrs(), t1=tariffs(), t2=tariffs(), t3=tariffs())
def test_billed_t1_plus_corrections_equals_billed_t3(calls, t1, t2, t3):
    p1 = nightly(calls, t1)
    book = billed(p1)
    p2 = rerated(calls, p1, t2)
    fresh = nightly(calls, t2)  # re-rating = billing afresh with T2
    assert p2.keys() == fresh.keys() and all(p2[k].same_price(fresh[k]) for k in fresh)
    c12 = corrections(p1, p2, book)
    book = apply(book, c12)
    c23 = corrections(p2, rerated(calls, p2, t3), book)
    book = apply(book, c23)
    assert per_client_class(book) == per_client_class(billed(nightly(calls, t3)))
    # Each correction line is what moved; the same re-rate again makes none.
    assert corrections(p1, p1, billed(p1)) == []
    for c in c12 + c23:
        assert c.amount == c.now - c.was and c.kind == ("billable_item" if c.amount > 0 else
                                                          "credit" if c.amount < 0 else "none")
        assert c.idempotency_key in c.description and c.calls > 0


def test_unchanged_tariff_corrects_nothing_even_with_allowance_carried_between_nights():
    t = tariff_from_frame(pl.DataFrame({"prefix": ["1"], "rate": ["0.01"], "first_increment": ["60"]}), name="main",
                          with_bands=True)
    calls = pl.DataFrame([{"cdr_key": f"pbx1:{i}", "server": "pbx1", "client_id": 1, "service_id": 10, "plan": "A",
                           "direction": "outbound", "rate_number": "15145550000",
                           "start_utc": datetime(2026, 3, 7 + i % 2, 15, i, tzinfo=UTC), "billsec": 170,
                           "billing_date": NIGHTS[i % 2]} for i in range(6)])
    p1 = nightly(calls, t)
    assert {p.outcome for p in p1.values()} == {"included", "billed"}  # the 5 free minutes run out
    again = rerated(calls, p1, t)
    assert again.keys() == p1.keys() and all(again[k].same_price(p1[k]) for k in p1)
    assert corrections(p1, rerated(calls, p1, t), billed(p1)) == []


def test_a_worked_correction_line():
    line = LineId(7, 70, date(2026, 3, 7), "international", "USD")
    old = {k: Price(k, 7, 70, line.billing_date, "billed", "international", "USD", Decimal(c), destination="UK")
           for k, c in (("a", "0.104"), ("b", "0.201"))}
    new = {"a": old["a"], "b": Price("b", 7, 70, line.billing_date, "billed", "international", "USD", Decimal("0.3"),
                                     destination="UK")}
    (c,) = corrections(old, new, {line: Booked(Decimal("0.31"), Decimal("0.305"), first_charge_id=3)})
    assert (c.was, c.now, c.amount, c.exact_amount, c.calls) == (Decimal("0.31"), Decimal("0.40"), Decimal("0.09"),
                                                                  Decimal("0.099"), 1)
    assert c.corrects_charge_id == 3 and c.sequence == 1 and c.kind == "billable_item"
    assert c.description.startswith("Correction for 2026-03-07: international, 1 call(s), was 0.31 now 0.40 USD [rc-7-70-")
    (p,) = preview([c])
    assert (p.old, p.new, p.calls) == (Decimal("0.31"), Decimal("0.40"), 1)
    assert top_destinations(c.changes) == [{"destination": "UK", "currency": "USD", "calls": 1, "difference": "0.099"}]
    back = corrections(new, old, apply({line: Booked(Decimal("0.31"), Decimal("0.305"), 3)}, [c]))
    assert back[0].amount == Decimal("-0.09") and back[0].kind == "credit" and back[0].sequence == 2
    assert back[0].idempotency_key != c.idempotency_key


def test_class_change_moves_a_call_between_lines():
    day = date(2026, 3, 7)
    old = {"a": Price("a", 1, 10, day, "billed", "outbound", "USD", Decimal("1.000000"))}
    new = {"a": Price("a", 1, 10, day, "billed", "premium", "USD", Decimal("1.000000"))}
    book = {LineId(1, 10, day, "outbound", "USD"): Booked(Decimal("1.00"), Decimal("1"), 1)}
    made = corrections(old, new, book)
    assert sorted((c.line.charge_class, c.amount) for c in made) == [("outbound", Decimal("-1.00")),
                                                                      ("premium", Decimal("1.00"))]
