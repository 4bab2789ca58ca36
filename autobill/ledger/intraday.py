"""Intraday usage in the ledger (#18): today's calls rated every autosuspend cycle, on a
watermark of their own, and the sums autosuspend decides on.

Never counted twice, never dropped: a rated call is stored once (`intraday_usage`, keyed by
`cdr_key`) and counts as *unbilled* while its `billed_at` is null. The nightly sets `billed_at`
in the same transaction as the charge that bills the call (autobill/ledger/billed.py), so at every instant a
call is either unbilled usage or part of a charge (which counts as *not invoiced* until the
WHMCS daily cron invoices it, then as an invoice). The rows and the intraday watermark move in
one transaction; the nightly's `server_watermarks` is never touched here.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, select

from autobill.config import Settings
from autobill.ledger.billed import billed_frame, billed_keys, lock_billed_state
from autobill.ledger.corrections import included_by_period
from autobill.ledger.db import session_scope
from autobill.ledger.models import (
    Charge,
    ChargeReconciliation,
    FraudHold,
    IntradayUsage,
    IntradayWatermark,
    QuarantinedRow,
    ServerWatermark,
)
from autobill.suspension.credit import NOT_POSTED, Baseline, Call, ChargeFacts, not_invoiced

_CHUNK = 500


def _chunks(items: list, size: int = _CHUNK) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def intraday_position(settings: Settings, server_id: str, now: datetime) -> tuple[datetime, Any]:
    """(since, cursor) of the server's next intraday read: its intraday watermark; the first time,
    its nightly watermark or `intraday.first_lookback_hours` back, whichever is later."""
    with session_scope(settings.ledger) as s:
        wm = s.get(IntradayWatermark, server_id)
        if wm is not None and wm.watermark_utc is not None:
            return wm.watermark_utc, json.loads(wm.cursor) if wm.cursor else None
        nightly = s.get(ServerWatermark, server_id)
    floor = now - timedelta(hours=settings.intraday.first_lookback_hours)
    if nightly is not None and nightly.watermark_utc is not None and nightly.watermark_utc > floor:
        return nightly.watermark_utc, None
    return floor, None


def store_usage(settings: Settings, server_id: str, rows: list[dict[str, Any]], watermark: datetime | None,
                cursor: Any) -> int:
    """Store rated calls not stored yet and not already billed, and move the server's intraday
    watermark (never backwards), in ONE transaction. Returns how many rows were new."""
    keys = [r["cdr_key"] for r in rows]
    new = 0
    with session_scope(settings.ledger) as s:
        # Under the billed-state lock: a nightly billing these calls right now either committed
        # before (they are found billed) or starts after (it marks the rows stored here billed).
        lock_billed_state(s)
        known: set[str] = billed_keys(s, keys, {r.get("billing_date") for r in rows})
        for chunk in _chunks(keys):
            known.update(s.scalars(select(IntradayUsage.cdr_key).where(IntradayUsage.cdr_key.in_(chunk))))
        for r in rows:
            if r["cdr_key"] in known:
                continue
            known.add(r["cdr_key"])
            s.add(IntradayUsage(**r))
            new += 1
        wm = s.get(IntradayWatermark, server_id, with_for_update=True)
        if wm is None:
            wm = IntradayWatermark(server=server_id)
            s.add(wm)
        if watermark is not None and (wm.watermark_utc is None or watermark > wm.watermark_utc):
            wm.watermark_utc = watermark
        if cursor is not None:
            wm.cursor = json.dumps(cursor, sort_keys=True, default=str)
    return new


def included_used(settings: Settings, wanted: dict[tuple[int, date], date]) -> dict[tuple[int, date], int]:
    """Included seconds consumed per (service, period start): billed by the nightly plus
    consumed by intraday calls not billed yet (so today's calls share the allowance in order)."""
    used: dict[tuple[int, date], int] = defaultdict(int)
    unbilled = IntradayUsage.billed_at.is_(None)
    with session_scope(settings.ledger) as s:
        billed = included_by_period(s, wanted)
        for (service_id, start), _end in wanted.items():
            today = s.scalar(select(func.coalesce(func.sum(IntradayUsage.included_seconds), 0)).where(
                IntradayUsage.service_id == service_id, IntradayUsage.period_start == start, unbilled))  # fmt: skip
            used[(service_id, start)] = int(billed.get((service_id, start), 0)) + int(today or 0)
    return dict(used)


def unbilled_by_service(settings: Settings) -> dict[int, tuple[int, Decimal]]:
    """{service: (client, unbilled cost)}: intraday-rated calls not billed yet (`billed_at` null)
    (nor quarantined by the nightly's validation: those are reported there, not billed)."""
    unbilled = and_(IntradayUsage.billed_at.is_(None),
                    ~exists().where(QuarantinedRow.cdr_key == IntradayUsage.cdr_key))
    with session_scope(settings.ledger) as s:
        rows = s.execute(
            select(IntradayUsage.service_id, IntradayUsage.client_id, IntradayUsage.cost).where(unbilled)
        ).all()
    out: dict[int, tuple[int, Decimal]] = {}
    for sid, cid, cost in rows:  # summed in Python: exact Decimal on SQLite (text) and PostgreSQL
        prev = out.get(sid, (cid, Decimal(0)))[1]
        out[sid] = (cid, prev + cost)
    return out


def not_invoiced_by_client(settings: Settings, cron: datetime | None,
                           margin: timedelta = timedelta(0)) -> dict[int, Decimal]:
    """What each client was charged that WHMCS has not invoiced yet, by the rule
    `autobill.suspension.credit.not_invoiced` (`cron`: the start of WHMCS's last completed daily
    cron, None when none has run). SQL narrows the rows (not posted, or reached WHMCS since
    `cron - margin`); the rule decides each one."""
    stored = func.coalesce(Charge.uncertain_at, Charge.posted_at)
    recent = Charge.state == "posted"
    if cron is not None:
        recent = and_(recent, or_(stored.is_(None), stored >= cron - margin))
    on_invoice = exists().where(ChargeReconciliation.charge_id == Charge.id, ChargeReconciliation.outcome == "posted",
                                ChargeReconciliation.invoice_id.is_not(None))
    with session_scope(settings.ledger) as s:
        rows = s.execute(
            select(Charge.client_id, Charge.state, Charge.amount, Charge.kind, Charge.posted_at, Charge.uncertain_at,
                   on_invoice.label("on_invoice"))
            .where(or_(Charge.state.in_(NOT_POSTED), recent))
        ).all()
    out: dict[int, Decimal] = defaultdict(lambda: Decimal(0))
    for cid, state, amount, kind, posted_at, uncertain_at, invoiced in rows:
        if not_invoiced(ChargeFacts(state, amount, kind, posted_at, uncertain_at, bool(invoiced)), cron, margin):
            out[cid] += amount
    return dict(out)


def window_calls(settings: Settings, since: datetime, service_ids: Iterable[int] | None = None) -> dict[int, list[Call]]:
    """The intraday-rated calls that started at or after `since`, per service (billed or not)."""
    q = select(IntradayUsage).where(IntradayUsage.start_utc >= since)
    out: dict[int, list[Call]] = defaultdict(list)
    with session_scope(settings.ledger) as s:
        ids = None if service_ids is None else list(service_ids)
        parts = [q] if ids is None else [q.where(IntradayUsage.service_id.in_(c)) for c in _chunks(ids)]
        for part in parts:
            for u in s.scalars(part):
                out[u.service_id].append(Call(u.cdr_key, u.start_utc, u.rate_number, u.charge_class, u.billsec, u.cost))
    return dict(out)


def baselines(settings: Settings, service_ids: list[int], until: datetime) -> dict[int, Baseline]:
    """Each service's usual spend and international seconds per guard window, from what the
    nightly billed over `fraud_guard.baseline_days` before `until` (a new service: zero)."""
    g = settings.fraud_guard
    days = g.baseline_days
    first = (until - timedelta(days=days)).date()
    windows = Decimal(days * 24 * 60) / Decimal(g.window_minutes)
    spend: dict[int, Decimal] = defaultdict(lambda: Decimal(0))
    intl: dict[int, int] = defaultdict(int)
    with session_scope(settings.ledger) as s:
        # manifests are sorted by service: the service filter skips row groups by their statistics
        billed = billed_frame(session=s, first=first, service_ids=service_ids, outcomes=("billed",),
                              columns=("service_id", "charge_id", "cost", "billable_seconds"))
        charge_ids = sorted({int(c) for c in billed["charge_id"].drop_nulls().to_list()})
        class_of: dict[int, str] = {}
        for chunk in _chunks(charge_ids):
            class_of.update(s.execute(select(Charge.id, Charge.charge_class).where(Charge.id.in_(chunk))).tuples())
        for sid, cid, cost, secs in billed.iter_rows():
            if cid is None or cid not in class_of:
                continue  # the join with the charge line, as before
            spend[sid] += Decimal(cost)
            if class_of[cid] == "international":
                intl[sid] += int(secs or 0)
    return {sid: Baseline((spend[sid] / windows).quantize(Decimal("0.000001")), int(intl[sid] / windows))
            for sid in service_ids}  # fmt: skip


# -- fraud holds -------------------------------------------------------------------------------


def open_holds(settings: Settings) -> dict[int, FraudHold]:
    with session_scope(settings.ledger) as s:
        rows = s.scalars(select(FraudHold).where(FraudHold.cleared_at.is_(None)).order_by(FraudHold.id)).all()
        for r in rows:
            s.expunge(r)
    return {r.service_id: r for r in rows}


def last_cleared(settings: Settings) -> dict[int, datetime]:
    """When each service's last hold was cleared: the guard only looks at calls after it."""
    with session_scope(settings.ledger) as s:
        rows = s.execute(
            select(FraudHold.service_id, func.max(FraudHold.cleared_at))
            .where(FraudHold.cleared_at.is_not(None)).group_by(FraudHold.service_id)
        ).all()
    return {sid: at for sid, at in rows}


def open_hold(settings: Settings, client_id: int, service_id: int, reason: str, evidence: list[Call],
              run_id: int | None, now: datetime) -> int | None:
    """Record a hold (with the calls as evidence); None when the service already has one open."""
    with session_scope(settings.ledger) as s:
        if s.scalar(select(FraudHold.id).where(FraudHold.service_id == service_id, FraudHold.cleared_at.is_(None))):
            return None
        ev = [{"cdr_key": c.cdr_key, "start_utc": c.start_utc.isoformat(), "number": c.number,
               "class": c.charge_class, "billsec": c.billsec, "cost": str(c.cost)} for c in evidence]  # fmt: skip
        hold = FraudHold(client_id=client_id, service_id=service_id, opened_at=now, reason=reason,
                         evidence=json.dumps(ev), run_id=run_id)  # fmt: skip
        s.add(hold)
        s.flush()
        return hold.id


def clear_hold(settings: Settings, service_id: int, by: str, reason: str, now: datetime) -> FraudHold | None:
    """An operator's override: close the service's open hold. None when there is none."""
    with session_scope(settings.ledger) as s:
        hold = s.scalars(
            select(FraudHold).where(FraudHold.service_id == service_id, FraudHold.cleared_at.is_(None))
        ).first()
        if hold is None:
            return None
        hold.cleared_at, hold.cleared_by, hold.clear_reason = now, by, reason
        s.flush()
        s.expunge(hold)
        return hold


def list_holds(settings: Settings, include_cleared: bool = False) -> list[FraudHold]:
    with session_scope(settings.ledger) as s:
        q = select(FraudHold).order_by(FraudHold.id)
        if not include_cleared:
            q = q.where(FraudHold.cleared_at.is_(None))
        rows = s.scalars(q).all()
        for r in rows:
            s.expunge(r)
    return list(rows)


def prune(settings: Settings, now: datetime) -> int:
    """Delete intraday rows the nightly billed more than `intraday.keep_days` ago."""
    cutoff = now - timedelta(days=settings.intraday.keep_days)
    with session_scope(settings.ledger) as s:
        return s.execute(delete(IntradayUsage).where(IntradayUsage.start_utc < cutoff,
                                                     IntradayUsage.billed_at.is_not(None))).rowcount or 0
