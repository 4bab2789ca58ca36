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
from concurrent.futures import ThreadPoolExecutor, as_completed
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


def _claim(settings: Settings, charge_id: int, run_id: int | None) -> Charge | None:
    with session_scope(settings.ledger) as session:
        claimed = session.execute(
            update(Charge)
            .where(Charge.id == charge_id, Charge.state == "pending")
            .values(state="posting", posting_started_at=utc_now(), attempts=Charge.attempts + 1, last_error=None)
        ).rowcount
        if claimed != 1:
            return None
        charge = session.get(Charge, charge_id)
        session.expunge(charge)
        return charge


def _set(settings: Settings, charge_id: int, from_states: tuple[str, ...], **values) -> None:
    with session_scope(settings.ledger) as session:
        session.execute(update(Charge).where(Charge.id == charge_id, Charge.state.in_(from_states)).values(**values))


def post_charge(settings: Settings, client: BillableItemPoster, charge_id: int, report: PostingReport,
                run_id: int | None = None) -> str:
    """Post one pending charge; returns posted | uncertain | failed | skipped."""
    from connectors.whmcs import WhmcsError, WhmcsUncertainError

    charge = _claim(settings, charge_id, run_id)
    if charge is None:
        report.skipped += 1
        return "skipped"
    try:
        billable_id = client.add_billable_item(charge.client_id, charge.description,
                                               round_minor(charge.amount, charge.currency), QUANTITY,
                                               currency=charge.currency)
    except WhmcsUncertainError as exc:
        _set(settings, charge_id, ("posting",), state="uncertain", last_error=str(exc)[:2000])
        report.uncertain.append(charge.idempotency_key)
        return "uncertain"
    except WhmcsError as exc:
        # WHMCS answered with an error, or the request certainly never reached it: not posted.
        _set(settings, charge_id, ("posting",), state="pending", last_error=str(exc)[:2000])
        report.failed.append((charge.idempotency_key, str(exc)))
        return "failed"
    # A concurrent run may have marked it uncertain meanwhile; we know better now.
    _set(settings, charge_id, ("posting", "uncertain"), state="posted", whmcs_billable_id=int(billable_id),
         posted_at=utc_now(), last_error=None)
    report.add_posted(charge.currency, charge.amount)
    return "posted"


def post_pending(
    settings: Settings,
    client: BillableItemPoster | Callable[[], BillableItemPoster],
    run_id: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
) -> PostingReport:
    """Post every pending charge, oldest first; `progress(done, total)` is called as it goes.

    With `workers` > 1, `client` is a factory called once per worker thread (an HTTP session is
    not shared between threads). Concurrency is safe: each charge is claimed atomically first."""
    report = PostingReport()
    ids = pending_charge_ids(settings)
    if workers <= 1 or len(ids) <= 1:
        poster = client() if callable(client) and not hasattr(client, "add_billable_item") else client
        for done, charge_id in enumerate(ids, start=1):
            post_charge(settings, poster, charge_id, report, run_id)
            if progress is not None:
                progress(done, len(ids))
        return report
    local = threading.local()
    lock = threading.Lock()

    def one(charge_id: int) -> None:
        if not hasattr(local, "client"):
            local.client = client()
        own = PostingReport()
        post_charge(settings, local.client, charge_id, own, run_id)
        with lock:
            report.posted += own.posted
            for ccy, amount in own.amount_posted.items():
                report.amount_posted[ccy] = report.amount_posted.get(ccy, Decimal(0)) + amount
            report.uncertain += own.uncertain
            report.failed += own.failed
            report.skipped += own.skipped

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="post") as pool:
        futures = [pool.submit(one, charge_id) for charge_id in ids]
        for done, future in enumerate(as_completed(futures), start=1):
            future.result()
            if progress is not None:
                progress(done, len(ids))
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
    _set(settings, charge.id, ("uncertain",), **values)
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
def post_pending_task(settings: Settings, run_id: int | None = None) -> PostingReport:
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
        report = post_pending(settings, new_client, run_id, progress, workers=settings.whmcs.post_workers)
    finally:
        for c in clients:
            c.close()
    update_progress_artifact(artifact, 100.0, description=f"done: {report.posted} posted")
    logger.info("posted %s charge(s) %s; %s uncertain; %s failed", report.posted, report.amount_posted,
                len(report.uncertain), len(report.failed))
    return report
