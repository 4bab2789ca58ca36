"""Post charges to WHMCS: pending -> posting -> posted, each exactly once.

Every state change is its own committed ledger transaction, so a crash leaves a precise trace:
- `pending`: certainly not in WHMCS (never sent, or WHMCS answered with an error, or the request
  certainly never reached it). Posted by the next run.
- `posting`: claimed and (maybe) sent. A run that finds a charge in `posting` at its start knows
  the previous run died mid-call: the charge becomes `uncertain`.
- `uncertain`: the call may or may not have created the billable item (lost answer, read
  timeout, crash). WHMCS offers no API to list billable items, so it is never re-posted
  blindly: an operator checks WHMCS for the idempotency key in the item description and runs
  `autobill charges reconcile KEY --posted --billable-id N` or `--not-posted`.
- `posted`: WHMCS returned its billable id.
Charges whose rounded amount is zero are `zero` and never posted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import select, update

from autobill.config import Settings
from autobill.ledger.db import session_scope
from autobill.ledger.models import Charge
from autobill.money import round_minor
from autobill.timeutil import utc_now

QUANTITY = Decimal(1)  # the amount is the line total; minutes are in the description (WHMCS qty is 999.99 max)


class BillableItemPoster(Protocol):
    def add_billable_item(self, client_id: int, description: str, amount: Decimal, quantity: Decimal, *,
                          currency: str | None = None) -> int: ...


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


def surface_interrupted(settings: Settings) -> list[str]:
    """Charges left in `posting` by a run that died mid-call become `uncertain`; returns their keys."""
    with session_scope(settings.ledger) as session:
        keys = list(session.scalars(select(Charge.idempotency_key).where(Charge.state == "posting")))
        if keys:
            session.execute(
                update(Charge)
                .where(Charge.state == "posting")
                .values(state="uncertain", last_error="found in `posting` at the start of a run: the call "
                        "may or may not have reached WHMCS; reconcile by hand")
            )
    return keys


def outstanding_uncertain(settings: Settings) -> list[str]:
    """Every charge still waiting for an operator's reconciliation, oldest first."""
    with session_scope(settings.ledger) as session:
        return list(session.scalars(
            select(Charge.idempotency_key).where(Charge.state == "uncertain").order_by(Charge.id)
        ))


def pending_charge_ids(settings: Settings) -> list[int]:
    with session_scope(settings.ledger) as session:
        return list(session.scalars(select(Charge.id).where(Charge.state == "pending").order_by(Charge.id)))


@dataclass
class _Sent:
    charge: Charge
    state: str  # posted | uncertain | failed
    billable_id: int | None = None
    error: str | None = None


def _claim(settings: Settings, charge_ids: list[int]) -> list[Charge]:
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


def _send(client: BillableItemPoster, charge: Charge) -> _Sent:
    """One AddBillableItem; no ledger I/O here."""
    from connectors.whmcs import WhmcsError, WhmcsUncertainError

    try:
        billable_id = client.add_billable_item(charge.client_id, charge.description,
                                               round_minor(charge.amount, charge.currency), QUANTITY,
                                               currency=charge.currency)
    except WhmcsUncertainError as exc:
        return _Sent(charge, "uncertain", error=str(exc)[:2000])
    except WhmcsError as exc:
        # WHMCS answered with an error, or the request certainly never reached it: not posted.
        return _Sent(charge, "failed", error=str(exc)[:2000])
    except Exception as exc:  # noqa: BLE001 - unknown whether it was sent: never re-post blindly
        return _Sent(charge, "uncertain", error=f"unexpected error while posting: {exc!r}"[:2000])
    return _Sent(charge, "posted", billable_id=int(billable_id))


def _settle(settings: Settings, sent: list[_Sent], report: PostingReport) -> None:
    """Record what WHMCS said, for a batch of charges, in one transaction."""
    with session_scope(settings.ledger) as session:
        for s in sent:
            where = update(Charge).where(Charge.id == s.charge.id)
            if s.state == "posted":
                # A concurrent run may have marked it uncertain meanwhile; we know better now.
                session.execute(where.where(Charge.state.in_(("posting", "uncertain"))).values(
                    state="posted", whmcs_billable_id=s.billable_id, posted_at=utc_now(), last_error=None))
            else:
                session.execute(where.where(Charge.state == "posting").values(
                    state="uncertain" if s.state == "uncertain" else "pending", last_error=s.error))
    for s in sent:
        if s.state == "posted":
            report.add_posted(s.charge.currency, s.charge.amount)
        elif s.state == "uncertain":
            report.uncertain.append(s.charge.idempotency_key)
        else:
            report.failed.append((s.charge.idempotency_key, s.error or ""))


