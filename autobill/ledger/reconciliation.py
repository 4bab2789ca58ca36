"""Uncertain charges in the ledger: which ones wait, and every decision taken about them.

Generic over charge rows (a usage line or a correction line alike): a charge is identified by
its id and idempotency key, found in WHMCS by `[key]` in a description, and settled by one
conditional UPDATE (`uncertain` -> `posted` | `pending`) committed with the decision row that
explains it (`charge_reconciliations`: source, outcome, reason, the invoices read, the line found).
The WHMCS reads are the reconcile step's (tasks/reconcile.py); the rule is autobill/reconcile.py.
A correction that lowers a line (a re-rate decrease or a dispute credit) was an AddCredit: it is
`as_credit`, looked for in the client's credit log, and the credit log entry found is named in the
decision's reason (a credit has no billable item id).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update

from autobill.config import Settings
from autobill.ledger.db import session_scope
from autobill.ledger.models import Charge, ChargeReconciliation
from autobill.reconcile import PENDING, POSTED, UNDECIDED, Decision, Evidence
from autobill.timeutil import utc_now


@dataclass(frozen=True)
class Uncertain:
    id: int
    key: str
    client_id: int
    currency: str
    amount: object
    posting_started_at: datetime | None
    uncertain_since: datetime  # when it became uncertain (older rows: when its post started)
    as_credit: bool = False  # posted with AddCredit: found in the credit log, not on invoices


def is_credit(kind: str, amount) -> bool:
    """A correction that lowers a line is posted as a WHMCS credit (AddCredit), never a billable item."""
    return kind == "correction" and amount < 0


def uncertain_charges(settings: Settings) -> list[Uncertain]:
    """Every uncertain charge, oldest first; credits (`as_credit`) included."""
    with session_scope(settings.ledger) as session:
        rows = session.scalars(select(Charge).where(Charge.state == "uncertain").order_by(Charge.id)).all()
        return [uncertain_of(c) for c in rows]


def uncertain_of(c: Charge) -> Uncertain:
    return Uncertain(c.id, c.idempotency_key, c.client_id, c.currency, c.amount, c.posting_started_at,
                     c.uncertain_at or c.posting_started_at or c.created_at, as_credit=is_credit(c.kind, c.amount))


def record_decision(
    settings: Settings, charge: Uncertain, decision: Decision, evidence: Evidence | None, *,
    run_id: int | None = None, actor: str = "autobill",
) -> bool:
    """Keep the decision and apply it, in one transaction. Returns whether the charge changed state
    (False for `undecided`, or when the charge was no longer uncertain: then nothing is applied)."""
    line = decision.line
    billable_id = line.billable_id if line is not None else None
    with session_scope(settings.ledger) as session:
        changed = False
        if decision.outcome == POSTED:
            changed = session.execute(
                update(Charge).where(Charge.id == charge.id, Charge.state == "uncertain")
                .values(state="posted", whmcs_billable_id=billable_id, posted_at=utc_now(),
                        last_error=f"reconciled ({evidence.source if evidence else actor}): {decision.reason}"[:2000])
            ).rowcount == 1
        elif decision.outcome == PENDING:
            changed = session.execute(
                update(Charge).where(Charge.id == charge.id, Charge.state == "uncertain")
                .values(state="pending", uncertain_at=None,
                        last_error=f"reconciled ({evidence.source if evidence else actor}): {decision.reason}"[:2000])
            ).rowcount == 1
        elif decision.outcome != UNDECIDED:
            raise ValueError(f"unknown outcome {decision.outcome!r}")
        if decision.outcome == UNDECIDED or changed:
            session.add(ChargeReconciliation(
                charge_id=charge.id, run_id=run_id, decided_at=utc_now(),
                source=evidence.source if evidence else "operator", outcome=decision.outcome,
                reason=decision.reason[:4000], as_of=evidence.as_of if evidence else None,
                invoices_scanned=json.dumps(list(evidence.scanned)) if evidence and evidence.scanned else None,
                invoice_id=line.invoice_id if line else None, invoice_item_id=line.item_id if line else None,
                billable_id=billable_id, actor=actor[:64],
            ))
        return changed


def latest_decisions(settings: Settings, charge_ids: list[int]) -> dict[int, ChargeReconciliation]:
    """The most recent decision recorded for each of these charges (if any)."""
    if not charge_ids:
        return {}
    with session_scope(settings.ledger) as session:
        newest = (
            select(ChargeReconciliation.charge_id, func.max(ChargeReconciliation.id).label("id"))
            .where(ChargeReconciliation.charge_id.in_(charge_ids))
            .group_by(ChargeReconciliation.charge_id)
            .subquery()
        )
        rows = session.scalars(select(ChargeReconciliation).join(newest, ChargeReconciliation.id == newest.c.id)).all()
        for r in rows:
            session.expunge(r)
        return {r.charge_id: r for r in rows}
