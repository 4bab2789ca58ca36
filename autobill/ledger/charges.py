"""Charges in the ledger: the line, its idempotency key, and its posting states.

Idempotency key: derived from (client, service, billing date, class, currency, tariff version)
plus a digest of the exact set of CDR keys in the line. The same CDRs always give the same key
(a crashed run recomputed cannot create a second charge), while late CDRs for an already billed
date form a different set and so a new charge line, never an edit of the posted one.

Posting states (every change is its own committed transaction, so a crash leaves a precise trace):
- `pending`: certainly not in WHMCS. Posted by the next run.
- `posting`: claimed and (maybe) sent. A run that finds a charge in `posting` at its start knows
  the previous run died mid-call: the charge becomes `uncertain`.
- `uncertain`: the call may or may not have created the billable item; never re-posted blindly:
  settled from WHMCS's invoices after its next daily cron (autobill/ledger/reconciliation.py).
- `posted`: WHMCS returned its billable id.
- `zero`: the rounded amount is zero; never posted.
The WHMCS calls themselves are the post step's (tasks/post.py).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.orm import Session

from autobill.config import Settings
from autobill.ledger.bulk import PAGE, insert_rows
from autobill.ledger.db import engine_for, session_scope
from autobill.ledger.models import Charge
from autobill.ledger.reconciliation import is_credit, record_decision, uncertain_of
from autobill.reconcile import PENDING, POSTED, Decision, Line
from autobill.timeutil import utc_now


@dataclass(frozen=True)
class ChargeLine:
    client_id: int
    service_id: int
    billing_date: date
    charge_class: str
    currency: str
    tariff_version: str
    exact_amount: Decimal
    amount: Decimal
    charged_seconds: int
    cdr_count: int
    idempotency_key: str
    description: str


def keys_digest(cdr_keys: Iterable[str]) -> str:
    """What a charge line's key says of its CDRs: 16 hex digits of the SHA-256 of their keys,
    sorted and joined by newlines (sql/charge_lines.sql computes the same in DuckDB)."""
    return hashlib.sha256("\n".join(sorted(cdr_keys)).encode()).hexdigest()[:16]


def idempotency_key(
    client_id: int, service_id: int, billing_date: date, charge_class: str, currency: str,
    tariff_version: str, cdr_keys: Iterable[str] = (), *, digest: str | None = None,
) -> str:
    """The charge line's key: its grouping and the digest of its CDR keys (`keys_digest`), given as
    the keys or, already computed, as `digest`."""
    digest = keys_digest(cdr_keys) if digest is None else digest
    head = f"{client_id}-{service_id}-{billing_date:%Y%m%d}-{charge_class}-{currency}-{tariff_version[:12]}"
    return f"ab-{head}-{digest}"


def statement_ref(key: str) -> str:
    """The short reference of a charge line a client can quote ("ST-7KQ2MX4D"): printed on the WHMCS
    item and beside the line on the client's statement. Derived from the idempotency key (40 bits of
    its SHA-256 in base32: collisions among one client's lines are negligible; the client's
    statement lists every line with its reference)."""
    digest = hashlib.sha256(key.encode()).digest()[:5]
    return "ST-" + base64.b32encode(digest).decode()


def describe(line_class: str, billing_date: date, cdr_count: int, seconds: int, key: str) -> str:
    """The WHMCS invoice line: what, for which period, the statement reference a client can quote,
    and the key an operator can search for."""
    minutes = Decimal(seconds) / 60
    return (
        f"VoIP {line_class} calls {billing_date:%Y-%m-%d}: {cdr_count} call(s), "
        f"{minutes.quantize(Decimal('0.1'))} min, statement ref {statement_ref(key)} [{key}]"
    )


def insert_charges(session: Session, lines: list[ChargeLine], run_id: int | None, now: datetime) -> list[int]:
    """Insert the charge lines; returns their ids in `lines` order."""
    columns = ("idempotency_key", "client_id", "service_id", "billing_date", "charge_class", "currency", "amount",
               "exact_amount", "billable_seconds", "cdr_count", "tariff_version", "description", "state",
               "attempts", "run_id", "created_at")
    insert_rows(session, Charge.__table__, columns, (
        (ln.idempotency_key, ln.client_id, ln.service_id, ln.billing_date, ln.charge_class, ln.currency, ln.amount,
         ln.exact_amount, ln.charged_seconds, ln.cdr_count, ln.tariff_version, ln.description,
         "pending" if ln.amount != 0 else "zero", 0, run_id, now)
        for ln in lines
    ))
    by_day: dict[date, list[str]] = {}
    for ln in lines:
        by_day.setdefault(ln.billing_date, []).append(ln.idempotency_key)
    ids: dict[tuple[date, str], int] = {}
    for day, keys in by_day.items():  # (date, key): the order of the unique index (models.Charge)
        for i in range(0, len(keys), PAGE):
            ids.update(((day, k), cid) for k, cid in session.execute(
                select(Charge.idempotency_key, Charge.id)
                .where(Charge.billing_date == day, Charge.idempotency_key.in_(keys[i : i + PAGE]))
            ).tuples())
    return [ids[(ln.billing_date, ln.idempotency_key)] for ln in lines]


@dataclass
class PostingReport:
    posted: int = 0
    amount_posted: dict[str, Decimal] = field(default_factory=dict)
    uncertain: list[str] = field(default_factory=list)  # idempotency keys needing reconciliation
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key, error): still pending, retried next run
    skipped: int = 0  # claimed by someone else

    def add_posted(self, currency: str, amount: Decimal) -> None:
        self.posted += 1
        self.amount_posted[currency] = self.amount_posted.get(currency, Decimal(0)) + amount

    def count(self, sent: list[Sent]) -> None:
        for s in sent:
            if s.state == "posted":
                self.add_posted(s.charge.currency, s.charge.amount)
            elif s.state == "uncertain":
                self.uncertain.append(s.charge.idempotency_key)
            else:
                self.failed.append((s.charge.idempotency_key, s.error or ""))


@dataclass
class Sent:
    """What one attempt to post a charge came to."""

    charge: Charge | Claimed
    state: str  # posted | uncertain | failed
    billable_id: int | None = None
    error: str | None = None


def surface_interrupted(settings: Settings) -> list[str]:
    """Charges left in `posting` by a run that died mid-call become `uncertain`; returns their keys."""
    with session_scope(settings.ledger) as session:
        keys = list(session.scalars(select(Charge.idempotency_key).where(Charge.state == "posting")))
        if keys:
            session.execute(
                update(Charge)
                .where(Charge.state == "posting")
                .values(state="uncertain", uncertain_at=utc_now(),
                        last_error="found in `posting` at the start of a run: the call may or may not have "
                        "reached WHMCS; settled from WHMCS's invoices after its next daily cron")
            )
    return keys


def outstanding_uncertain(settings: Settings) -> list[str]:
    """Every charge still waiting for an operator's reconciliation, oldest first."""
    with session_scope(settings.ledger) as session:
        return list(session.scalars(
            select(Charge.idempotency_key).where(Charge.state == "uncertain").order_by(Charge.id)
        ))