def post_pending(
    settings: Settings,
    client: BillableItemPoster | Callable[[], BillableItemPoster],
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
    batch: int = 1,
) -> PostingReport:
    """Post every pending charge, oldest first; `progress(done, total)` is called as it goes.

    Charges go in batches of `batch`: one commit claims them all (`posting`), then each is sent,
    then one commit records the answers. A crash mid-batch leaves its charges in `posting`,
    which the next run turns `uncertain` (never re-sent): a bigger batch costs fewer commits and
    more charges to reconcile after a crash. With `workers` > 1, `client` is a factory called
    once per worker thread (an HTTP session is not shared between threads)."""
    report = PostingReport()
    ids = pending_charge_ids(settings)
    is_factory = callable(client) and not hasattr(client, "add_billable_item")
    local = threading.local()

    def send(charge: Charge) -> _Sent:
        if not is_factory:
            return _send(client, charge)
        if not hasattr(local, "client"):
            local.client = client()
        return _send(local.client, charge)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="post") if workers > 1 else None
    try:
        step = max(1, batch)
        for start in range(0, len(ids), step):
            chunk = ids[start : start + step]
            claimed = _claim(settings, chunk)
            report.skipped += len(chunk) - len(claimed)
            sent = list(pool.map(send, claimed)) if pool else [send(c) for c in claimed]
            _settle(settings, sent, report)
            if progress is not None:
                progress(start + len(chunk), len(ids))
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return report


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


def reconcile(settings: Settings, ref: str, posted: bool, billable_id: int | None = None, note: str = "") -> Charge:
    """An operator's verdict on an uncertain charge: it is in WHMCS (posted) or it is not (pending again)."""
    charge = find_charge(settings, ref)
    if charge.state != "uncertain":
        raise ReconcileError(f"charge {charge.idempotency_key} is {charge.state}, not uncertain: nothing to reconcile")
    if posted:
        values = {"state": "posted", "whmcs_billable_id": billable_id, "posted_at": utc_now(),
                  "last_error": f"reconciled by operator as posted. {note}".strip()}
    else:
        values = {"state": "pending", "last_error": f"reconciled by operator as not posted. {note}".strip()}
    with session_scope(settings.ledger) as session:
        session.execute(update(Charge).where(Charge.id == charge.id, Charge.state == "uncertain").values(**values))
    return find_charge(settings, str(charge.id))


@task(name="surface-interrupted-posts", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def surface_interrupted_task(settings: Settings) -> list[str]:
    keys = surface_interrupted(settings)
    if keys:
        get_run_logger().warning("%s charge(s) were interrupted mid-post and are now uncertain: %s", len(keys), keys)
    return keys


@task(name="outstanding-uncertain", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def outstanding_uncertain_task(settings: Settings) -> list[str]:
    return outstanding_uncertain(settings)


@task(name="post-to-whmcs", cache_policy=NO_CACHE, retries=0)
def post_pending_task(settings: Settings) -> PostingReport:
    """Post every pending charge with a progress artifact. Not retried as a task: each charge's own
    state machine already decides what is safe to try again."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    from connectors.whmcs import WhmcsClient

    if settings.whmcs is None:
        raise ValueError("whmcs: not configured; cannot post charges (use --dry-run to preview)")
    logger = get_run_logger()
    artifact = create_progress_artifact(0.0, description="Posting charges to WHMCS")
    step = {"last": 0.0}

    def progress(done: int, total: int) -> None:
        pct = 100.0 * done / total
        if pct - step["last"] >= 2 or done == total:
            update_progress_artifact(artifact, pct, description=f"{done}/{total} charges")
            step["last"] = pct

    clients: list[WhmcsClient] = []

    def new_client() -> WhmcsClient:
        clients.append(WhmcsClient.from_settings(settings.whmcs))
        return clients[-1]

    try:
        report = post_pending(settings, new_client, progress, workers=settings.whmcs.post_workers,
                              batch=settings.whmcs.post_batch)
    finally:
        for c in clients:
            c.close()
    update_progress_artifact(artifact, 100.0, description=f"done: {report.posted} posted")
    logger.info("posted %s charge(s) %s; %s uncertain; %s failed", report.posted, report.amount_posted,
                len(report.uncertain), len(report.failed))
    return report
