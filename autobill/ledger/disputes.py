"""Disputes: a client challenges named calls; they are held out of billing, credited or released.

- `open_dispute`: every named call must be known to the ledger. A call already billed (in a charge
  line of this client) is recorded as `disputed`; a call not billed yet (unrated, or held in
  quarantine) is `held`: while the dispute is open the rate step keeps it out of billing (it stays
  unrated with reason `disputed`, rated again every run, so nothing is lost).
- `resolve_dispute(credit=True)`: billed calls get a correction for exactly those calls, a new
  negative charge line per original line (class `correction`), posted through the normal states
  (pending -> posting -> posted) by the next run; never an edit of what was posted. Held calls
  become final with outcome `credited` (cost 0): they will never be billed.
  The credit of a line is round(S - P) - round(S - P - N) for the line's calls' exact sum S, the
  calls credited earlier P and the calls credited now N (each rounded once to the minor unit), so
  the line plus all its credits always equals what the line would have been without those calls.
- `resolve_dispute(credit=False)` (reject): held calls are released (the next run bills them),
  billed calls stay billed.
Who, when and why are recorded on the dispute (opened_by/at, reason, resolved_by/at, note).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal

import polars as pl
from sqlalchemy import select, update

from autobill.config import Settings
from autobill.ledger.billed import billed_rows, lock_billed_state, record_final, without_charge
from autobill.ledger.charges import statement_ref
from autobill.ledger.db import session_scope
from autobill.ledger.models import Charge, Dispute, DisputeItem, QuarantinedRow, UnratedCDR
from autobill.money import round_minor
from autobill.timeutil import local_today, utc_now

CORRECTION_CLASS = "correction"
HELD_REASON = "disputed"
OPEN_ITEM_STATES = ("held", "disputed")


class DisputeError(ValueError):
    """A dispute that cannot be opened or resolved as asked; the message says why."""


@dataclass(frozen=True)
class DisputeView:
    id: int
    client_id: int
    status: str
    reason: str
    opened_by: str
    opened_at: str
    resolution: str | None
    resolved_by: str | None
    resolved_at: str | None
    note: str | None
    items: list[dict]


def _keys(keys: list[str]) -> list[str]:
    out = list(dict.fromkeys(k.strip() for k in keys if k and k.strip()))
    if not out:
        raise DisputeError("--cdr: name at least one call (its cdr key, as on the statement)")
    return out


def open_dispute(settings: Settings, client_id: int, keys: list[str], reason: str, who: str) -> int:
    """Record the dispute; returns its id. Raises DisputeError naming the calls that cannot be disputed."""
    keys = _keys(keys)
    if not reason.strip():
        raise DisputeError("--reason: say why the client disputes the calls")
    with session_scope(settings.ledger) as session:
        billed = {b.cdr_key: b for b in billed_rows(session=session, keys=keys)}  # no date known: every manifest
        busy = set(session.scalars(select(DisputeItem.cdr_key).join(Dispute, Dispute.id == DisputeItem.dispute_id)
                                   .where(DisputeItem.cdr_key.in_(keys), Dispute.status == "open")))
        waiting = set(session.scalars(select(UnratedCDR.cdr_key).where(
            UnratedCDR.cdr_key.in_(keys), UnratedCDR.resolved_at.is_(None))))
        waiting |= set(session.scalars(select(QuarantinedRow.cdr_key).where(
            QuarantinedRow.cdr_key.in_(keys), QuarantinedRow.status == "held")))
        problems = []
        for key in keys:
            b = billed.get(key)
            if key in busy:
                problems.append(f"{key}: already in an open dispute")
            elif b is not None and b.client_id != client_id:
                problems.append(f"{key}: billed to client {b.client_id}, not {client_id}")
            elif b is not None and b.outcome != "billed":
                problems.append(f"{key}: nothing was charged for it (outcome {b.outcome})")
            elif b is None and key not in waiting:
                problems.append(f"{key}: unknown to the ledger (not billed, unrated or quarantined)")
        if problems:
            raise DisputeError("cannot open the dispute: " + "; ".join(problems))
        dispute = Dispute(client_id=client_id, status="open", reason=reason.strip(), opened_by=who,
                          opened_at=utc_now())
        session.add(dispute)
        session.flush()
        for key in keys:
            b = billed.get(key)
            session.add(DisputeItem(dispute_id=dispute.id, cdr_key=key, state_at_open="billed" if b else "held",
                                    status="disputed" if b else "held", charge_id=b.charge_id if b else None,
                                    cost=b.cost if b else None))
        return dispute.id


def held_keys(settings: Settings) -> set[str]:
    """Calls held out of billing by open disputes."""
    with session_scope(settings.ledger) as session:
        return set(session.scalars(select(DisputeItem.cdr_key).join(Dispute, Dispute.id == DisputeItem.dispute_id)
                                   .where(Dispute.status == "open", DisputeItem.status == "held")))


def split_held(cdrs: pl.DataFrame, held: set[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(calls to rate, calls held by a dispute). Pure."""
    if not held or cdrs.height == 0:
        return cdrs, cdrs.clear()
    mask = pl.col("cdr_key").is_in(sorted(held))
    return cdrs.filter(~mask), cdrs.filter(mask)