def pending_charge_ids(settings: Settings, kind: str | None = None) -> list[int]:
    """Pending charges, oldest first; `kind` (`charge` | `correction`) narrows them."""
    query = select(Charge.id).where(Charge.state == "pending").order_by(Charge.id)
    if kind is not None:
        query = query.where(Charge.kind == kind)
    with session_scope(settings.ledger) as session:
        return list(session.scalars(query))


def posts_as_credit(charge: Charge) -> bool:
    """A correction that lowers a line is posted as a WHMCS credit (AddCredit), not a billable item."""
    return is_credit(charge.kind, charge.amount)


def claim(settings: Settings, charge_ids: list[int]) -> list[Charge]:
    """pending -> posting for these charges, committed before any of them is sent. Each row is
    claimed by its own conditional UPDATE, so of two runs racing, exactly one gets it."""
    with session_scope(settings.ledger) as session:
        now, mine = utc_now(), []
        for charge_id in charge_ids:
            claimed = session.execute(
                update(Charge)
                .where(Charge.id == charge_id, Charge.state == "pending")
                .values(state="posting", posting_started_at=now, attempts=Charge.attempts + 1, last_error=None)
            ).rowcount
            if claimed == 1:
                mine.append(charge_id)
        charges = list(session.scalars(select(Charge).where(Charge.id.in_(mine)).order_by(Charge.id)))
        for charge in charges:
            session.expunge(charge)
        return charges


def settle(settings: Settings, sent: list[Sent], report: PostingReport) -> None:
    """Record what WHMCS said, for a batch of charges, in one transaction."""
    with session_scope(settings.ledger) as session:
        for s in sent:
            _settle_one(session, s)
    report.count(sent)


def _settle_one(session: Session, s: Sent) -> None:
    # posted: a concurrent run may have marked it uncertain meanwhile; we know better now.
    where = update(Charge).where(Charge.id == s.charge.id).execution_options(synchronize_session=False)
    if s.state == "posted":
        session.execute(where.where(Charge.state.in_(("posting", "uncertain"))).values(
            state="posted", whmcs_billable_id=s.billable_id, posted_at=utc_now(), last_error=None))
    else:
        session.execute(where.where(Charge.state == "posting").values(
            state="uncertain" if s.state == "uncertain" else "pending", last_error=s.error,
            uncertain_at=utc_now() if s.state == "uncertain" else None))


@dataclass(frozen=True, slots=True)
class Claimed:
    """What posting needs of a charge it claimed (a plain row, not an ORM object: the posting loop
    claims one per charge, so it stays cheap)."""

    id: int
    idempotency_key: str
    client_id: int
    currency: str
    amount: Decimal
    description: str
    kind: str


