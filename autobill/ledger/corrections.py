"""Corrections in the ledger: current CDR prices, what is booked per line, and recording a re-rate.

A CDR's current price is its billed row (autobill/ledger/billed.py) overlaid by its latest
`correction_cdrs` row.
`record_corrections` writes, in ONE transaction, the `rerates` row (who, when, why, tariff
versions), the correction lines as `charges` rows of kind `correction` (pending, or `zero` when the
difference rounds to nothing) and a `correction_cdrs` row per changed CDR. Posting then goes
through the same states as any charge (autobill/ledger/charges.py). Re-rates are serialised with
the nightly run by the caller (the ledger lock), so the state read is the state corrected.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

import polars as pl
from sqlalchemy import select
from sqlalchemy.orm import Session

from autobill.config import Settings
from autobill.corrections import Booked, Change, Correction, LineId, Price, line_of_change
from autobill.ledger.billed import billed_frame, included_used
from autobill.ledger.bulk import insert_rows
from autobill.ledger.db import session_scope
from autobill.ledger.models import Charge, CorrectionCDR, Rerate
from autobill.timeutil import period_bounds, utc_now

LIVE_STATES = ("pending", "posting", "uncertain", "posted", "zero")  # everything but `void`


@dataclass(frozen=True)
class LedgerPrice:
    """A CDR's current price plus where it sits in the ledger (server, consumption group)."""

    price: Price
    server: str
    group: datetime  # created_at of its billed row: the nightly transaction that billed it


@dataclass
class RerateRequest:
    date_from: date
    date_to: date
    reason: str
    requested_by: str
    client_id: int | None = None
    tariff_versions: dict[str, str] = field(default_factory=dict)
    flow_run_id: str | None = None


def current_prices(settings: Settings, first: date, last: date, client_id: int | None = None,
                   service_ids: Iterable[int] | None = None) -> list[LedgerPrice]:
    """Every CDR with a final money state billed on a date in [first, last], at its current price."""
    services = None if service_ids is None else sorted(set(service_ids))
    with session_scope(settings.ledger) as session:
        billed = billed_frame(session=session, first=first, last=last, client_id=client_id, service_ids=services)
        # a CDR's line has the CDR's billing date: the charges of [first, last] are all we need
        line_of = {cid: (cls, ccy, version) for cid, cls, ccy, version in session.execute(
            select(Charge.id, Charge.charge_class, Charge.currency, Charge.tariff_version)
            .where(Charge.billing_date >= first, Charge.billing_date <= last))}
        out: dict[str, LedgerPrice] = {}
        for b in billed.iter_rows(named=True):
            if b["client_id"] is None or b["service_id"] is None:
                continue
            cls, ccy, version = line_of.get(b["charge_id"], (None, None, None))
            out[b["cdr_key"]] = LedgerPrice(Price(
                cdr_key=b["cdr_key"], client_id=int(b["client_id"]), service_id=int(b["service_id"]),
                billing_date=b["billing_date"], outcome=b["outcome"], charge_class=cls or "", currency=ccy or "",
                cost=Decimal(b["cost"]), included_seconds=int(b["included_seconds"] or 0),
                billable_seconds=int(b["billable_seconds"] or 0), charge_id=b["charge_id"], tariff_version=version,
            ), b["server"], b["created_at"])
        for c, ccy in session.execute(_corrections_of(first, last)):
            cur = out.get(c.cdr_key)
            if cur is None:
                continue
            p = cur.price
            out[c.cdr_key] = LedgerPrice(Price(
                cdr_key=p.cdr_key, client_id=p.client_id, service_id=p.service_id, billing_date=p.billing_date,
                outcome=c.new_outcome, charge_class=c.new_class, currency=ccy or p.currency, cost=Decimal(c.new_cost),
                included_seconds=int(c.new_included), billable_seconds=int(c.new_billable_seconds),
                charge_id=p.charge_id, tariff_version=c.tariff_version,
            ), cur.server, cur.group)
    return list(out.values())


def booked(settings: Settings, first: date, last: date, client_id: int | None = None) -> dict[LineId, Booked]:
    """Per line: the sum of every live charge and correction in the ledger for it."""
    q = select(Charge).where(Charge.billing_date >= first, Charge.billing_date <= last,
                             Charge.state.in_(LIVE_STATES)).order_by(Charge.id)
    if client_id is not None:
        q = q.where(Charge.client_id == client_id)
    out: dict[LineId, Booked] = {}
    with session_scope(settings.ledger) as session:
        for c in session.scalars(q):
            line = LineId(c.client_id, c.service_id, c.billing_date, c.charge_class, c.currency)
            b = out.setdefault(line, Booked())
            b.amount += Decimal(c.amount)
            b.exact += Decimal(c.exact_amount)
            b.versions.add(c.tariff_version)
            if c.kind == "correction":
                b.corrections += 1
            elif b.first_charge_id is None:
                b.first_charge_id = c.id
    return out


def _corrections_of(first: date, last: date):
    """Correction rows (with their line's currency) that may concern CDRs billed in [first, last],
    oldest first: a re-rate corrects only CDRs of its own date range, so the re-rates whose range
    meets [first, last]. Callers keep the rows of the CDRs they hold."""
    return (select(CorrectionCDR, Charge.currency)
            .join(Rerate, Rerate.id == CorrectionCDR.rerate_id)
            .join(Charge, Charge.id == CorrectionCDR.correction_id, isouter=True)
            .where(Rerate.date_from <= last, Rerate.date_to >= first)
            .order_by(CorrectionCDR.id))


