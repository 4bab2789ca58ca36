"""Post charges to WHMCS: pending -> posting -> posted, each exactly once.

The posting states and their ledger transitions are in autobill/ledger/charges.py; this step
makes the WHMCS calls between a claim and its settlement.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Protocol

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from autobill.config import Settings
from autobill.ledger.charges import (
    PostingReport,
    Sent,
    claim,
    outstanding_uncertain,
    pending_charge_ids,
    settle,
    surface_interrupted,
)
from autobill.ledger.models import Charge
from autobill.money import round_minor
from connectors.whmcs import WhmcsClient, WhmcsError, WhmcsUncertainError

QUANTITY = Decimal(1)  # the amount is the line total; minutes are in the description (WHMCS qty is 999.99 max)


class BillableItemPoster(Protocol):
    def add_billable_item(self, client_id: int, description: str, amount: Decimal, quantity: Decimal, *,
                          currency: str | None = None) -> int: ...


def _send(client: BillableItemPoster, charge: Charge) -> Sent:
    """One AddBillableItem; no ledger I/O here."""
    try:
        billable_id = client.add_billable_item(charge.client_id, charge.description,
                                               round_minor(charge.amount, charge.currency), QUANTITY,
                                               currency=charge.currency)
    except WhmcsUncertainError as exc:
        return Sent(charge, "uncertain", error=str(exc)[:2000])
    except WhmcsError as exc:
        # WHMCS answered with an error, or the request certainly never reached it: not posted.
        return Sent(charge, "failed", error=str(exc)[:2000])
    except Exception as exc:  # noqa: BLE001 - unknown whether it was sent: never re-post blindly
        return Sent(charge, "uncertain", error=f"unexpected error while posting: {exc!r}"[:2000])
    return Sent(charge, "posted", billable_id=int(billable_id))


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

    def send(charge: Charge) -> Sent:
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
            claimed = claim(settings, chunk)
            report.skipped += len(chunk) - len(claimed)
            sent = list(pool.map(send, claimed)) if pool else [send(c) for c in claimed]
            settle(settings, sent, report)
            if progress is not None:
                progress(start + len(chunk), len(ids))
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return report


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