def held_as_unrated(held: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Rated rows (in `schema`) for held calls: outcome `unrated`, reason `disputed`, nothing rated. Pure."""
    cols = [c for c in held.columns if c in schema and c not in ("outcome", "unrated_reason")]
    base = held.select(cols).with_columns(pl.lit("unrated").alias("outcome"),
                                          pl.lit(HELD_REASON).alias("unrated_reason"))
    return pl.concat([pl.DataFrame(schema=schema), base], how="diagonal_relaxed").select(
        [pl.col(c).cast(t) for c, t in schema.items()])


def credit_amount(line_costs: Decimal, earlier: Decimal, now: Decimal, currency: str) -> Decimal:
    """The (negative) amount crediting calls costing `now` out of a line whose calls cost `line_costs`
    of which `earlier` were credited before; see the module docstring."""
    before = round_minor(line_costs - earlier, currency)
    after = round_minor(line_costs - earlier - now, currency)
    return after - before


def resolve_dispute(settings: Settings, dispute_id: int, credit: bool, who: str, note: str = "") -> list[int]:
    """Credit or reject an open dispute; returns the ids of the correction charges created."""
    created: list[int] = []
    with session_scope(settings.ledger) as session:
        dispute = session.get(Dispute, dispute_id)
        if dispute is None:
            raise DisputeError(f"no dispute #{dispute_id}")
        if dispute.status != "open":
            raise DisputeError(f"dispute #{dispute_id} is already {dispute.status} ({dispute.resolved_at:%Y-%m-%d})")
        items = list(session.scalars(select(DisputeItem).where(DisputeItem.dispute_id == dispute_id,
                                                               DisputeItem.status.in_(OPEN_ITEM_STATES))))
        now = utc_now()
        if credit:
            lock_billed_state(session)  # a waiver writes billed state: one writer at a time, check included
            billed = {b.cdr_key: b for b in billed_rows(session=session, keys=[i.cdr_key for i in items])}
            by_charge: dict[int, list[DisputeItem]] = {}
            for item in items:
                b = billed.get(item.cdr_key)
                if b is not None and b.outcome == "billed" and b.charge_id is not None:
                    item.charge_id, item.cost = b.charge_id, b.cost  # a held call billed meanwhile
                    by_charge.setdefault(b.charge_id, []).append(item)
                elif b is None:
                    _waive(settings, session, item, now)
                item.status = "credited"
            for charge_id, mine in sorted(by_charge.items()):
                created.append(_credit_line(settings, session, dispute, charge_id, mine))
        else:
            for item in items:
                item.status = "released"
            # released calls still waiting unrated are rated again by the next run, whatever it rates with
            session.execute(update(UnratedCDR).where(UnratedCDR.cdr_key.in_([i.cdr_key for i in items]),
                                                     UnratedCDR.resolved_at.is_(None)).values(rated_with=None))
        dispute.status = "credited" if credit else "rejected"
        dispute.resolution = "credit" if credit else "reject"
        dispute.resolved_by, dispute.resolved_at, dispute.resolution_note = who, now, note or None
    return created


def _waive(settings: Settings, session, item: DisputeItem, now) -> None:
    """A held call credited before it was ever billed: final, cost 0, never billed. Recorded like
    any final call, in a (one-row) billed manifest registered in this transaction: one place says
    what is final, and the nightly's "already billed?" check finds it by its billing date."""
    unrated = session.get(UnratedCDR, item.cdr_key)
    quarantined = session.scalars(select(QuarantinedRow).where(QuarantinedRow.cdr_key == item.cdr_key)).first()
    server = unrated.server if unrated else (quarantined.server if quarantined else "unknown")
    day = (unrated.billing_date if unrated else (quarantined.billing_date if quarantined else None)) or now.date()
    row = without_charge([(item.cdr_key, server, day, "credited", "0.000000")], now)
    record_final(session, settings.data_path, row, None, (), now)
    if unrated is not None and unrated.resolved_at is None:
        unrated.resolved_at = now


def _credit_line(settings: Settings, session, dispute: Dispute, charge_id: int, items: list[DisputeItem]) -> int:
    original = session.get(Charge, charge_id)
    line_costs = sum((b.cost for b in billed_rows(session=session, charge_ids=[charge_id],
                                                   days=[original.billing_date])), Decimal(0))
    earlier = sum(session.scalars(select(DisputeItem.cost).where(
        DisputeItem.charge_id == charge_id, DisputeItem.status == "credited",
        DisputeItem.id.not_in([i.id for i in items]))), Decimal(0))
    now_cost = sum((i.cost for i in items), Decimal(0))
    amount = credit_amount(line_costs, earlier, now_cost, original.currency)
    digest = hashlib.sha256("\n".join(sorted(i.cdr_key for i in items)).encode()).hexdigest()[:16]
    key = f"ab-cr-{dispute.id}-{charge_id}-{digest}"
    day = local_today(settings.tz)
    charge = Charge(
        idempotency_key=key, kind="correction", corrects_charge_id=original.id, client_id=original.client_id,
        service_id=original.service_id, billing_date=day, charge_class=CORRECTION_CLASS, currency=original.currency, amount=amount, exact_amount=-now_cost,
        billable_seconds=0, cdr_count=len(items), tariff_version=original.tariff_version,
        description=(f"Credit for {len(items)} disputed call(s) of {original.billing_date:%Y-%m-%d} line "
                     f"{statement_ref(original.idempotency_key)} (dispute #{dispute.id}), statement ref "
                     f"{statement_ref(key)} [{key}]"),
        state="pending" if amount != 0 else "zero", attempts=0, created_at=utc_now(),
    )
    session.add(charge)
    session.flush()
    for item in items:
        item.credit_charge_id = charge.id
    return charge.id


def list_disputes(settings: Settings, client_id: int | None = None, status: str | None = None) -> list[DisputeView]:
    with session_scope(settings.ledger) as session:
        query = select(Dispute).order_by(Dispute.id.desc())
        if client_id is not None:
            query = query.where(Dispute.client_id == client_id)
        if status is not None:
            query = query.where(Dispute.status == status)
        out = []
        for d in session.scalars(query):
            items = [{"cdr_key": i.cdr_key, "state_at_open": i.state_at_open, "status": i.status,
                      "cost": None if i.cost is None else str(i.cost), "charge_id": i.charge_id,
                      "credit_charge_id": i.credit_charge_id}
                     for i in session.scalars(select(DisputeItem).where(DisputeItem.dispute_id == d.id)
                                              .order_by(DisputeItem.id))]
            out.append(DisputeView(d.id, d.client_id, d.status, d.reason, d.opened_by, d.opened_at.isoformat(),
                                   d.resolution, d.resolved_by, d.resolved_at.isoformat() if d.resolved_at else None,
                                   d.resolution_note, items))
        return out