def allowance_periods(settings: Settings, cdrs: pl.DataFrame) -> dict[tuple[int, date], date]:
    """(service, period start) -> period end for the calls in `cdrs` (`service_id`, `plan`,
    `billing_date`) whose plan includes minutes: the only periods whose consumed allowance the
    rater reads (a plan without included minutes covers nothing, whatever was used)."""
    plans = {p.name: p.period_anchor_day for p in settings.plans if p.included_minutes > 0}
    wanted: dict[tuple[int, date], date] = {}
    if not plans:
        return wanted
    mapped = cdrs.filter(pl.col("service_id").is_not_null() & pl.col("plan").is_in(list(plans)))
    for service_id, plan, day in mapped.select("service_id", "plan", "billing_date").unique().iter_rows():
        start, end = period_bounds(day, plans[plan])
        wanted[(int(service_id), start)] = end
    return wanted


def included_by_period(session: Session, wanted: dict[tuple[int, date], date]) -> dict[tuple[int, date], int]:
    """Included seconds consumed per (service, period start) over [start, end) (`wanted` maps
    (service, start) to end): what the nightly billed plus what re-rates added or took back.
    It runs every night and every credit-control cycle over the month so far, so the billed part
    comes from each billing date's manifest summaries (`included_used`: one footer per file, not
    a month of rows); only the calls a re-rate moved are read row by row, to find their service
    and date."""
    out = dict.fromkeys(wanted, 0)
    if not wanted:
        return out
    first = min(start for _, start in wanted)
    last = max(wanted.values()) - timedelta(days=1)
    services = {sid for sid, _ in wanted}
    periods = pl.DataFrame([(sid, start, end) for (sid, start), end in wanted.items()],
                           schema={"service_id": pl.Int64, "start": pl.Date, "end": pl.Date}, orient="row")
    deltas: dict[str, int] = {}
    for c, _ccy in session.execute(_corrections_of(first, last)):
        deltas[c.cdr_key] = deltas.get(c.cdr_key, 0) + int(c.new_included) - int(c.old_included)
    used = [included_used(session, first, last, services)]
    if deltas:
        delta = pl.DataFrame({"cdr_key": list(deltas), "included_seconds": list(deltas.values())},
                             schema={"cdr_key": pl.String, "included_seconds": pl.Int64})
        moved = billed_frame(session=session, keys=list(deltas), first=first, last=last, service_ids=services,
                             columns=("cdr_key", "service_id", "billing_date"))
        used.append(moved.join(delta, on="cdr_key").select(used[0].columns))
    sums = (pl.concat(used, how="vertical").join(periods, on="service_id", how="inner")
            .filter((pl.col("billing_date") >= pl.col("start")) & (pl.col("billing_date") < pl.col("end")))
            .group_by("service_id", "start").agg(pl.col("included_seconds").sum()))
    for sid, start, seconds in sums.iter_rows():
        out[(int(sid), start)] = int(seconds)
    return out


def record_corrections(settings: Settings, request: RerateRequest, made: list[Correction], changes: list[Change],
                       run_id: int | None = None, summary: dict | None = None) -> tuple[int, list[int]]:
    """The re-rate, its correction lines and its changed CDRs in one transaction; returns
    (rerate id, correction charge ids in `made` order)."""
    now = utc_now()
    with session_scope(settings.ledger) as session:
        rerate = Rerate(requested_by=request.requested_by, requested_at=now, reason=request.reason,
                        date_from=request.date_from, date_to=request.date_to, client_id=request.client_id,
                        tariff_versions=json.dumps(request.tariff_versions, sort_keys=True),
                        old_versions=json.dumps(sorted({v for c in made for v in c.old_versions})),
                        flow_run_id=request.flow_run_id, run_id=run_id,
                        summary=json.dumps(summary, default=str) if summary is not None else None)
        session.add(rerate)
        session.flush()
        rows = [Charge(
            idempotency_key=c.idempotency_key, client_id=c.line.client_id, service_id=c.line.service_id,
            billing_date=c.line.billing_date, charge_class=c.line.charge_class, currency=c.line.currency,
            amount=c.amount, exact_amount=c.exact_amount, billable_seconds=0, cdr_count=c.calls,
            tariff_version=(",".join(c.new_versions) or "-")[:64], description=c.description,
            state="pending" if c.amount != 0 else "zero", attempts=0, run_id=run_id, created_at=now,
            kind="correction", corrects_charge_id=c.corrects_charge_id, rerate_id=rerate.id,
        ) for c in made]
        session.add_all(rows)
        session.flush()
        ids = [r.id for r in rows]
        made_ids = {c.line: cid for c, cid in zip(made, ids, strict=True)}
        insert_rows(session, CorrectionCDR.__table__, (
            "rerate_id", "correction_id", "cdr_key", "charge_id", "old_class", "new_class", "old_outcome",
            "new_outcome", "old_cost", "new_cost", "old_included", "new_included", "new_billable_seconds",
            "tariff_version"), (
            (rerate.id, line_of_change(ch, made_ids), ch.old.cdr_key, ch.old.charge_id, ch.old.charge_class,
             ch.new.charge_class, ch.old.outcome, ch.new.outcome, ch.old.cost, ch.new.cost, ch.old.included_seconds,
             ch.new.included_seconds, ch.new.billable_seconds, ch.new.tariff_version)
            for ch in changes))
        return rerate.id, ids


def correction_cdrs(settings: Settings, correction_id: int) -> list[CorrectionCDR]:
    with session_scope(settings.ledger) as session:
        rows = list(session.scalars(select(CorrectionCDR).where(CorrectionCDR.correction_id == correction_id)
                                    .order_by(CorrectionCDR.cdr_key)))
        for r in rows:
            session.expunge(r)
        return rows