_charges = Charge.__table__
_CLAIMED_COLUMNS = [_charges.c[f] for f in Claimed.__slots__]
# Built once: the posting loop runs them once per charge. Each is one statement (the claim returns
# its row: no SELECT after it).
_SETTLE_POSTED = (
    update(_charges)
    .where(_charges.c.id == bindparam("b_id"), or_(_charges.c.state == "posting", _charges.c.state == "uncertain"))
    .values(state="posted", whmcs_billable_id=bindparam("b_billable"), posted_at=bindparam("b_now"), last_error=None)
)
_SETTLE_OTHER = (
    update(_charges)
    .where(_charges.c.id == bindparam("b_id"), _charges.c.state == "posting")
    .values(state=bindparam("b_state"), last_error=bindparam("b_error"), uncertain_at=bindparam("b_uncertain"))
)
_CLAIM = (
    update(_charges)
    .where(_charges.c.id == bindparam("b_id"), _charges.c.state == "pending")
    .values(state="posting", posting_started_at=bindparam("b_now"), attempts=_charges.c.attempts + 1,
            last_error=None)
    .returning(*_CLAIMED_COLUMNS)
)


def settle_and_claim(
    settings: Settings, sent: list[Sent | None], next_id: Callable[[], int | None],
) -> tuple[list[Claimed | None], int]:
    """One commit for a group of posting workers (group commit): record the answer for the charge
    each one just sent (None: it has none yet) and claim ONE next charge for each (pending ->
    posting), so that at any moment only the charges actually in flight, at most one per worker,
    are in `posting`. `next_id()` hands out candidate ids; a candidate someone else claimed
    meanwhile (a racing run) is skipped. Returns (one claimed charge or None per entry of `sent`,
    how many candidates were skipped). One UPDATE per answer (as `_settle_one`) and one
    UPDATE ... RETURNING per claim, on one Core connection."""
    skipped, won = 0, []
    now = utc_now()
    posted = [{"b_id": s.charge.id, "b_billable": s.billable_id, "b_now": now}
              for s in sent if s is not None and s.state == "posted"]
    other = [{"b_id": s.charge.id, "b_state": "uncertain" if s.state == "uncertain" else "pending",
              "b_error": s.error, "b_uncertain": now if s.state == "uncertain" else None}
             for s in sent if s is not None and s.state != "posted"]
    with engine_for(settings.ledger).begin() as conn:
        if posted:
            conn.execute(_SETTLE_POSTED, posted)
        if other:
            conn.execute(_SETTLE_OTHER, other)
        for _ in sent:
            # A racing run may hold the row; the conditional UPDATE decides who gets it.
            while (charge_id := next_id()) is not None:
                row = conn.execute(_CLAIM, {"b_id": charge_id, "b_now": now}).first()
                if row is not None:
                    won.append(Claimed(*row))
                    break
                skipped += 1
    claimed_charges: list[Claimed | None] = [*won, *([None] * (len(sent) - len(won)))]
    return claimed_charges, skipped


class ReconcileError(ValueError):
    pass


def find_charge(settings: Settings, ref: str) -> Charge:
    with session_scope(settings.ledger) as session:
        query = select(Charge).where(Charge.idempotency_key == ref)
        if ref.isdigit():
            query = select(Charge).where(Charge.id == int(ref))
        charge = session.scalars(query).one_or_none()
        if charge is None:
            raise ReconcileError(f"no charge with id or idempotency key {ref!r}")
        session.expunge(charge)
        return charge


def reconcile(settings: Settings, ref: str, posted: bool, billable_id: int | None = None, note: str = "",
              actor: str = "operator") -> Charge:
    """An operator's verdict on an uncertain charge: it is in WHMCS (posted) or it is not (pending
    again). Kept in `charge_reconciliations` like the nightly run's own decisions.
    A credit (a correction that lowers a line, posted with AddCredit) has no billable item id: it
    is found in the client's credit log, so `billable_id` must be None for it and is required for
    every other charge found posted."""
    charge = find_charge(settings, ref)
    if charge.state != "uncertain":
        raise ReconcileError(f"charge {charge.idempotency_key} is {charge.state}, not uncertain: nothing to reconcile")
    credit = is_credit(charge.kind, charge.amount)
    if posted and credit and billable_id is not None:
        raise ReconcileError(f"charge {charge.idempotency_key} is a credit (AddCredit): it has no billable item id")
    if posted and not credit and billable_id is None:
        raise ReconcileError(f"charge {charge.idempotency_key} is a billable item: give its WHMCS billable item id")
    if posted and credit:
        decision = Decision(POSTED, f"operator found it in the client's credit log. {note}".strip(), Line(""))
    elif posted:
        decision = Decision(POSTED, f"operator found it in WHMCS (billable item {billable_id}). {note}".strip(),
                            Line("", billable_id=billable_id))
    else:
        decision = Decision(PENDING, f"operator found it is not in WHMCS. {note}".strip())
    target = uncertain_of(charge)
    if not record_decision(settings, target, decision, None, actor=actor):
        raise ReconcileError(f"charge {charge.idempotency_key} was settled meanwhile: nothing to reconcile")
    return find_charge(settings, str(charge.id))
