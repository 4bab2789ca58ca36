"""Re-rate CDRs already billed, with the nightly engine (autobill/rating/billing.py), as the nightly would.

No second rater: this only decides what `rate_for_billing` is given, in which order.

Included minutes are per service and period, consumed in the order the nightly billed the calls:
run by run (one nightly transaction = one *group*, the `created_at` of its billed rows),
and by call start within a run. To reproduce that, the whole periods the re-rated dates fall in
are loaded, and the groups are rated in order, each given the allowance consumed before it:
- a call in the re-rated range consumes what its re-rated price says;
- a call outside the range (same period, not re-rated) consumes what it consumed when billed
  (its current price): a re-rate of some dates never changes what was given on other dates.
Calls of another range but the same group are rated alongside (so that call-start order within the
group holds) and then counted at their current price. With an unchanged tariff every call gets
its billed price back, so nothing is corrected.

A billed call that cannot be re-rated keeps its price and is reported, never dropped: not found in
the lake, its service no longer in the config, or unrated by the new tariff (e.g. `no_rate`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

import polars as pl

from autobill.config import Settings
from autobill.corrections import Price
from autobill.ledger.corrections import LedgerPrice
from autobill.rating.billing import rate_for_billing
from autobill.rating.tariff import LoadedTariff
from autobill.timeutil import period_bounds

RATE_COLUMNS = ("cdr_key", "server", "direction", "rate_number", "start_utc", "billsec")


@dataclass
class Rerated:
    new: dict[str, Price] = field(default_factory=dict)  # in-range CDRs re-rated
    skipped: dict[str, str] = field(default_factory=dict)  # cdr_key -> why it keeps its price


def period_span(settings: Settings, first: date, last: date) -> tuple[date, date]:
    """[start, end] local dates covering every plan's periods that [first, last] touches."""
    anchors = {p.period_anchor_day for p in settings.plans} or {1}
    start = min(period_bounds(first, a)[0] for a in anchors)
    end = max(period_bounds(last, a)[1] for a in anchors) - timedelta(days=1)
    return start, end


def rerate(settings: Settings, prices: list[LedgerPrice], lake_rows: pl.DataFrame, tariffs: dict[str, LoadedTariff],
           in_range: set[str]) -> Rerated:
    """New prices for the CDRs in `in_range`; `prices` holds them and the rest of their periods."""
    out = Rerated()
    plan_of = {s.service_id: s.plan for s in settings.services}
    anchor = {p.name: p.period_anchor_day for p in settings.plans}
    lake_keys = set(lake_rows["cdr_key"].to_list()) if lake_rows.height else set()
    usable: list[LedgerPrice] = []
    kept: dict = defaultdict(list)  # group -> prices not re-rated: they still consumed their allowance
    for lp in prices:
        key = lp.price.cdr_key
        why = (f"service {lp.price.service_id} is no longer in the config" if lp.price.service_id not in plan_of
               else "not found in the raw lake" if key not in lake_keys else None)
        if why is None:
            usable.append(lp)
            continue
        kept[lp.group].append(lp.price)
        if key in in_range:
            out.skipped[key] = why
    ledger = pl.DataFrame(
        {"cdr_key": [lp.price.cdr_key for lp in usable],
         "client_id": [lp.price.client_id for lp in usable],
         "service_id": [lp.price.service_id for lp in usable],
         "plan": [plan_of[lp.price.service_id] for lp in usable],
         "_group": [lp.group for lp in usable]},
        schema={"cdr_key": pl.String, "client_id": pl.Int64, "service_id": pl.Int64, "plan": pl.String,
                "_group": pl.Datetime("us", "UTC")},
    )
    rows = ledger.join(lake_rows.select(*RATE_COLUMNS).unique("cdr_key", keep="first"), on="cdr_key", how="inner")
    by_key = {lp.price.cdr_key: lp.price for lp in usable}
    used: dict[tuple[int, date], int] = defaultdict(int)

    def consume(price: Price) -> None:
        plan = plan_of.get(price.service_id)
        used[(price.service_id, period_bounds(price.billing_date, anchor.get(plan, 1))[0])] += price.included_seconds

    for group in sorted(set(rows["_group"].to_list()) | set(kept)):
        for price in kept.get(group, ()):
            consume(price)
        part = rows.filter(pl.col("_group") == group)
        keys = part["cdr_key"].to_list()
        if not any(k in in_range for k in keys):
            for k in keys:
                consume(by_key[k])
            continue
        rated = rate_for_billing(part.drop("_group"), settings, tariffs, dict(used))
        for r in rated.iter_rows(named=True):
            key, old = r["cdr_key"], by_key[r["cdr_key"]]
            if key not in in_range:
                consume(old)
                continue
            if r["outcome"] == "unrated":
                out.skipped[key] = f"unrated by the new tariff: {r['unrated_reason']}"
                consume(old)
                continue
            new = Price(
                cdr_key=key, client_id=old.client_id, service_id=old.service_id, billing_date=old.billing_date,
                outcome=r["outcome"], charge_class=r["charge_class"] or "", currency=r["currency"] or "",
                cost=Decimal(r["cost"] or "0"), included_seconds=int(r["included_seconds"] or 0),
                billable_seconds=int(r["billable_seconds"] or 0), charge_id=old.charge_id,
                tariff_version=r["tariff_version"], destination=r["description"] or r["matched_prefix"],
            )
            out.new[key] = new
            consume(new)
    return out
