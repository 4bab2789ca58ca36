"""Post charges to WHMCS: pending -> posting -> posted, each exactly once.

The posting states and their ledger transitions are in autobill/ledger/charges.py; this step
makes the WHMCS calls between a claim and its settlement.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from autobill.config import Settings
from autobill.ledger.charges import (
    Claimed,
    PostingReport,
    Sent,
    outstanding_uncertain,
    pending_charge_ids,
    posts_as_credit,
    settle_and_claim,
    surface_interrupted,
)
from autobill.ledger.models import Charge
from autobill.money import format_amounts, round_minor
from connectors.whmcs import WhmcsClient, WhmcsError, WhmcsUncertainError

QUANTITY = Decimal(1)  # the amount is the line total; minutes are in the description (WHMCS qty is 999.99 max)


class BillableItemPoster(Protocol):
    def add_billable_item(self, client_id: int, description: str, amount: Decimal, quantity: Decimal, *,
                          currency: str | None = None) -> int: ...

    def add_credit(self, client_id: int, description: str, amount: Decimal, *,
                   currency: str | None = None) -> Decimal: ...


def _send(client: BillableItemPoster, charge: Charge | Claimed) -> Sent:
    """One AddBillableItem (or AddCredit for a correction that lowers a line); no ledger I/O here."""
    try:
        if posts_as_credit(charge):
            # WHMCS has no credit id to keep: the key in the description finds it in the credit log.
            client.add_credit(charge.client_id, charge.description, -round_minor(charge.amount, charge.currency),
                              currency=charge.currency)
            return Sent(charge, "posted", billable_id=None)
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


@dataclass
class _Turn:
    """A worker's request to the committer: settle `sent` (if any), give me my next charge."""

    sent: Sent | None
    done: threading.Event = field(default_factory=threading.Event)
    charge: Claimed | None = None
    error: BaseException | None = None


def post_pending(
    settings: Settings,
    client: BillableItemPoster | Callable[[], BillableItemPoster],
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
    kind: str | None = None,
) -> PostingReport:
    """Post every pending charge, oldest first; `progress(done, total)` is called as it goes.

    Each worker holds at most ONE claimed charge: it asks for a charge, sends it, then hands the
    answer back with its request for the next one. The calling thread is the only ledger writer:
    it takes every request waiting at that moment and settles + claims for all of them in one
    commit (`settle_and_claim`, a group commit), so commits stay few while only the charges in
    flight are `posting`: a crash leaves at most `workers` charges for reconciliation. With
    `workers` > 1, `client` is a factory called once per worker thread (an HTTP session is not
    shared between threads); a single client object gets a single worker."""
    report = PostingReport()
    ids = pending_charge_ids(settings, kind)
    is_factory = callable(client) and not hasattr(client, "add_billable_item")
    n = max(1, workers) if is_factory else 1
    candidates = iter(ids)
    turns: queue.Queue[_Turn] = queue.Queue()
    results: list[list[Sent]] = []

    def work() -> list[Sent]:
        poster = client() if is_factory else client
        sent: Sent | None = None
        out: list[Sent] = []
        while True:
            turn = _Turn(sent)
            turns.put(turn)
            turn.done.wait()
            if sent is not None:
                out.append(sent)
            if turn.error is not None or turn.charge is None:
                return out
            sent = _send(poster, turn.charge)

    failure: BaseException | None = None
    done = skipped = 0
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="post") as pool:
        futures = [pool.submit(work) for _ in range(n)]
        active = n
        while active:
            try:
                group = [turns.get(timeout=0.5)]
            except queue.Empty:
                if progress is not None and ids:
                    progress(done, len(ids))
                continue
            while True:
                try:
                    group.append(turns.get_nowait())
                except queue.Empty:
                    break
            if failure is None:
                try:
                    charges, n_skipped = settle_and_claim(settings, [t.sent for t in group],
                                                          lambda: next(candidates, None))
                except Exception as exc:  # noqa: BLE001 - stop handing out work; in-flight ones are surfaced next run
                    failure, charges, n_skipped = exc, [None] * len(group), 0
            else:
                charges, n_skipped = [None] * len(group), 0
            skipped += n_skipped
            done += n_skipped + sum(t.sent is not None for t in group)
            for turn, charge in zip(group, charges, strict=True):
                turn.charge, turn.error = charge, failure
                active -= charge is None
                turn.done.set()
        results = [f.result() for f in futures]
    if failure is not None:
        raise failure
    for sent in results:
        report.count(sent)
    report.skipped = skipped
    if progress is not None and ids:
        progress(len(ids), len(ids))
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
def post_pending_task(settings: Settings, kind: str | None = None) -> PostingReport:
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
                              kind=kind)
    finally:
        for c in clients:
            c.close()
    update_progress_artifact(artifact, 100.0, description=f"done: {report.posted} posted")
    logger.info("posted %s charge(s) (%s); %s uncertain; %s failed", report.posted, format_amounts(report.amount_posted),
                len(report.uncertain), len(report.failed))
    return report
